"""The proxy path: decide, then replay, or forward and record.

Owns the aiohttp request handler for everything under `/v1`. For each request it asks the
store (when the record mode looks up), takes the action `policy.decide` gives, streams the
upstream's answer to the client chunk by chunk as it arrives (never buffered whole), and hands
the finished exchange to the store. It publishes one `ProxyEvent` per request to its
subscribers (the console, later the web UI); it never imports them.

Failures: an upstream that cannot be reached gives 502, one that times out 504, both in
OpenAI's error shape; the upstream's own errors pass through as sent. Only complete 2xx
exchanges are recorded. A client that disconnects mid-stream does not stop the upstream read,
so the recording is still whole.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import aiohttp
from aiohttp import web

from rechat import answers
from rechat.errors import UpstreamError, UpstreamTimeout, error_body
from rechat.exchange import Answer, Exchange, Request, Response
from rechat.matching import diff
from rechat.policy import Action, Mode, decide, looks_up, records
from rechat.sse import SSEParser
from rechat.store import Store
from rechat.gateway import Gateway, Outbound
from rechat.rewrite import SSEStreamRewriter, rewrite_json, stream_rewriter
from rechat.upstream import HOP_BY_HOP

log = logging.getLogger("rechat")

_NOT_TO_CLIENT = HOP_BY_HOP | {"content-length", "content-encoding"}


@dataclass(slots=True)
class ProxyEvent:
    """What happened to one request.

    `kind` is "start" (the request arrived; one more event follows for the same `id`),
    "replay", "record" (forwarded and recorded), "forward" (forwarded, not recorded), "miss"
    (replay mode, nothing matched) or "error" (rechat's own 4xx/5xx). `ms` is the time from the
    request's arrival to the end of the reply; `started_at` is epoch s; `client` the peer address.
    """

    kind: str
    request: Request
    response: Response | None = None
    answer: Answer | None = None
    file: str | None = None
    ms: float = 0.0
    detail: str = ""
    position: tuple[int, int] | None = None  # (play position, answers) of a replay
    similarity: float | None = None  # of a fuzzy replay, or of the nearest request to a miss
    diff: list[str] | None = None  # unified diff nearest-recorded -> this request, on a miss
    nearest_file: str | None = None  # the nearest recorded request to a miss: its session file
    nearest_line: int | None = None  # and the 1-based line of its answer
    id: int = 0
    started_at: float = 0.0
    client: str = ""


@dataclass
class ProxyConfig:
    """The proxy's settings.

    `gateway` holds the upstreams (none in replay mode), the model map and the answer
    transforms (rechat/gateway.py). `respond`/`store` are the caching proxy's two
    switches (answer from the sessions at all; record at all). `fuzzy` (0..1) serves the nearest
    recorded answer on a miss when its similarity reaches it; `diff` attaches the diff against
    the nearest recorded request to miss events; `latency` scales the recorded timing on replay
    (0: as fast as possible, 1: as recorded).
    """

    mode: Mode = Mode.SERVE
    gateway: Gateway | None = None
    respond: bool = True
    store: bool = True
    fuzzy: float | None = None
    diff: bool = False
    latency: float = 0.0


class Proxy:
    """The `/v1` handler: `await proxy.handle(request)`; subscribe to events with `subscribe`."""

    def __init__(self, config: ProxyConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self._subscribers: list[Callable[[ProxyEvent], None]] = []
        self._ids = itertools.count(1)
        self.inflight: dict[int, ProxyEvent] = {}  # id -> its "start" event, until it ends
        self._replies: OrderedDict[tuple, tuple[Answer, answers.Reply, bytes]] = OrderedDict()

    def subscribe(self, callback: Callable[[ProxyEvent], None]) -> None:
        """Call `callback(event)` after each request; exceptions in it are logged, not raised."""
        self._subscribers.append(callback)

    def _publish(self, ctx: "_Ctx", event: ProxyEvent) -> None:
        event.id, event.started_at, event.client = ctx.id, ctx.started_at, ctx.client
        if event.kind == "start":
            self.inflight[ctx.id] = event
            self._deliver(event)
        else:
            self.inflight.pop(ctx.id, None)
            # Subscribers (console, request log, dump) get the end of a request after its
            # reply is on its way: aiohttp writes the web.Response a handler returns in the
            # same step of the task, before a callback scheduled now runs. Their work then
            # adds to the server's CPU but not to the client's latency.
            asyncio.get_running_loop().call_soon(self._deliver, event)

    def _deliver(self, event: ProxyEvent) -> None:
        for cb in self._subscribers:
            try:
                cb(event)
            except Exception:  # a broken subscriber must not break the proxy
                log.exception("event subscriber failed")

    async def handle(self, wreq: web.Request) -> web.StreamResponse:
        """Answer one client request (any method, any path under /v1)."""
        ctx = _Ctx(next(self._ids), time.perf_counter(), time.time(), wreq.remote or "")
        req = Request(wreq.method, wreq.raw_path.split("?", 1)[0], wreq.query_string,
                      list(wreq.headers.items()), await wreq.read())
        self._publish(ctx, ProxyEvent("start", req))
        cfg = self.config
        hit = self.store.lookup(req) if looks_up(cfg.mode, cfg.respond) else None
        action = decide(cfg.mode, hit is not None, cfg.respond)
        if action is Action.REPLAY:
            assert hit is not None
            return await self._replay(wreq, req, hit.answer, ctx, (hit.position, hit.count))
        near = None
        if req.is_chat and (action is Action.MISS or cfg.diff or cfg.fuzzy is not None):
            near = self.store.nearest(req)
            if (near is not None and cfg.fuzzy is not None and cfg.respond
                    and near.similarity >= cfg.fuzzy):
                answer = self.store.answer_at(near.file, near.line)
                if answer is not None:
                    return await self._replay(wreq, req, answer, ctx, None, near.similarity)
        miss = _miss_info(req, near) if near is not None else {}
        if action is Action.MISS:
            return self._miss(req, ctx, near, miss)
        return await self._forward(wreq, req, records(cfg.mode, cfg.store), ctx, miss)

    # -- replay ----------------------------------------------------------------------------

    async def _replay(self, wreq: web.Request, req: Request, answer: Answer, ctx: "_Ctx",
                      position: tuple[int, int] | None,
                      similarity: float | None = None) -> web.StreamResponse:
        gw = self.config.gateway
        transforms = []
        if gw is not None and gw.rewrites:
            out = gw.outbound(req)
            transforms = gw.transforms(out.asked, out.served, req.shape.choices)
        reply, joined = self._reply_for(answer, req, cache=not transforms)
        if transforms:
            reply = _transform_reply(reply, transforms)
            joined = b"".join(reply.events) if reply.events is not None else reply.body
        fuzzy = f"fuzzy={similarity:.2f}; " if similarity is not None else ""
        tag = ("x-rechat", f"replay; {fuzzy}session={_name(answer.session)}")
        delays = _delays(answer, reply, self.config.latency)
        if delays[0]:
            await asyncio.sleep(delays[0])
        if reply.events is None or not any(delays):
            # No timing to reproduce: the whole reply (a stream's events too) in one write.
            resp = web.Response(status=reply.status, body=joined)
            _set_headers(resp, reply.headers + [tag])
        else:
            resp = web.StreamResponse(status=reply.status)
            _set_headers(resp, reply.headers + [tag])
            await resp.prepare(wreq)
            try:
                for i, ev in enumerate(reply.events):
                    if i and delays[i]:
                        await asyncio.sleep(delays[i])
                    await resp.write(ev)
                await resp.write_eof()
            except ConnectionError:
                pass  # the client left; nothing to record on replay
        self._publish(ctx, ProxyEvent("replay", req, Response(reply.status, reply.headers, joined),
                                 answer=answer, file=answer.session, ms=_ms(ctx),
                                 position=position, similarity=similarity))
        return resp

    def _reply_for(self, answer: Answer, req: Request, cache: bool) -> tuple[answers.Reply, bytes]:
        """Return the reply to `req` from `answer` and its whole body (a stream's events joined).

        Built once per answer and request shape.

        A recorded answer's reply depends on the request only through `stream` and
        `stream_options.include_usage` (a hand-written one also on `model`); edits make new
        Answer objects, so a cached reply never outlives the text it came from.
        """
        shape = req.shape  # no JSON decoding for a body seen before
        key = (id(answer), shape.stream, shape.include_usage,
               None if answer.meta else shape.model)
        got = self._replies.get(key) if cache else None
        if got is not None and got[0] is answer:
            self._replies.move_to_end(key)
            return got[1], got[2]
        reply = (answers.chat_reply(answer, req) if answer.kind == "chat"
                 else answers.generic_reply(answer, req))
        joined = reply.body if reply.events is None else b"".join(reply.events)
        if cache:
            self._replies[key] = (answer, reply, joined)
            if len(self._replies) > 4096:
                self._replies.popitem(last=False)
        return reply, joined

    def _miss(self, req: Request, ctx: "_Ctx", near=None, miss: dict | None = None) -> web.Response:
        detail = ""
        if near is not None:
            detail = (f" The nearest recorded request is the one answered at "
                      f"{near.file}:{near.line} (similarity {near.similarity:.2f}).")
        elif req.json_error and "json" in (req.header("content-type") or ""):
            return self._error(req, ctx, 400, f"The request body is not valid JSON: "
                               f"{req.json_error}.", "invalid_json")
        msg = (f"rechat replay: no recorded answer matches {req.method} {req.path}.{detail}"
               " Record it with `rechat record` or write it into a session file.")
        self._publish(ctx, ProxyEvent("miss", req, ms=_ms(ctx), detail=detail.strip(), **(miss or {})))
        return web.Response(status=404, body=error_body(msg, "invalid_request_error", "rechat_miss"),
                            content_type="application/json")

    def _error(self, req: Request, ctx: "_Ctx", status: int, message: str, code: str,
               type: str = "invalid_request_error") -> web.Response:
        self._publish(ctx, ProxyEvent("error", req, Response(status), ms=_ms(ctx), detail=message))
        return web.Response(status=status, body=error_body(message, type, code),
                            content_type="application/json")

    # -- forward ---------------------------------------------------------------------------

    async def _forward(self, wreq: web.Request, req: Request, record: bool,
                       ctx: "_Ctx", miss: dict | None = None) -> web.StreamResponse:
        gw = self.config.gateway
        if gw is None or not gw.routes:
            return self._error(req, ctx, 502, "rechat has no upstream configured.",
                               "no_upstream", "server_error")
        if gw.is_gateway and req.method == "GET" and req.path in ("/v1/models", "/api/tags"):
            return await self._models(req, ctx, record)
        out = gw.outbound(req)
        port = None
        if gw.local_ports and wreq.transport is not None:  # routes bound to their own local ports
            sock = wreq.transport.get_extra_info("sockname")
            port = gw.port_for(sock[1] if sock else None)
        candidates = gw.candidates(out.served, port)
        if not candidates:
            return self._error(req, ctx, 404, f"No upstream serves the model {out.served!r} on "
                               "this port.", "model_not_found")
        failure = None
        for i, (route, up) in enumerate(candidates):
            last = i == len(candidates) - 1
            gw.balancer.started(route)
            t_send = time.perf_counter()
            try:
                cm = up.request(req.method, req.path, req.query, gw.headers(route, req.headers),
                                out.body)
                uresp = await cm.__aenter__()
            except asyncio.TimeoutError:
                gw.balancer.finished(route, None)
                failure = (UpstreamTimeout, f"The upstream {up.base} did not answer in time.")
                continue
            except aiohttp.ClientError as e:
                gw.balancer.finished(route, None)
                failure = (UpstreamError, f"The upstream {up.base} could not be reached: {e}")
                continue
            if uresp.status >= 500 and not last:
                # Failover: nothing has reached the client yet, so the next upstream may answer.
                gw.balancer.finished(route, uresp.status)
                await cm.__aexit__(None, None, None)
                continue
            outcome: dict = {}
            try:
                return await self._relay(wreq, req, uresp, record, ctx, t_send, miss or {},
                                         up.base, out, outcome)
            finally:
                gw.balancer.finished(route, uresp.status, failed=not outcome.get("complete", False)
                                     or uresp.status >= 500)
                await cm.__aexit__(None, None, None)
        err, message = failure
        return self._error(req, ctx, err.status, message, err.code, "server_error")

    async def _models(self, req: Request, ctx: "_Ctx", record: bool) -> web.StreamResponse:
        """The union of the upstreams' model lists and the configured names (gateway mode)."""
        t_send = time.perf_counter()
        body = json.dumps(await self.config.gateway.models(req.headers, req.path)).encode()
        ms = (time.perf_counter() - t_send) * 1000
        headers = [("Content-Type", "application/json")]
        response = Response(200, headers, body, ttfb_ms=ms, total_ms=ms)
        ex = Exchange(req, response, upstream="(all upstreams)", recorded_at=time.time())
        file = self._record(ex) if record else None
        self._publish(ctx, ProxyEvent("record" if file else "forward", req, response, file=file,
                                      ms=_ms(ctx)))
        resp = web.Response(status=200, body=body)
        _set_headers(resp, headers + [("x-rechat", "forward")])
        return resp

    async def _relay(self, wreq: web.Request, req: Request, uresp: aiohttp.ClientResponse,
                     record: bool, ctx: "_Ctx", t_send: float, miss: dict, upstream: str,
                     out: Outbound, outcome: dict) -> web.StreamResponse:
        ttfb = (time.perf_counter() - t_send) * 1000
        headers, ctype, to_client = _upstream_headers(uresp.raw_headers)
        headers = list(headers)
        is_sse = ctype.startswith("text/event-stream")
        gw = self.config.gateway
        complete = True
        client_gone = False
        if not is_sse and uresp.content_length is not None and uresp.content_length < 1 << 20:
            try:
                body = await uresp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return self._error(req, ctx, 502, f"The upstream's response broke off: {e}",
                                   UpstreamError.code, "server_error")
            transforms = gw.transforms(out.asked, out.served, req.shape.choices)
            resp = web.Response(status=uresp.status, reason=uresp.reason,
                                body=rewrite_json(body, transforms) if transforms else body)
            _set_headers(resp, to_client)
            events = event_ms = None
        else:
            # (the think rewrite, when on, is made only if the stream needs it)
            rewriter = gw.stream_rewriter(ctype, out.asked, out.served, req.shape.choices)
            resp = web.StreamResponse(status=uresp.status, reason=uresp.reason)
            _set_headers(resp, to_client)
            if ("Content-Encoding" not in uresp.headers and uresp.content_length is not None
                    and rewriter is None):
                resp.content_length = uresp.content_length
            await resp.prepare(wreq)
            parts: list[bytes] = []
            parser = SSEParser() if is_sse else None
            events, event_ms = ([], []) if is_sse else (None, None)
            try:
                async for piece in uresp.content.iter_any():
                    parts.append(piece)
                    if parser is not None:
                        t = (time.perf_counter() - t_send) * 1000
                        for ev in parser.feed(piece):
                            events.append(ev.data)
                            event_ms.append(t)
                    if not client_gone:
                        if rewriter is not None:
                            # The parser has framed the piece: the rewriter need not again.
                            piece = (rewriter.feed(piece, parser.whole) if parser is not None
                                     else rewriter.feed(piece))
                        try:
                            await resp.write(piece)
                        except ConnectionError:
                            client_gone = True
                if rewriter is not None and not client_gone:
                    tail = rewriter.close()  # mostly empty: aiohttp's write() of b"" sends nothing
                    if tail:
                        try:
                            await resp.write(tail)
                        except ConnectionError:
                            client_gone = True
                if parser is not None:
                    for ev in parser.close():
                        events.append(ev.data)
                        event_ms.append((time.perf_counter() - t_send) * 1000)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                complete = False
                log.warning("upstream stream broke off for %s %s: %s", req.method, req.path, e)
            body = b"".join(parts)
            if complete and not client_gone:
                try:
                    await resp.write_eof()
                except ConnectionError:
                    client_gone = True
            elif not complete:
                # The client must see a broken stream, not a clean end that looks complete.
                if wreq.transport is not None:
                    wreq.transport.close()
        total = (time.perf_counter() - t_send) * 1000
        response = Response(uresp.status, headers, body, events, event_ms, ttfb, total)
        outcome["complete"] = complete
        ex = Exchange(req, response, upstream=upstream, recorded_at=time.time())
        if out.served and out.served != out.asked:
            ex.served_model = out.served
        kind, file = "forward", None
        if record and complete and 200 <= uresp.status < 300:
            file = self._record(ex)
            kind = "record"
        self._publish(ctx, ProxyEvent(kind, req, response, file=file, ms=_ms(ctx),
                                 detail="" if complete else "upstream stream broke off", **miss))
        return resp

    def _record(self, ex: Exchange) -> str | None:
        try:
            chat = answers.chat_answer(ex) if ex.request.is_chat else None
            message, meta = chat if chat is not None else (None, answers.generic_meta(ex))
            if ex.served_model:
                meta["served_model"] = ex.served_model  # the session records both names
            return self.store.record(ex, message, meta)
        except Exception:  # recording must never cost the client its answer
            log.exception("could not record %s %s", ex.request.method, ex.request.path)
            return None


def _transform_reply(reply: answers.Reply, transforms: list) -> answers.Reply:
    """Apply the answer transforms (reasoning rewrite, model name) to a replayed reply."""
    if not transforms:
        return reply
    ctype = next((v for k, v in reply.headers if k.lower() == "content-type"), "")
    if reply.events is not None:
        # SSE events, or the NDJSON lines of an Ollama stream.
        rw = stream_rewriter(ctype, transforms) or SSEStreamRewriter(transforms)
        events = [rw.feed(e) for e in reply.events]
        events[-1] += rw.close()
        return answers.Reply(reply.status, reply.headers, reply.body, events, reply.event_ms)
    rw = stream_rewriter(ctype, transforms)
    body = rw.feed(reply.body) + rw.close() if rw else rewrite_json(reply.body, transforms)
    return answers.Reply(reply.status, reply.headers, body, None, None)


def _miss_info(req: Request, near) -> dict:
    # What a miss event carries about the nearest recorded request: its similarity and the diff.
    return {"similarity": near.similarity, "nearest_file": near.file, "nearest_line": near.line,
            "diff": diff(near.text, near.compared, f"{near.file}:{near.line}", "this request")}


def _delays(answer: Answer, reply: answers.Reply, factor: float) -> list[float]:
    """Seconds to wait before the reply (index 0) and before each further SSE event.

    Follows the recorded time to first byte and gaps between events, scaled by `factor`;
    a reply whose events were not recorded spreads the recorded total evenly.
    """
    n = len(reply.events) if reply.events is not None else 1
    if not factor:
        return [0.0] * n
    ms = answer.meta.get("ms") or {}
    ttfb, total = float(ms.get("ttfb") or 0), float(ms.get("total") or 0)
    if reply.events is None:
        return [total * factor / 1000]
    at = reply.event_ms
    if not at or len(at) != n:
        step = max(total - ttfb, 0) / max(n - 1, 1)
        at = [ttfb + i * step for i in range(n)]
    out = [at[0] * factor / 1000]
    out += [max(b - a, 0) * factor / 1000 for a, b in zip(at, at[1:])]
    return out


@functools.lru_cache(maxsize=256)
def _upstream_headers(raw: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple, str, tuple]:
    """(headers, Content-Type, headers for the client) of an upstream response's raw headers.

    Raw headers keep the upstream's own spelling of names (aiohttp's parsed ones do not). The
    client's copy lacks hop-by-hop headers, Content-Length and Content-Encoding (the body may
    be decoded or rewritten) and ends with ``x-rechat: forward``. An upstream repeats its
    headers (Date changes once a second), so each distinct tuple is worked out once.
    """
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
    to_client = tuple((k, v) for k, v in headers if k.lower() not in _NOT_TO_CLIENT)
    return headers, ctype, to_client + (("x-rechat", "forward"),)


def _set_headers(resp: web.StreamResponse, headers) -> None:
    for k, v in headers:
        if k.lower() == "content-type":
            resp.headers["Content-Type"] = v
        else:
            resp.headers.add(k, v)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@dataclass(slots=True)
class _Ctx:
    id: int
    t0: float  # perf_counter at arrival
    started_at: float  # epoch s at arrival
    client: str


def _ms(ctx: _Ctx) -> float:
    return (time.perf_counter() - ctx.t0) * 1000
