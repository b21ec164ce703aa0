"""A keep-alive HTTP/1.1 client for plain-http upstreams: the short way to a local model server.

Owns one thing: sending a request to an ``http://`` upstream and reading its response, with
idle connections kept per (host, port) and reused. Parsing is httptools (llhttp, the parser
of Node.js): status line, headers with their own spelling, Content-Length, chunked and
read-until-close bodies. gzip and deflate bodies are decoded as they arrive (as aiohttp's
``auto_decompress`` does); the Content-Encoding header is kept so the proxy knows.

Why not aiohttp's client here: rechat forwards to local servers (vLLM, llama.cpp, Ollama, a
mock) where its own cost is the whole overhead. aiohttp's ``ClientSession.request`` costs
about 0.1 ms of CPU per round trip on loopback (request object, URL handling, tracing,
timers, cookie and redirect logic rechat does not use); this client costs about a third of
it (bench/bench_proxy.py, docs/performance.md). https upstreams, and requests this client
does not take (see `METHODS` and `decodes`), keep going through the shared aiohttp session.

The response object has the part of ``aiohttp.ClientResponse`` the proxy and the gateway
use: `status`, `reason`, `headers`, `raw_headers`, `content_length`, ``await read()``,
``await json()``, ``content.iter_any()``, and ``async with``. Errors are aiohttp's classes,
so the caller handles both clients alike: ``aiohttp.ClientConnectionError`` (cannot connect,
connection lost), ``aiohttp.ServerDisconnectedError`` (closed before a response),
``aiohttp.ClientPayloadError`` (a body cut short or badly framed) and ``asyncio.TimeoutError``
(no connection, or no byte for `timeout_s`).

Framing follows RFC 9112: requests go out with Host and Content-Length (when there is a body
or the method is POST, PUT or PATCH); a connection is reused only when the response said so
(``should_keep_alive``) and was read to its end. A request on a reused connection that dies
before any byte of the response is sent again once on a new connection (the server closed an
idle connection as the request went out: it never saw it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import zlib
from typing import Any, AsyncIterator

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods this client sends (HEAD's bodiless responses and CONNECT stay with aiohttp)."""

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_HIGH_WATER = 1 << 20  # bytes buffered before the socket stops being read
_IDLE_PER_HOST = 64  # idle connections kept per (host, port)


def decodes(headers) -> bool:
    """True when the request's (name, value) `headers`, as they will be sent, accept no content
    coding but those this client decodes (gzip, deflate, identity). This client takes a request
    when this holds and its method is one of `METHODS`."""
    for k, v in headers:
        if k.lower() == "accept-encoding":
            for coding in v.split(","):
                c = coding.split(";", 1)[0].strip().lower()
                if c and c not in ("gzip", "deflate", "identity", "x-gzip", "*"):
                    return False
    return True


class Body:
    """The body of a response as it arrives: ``read()``, ``iter_any()`` (aiohttp's names)."""

    def __init__(self, conn: "_Conn") -> None:
        self._conn = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._since = 0.0  # loop.time() when the current wait began
        self._timer: asyncio.TimerHandle | None = None  # the idle timeout (see _wait)
        self._decoder: Any = None

    # -- the connection's side ---------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as e:
                self._fail(aiohttp.ClientPayloadError(f"cannot decode the response body: {e}"))
                return
            if not data:
                return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        if self._decoder is not None:
            try:
                tail = self._decoder.flush()
            except zlib.error:
                tail = b""
            if tail:
                self._chunks.append(tail)
                self._size += len(tail)
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._eof and self._error is None:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- the reader's side -------------------------------------------------------------------

    # The idle timeout (no byte for `timeout_s`) has one timer per body, not one per wait: a
    # call_later and a cancel for each piece of a stream cost about 17,000 instructions, a
    # seventh of relaying it (a 17-event stream 5 ms apart: 2,251k instructions per request
    # before, 1,957k after; bench_instructions.py --servers --event-gap-ms 5). Once armed, the timer fires when the wait then
    # running would run out; if a later wait is running by then, it is set again for that
    # one's end. A body read to its end, or given back, disarms it.

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = w = loop.create_future()
        self._since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._since + self._conn.timeout_s, self._expire)
        try:
            await w
        finally:
            self._waiter = None

    def _expire(self) -> None:
        self._timer = None
        w = self._waiter
        if w is None or w.done():
            return  # between waits: the next one arms the timer again
        end = self._since + self._conn.timeout_s
        loop = w.get_loop()
        if loop.time() + 0.001 >= end:  # (the loop runs a timer up to its clock's resolution early)
            w.set_exception(asyncio.TimeoutError())
        else:
            self._timer = loop.call_at(end, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @staticmethod
    def _timeout(waiter: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_exception(asyncio.TimeoutError())

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Yield the body's bytes as they arrive (decoded), until its end.

        Raises ClientPayloadError when the body is cut short, asyncio.TimeoutError when no byte
        arrives for the timeout.
        """
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._size = 0
                self._conn.resume()
                yield data
                continue
            if self._error is not None:
                self._disarm()
                raise self._error
            if self._eof:
                self._disarm()
                return
            await self._wait()

    async def read(self) -> bytes:
        """Return the whole (decoded) body. Raises as `iter_any` does."""
        parts: list[bytes] = []
        while True:  # iter_any's loop without an async generator (most bodies are there at once)
            if self._chunks:
                parts += self._chunks
                self._chunks.clear()
                self._size = 0
                self._conn.resume()
                continue
            if self._error is not None:
                self._disarm()
                raise self._error
            if self._eof:
                self._disarm()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await self._wait()


class Response:
    """An upstream's response: status line, headers, and the `content` being read."""

    def __init__(self, conn: "_Conn", status: int, reason: str,
                 raw_headers: list[tuple[bytes, bytes]]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.raw_headers = raw = tuple(raw_headers)
        self.headers, self.content_length, coding = _head_facts(raw)
        self.content = Body(conn)
        if coding in ("gzip", "x-gzip"):
            self.content._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self.content._decoder = _Deflate()

    async def read(self) -> bytes:
        """Return the whole (decoded) body."""
        return await self.content.read()

    async def json(self, content_type: str | None = None) -> Any:
        """Return the body decoded as JSON (`content_type` is accepted and not checked).
        Raises ValueError for a body that is not JSON."""
        return json.loads(await self.read())

    def release(self) -> None:
        """Give the connection back (whole response read) or close it (anything else)."""
        self.content._disarm()
        self._conn.done(self)


@functools.lru_cache(maxsize=256)
def _head_facts(raw: tuple[tuple[bytes, bytes], ...]) -> tuple[CIMultiDictProxy, int | None, str]:
    """(headers, Content-Length or None, content coding) of a response's raw headers. An
    upstream repeats its headers (Date changes once a second), so each distinct tuple is
    decoded once; the headers are read-only, so sharing them is safe."""
    h: CIMultiDict = CIMultiDict()
    for k, v in raw:
        h.add(k.decode("latin-1"), v.decode("latin-1"))
    cl = h.get("Content-Length")
    return (CIMultiDictProxy(h), int(cl) if cl is not None and cl.isdigit() else None,
            h.get("Content-Encoding", "").strip().lower())


class _Deflate:
    # "deflate" is zlib-wrapped by the RFC and raw in much of the wild: take whichever it is.
    def __init__(self) -> None:
        self._d: Any = None

    def decompress(self, data: bytes) -> bytes:
        if self._d is None:
            raw = not data or (data[0] & 0x0F) != 8
            self._d = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return self._d.decompress(data)

    def flush(self) -> bytes:
        return self._d.flush() if self._d is not None else b""


class _Conn(asyncio.Protocol):
    """One connection to an upstream and its httptools parser (callbacks below)."""

    def __init__(self, client: "Client", key: tuple[str, int], timeout_s: float) -> None:
        self.client, self.key, self.timeout_s = client, key, timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head: asyncio.Future | None = None  # resolves to the Response at its headers
        self.complete = False  # the current response was read to its end
        self.keep_alive = False  # and said the connection may be reused
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._paused = False
        self._until_close = False

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._lost(aiohttp.ClientPayloadError("the upstream switched protocols"))
        except httptools.HttpParserError as e:
            self._lost(aiohttp.ClientPayloadError(f"malformed response from the upstream: {e}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        r = self.response
        if r is not None and self._until_close and not self.complete:
            self.complete = True  # a body without framing ends when the connection does
            r.content._end()
            return
        if r is not None and not self.complete:
            self._lost(aiohttp.ClientPayloadError(
                f"the upstream's response broke off{f': {exc}' if exc else ''}"))
        else:
            self._lost(aiohttp.ServerDisconnectedError() if exc is None else
                       aiohttp.ClientConnectionError(f"connection to the upstream lost: {exc}"))

    def _lost(self, exc: BaseException) -> None:
        self.closed = True
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        if self.response is not None and not self.complete:
            self.response.content._fail(exc)
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim response (100 Continue, 103 Early Hints): the real one follows
        names = {k.lower() for k, _ in self._headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self.response = Response(self, status, self._reason.decode("latin-1", "replace"),
                                 self._headers)
        if status in (204, 304):
            self._until_close = False
        if self.head is not None and not self.head.done():
            self.head.set_result(self.response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.content._feed(body)

    def on_message_complete(self) -> None:
        r = self.response
        if r is None:
            return  # the end of an interim response
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # valid only inside this callback
        r.content._end()

    # -- the client's side -----------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future:
        self.head = asyncio.get_running_loop().create_future()
        self.response = None
        self.complete = self.keep_alive = False
        self.got_bytes = False
        self.transport.write(data)  # type: ignore[union-attr]
        return self.head

    def done(self, response: Response) -> None:
        if response is not self.response:
            return
        self.response = None
        self.head = None
        if self.complete and self.keep_alive and not self.closed and not self._until_close:
            self.client._idle(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Client:
    """Idle connections per (host, port) and the sending of requests over them.

    ``async with client.request(...) as resp`` (see `request`); ``await client.close()``
    closes every idle connection.
    """

    def __init__(self) -> None:
        self._pool: dict[tuple[str, int], list[_Conn]] = {}

    def request(self, method: str, host: str, port: int, target: str,
                headers: list[tuple[str, str]], body: bytes, timeout_s: float) -> "_Call":
        """Send `method` `target` (path and query, already encoded) to host:port.

        `headers` go as given (Host and Content-Length are added here: leave them out);
        `timeout_s` bounds connecting, the wait for the response's headers, and each wait for
        more of its body. Use as ``async with client.request(...) as resp``.
        """
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\n"]
        for k, v in headers:
            lines.append(f"{k}: {v}\r\n")
        if body or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        # As aiohttp writes them; its server decodes header values the other way round.
        head = "".join(lines).encode("utf-8", "surrogateescape")
        return _Call(self, (host, port), head + body if body else head, timeout_s)

    async def close(self) -> None:
        """Close every idle connection."""
        for conns in self._pool.values():
            for c in conns:
                c.close()
        self._pool.clear()

    def _idle(self, conn: _Conn) -> None:
        conns = self._pool.setdefault(conn.key, [])
        if len(conns) < _IDLE_PER_HOST:
            conn.reused = True
            conns.append(conn)
        else:
            conn.close()

    async def _connect(self, key: tuple[str, int], timeout_s: float, fresh: bool) -> _Conn:
        if not fresh:
            conns = self._pool.get(key)
            while conns:
                c = conns.pop()
                if not c.closed:
                    return c
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Conn(self, key, timeout_s), key[0], key[1]), timeout_s)
        except OSError as e:
            raise aiohttp.ClientConnectionError(
                f"cannot connect to {key[0]}:{key[1]}: {e.strerror or e}") from e
        return conn


class _Call:
    """One request in flight: ``async with`` gives its Response and releases it after."""

    def __init__(self, client: Client, key: tuple[str, int], data: bytes, timeout_s: float):
        self.client, self.key, self.data, self.timeout_s = client, key, data, timeout_s
        self.response: Response | None = None

    async def __aenter__(self) -> Response:
        for attempt in (0, 1):
            conn = await self.client._connect(self.key, self.timeout_s, fresh=attempt == 1)
            conn.timeout_s = self.timeout_s  # a pooled connection may come from another call
            reused = conn.reused
            head = conn.send(self.data)
            # A timer rather than asyncio.wait_for (a task and two callbacks per request): at
            # the timeout the wait for the response's headers fails with TimeoutError.
            timer = asyncio.get_running_loop().call_later(self.timeout_s, Body._timeout, head)
            try:
                self.response = await head
                return self.response
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError):
                conn.close()
                if reused and not conn.got_bytes and attempt == 0:
                    continue  # an idle connection the server had closed: never saw the request
                raise
            except BaseException:
                conn.close()
                raise
            finally:
                timer.cancel()
        raise AssertionError("unreachable")

    async def __aexit__(self, *exc: Any) -> None:
        if self.response is not None:
            self.response.release()


def _host_header(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port == 80 else f"{h}:{port}"
