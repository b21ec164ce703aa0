"""Dumps: a lossless JSON Lines log of every exchange rechat handled, one exchange per line.

Owns the dump format (schema version 1, below), the `DumpWriter` that appends to it from a
background thread, and the readers. Imports `exchange`, `fingerprint`, `sse` and `answers`
(to rebuild the body of a replay); must not import aiohttp, the proxy, the store or anything
above them (the writer takes any object with a ``subscribe(callback)`` method).

A dump is ``flows_<YYYY-MM-DD_HH-MM-SS>.jsonl``: UTF-8 JSON Lines (https://jsonlines.org),
one object per finished request, in the order the requests finished. Version 1 of a line:

    {"v": 1,                          schema version; a reader refuses a greater one
     "id": 7,                         rechat's request id, unique within one run
     "at": "2025-05-01T12:00:00.123+00:00",   arrival of the request, ISO 8601
     "kind": "record",                record | forward | replay | miss | error (ProxyEvent.kind)
     "ms": 812.4,                     rechat's time from arrival to the end of its reply
     "client": "127.0.0.1",           the client's address
     "upstream": "https://api.openai.com/v1",  or null (replays, misses)
     "session": "/abs/sessions/x.md", the file recorded into or replayed from, or null
     "detail": "...",                 optional: why a forward was not recorded, a miss's nearest
     "request": {"method": "POST", "path": "/v1/chat/completions", "query": "a=1",
                 "headers": [["Content-Type", "application/json"], ...],
                 "body": "..."},      or "body_b64": "..." when the bytes are not UTF-8
     "response": {"status": 200, "headers": [[k, v], ...], "body": "..." | "body_b64": "...",
                  "ttfb_ms": 120.5, "total_ms": 812.0, "complete": true,
                  "events": [{"ms": 130.2, "data": "{...}"}, ...]}}   or null

`response` is null for a miss and holds only a status for rechat's own errors. `events` is
null unless the response is an SSE stream (``text/event-stream``); then it holds every event's
data in order with its arrival time in ms since the request was sent upstream (null for a
replay, whose timing is rechat's own). `body` is the whole body as the client got it (the SSE
stream byte for byte, gzip already undone); `complete` is false when the upstream's stream broke
off. Times are floats in milliseconds.

Secrets never reach a dump: headers pass through `fingerprint.redact_headers` (Authorization,
api-key, x-api-key, cookies, *-token...), the query through `fingerprint.clean_query`, and the
upstream URL loses any user:password part.

Invariant: lines are written whole, with one `write` of an O_APPEND file, straight to the
kernel (no buffer in the process), so a crash of rechat loses at most the lines being
written; a write that fails half-way is truncated back. A torn last line (a machine crash)
is skipped and reported by the reader, never taken for an exchange; any other line that is
not a version-1 object is a `DumpFormatError` naming the file and line.
"""

from __future__ import annotations

import base64
import glob
import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlsplit, urlunsplit

from rechat.errors import RechatError
from rechat.exchange import Exchange, Request, Response
from rechat.fingerprint import clean_query, redact_headers
from rechat.sse import SSEParser

log = logging.getLogger("rechat")

VERSION = 1
"""The schema version this module writes, and the greatest it reads."""

PATTERN = "flows_*.jsonl"
"""The glob of dump files in a folder (what ``-f`` with no argument loads)."""

KINDS = ("record", "forward", "replay", "miss", "error")
ANSWER_KINDS = ("record", "forward")
"""Kinds whose exchanges came from the upstream, so can serve as answers."""


class DumpFormatError(RechatError):
    """A dump line that is not a version-1 exchange (`path`, 1-based `line`, `message`)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")


@dataclass(slots=True)
class Skip:
    """Something a reader left out, and why: `where` is e.g. ``line 12`` or ``entry 3``."""

    path: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where}: {self.reason}"


OnSkip = Callable[[Skip], None]


def _log_skip(s: Skip) -> None:
    log.warning("skipped %s", s)


# ---------------------------------------------------------------------------------------------
# Encoding


def iso(epoch_s: float) -> str:
    """Return `epoch_s` (seconds) as ISO 8601 UTC with milliseconds: ``2025-05-01T12:00:00.123+00:00``."""
    ms = round(epoch_s * 1000)  # rounded, not truncated: a time read back writes the same
    return (datetime.fromtimestamp(ms // 1000, timezone.utc)
            + timedelta(milliseconds=ms % 1000)).isoformat(timespec="milliseconds")


def epoch(at: str) -> float:
    """Return the epoch seconds of an ISO 8601 time (naive times are taken as UTC). Raises ValueError."""
    d = datetime.fromisoformat(at.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def strip_userinfo(url: str) -> str:
    """Return `url` without a ``user:password@`` part and without credential query parameters."""
    if not url:
        return url
    try:
        u = urlsplit(url)
    except ValueError:
        return url
    netloc = u.netloc.rsplit("@", 1)[-1]
    return urlunsplit((u.scheme, netloc, u.path, clean_query(u.query), u.fragment))


def _body(obj: dict, body: bytes) -> None:
    try:
        obj["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        obj["body_b64"] = base64.b64encode(body).decode("ascii")


def _headers(headers) -> list[list[str]]:
    return [[k, v] for k, v in redact_headers(headers)]


def is_sse(headers) -> bool:
    """True when a Content-Type header among `headers` ((name, value) pairs) is text/event-stream."""
    for k, v in headers:
        if k.lower() == "content-type":
            return v.strip().lower().startswith("text/event-stream")
    return False


def parse_sse(body: bytes) -> list[str]:
    """Return the data of every SSE event of a whole ``text/event-stream`` body, in order.

    Framing per WHATWG HTML 9.2.6 (rechat.sse.SSEParser); an unterminated last event is dropped
    as the spec says.
    """
    p = SSEParser()
    return [e.data for e in p.feed(body) + p.close()]


def encode_request(req: Request) -> dict:
    """Return the ``request`` object of a dump line: redacted headers, cleaned query, exact body."""
    obj: dict[str, Any] = {"method": req.method, "path": req.path, "query": clean_query(req.query),
                           "headers": _headers(req.headers)}
    _body(obj, req.body)
    return obj


def encode_response(resp: Response, complete: bool = True) -> dict:
    """Return the ``response`` object of a dump line (see the module docstring)."""
    obj: dict[str, Any] = {"status": resp.status, "headers": _headers(resp.headers)}
    _body(obj, resp.body)
    obj["ttfb_ms"] = resp.ttfb_ms  # unrounded: a dump is lossless
    obj["total_ms"] = resp.total_ms
    obj["complete"] = complete
    events = resp.events
    if events is None and resp.body and is_sse(resp.headers):
        events = parse_sse(resp.body)
    if events is None:
        obj["events"] = None
    else:
        ms = resp.event_ms if resp.event_ms is not None and len(resp.event_ms) == len(events) else None
        obj["events"] = [{"ms": None if ms is None else ms[i], "data": d}
                         for i, d in enumerate(events)]
    return obj


def encode_line(kind: str, request: Request, response: Response | None, *, id: int = 0,
                at: float = 0.0, ms: float = 0.0, client: str = "", upstream: str | None = None,
                session: str | None = None, detail: str = "", complete: bool = True) -> str:
    """Return one dump line (JSON text ending in ``\\n``) for one finished request.

    `at` is the request's arrival (epoch s), `ms` rechat's time to the end of its reply.
    """
    line: dict[str, Any] = {"v": VERSION, "id": id, "at": iso(at or time.time()), "kind": kind,
                            "ms": ms, "client": client,
                            "upstream": strip_userinfo(upstream) if upstream else None,
                            "session": session}
    if detail:
        line["detail"] = detail
    line["request"] = encode_request(request)
    line["response"] = None if response is None else encode_response(response, complete)
    # ensure_ascii=False keeps text readable; json escapes every control character, so the
    # line holds no newline, and readers split on b"\n" only (not on U+2028 and friends).
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


_js = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""JSON text of a value, as `encode_line` writes it (one encoder: json.dumps with options
builds a new JSONEncoder on every call)."""


def _upstream_json(url: str) -> str:
    return _js(strip_userinfo(url))


def _query_json(query: str) -> str:
    return _js(clean_query(query))


def _headers_json(headers) -> str:
    return _js(_headers(headers))


class LineEncoder:
    """`encode_line` for `ProxyEvent`s, with what repeats from request to request encoded once.

    Returns exactly the text `encode_line` returns (tests compare them), but keeps the JSON of
    the parts that come back again and again: a client's header list, a request body sent
    many times, and the whole ``response`` object of a replay (the proxy hands every replay of
    one answer the same reply objects, so it is keyed by their identity and cannot go stale).
    Each cache holds at most `limit` entries and is cleared when full; bodies over 64 KiB are
    not cached. Not thread-safe: one encoder per writer thread.
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._headers: dict[tuple, str] = {}
        self._bodies: dict[bytes, str] = {}
        self._strings: dict[str, str] = {}
        self._replies: dict[tuple, tuple[Response, str]] = {}
        self._second = (-1, "")

    def line(self, kind: str, request: Request, response: Response | None, *, id: int = 0,
             at: float = 0.0, ms: float = 0.0, client: str = "", upstream: str | None = None,
             session: str | None = None, detail: str = "", complete: bool = True) -> str:
        """Return the dump line for one finished request: the arguments of `encode_line`."""
        parts = ['{"v":', str(VERSION), ',"id":', str(id) if type(id) is int else _js(id), ',"at":"', self._iso(at or time.time()),
                 '","kind":', self._str(kind), ',"ms":',
                 repr(ms) if type(ms) is float and math.isfinite(ms) else _js(ms),
                 ',"client":', self._str(client),
                 ',"upstream":', self._upstream(upstream) if upstream else "null",
                 ',"session":', "null" if session is None else self._str(session)]
        if detail:
            parts += (',"detail":', _js(detail))
        parts += (',"request":{"method":', self._str(request.method), ',"path":',
                  self._str(request.path), ',"query":', self._query(request.query),
                  ',"headers":', self._header_list(request.headers), ",", self._body(request.body),
                  '},"response":', self._response(response, complete), "}\n")
        return "".join(parts)

    def _iso(self, at: float) -> str:
        ms = round(at * 1000)
        sec, frac = divmod(ms, 1000)
        if sec != self._second[0]:
            self._second = (sec, iso(sec))  # "YYYY-MM-DDTHH:MM:SS.000+00:00"
        text = self._second[1]
        return f"{text[:20]}{frac:03d}{text[23:]}"

    def _memo(self, cache: dict, key: Any, make: Callable[[Any], str], arg: Any) -> str:
        # One bounded memo for every cache: cleared when full.
        got = cache.get(key)
        if got is None:
            if len(cache) >= self.limit:
                cache.clear()
            got = cache[key] = make(arg)
        return got

    def _upstream(self, url: str) -> str:
        # "\0" and "\1" prefixes keep these keys apart from plain strings in the one dict.
        return self._memo(self._strings, "\0" + url, _upstream_json, url)

    def _query(self, query: str) -> str:
        return self._memo(self._strings, "\1" + query, _query_json, query) if query else '""'

    def _str(self, value: str) -> str:
        return self._memo(self._strings, value, _js, value)

    def _header_list(self, headers) -> str:
        return self._memo(self._headers, tuple(headers), _headers_json, headers)

    def _body(self, body: bytes) -> str:
        got = self._bodies.get(body)
        if got is None:
            obj: dict[str, Any] = {}
            _body(obj, body)
            (k, v), = obj.items()
            got = f'"{k}":{_js(v)}'
            if len(body) <= 1 << 16:
                if len(self._bodies) >= self.limit:
                    self._bodies.clear()
                self._bodies[body] = got
        return got

    def _response(self, resp: Response | None, complete: bool) -> str:
        if resp is None:
            return "null"
        # A replay's response carries no timing (rechat's own); a forwarded one always does.
        cacheable = not resp.ttfb_ms and not resp.total_ms and resp.event_ms is None
        key = (id(resp.body), id(resp.headers), id(resp.events), resp.status, complete,
               resp.ttfb_ms, resp.total_ms)
        if cacheable:
            got = self._replies.get(key)
            if got is not None:
                old = got[0]
                if (old.body is resp.body and old.headers is resp.headers
                        and old.events is resp.events):
                    return got[1]
        text = _js(encode_response(resp, complete))
        if cacheable:
            if len(self._replies) >= self.limit:
                self._replies.clear()
            self._replies[key] = (resp, text)  # holds the objects, so their ids stay theirs
        return text


# ---------------------------------------------------------------------------------------------
# Writing


class _Proxy(Protocol):
    def subscribe(self, callback: Callable[[Any], None]) -> None: ...


def default_path(folder: str = ".", now: float | None = None) -> str:
    """Return a dump path ``FOLDER/flows_<YYYY-MM-DD_HH-MM-SS>.jsonl`` (local time) not yet taken.

    Two runs started in the same second get ``_2``, ``_3``... suffixes.
    """
    t = datetime.fromtimestamp(now if now is not None else time.time()).astimezone()
    base = os.path.join(folder, f"flows_{t:%Y-%m-%d_%H-%M-%S}")
    path, n = base + ".jsonl", 1
    while os.path.exists(path):
        n += 1
        path = f"{base}_{n}.jsonl"
    return path


_STOP = object()

INLINE_BYTES = 1 << 16
"""Bodies (request and response, bytes) up to which the event loop encodes a line itself."""


class DumpWriter:
    """Appends one line per finished request to the dump at `path`, from a background thread.

    ``DumpWriter(path).attach(proxy)`` subscribes to the proxy's events. The callback encodes
    the line of a small exchange (at most `INLINE_BYTES` of bodies) on the spot, a few µs since
    `LineEncoder` keeps what repeats, and queues the text; a bigger one is queued as it is and
    encoded by the thread. So the event loop never waits for the disk or for a large body, and
    the queue holds text rather than parsed requests (objects that would outlive the garbage
    collector's young generation while a batch gathers and make every collection dearer). The
    file (and its folder) is created on the first line, so a run that handles no request leaves
    no dump behind. `close()` (or ``await aclose()``) writes what is queued, fsyncs and stops the
    thread; events arriving after it are dropped. A write that fails (disk full) is logged once
    per run and the writer goes on with the next line.

    `path` is the dump file; `upstream` the base URL forwarded exchanges went to (events do
    not carry it); `written` counts the lines written so far.
    """

    def __init__(self, path: str, upstream: str | None = None) -> None:
        self.path = os.path.abspath(path)
        self.upstream = upstream
        self.written = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._fd: int | None = None
        self._closed = False
        self._failed = False
        self._lock = threading.Lock()
        self._encoder = LineEncoder()  # the thread's
        self._inline = LineEncoder()  # the event loop's
        self._thread = threading.Thread(target=self._run, name="rechat-dump", daemon=True)
        self._thread.start()

    def attach(self, proxy: _Proxy) -> "DumpWriter":
        """Subscribe to `proxy`'s events (anything with ``subscribe(callback)``); return self."""
        proxy.subscribe(self.on_event)
        return self

    def on_event(self, event: Any) -> None:
        """Queue a `ProxyEvent` for writing (every kind but "start"). Never blocks, never raises."""
        if event.kind == "start" or self._closed:
            return
        resp = event.response
        size = len(event.request.body) + (len(resp.body) if resp is not None else 0)
        if size > INLINE_BYTES or (event.kind == "replay" and resp is not None and not resp.body):
            self._queue.put(event)  # large, or a replay whose body must be rebuilt: the thread
            return
        try:
            self._queue.put(self._line(event, self._inline))
        except Exception:  # one odd exchange must not stop the dump, nor reach the proxy
            log.exception("dump: could not encode an exchange")

    def write_exchange(self, kind: str, exchange: Exchange, **fields: Any) -> None:
        """Queue a line for `exchange` directly (tests, imports); `fields` as in `encode_line`."""
        if not self._closed:
            self._queue.put((kind, exchange, fields))

    def close(self) -> None:
        """Write every queued line, fsync the file and stop the thread. Idempotent; blocks."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    async def aclose(self) -> None:
        """`close()` without blocking the event loop (for an aiohttp cleanup context)."""
        import asyncio
        await asyncio.to_thread(self.close)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is not _STOP:
                # Let a batch gather: one wake-up and one write per 50 ms at most, so the
                # thread competes with the event loop for the GIL as little as possible.
                time.sleep(0.05)
            batch = [item]
            while True:  # drain what else is waiting: one write for the lot
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is _STOP for i in batch)
            lines = []
            for i in batch:
                if i is _STOP:
                    continue
                try:
                    lines.append(i if isinstance(i, str) else self._encode(i))
                except Exception:  # one odd exchange must not stop the dump
                    log.exception("dump: could not encode an exchange")
            if lines:
                self._write("".join(lines), len(lines))
            if stop:
                return

    def _encode(self, item: Any) -> str:
        if isinstance(item, tuple):
            kind, ex, fields = item
            fields.setdefault("upstream", ex.upstream or None)
            fields.setdefault("at", ex.recorded_at)
            return encode_line(kind, ex.request, ex.response, **fields)
        return self._line(item, self._encoder)

    def _line(self, ev: Any, encoder: LineEncoder) -> str:
        resp = ev.response
        if ev.kind == "replay" and resp is not None and not resp.body and ev.answer is not None:
            resp = _replayed(ev)
        return encoder.line(
            ev.kind, ev.request, resp, id=ev.id, at=ev.started_at, ms=ev.ms, client=ev.client,
            upstream=self._upstream_of(ev), session=ev.file, detail=ev.detail,
            complete=not (ev.kind in ANSWER_KINDS and ev.detail == "upstream stream broke off"))

    def _upstream_of(self, ev: Any) -> str | None:
        # Events do not name the upstream: a forwarded exchange went to ours, a replay's answer
        # names the one it was recorded from (if any).
        if ev.kind in ANSWER_KINDS:
            return getattr(ev, "upstream", None) or self.upstream
        ans = getattr(ev, "answer", None)
        if ans is not None and isinstance(ans.meta, dict):
            return ans.meta.get("upstream")
        return None

    def _write(self, text: str, n: int) -> None:
        data = text.encode("utf-8")
        start = None
        try:
            if self._fd is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            start = os.lseek(self._fd, 0, os.SEEK_END)
            view = memoryview(data)
            while view:  # a regular file takes it in one write; loop for the rare short one
                view = view[os.write(self._fd, view):]
            self.written += n
        except OSError as e:
            if start is not None:
                try:  # never leave part of a line for the next one to follow (disk full)
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass
            if not self._failed:
                self._failed = True
                log.error("dump: cannot write %s: %s", self.path, e)


def _replayed(ev: Any) -> Response:
    # The proxy's replay event carries no body for a streamed reply: rebuild what was sent
    # (the same pure function the proxy used) so the dump holds the bytes the client got.
    from rechat import answers
    a = ev.answer
    reply = (answers.chat_reply(a, ev.request) if a.kind == "chat"
             else answers.generic_reply(a, ev.request))
    body = reply.body if reply.events is None else b"".join(reply.events)
    events = None if reply.events is None else parse_sse(body)
    return Response(reply.status, list(reply.headers), body, events)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(slots=True)
class DumpEntry:
    """One line of a dump, decoded (the fields of the module docstring's schema).

    `at` is epoch s; `response` is None for a miss. `exchange` pairs the request with the
    response, `recorded_at` set to the end of the exchange.
    """

    kind: str
    id: int
    at: float
    ms: float
    client: str
    upstream: str | None
    session: str | None
    detail: str
    request: Request
    response: Response | None
    complete: bool
    line: int = 0  # 1-based line in the dump

    @property
    def exchange(self) -> Exchange:
        return Exchange(self.request, self.response or Response(0), self.upstream or "",
                        recorded_at=self.at + self.ms / 1000)

    @property
    def is_answer(self) -> bool:
        """True for a complete 2xx exchange from the upstream: what live recording keeps."""
        r = self.response
        return (self.kind in ANSWER_KINDS and r is not None and self.complete
                and 200 <= r.status < 300)


def _decode_body(obj: dict, where: str) -> bytes:
    if "body_b64" in obj:
        try:
            return base64.b64decode(obj["body_b64"], validate=True)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}.body_b64 is not base64: {e}") from None
    b = obj.get("body", "")
    if not isinstance(b, str):
        raise ValueError(f"{where}.body must be a string")
    return b.encode("utf-8", "surrogatepass")


def _decode_headers(h: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(h, list) or not all(isinstance(p, list) and len(p) == 2 for p in h):
        raise ValueError(f"{where}.headers must be a list of [name, value] pairs")
    # Redact again: a dump written by hand or another tool may hold what ours never would.
    return redact_headers([(str(k), str(v)) for k, v in h])


def decode_line(obj: Any) -> DumpEntry:
    """Return the `DumpEntry` of one parsed dump line. Raises ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("a dump line must be a JSON object")
    v = obj.get("v")
    if not isinstance(v, int):
        raise ValueError("no schema version (\"v\"): not a rechat dump line")
    if v > VERSION:
        raise ValueError(f"schema version {v} is newer than this rechat reads ({VERSION}); "
                         "upgrade rechat")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of: {', '.join(KINDS)})")
    rq = obj.get("request")
    if not isinstance(rq, dict) or not isinstance(rq.get("method"), str) or not isinstance(
            rq.get("path"), str):
        raise ValueError("request must be an object with method and path")
    req = Request(rq["method"], rq["path"], clean_query(str(rq.get("query") or "")),
                  _decode_headers(rq.get("headers", []), "request"), _decode_body(rq, "request"))
    rs = obj.get("response")
    resp = None
    complete = True
    if rs is not None:
        if not isinstance(rs, dict) or not isinstance(rs.get("status"), int):
            raise ValueError("response must be null or an object with an integer status")
        events = event_ms = None
        if rs.get("events") is not None:
            evs = rs["events"]
            if not isinstance(evs, list) or not all(isinstance(e, dict) and isinstance(
                    e.get("data"), str) for e in evs):
                raise ValueError("response.events must be a list of {ms, data} objects")
            events = [e["data"] for e in evs]
            ms = [e.get("ms") for e in evs]
            event_ms = [float(m) for m in ms] if all(isinstance(m, (int, float)) for m in ms) else None
        resp = Response(rs["status"], _decode_headers(rs.get("headers", []), "response"),
                        _decode_body(rs, "response"), events, event_ms,
                        float(rs.get("ttfb_ms") or 0.0), float(rs.get("total_ms") or 0.0))
        complete = rs.get("complete", True) is not False
    at = obj.get("at")
    return DumpEntry(kind=kind, id=int(obj.get("id") or 0), at=epoch(at) if isinstance(at, str) else 0.0,
                     ms=float(obj.get("ms") or 0.0), client=str(obj.get("client") or ""),
                     upstream=strip_userinfo(obj["upstream"]) if obj.get("upstream") else None,
                     session=obj.get("session"), detail=str(obj.get("detail") or ""),
                     request=req, response=resp, complete=complete)


def read_entries(path: str, on_skip: OnSkip | None = None) -> Iterator[DumpEntry]:
    """Yield every entry of the dump at `path`, in file order.

    A torn last line (no final newline and not valid JSON: the writer was killed mid-line) is
    skipped and reported to `on_skip` (default: a logged warning). Blank lines are ignored.
    Raises OSError, or `DumpFormatError` for any other line that is not a version-1 entry.
    """
    report = on_skip or _log_skip
    with open(path, "rb") as f:
        # Iterating a binary file splits on b"\n" only, which is the JSON Lines separator.
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as e:  # UnicodeDecodeError is a ValueError
                if not raw.endswith(b"\n") and not f.read(1):
                    report(Skip(path, f"line {n}", "torn last line (rechat stopped while "
                                f"writing it): {len(raw)} bytes skipped"))
                    return
                raise DumpFormatError(path, n, f"not valid JSON: {e}") from None
            try:
                entry = decode_line(obj)
            except (ValueError, TypeError) as e:  # TypeError: a field of the wrong JSON type
                raise DumpFormatError(path, n, str(e)) from None
            entry.line = n
            yield entry


def read_dump(path: str, on_skip: OnSkip | None = None, *, answers_only: bool = True) -> Iterator[Exchange]:
    """Yield the exchanges of the dump at `path`, in file order.

    With `answers_only` (the default), only what live recording would keep: complete 2xx
    exchanges that came from the upstream (kinds "record" and "forward"); replays, misses,
    errors and failures are left out silently. Errors as in `read_entries`.
    """
    for e in read_entries(path, on_skip):
        if not answers_only or e.is_answer:
            yield e.exchange


def find_dumps(folder: str = ".") -> list[str]:
    """Return the dumps (``flows_*.jsonl``) in `folder`, oldest first (by name, then mtime)."""
    paths = glob.glob(os.path.join(glob.escape(folder), PATTERN))
    return sorted(paths, key=lambda p: (os.path.basename(p), os.path.getmtime(p)))


def load_answers(remember: Callable[[Exchange, str, int], bool], paths: list[str],
                 on_skip: OnSkip | None = None) -> int:
    """Give every answer of the dumps at `paths` to `remember`, in order; return how many it took.

    `remember` is `Store.remember`: it is called as ``remember(exchange, path, line - 1)`` (the
    answer's source is the dump, its index the 0-based line) and returns True for an exchange
    it indexed. Raises OSError or `DumpFormatError`.
    """
    n = 0
    for p in paths:
        for e in read_entries(p, on_skip):
            if e.is_answer and remember(e.exchange, p, e.line - 1):
                n += 1
    return n


__all__ = ["VERSION", "PATTERN", "DumpWriter", "DumpEntry", "DumpFormatError", "Skip",
           "default_path", "find_dumps", "read_dump", "read_entries", "load_answers",
           "encode_line", "decode_line"]
