"""rechat.http1, the plain-http upstream client, against real servers on 127.0.0.1.

An aiohttp server for what a well-behaved upstream sends, and raw asyncio servers for what
only a socket can produce (a body until close, an interim 100, a connection cut mid-body, an
idle connection closed by the server).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import aiohttp
import pytest
from aiohttp import web

from rechat import http1
from rechat.upstream import Upstream

HOST = "127.0.0.1"


async def _aiohttp_server(app: web.Application):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


@pytest.fixture
async def upstream():
    seen = {"peers": set(), "requests": []}
    app = web.Application()

    async def echo(req: web.Request) -> web.Response:
        seen["peers"].add(req.transport.get_extra_info("peername"))
        body = await req.read()
        seen["requests"].append((req.method, req.path_qs, list(req.raw_headers), body))
        return web.json_response({"method": req.method, "path": req.path_qs, "len": len(body)},
                                 headers={"X-Odd-Case": "Kept"})

    async def sse(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.2)
        await resp.write_eof()
        return resp

    async def gz(req: web.Request) -> web.Response:
        data = gzip.compress(b"hello " * 1000)
        return web.Response(body=data, headers={"Content-Encoding": "gzip"})

    async def deflate(req: web.Request) -> web.Response:
        raw = req.query.get("raw") == "1"
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return web.Response(body=c.compress(b"deflated " * 500) + c.flush(),
                            headers={"Content-Encoding": "deflate"})

    async def big(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(req)
        for _ in range(40):
            await resp.write(b"x" * 250_000)
        await resp.write_eof()
        return resp

    async def empty(req: web.Request) -> web.Response:
        return web.Response(status=204)

    async def slow(req: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    app.router.add_route("*", "/v1/echo", echo)
    app.router.add_get("/v1/sse", sse)
    app.router.add_get("/v1/gzip", gz)
    app.router.add_get("/v1/deflate", deflate)
    app.router.add_get("/v1/big", big)
    app.router.add_delete("/v1/empty", empty)
    app.router.add_get("/v1/slow", slow)
    app.router.add_get("/api/tags", echo)
    runner, port = await _aiohttp_server(app)
    yield port, seen
    await runner.cleanup()


@pytest.fixture
async def raw_server():
    """Start socket servers that answer each request by calling `reply(transport)`:
    ``port = await raw_server(reply)``; all are closed after the test."""
    servers = []

    class P(asyncio.Protocol):
        def __init__(self, reply):
            self.reply = reply

        def connection_made(self, t):
            self.t, self.buf = t, b""

        def data_received(self, d):
            self.buf += d
            if b"\r\n\r\n" in self.buf:
                self.buf = b""
                self.reply(self.t)

    async def start(reply) -> int:
        server = await asyncio.get_running_loop().create_server(lambda: P(reply), HOST, 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def c():
    """The client under test; its idle connections are closed after the test."""
    client = http1.Client()
    yield client
    await client.close()


async def _get(client: http1.Client, port: int, target: str, method: str = "GET",
               headers=(), body: bytes = b"", timeout_s: float = 5.0):
    async with client.request(method, HOST, port, target, list(headers), body, timeout_s) as r:
        return r, await r.read()


async def test_json_round_trips_and_the_connection_is_reused(upstream, c):
    port, seen = upstream
    for i in range(5):
        r, body = await _get(c, port, f"/v1/echo?i={i}", "POST",
                             [("Content-Type", "application/json"), ("X-Trace", "T")],
                             b'{"a": 1}')
        assert r.status == 200 and r.reason == "OK"
        assert json.loads(body) == {"method": "POST", "path": f"/v1/echo?i={i}", "len": 8}
        assert (b"X-Odd-Case", b"Kept") in r.raw_headers  # the upstream's spelling
        assert r.headers["x-odd-case"] == "Kept"
    assert len(seen["peers"]) == 1  # five requests, one connection
    method, path, headers, body = seen["requests"][0]
    assert dict(headers)[b"Host"] == f"{HOST}:{port}".encode()
    assert dict(headers)[b"Content-Length"] == b"8" and dict(headers)[b"X-Trace"] == b"T"


async def test_sse_chunks_arrive_as_they_are_sent(upstream, c):
    port, _ = upstream
    async with c.request("GET", HOST, port, "/v1/sse", [], b"", 5) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        loop = asyncio.get_running_loop()
        got = []
        async for data in r.content.iter_any():
            got.append((loop.time(), data))
    assert b"".join(d for _, d in got) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(got) >= 3 and got[-1][0] - got[0][0] > 0.3  # not buffered to the end


async def test_gzip_and_deflate_bodies_are_decoded(upstream, c):
    port, _ = upstream
    r, body = await _get(c, port, "/v1/gzip", headers=[("Accept-Encoding", "gzip")])
    assert body == b"hello " * 1000 and r.headers["Content-Encoding"] == "gzip"
    for raw in ("0", "1"):
        r, body = await _get(c, port, f"/v1/deflate?raw={raw}")
        assert body == b"deflated " * 500


async def test_a_large_chunked_body_arrives_whole(upstream, c):
    port, _ = upstream
    r, body = await _get(c, port, "/v1/big")
    assert len(body) == 10_000_000 and r.content_length is None


async def test_no_content_and_bodyless_methods(upstream, c):
    port, seen = upstream
    r, body = await _get(c, port, "/v1/empty", "DELETE")
    assert (r.status, body) == (204, b"")
    r, body = await _get(c, port, "/v1/echo", "POST")  # an empty POST says Content-Length: 0
    assert json.loads(body)["len"] == 0
    assert dict(seen["requests"][-1][2])[b"Content-Length"] == b"0"
    r, body = await _get(c, port, "/v1/echo")
    assert b"Content-Length" not in dict(seen["requests"][-1][2])
    assert len(seen["peers"]) == 1


async def test_a_body_until_close_and_an_interim_response(raw_server, c):
    def until_close(t):
        t.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                b"all of it")
        t.close()
    port = await raw_server(until_close)
    r, body = await _get(c, port, "/x")
    assert (r.status, body) == (200, b"all of it")
    r, body = await _get(c, port, "/x")  # the closed connection is not reused
    assert body == b"all of it"


async def test_a_body_cut_short_is_a_payload_error(raw_server, c):
    def cut(t):
        t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        t.close()
    port = await raw_server(cut)
    with pytest.raises(aiohttp.ClientPayloadError):
        await _get(c, port, "/x")


async def test_garbage_is_a_payload_error(raw_server, c):
    port = await raw_server(lambda t: t.write(b"SPDY/9 what\r\n\r\n"))
    with pytest.raises(aiohttp.ClientError):
        await _get(c, port, "/x", timeout_s=2)


async def test_an_idle_connection_the_server_closed_is_replaced(raw_server, c):
    conns = []

    def answer_then_close_later(t):
        conns.append(t)
        t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    port = await raw_server(answer_then_close_later)
    assert (await _get(c, port, "/x"))[1] == b"ok"
    conns[0].close()  # the server drops the idle keep-alive connection
    await asyncio.sleep(0.05)
    assert (await _get(c, port, "/x"))[1] == b"ok"
    assert len(conns) == 2


async def test_refused_and_timeouts(raw_server, c):
    srv = await asyncio.get_running_loop().create_server(asyncio.Protocol, HOST, 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(c, port, "/x")
    silent = await raw_server(lambda t: None)
    with pytest.raises(asyncio.TimeoutError):
        await _get(c, silent, "/x", timeout_s=0.3)


def _drip(gaps, end: bool):
    """A raw_server reply: a chunked body, a piece after each gap (s), then its end (`end`) or
    nothing more."""
    def reply(t):
        loop = asyncio.get_running_loop()
        t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        at = 0.0
        for i, gap in enumerate(gaps):
            at += gap
            loop.call_later(at, t.write, b"2\r\n%02d\r\n" % i)
        if end:
            loop.call_later(at + 0.05, t.write, b"0\r\n\r\n")
    return reply


async def test_the_body_times_out_after_timeout_s_without_a_byte_not_before(raw_server, c):
    loop = asyncio.get_running_loop()

    async def read(port) -> tuple[bytes, float, str]:
        got = []
        t0 = loop.time()
        async with c.request("GET", HOST, port, "/x", [], b"", 0.4) as r:
            try:
                async for piece in r.content.iter_any():
                    got.append(piece)
            except asyncio.TimeoutError:
                return b"".join(got), loop.time() - t0, "timeout"
        return b"".join(got), loop.time() - t0, "end"

    # Pieces 0.25 s apart for 1.5 s: each wait is under the timeout, the whole body far over.
    body, took, how = await asyncio.wait_for(read(await raw_server(_drip([0.25] * 6, True))), 5)
    assert (body, how) == (b"000102030405", "end") and took >= 1.5
    # The same pieces and one 0.1 s later, then silence: the wait for more times out 0.4 s
    # after the last one (a wait that begins while the timer is set for an earlier one).
    gaps = [0.25] * 6 + [0.1]
    body, took, how = await asyncio.wait_for(read(await raw_server(_drip(gaps, False))), 5)
    assert (body, how) == (b"00010203040506", "timeout") and 1.6 + 0.39 <= took < 1.6 + 0.7
    # A body given back half read leaves no timer behind (it would hold the body until then).
    async with c.request("GET", HOST, await raw_server(_drip(gaps, True)), "/x", [], b"",
                         60) as r:
        async for _ in r.content.iter_any():
            break
    assert r.content._timer is None


async def test_the_upstream_uses_it_for_plain_http_only(upstream, c):
    port, seen = upstream
    async with aiohttp.ClientSession() as session:
        up = Upstream(f"http://{HOST}:{port}/v1", session=session)
        up.fast = c
        call = up.request("POST", "/v1/echo", "a=1", [("Authorization", "Bearer k"),
                                                      ("Host", "client"), ("Connection", "x")],
                          b"{}")
        assert isinstance(call, http1._Call)
        async with call as r:
            assert json.loads(await r.read())["path"] == "/v1/echo?a=1"
        sent = dict(seen["requests"][-1][2])
        assert sent[b"Authorization"] == b"Bearer k" and sent[b"Host"] != b"client"
        assert b"Connection" not in sent
        async with up.request("GET", "/api/tags", "", [], b"") as r:  # outside /v1
            assert json.loads(await r.read())["path"] == "/api/tags"
        # A coding it cannot decode, or HEAD, goes through aiohttp (and still works).
        for method, headers in (("GET", [("Accept-Encoding", "br")]), ("HEAD", [])):
            call = up.request(method, "/v1/echo", "", headers, b"")
            assert not isinstance(call, http1._Call)
            async with call as r:
                assert r.status == 200
        call = Upstream("https://example.invalid/v1", session=session).request(
            "GET", "/v1/x", "", [], b"")
        assert not isinstance(call, http1._Call)
        call._coro.close()  # never sent


def test_what_the_client_takes():
    assert "POST" in http1.METHODS and http1.decodes([("Accept-Encoding", "gzip, deflate")])
    assert "GET" in http1.METHODS and http1.decodes([("accept-encoding", "identity;q=1, *;q=0")])
    assert not http1.decodes([("Accept-Encoding", "gzip, br, zstd")])
    assert "HEAD" not in http1.METHODS
    assert "CONNECT" not in http1.METHODS
