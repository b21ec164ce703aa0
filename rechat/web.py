"""The web UI and its JSON API, under the reserved prefix `/_rechat/` (and `/` for the page).

Owns the request log's presentation: it subscribes to the proxy's events, queues each finished
request for the log (rechat.logdb, written on its own thread), and serves what the UI is built
from. It never feeds anything back into the proxy path, and must not be imported by the core
(proxy, store). The paths it mounts are outside `/v1`, so they never shadow an upstream path:

    GET /                                the UI (static page; every view is built from the API)
    GET /_rechat/static/{file}           its assets, served by rechat itself (no CDN)
    GET /_rechat/api/                    this list, as JSON
    GET /_rechat/api/info                version, mode, upstream, sessions folders, log file
    GET /_rechat/api/logs                the request log, newest first (filters, cursor pages)
    GET /_rechat/api/logs/{id}           one request: row, headers, bodies, conversation HTML,
                                         and for a miss the diff against the nearest recording
    GET /_rechat/api/stats               totals, hit rate, time and tokens saved, by model/kind
    GET /_rechat/api/inflight            requests in progress, with elapsed time
    GET /_rechat/api/sessions            session files (full-text search, model/kind/date)
    GET /_rechat/api/sessions/{name}     one session parsed, with its rendered HTML
    GET /_rechat/api/events              live stream (SSE): start, end, exchange

Access. The UI listens where the proxy listens. Requests whose Host header names another
machine are refused while rechat listens on loopback (DNS rebinding). With `ui_token`, every
UI path needs the token: `Authorization: Bearer TOKEN`, `?token=TOKEN` (on `/` it is then kept
in an HttpOnly cookie), or that cookie. Pages carry a Content-Security-Policy without inline
scripts, so content that slipped through rendering still cannot run.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.resources
import json
import logging
import os
import re
import time
from datetime import datetime
from typing import Any, Awaitable, Callable

from aiohttp import web

from rechat import __version__, answers, render
from rechat.exchange import CHAT_PATHS, Answer, Exchange, Request, Response
from rechat.fingerprint import request_params
from rechat.logdb import KINDS, LIVE_ROW_COLUMNS, LIVE_SHAPE_COLUMNS, LogError, RequestLog
from rechat.matching import NearIndex, diff, nearest
from rechat.store import shown_messages
from rechat.sse import SSEParser

log = logging.getLogger("rechat")

PREFIX = "/_rechat"
API = PREFIX + "/api"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
ROUTES = ["GET /", f"GET {PREFIX}/static/{{file}}", f"GET {API}/", f"GET {API}/info",
          f"GET {API}/logs", f"GET {API}/logs/{{id}}", f"GET {API}/stats", f"GET {API}/inflight",
          f"GET {API}/sessions", f"GET {API}/sessions/{{name}}", f"GET {API}/events"]
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


COALESCE_S = 0.05
"""Seconds the live stream waits after an event for more to send in the same write."""


class BadRequest(Exception):
    """A query parameter the API cannot use; answered with 400 and this message."""


# ---------------------------------------------------------------------------------------------
# The live stream


_LIVE_JSON = json.JSONEncoder(ensure_ascii=False, default=str).encode  # one encoder, not one per event
_zone: tuple[int, Any] = (-1, None)  # (minute since the epoch, the local zone then)


def _iso_time(at: float) -> str:
    """The epoch time `at` (s) in ISO 8601, local time with its UTC offset, to the ms:
    ``2026-11-22T04:05:06.789+01:00``, as ``datetime.fromtimestamp(at).astimezone()`` gives
    it, with the zone looked up once a minute (offsets change on whole minutes)."""
    global _zone
    minute = int(at // 60)
    if _zone[0] != minute:
        _zone = (minute, datetime.fromtimestamp(minute * 60).astimezone().tzinfo)
    return datetime.fromtimestamp(at, _zone[1]).isoformat(timespec="milliseconds")


class Hub:
    """The connected `/events` clients; `send` queues an SSE event to each, never blocking."""

    def __init__(self) -> None:
        self.clients: set[asyncio.Queue] = set()

    def send(self, kind: str, data: Any) -> None:
        """Queue the event `kind` with `data` (encoded as JSON) to every client."""
        if self.clients:
            self.send_frames([f"event: {kind}\ndata: {_LIVE_JSON(data)}\n\n".encode()])

    def send_frames(self, frames: list[bytes]) -> None:
        """Queue whole SSE events (``event: ...\ndata: ...\n\n`` each) to every client."""
        for q in list(self.clients):
            try:
                for frame in frames:
                    q.put_nowait(frame)
            except asyncio.QueueFull:
                # A client this far behind reconnects (EventSource does) and reloads.
                self.clients.discard(q)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(None)

    def close(self) -> None:
        for q in list(self.clients):
            while not q.empty():
                q.get_nowait()
            q.put_nowait(None)
        self.clients.clear()


# ---------------------------------------------------------------------------------------------
# The UI


class WebUI:
    """Everything `setup` mounts: handlers, the request log and the live hub."""

    def __init__(self, store, proxy, config) -> None:
        self.store, self.proxy, self.config = store, proxy, config
        self.hub = Hub()
        self.log: RequestLog | None = None
        self.log_error: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._summaries: dict[str, tuple[int, dict]] = {}
        self._names: dict[tuple[str, str], str] = {}  # (root, session path) -> its UI name
        self._assets = _load_assets()
        # Live in-flight tracking (see on_event): requests started since the last tick, the
        # ids live clients were told about (by a `start` event or the `hello` list), the tick.
        self._starting: dict[int, Any] = {}
        self._announced: set[int] = set()
        self._tick: asyncio.TimerHandle | None = None
        self._shape_json: dict[int, str] = {}  # a log shape's key -> its members' JSON (rows)
        token = config.ui_token or None
        self.token = token
        self.cookie = ("rechat_" + hashlib.sha256(token.encode()).hexdigest()[:12]) if token else None

    # -- events from the proxy -------------------------------------------------------------

    def on_event(self, ev) -> None:
        """The proxy's subscriber: queue finished requests for the log, tell live clients.

        Live clients hear of a request in flight (``start``, later ``end``) only once it has
        run `COALESCE_S` (50 ms); one answered sooner shows up only as its ``exchange`` row.
        Under load that spares two of the three frames per request (their encoding, the page's
        work); and a request that short could not be seen in flight anyway on a page that
        redraws once per animation frame.
        """
        if ev.kind == "start":
            if self.hub.clients:
                self._starting[ev.id] = ev
                if self._tick is None and self.loop is not None:
                    self._tick = self.loop.call_later(COALESCE_S, self._announce)
            return
        self._starting.pop(ev.id, None)
        if ev.id in self._announced:  # by a tick, or by the `hello` of a client that came since
            self._announced.discard(ev.id)
            if self.hub.clients:
                self.hub.send("end", {"id": ev.id, "kind": ev.kind})
        lg = self.log
        if lg is not None:
            lg.put(ev, self._recorded_at(ev.file) if ev.kind == "record" and ev.file else None)

    def _announce(self) -> None:
        # The tick: requests still running `COALESCE_S` after they started go out as `start`
        # events (those that ended sooner left `_starting`: their `exchange` row says it all).
        # `_starting` is in order of start, so the first one not due yet sets the next tick.
        self._tick = None
        if not self.hub.clients:
            self._starting.clear()
            return
        now = time.time()
        starting = self._starting
        for rid, ev in list(starting.items()):
            wait = ev.started_at + COALESCE_S - now
            if wait > 0.002:  # (the loop's clock and the wall clock may differ by a little)
                self._tick = self.loop.call_later(wait, self._announce)
                return
            del starting[rid]
            self._announced.add(rid)
            self.hub.send("start", self._inflight_item(ev, now))

    def _recorded_at(self, file: str) -> dict | None:
        # The store has just indexed the recording: it is the file's last answer.
        entry = self.store.files.get(file)
        if entry is None:
            return None
        s = entry.session
        if s.kind == "generic":
            return {"exchange": len(s.exchanges) - 1, "line": s.exchanges[-1].line} if s.exchanges else None
        n = sum(1 for i, m in enumerate(s.messages) if i and m.get("role") == "assistant")
        return {"exchange": n - 1, "line": s.lines[-1] if s.lines else None} if n else None

    def _on_rows(self, first: int, items: list[tuple]) -> None:
        # Writer thread: hand the inserted rows to the loop only when someone is watching.
        if self.hub.clients and self.loop is not None:
            self.loop.call_soon_threadsafe(self._send_rows, first, items)

    def _send_rows(self, first: int, items: list[tuple]) -> None:
        """Send rows just written (`RequestLog.on_rows`) to live clients as `exchange` events.

        Each is the object `logs` gives for the row (what `_public` makes of it; its keys in
        another order). The members that come from the row's shape (with the session's name)
        are encoded once per shape: a repeated replay's row costs the encoding of its own
        15 values.
        """
        if not self.hub.clients:
            return
        tails = self._shape_json
        frames = []
        for i, (key, shape, row) in enumerate(items):
            tail = tails.get(key)
            if tail is None:
                if len(tails) >= 4096:
                    tails.clear()
                d = dict(zip(LIVE_SHAPE_COLUMNS, shape))
                s = d["session"]
                d["session_name"] = self._name_of(s) if s else None
                tail = tails[key] = ", " + _LIVE_JSON(d)[1:] + "\n\n"
            d = dict(zip(LIVE_ROW_COLUMNS, row))  # (row's headers and body left out)
            d["id"] = first + i
            d["time"] = _iso_time(d["at"])
            frames.append(("event: exchange\ndata: " + _LIVE_JSON(d)[:-1] + tail).encode())
        self.hub.send_frames(frames)

    # -- lifecycle -------------------------------------------------------------------------

    def log_path(self) -> str:
        return os.path.abspath(self.config.log_db or os.path.join(
            self.config.sessions[0] if self.config.sessions else ".", ".rechat", "log.sqlite"))

    async def lifecycle(self, app: web.Application):
        self.loop = asyncio.get_running_loop()
        path = self.log_path()
        lg = RequestLog(path, self.config.log_max_age_days, on_rows=self._on_rows)
        lg.wants_rows = lambda: bool(self.hub.clients)
        try:
            await asyncio.to_thread(self._open_log, lg)
            self.log = lg
        except (LogError, OSError) as e:
            self.log_error = str(e)
            log.warning("request log disabled: %s", e)
        yield
        self.hub.close()
        self.log = None
        await asyncio.to_thread(lg.close)

    @staticmethod
    def _open_log(lg: RequestLog) -> None:
        lg.open()
        # Keep the log out of version control when it sits in a sessions folder.
        ignore = os.path.join(os.path.dirname(lg.path), ".gitignore")
        if os.path.basename(os.path.dirname(lg.path)) == ".rechat" and not os.path.exists(ignore):
            try:
                with open(ignore, "w") as f:
                    f.write("# rechat's request log; not for version control\n*\n")
            except OSError:
                pass

    async def on_shutdown(self, app: web.Application) -> None:
        self.hub.close()  # open event streams end now, so shutdown does not wait for them

    # -- access ----------------------------------------------------------------------------

    def guard(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        """Wrap a UI handler: Host check, token check, security headers, JSON errors."""

        async def wrapped(req: web.Request) -> web.StreamResponse:
            if not self._host_ok(req):
                return _error(403, "this rechat UI answers only to the address it listens on "
                                   f"(Host {req.host!r} refused)")
            if self.token and not self._token_ok(req):
                if req.path == "/" or not req.path.startswith(API):
                    return _unauthorized_page()
                return _error(401, "this rechat UI needs its token: Authorization: Bearer TOKEN, "
                                   "or ?token=TOKEN")
            if self.token and req.path == "/" and "token" in req.query:
                found = web.HTTPFound("/")
                found.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
                raise found
            try:
                resp = await handler(req)
            except BadRequest as e:
                resp = _error(400, str(e))
            if not resp.prepared:
                _secure(resp)
            return resp

        return wrapped

    def _host_ok(self, req: web.Request) -> bool:
        listen = self.config.host
        if listen not in _LOOPBACK:
            return True  # listening on purpose beyond this machine; --ui-token guards it
        host = (req.host or "").rsplit(":", 1)[0] if not (req.host or "").startswith("[") \
            else (req.host or "").split("]")[0] + "]"
        return host in _LOOPBACK

    def _token_ok(self, req: web.Request) -> bool:
        given = None
        auth = req.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        given = given or req.query.get("token") or req.cookies.get(self.cookie or "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    # -- pages and assets ------------------------------------------------------------------

    async def index(self, req: web.Request) -> web.StreamResponse:
        return self._asset("index.html")

    async def static(self, req: web.Request) -> web.StreamResponse:
        name = req.match_info["name"]
        if name not in self._assets:
            return _error(404, f"no asset {name!r}")
        etag = self._assets[name][2]
        if req.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return self._asset(name)

    def _asset(self, name: str) -> web.Response:
        body, ctype, etag = self._assets[name]
        resp = web.Response(body=body, content_type=ctype, charset="utf-8" if ctype.startswith("text") else None)
        resp.headers["ETag"] = etag
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    async def api_index(self, req: web.Request) -> web.Response:
        return _json({"version": __version__, "routes": ROUTES})

    async def info(self, req: web.Request) -> web.Response:
        c = self.config
        ups = c.upstream if isinstance(c.upstream, (list, tuple)) else [c.upstream] if c.upstream else []
        ups = [str(u) for u in ups] if c.mode.value != "replay" else []
        return _json({
            "version": __version__, "mode": c.mode.value,
            "upstream": ups[0] if ups else None, "upstreams": ups,
            "sessions": list(self.store.dirs), "session_files": len(self.store.files),
            "answers": self.store.answer_count, "broken_sessions": len(self.store.errors),
            "log": {"path": self.log.path if self.log else self.log_path(),
                    "enabled": self.log is not None, "error": self.log_error,
                    "max_age_days": c.log_max_age_days,
                    "run": self.log.run if self.log else None,
                    "written": self.log.written if self.log else 0,
                    "writer_cpu_s": round(self.log.writer_cpu_s, 4) if self.log else 0.0,
                    "dropped": self.log.dropped if self.log else 0},
            "host": c.host, "token": bool(self.token), "now": time.time(),
        })

    # -- the request log -------------------------------------------------------------------

    def _need_log(self) -> RequestLog:
        if self.log is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": {"message": f"the request log is off: {self.log_error or 'not open'}",
                                           "type": "rechat_ui", "code": "log_disabled"}}),
                content_type="application/json")
        return self.log

    async def logs(self, req: web.Request) -> web.Response:
        lg = self._need_log()
        q = req.query
        kinds = _kinds(q.get("kind"))
        status = q.get("status") or None
        if status and not re.fullmatch(r"\d{3}|[1-5]xx|error", status.lower()):
            raise BadRequest(f"status must be a code (404), a class (4xx) or 'error', got {status!r}")
        session = q.get("session") or None
        if session:
            session = self._path_of(session) or session
        rows, nxt = await asyncio.to_thread(
            lg.logs, q.get("q") or None, q.get("model") or None, kinds, status,
            _time(q.get("since"), "since"), _time(q.get("until"), "until"), session,
            _int(q.get("cursor"), "cursor", None), _int(q.get("limit"), "limit", 100, 1, 1000))
        return _json({"items": [self._public(r) for r in rows], "next": nxt})

    async def log_entry(self, req: web.Request) -> web.Response:
        lg = self._need_log()
        try:
            id = int(req.match_info["id"])
        except ValueError:
            raise BadRequest("a log id is a number") from None
        row = await asyncio.to_thread(lg.entry, id)
        if row is None:
            return _error(404, f"no request {id} in the log")
        out = self._detail(row)
        args = out.pop("_nearest_args", None)
        if args is not None:
            out["nearest"] = await asyncio.to_thread(self._nearest, *args)
        return _json(out)

    async def stats(self, req: web.Request) -> web.Response:
        lg = self._need_log()
        st = await asyncio.to_thread(lg.stats, _time(req.query.get("since"), "since"),
                                     _time(req.query.get("until"), "until"))
        st["inflight"] = len(self.proxy.inflight)
        st["now"] = time.time()
        return _json(st)

    async def inflight(self, req: web.Request) -> web.Response:
        now = time.time()
        items = [self._inflight_item(ev, now) for ev in list(self.proxy.inflight.values())]
        return _json({"items": sorted(items, key=lambda i: i["started_at"]), "now": now})

    def _inflight_item(self, ev, now: float) -> dict:
        shape = ev.request.shape  # kept per body: no JSON decoding for a body seen before
        return {"id": ev.id, "method": ev.request.method, "path": ev.request.path,
                "model": shape.model, "stream": shape.stream, "client": ev.client,
                "started_at": ev.started_at, "elapsed_ms": round((now - ev.started_at) * 1000, 1),
                "run": self.log.run if self.log else None}

    async def events(self, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        _secure(resp)
        await resp.prepare(req)
        q: asyncio.Queue = asyncio.Queue(maxsize=20000)
        now = time.time()
        flying = list(self.proxy.inflight.values())
        hello = {"now": now, "run": self.log.run if self.log else None,
                 "inflight": [self._inflight_item(ev, now) for ev in flying]}
        self.hub.clients.add(q)
        self._announced.update(ev.id for ev in flying)  # their end is news to this client
        try:
            await resp.write(b"retry: 1000\nevent: hello\ndata: " + json.dumps(hello).encode() + b"\n\n")
            while True:
                try:
                    frame = await asyncio.wait_for(q.get(), 15)
                except asyncio.TimeoutError:
                    await resp.write(b": ping\n\n")
                    continue
                if frame is None:
                    break
                # Let the events of the next few requests join this write: one write (and one
                # wake-up of this task) per COALESCE_S instead of per event under load. The page
                # applies what arrives once per animation frame anyway.
                await asyncio.sleep(COALESCE_S)
                frames = [frame]
                while not q.empty():  # whatever else is waiting goes out in the same write
                    frame = q.get_nowait()
                    if frame is None:
                        break
                    frames.append(frame)
                await resp.write(b"".join(frames))
                if frame is None:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.hub.clients.discard(q)
        return resp

    def _public(self, row: dict) -> dict:
        """A log row as the API shows it: with the session's UI name and ISO time."""
        out = dict(row)
        s = row.get("session")
        out["session_name"] = self._name_of(s) if s else None
        out["time"] = _iso_time(row["at"])
        return out

    def _detail(self, row: dict) -> dict:
        reqb: bytes | None = row.pop("request_body")
        respb: bytes | None = row.pop("response_body")
        out: dict[str, Any] = {"row": self._public({k: v for k, v in row.items()
                                                     if k not in ("req_headers", "resp_headers")})}
        out["request"] = {"headers": row["req_headers"], "bytes": row["req_bytes"],
                          "truncated": row["request_truncated"], **_body_view(reqb, "application/json")}
        rh = row["resp_headers"] or []
        body_json = None
        if reqb:
            try:
                body_json = json.loads(reqb)
            except (ValueError, UnicodeDecodeError):
                body_json = None
        is_chat = (row["method"] == "POST" and (row["path"].endswith("/chat/completions")
                                                 or row["path"] in CHAT_PATHS)
                   and isinstance(body_json, dict) and isinstance(body_json.get("messages"), list))
        answer_msg, answer_meta = None, None
        session_answer = self._answer_at(row.get("session"), row.get("exchange")) \
            if row["kind"] in ("replay", "record") else None
        if row["kind"] == "replay" and session_answer is not None and not respb:
            # A replay's response is not stored: rebuild it from the session's answer.
            fake = Request(row["method"], row["path"], row["query"] or "", [], reqb or b"")
            try:
                reply = (answers.chat_reply(session_answer, fake) if session_answer.kind == "chat"
                         else answers.generic_reply(session_answer, fake))
                respb = b"".join(reply.events) if reply.events is not None else reply.body
                rh = [list(h) for h in reply.headers] + [
                    ["x-rechat", f"replay; session={os.path.basename(session_answer.session)}"]]
                out["response_rebuilt"] = True
            except Exception:
                respb = None
        ctype = next((v for k, v in rh if k.lower() == "content-type"), "")
        out["response"] = {"headers": rh, "status": row["status"], "bytes": row["resp_bytes"],
                           "truncated": row["response_truncated"], **_body_view(respb, ctype)}
        if not respb and row["kind"] in ("miss", "error"):
            out["response"]["html"] = (f'<p class="muted">rechat answered {row["status"]} itself '
                                       f'({"no recorded answer matches" if row["kind"] == "miss" else "see the message above"}).</p>')
        if is_chat:
            if respb and row["kind"] in ("record", "forward"):
                got = _chat_answer_from(row, reqb or b"", respb, rh)  # what the upstream sent
                if got:
                    answer_msg, answer_meta = got
            if answer_msg is None and session_answer is not None and session_answer.message is not None:
                answer_msg, answer_meta = session_answer.message, session_answer.meta
            out["conversation_html"] = render.conversation_html(
                request_params(body_json), shown_messages(row["path"], body_json["messages"]),
                answer_msg, answer_meta)
            if row["kind"] != "replay":
                out["_nearest_args"] = self._nearest_args(row, body_json, reqb or b"")
        if row.get("session"):
            exchange = row.get("exchange")
            if exchange is None and row.get("line"):
                exchange = self._answer_index(row["session"], row["line"])
            out["session"] = {"name": self._name_of(row["session"]), "line": row.get("line"),
                              "exchange": exchange,
                              "exists": row["session"] in self.store.files}
        return out

    def _nearest_args(self, row: dict, body: dict, raw: bytes) -> tuple | None:
        """On the loop: the nearest recording to a logged chat request, or what finding it
        in a thread needs (a recording is never its own nearest)."""
        req = Request(row["method"], row["path"], "", [], raw)
        near = self.store.nearest(req)
        own = (row.get("session"), row.get("line")) if row["kind"] == "record" else None
        if near is None or own is None or (near.file, near.line) != own:
            return ("found", near, body)
        if self.store.answer_count > 20000:
            return None  # too many to scan for the second best; the log row says enough
        others = [r for r in self.store.requests(row["path"]) if (r[0], r[3]) != own]
        return ("scan", others, {**body, "messages": shown_messages(row["path"], body["messages"])})

    def _nearest(self, how: str, data: Any, body: dict) -> dict | None:
        params, messages = request_params(body), body["messages"]
        if how == "scan":
            index = NearIndex()
            for f, p, ms, line in data:
                index.add(ms, (f, p, ms, line))
            near = nearest(params, messages, index.candidates(messages))
        else:
            near = data
        if near is None:
            return None
        name = self._name_of(near.file)
        lines = diff(near.text, near.compared, f"{name}:{near.line}", "this request")
        return {"session": near.file, "name": name, "line": near.line,
                "exchange": self._answer_index(near.file, near.line),
                "similarity": round(near.similarity, 4), "diff": lines,
                "diff_html": render.diff_html(lines)}

    def _answer_index(self, file: str, line: int) -> int | None:
        # The 0-based answer index of the answer whose heading is at `line`.
        entry = self.store.files.get(file)
        if entry is None or entry.session.kind != "chat":
            return None
        s = entry.session
        n = 0
        for i, m in enumerate(s.messages):
            if i and m.get("role") == "assistant":
                if i < len(s.lines) and s.lines[i] == line:
                    return n
                n += 1
        return None

    def _answer_at(self, file: str | None, index: int | None) -> Answer | None:
        if not file or index is None:
            return None
        entry = self.store.files.get(file)
        if entry is None:
            return None
        s = entry.session
        if s.kind == "generic":
            if 0 <= index < len(s.exchanges):
                ex = s.exchanges[index]
                try:
                    body = ex.body
                except Exception:  # a readable form that cannot be rebuilt, a missing blob
                    return None
                return Answer(file, index, ex.line, "generic", meta=ex.meta, status=ex.status,
                              body=body, headers=[tuple(h) for h in ex.meta.get("headers", [])])
            return None
        n = 0
        for i, m in enumerate(s.messages):
            if i and m.get("role") == "assistant":
                if n == index:
                    return Answer(file, index, s.lines[i], "chat", message=m,
                                  meta=s.responses.get(i, {}))
                n += 1
        return None

    # -- sessions --------------------------------------------------------------------------

    def _root(self) -> str:
        dirs = self.store.dirs
        return dirs[0] if len(dirs) == 1 else os.path.commonpath(dirs)

    def _name_of(self, path: str) -> str:
        root = self._root()
        key = (root, path)
        got = self._names.get(key)
        if got is None:
            got = (os.path.relpath(path, root).replace(os.sep, "/")
                   if path.startswith(root + os.sep) else path)
            if len(self._names) >= 4096:
                self._names.clear()
            self._names[key] = got
        return got

    def _path_of(self, name: str) -> str | None:
        """The known session file called `name` (relative to the sessions folder), or None."""
        p = os.path.normpath(os.path.join(self._root(), name))
        if p in self.store.files or p in self.store.errors:
            return p
        return None

    def _summary(self, path: str) -> dict:
        entry = self.store.files.get(path)
        err = self.store.errors.get(path)
        key = id(entry)
        cached = self._summaries.get(path)
        if cached is not None and cached[0] == key and entry is not None:
            out = dict(cached[1])
        else:
            out = _summarise(entry) if entry is not None else {
                "kind": "broken", "model": None, "messages": 0, "answers": 0, "title": "",
                "at": None, "stream": False, "tools": False, "bytes": 0, "endpoint": None,
                "_text": ""}
            if entry is not None:
                self._summaries[path] = (key, out)
            out = dict(out)
        if out["at"] is None:
            try:
                out["at"] = os.stat(path).st_mtime
            except OSError:
                out["at"] = 0.0
        out["name"] = self._name_of(path)
        out["path"] = path
        out["error"] = str(err) if err is not None else None
        return out

    async def sessions(self, req: web.Request) -> web.Response:
        q = req.query
        words = (q.get("q") or "").lower().split()
        model = q.get("model") or None
        kind = q.get("kind") or None
        if kind and kind not in ("chat", "generic", "stream", "tools", "broken"):
            raise BadRequest("kind must be one of chat, generic, stream, tools, broken")
        since, until = _time(q.get("since"), "since"), _time(q.get("until"), "until")
        limit = _int(q.get("limit"), "limit", 500, 1, 5000)
        offset = _int(q.get("offset"), "offset", 0, 0)
        paths = sorted(set(self.store.files) | set(self.store.errors))
        items, models, kinds = [], {}, {}
        for p in paths:
            s = self._summary(p)
            text = s.pop("_text")
            if s["model"]:
                models[s["model"]] = models.get(s["model"], 0) + 1
            for k in _kinds_of(s):
                kinds[k] = kinds.get(k, 0) + 1
            if words and not all(w in text or w in s["name"].lower() for w in words):
                continue
            if model and s["model"] != model:
                continue
            if kind and kind not in _kinds_of(s):
                continue
            if since is not None and s["at"] < since:
                continue
            if until is not None and s["at"] >= until:
                continue
            items.append(s)
        items.sort(key=lambda s: (-(s["at"] or 0), s["name"]))
        return _json({"items": items[offset:offset + limit], "total": len(items),
                      "models": models, "kinds": kinds})

    async def session(self, req: web.Request) -> web.Response:
        name = req.match_info["name"]
        path = self._path_of(name)
        if path is None:
            return _error(404, f"no session called {name!r}")
        entry = self.store.files.get(path)
        err = self.store.errors.get(path)
        answer = _int(req.query.get("answer"), "answer", None, 0)
        out: dict[str, Any] = {"name": self._name_of(path), "path": path,
                               "error": {"line": err.line, "message": err.message, "text": str(err)}
                               if err is not None else None}
        if entry is None:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                text = ""
            out.update(text=text, source_html=render.highlight(text, "markdown"), html="",
                       kind="broken")
            return _json(out)
        s = entry.session
        text = entry.text

        def build() -> dict:
            return {"html": render.session_html(s, answer),
                    "source_html": render.highlight(text, "markdown")}

        rendered = await asyncio.to_thread(build)
        out.update(kind=s.kind, endpoint=s.endpoint, params=s.params, messages=s.messages,
                   lines=s.lines, responses={str(k): v for k, v in s.responses.items()},
                   exchanges=[{"line": ex.line, "status": ex.status, "meta": ex.meta,
                               "form": getattr(ex, "form", None),
                               "request": _text_of(lambda: ex.request_body),
                               "response": _text_of(lambda: ex.body)}
                              for ex in s.exchanges],
                   text=text, **rendered, **{k: v for k, v in self._summary(path).items()
                                             if k in ("answers", "model", "title", "at")})
        if self.log is not None:
            rows, _ = await asyncio.to_thread(self.log.logs, session=path, limit=50)
            out["log"] = [self._public(r) for r in rows]
        return _json(out)

    async def not_found(self, req: web.Request) -> web.Response:
        return _error(404, f"{req.method} {req.path} is not part of rechat's UI API "
                           f"(see GET {API}/)")


# ---------------------------------------------------------------------------------------------
# Helpers


def _summarise(entry) -> dict:
    s = entry.session
    at = None
    stream = False
    if s.kind == "generic":
        metas = [ex.meta for ex in s.exchanges]
        n_answers = len(s.exchanges)
        title = s.endpoint
    else:
        metas = list(s.responses.values())
        n_answers = sum(1 for i, m in enumerate(s.messages) if i and m.get("role") == "assistant")
        title = ""
        for m in s.messages:
            if m.get("role") == "user":
                c = m.get("content")
                title = c if isinstance(c, str) else " ".join(
                    p.get("text", "") for p in c if isinstance(p, dict)) if isinstance(c, list) else ""
                break
    for meta in metas:
        if isinstance(meta.get("at"), str):
            try:
                t = datetime.fromisoformat(meta["at"]).timestamp()
                at = t if at is None else max(at, t)
            except ValueError:
                pass
        stream = stream or bool(meta.get("stream"))
    tools = bool(s.params.get("tools")) or any(m.get("tool_calls") for m in s.messages)
    model = s.params.get("model")
    return {"kind": s.kind, "model": model if isinstance(model, str) else None,
            "messages": len(s.messages) if s.kind == "chat" else len(s.exchanges),
            "answers": n_answers, "title": " ".join(title.split())[:200], "at": at,
            "stream": stream, "tools": tools, "bytes": len(entry.text.encode()),
            "endpoint": s.endpoint, "_text": entry.text.lower()}


def _kinds_of(s: dict) -> list[str]:
    out = [s["kind"]]
    if s.get("stream"):
        out.append("stream")
    if s.get("tools"):
        out.append("tools")
    if s.get("error") and "broken" not in out:
        out.append("broken")
    return out


def _text_of(get: Callable[[], bytes]) -> str | None:
    """A body as text for JSON (None when binary or not available, e.g. a missing blob)."""
    try:
        return get().decode("utf-8")
    except Exception:
        return None


def _body_view(data: bytes | None, ctype: str) -> dict:
    """{"json": value} for a JSON body, {"text": ...} for text, plus `html` to show it."""
    if not data:
        return {"json": None, "text": None, "html": render.body_html(b"", ctype)}
    out: dict[str, Any] = {"json": None, "text": None}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        out["binary"] = len(data)
        out["html"] = render.body_html(data, ctype)
        return out
    try:
        out["json"] = json.loads(text)
    except ValueError:
        out["text"] = text
    out["html"] = render.body_html(data, ctype)
    return out


def _chat_answer_from(row: dict, reqb: bytes, respb: bytes, headers: list) -> tuple[dict, dict] | None:
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
    events = None
    if ctype.startswith("text/event-stream"):
        p = SSEParser()
        events = [e.data for e in p.feed(respb)] + [e.data for e in p.close()]
    resp = Response(row["status"] or 200, [tuple(h) for h in headers], respb, events)
    try:
        return answers.chat_answer(Exchange(Request(row["method"], row["path"], "", [], reqb), resp))
    except Exception:
        return None


def _time(value: str | None, name: str) -> float | None:
    """Epoch s from `value`: epoch seconds, ISO 8601 (local time if naive), or `15m`/`2h`/`7d` ago."""
    if value is None or value == "":
        return None
    v = value.strip()
    m = _AGO.fullmatch(v)
    if m:
        return time.time() - float(m[1]) * _UNITS[m[2]]
    try:
        return float(v)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(f"{name} must be epoch seconds, an ISO 8601 date or time, or an age "
                         f"like 15m, 2h, 7d; got {value!r}") from None


def _int(value: str | None, name: str, default: int | None, lo: int | None = None,
         hi: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {value!r}") from None
    if lo is not None and n < lo:
        raise BadRequest(f"{name} must be at least {lo}")
    if hi is not None:
        n = min(n, hi)
    return n


def _kinds(value: str | None) -> list[str] | None:
    if not value:
        return None
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise BadRequest(f"unknown kind {bad[0]!r}; kinds are {', '.join(KINDS)}")
    return kinds


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        text=json.dumps(data, ensure_ascii=False, default=_default))


def _default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def _error(status: int, message: str) -> web.Response:
    resp = _json({"error": {"message": message, "type": "rechat_ui", "code": status}}, status)
    _secure(resp)
    return resp


def _secure(resp: web.StreamResponse) -> None:
    h = resp.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")


def _unauthorized_page() -> web.Response:
    resp = web.Response(status=401, content_type="text/html", text=(
        "<!doctype html><meta charset=utf-8><title>rechat: token needed</title>"
        "<body style='font:16px system-ui;margin:3em'><h1>rechat needs its UI token</h1>"
        "<p>This rechat was started with <code>--ui-token</code>. Open "
        "<code>/?token=YOUR_TOKEN</code> once; the browser then keeps it in a cookie.</p>"))
    _secure(resp)
    return resp


def _load_assets() -> dict[str, tuple[bytes, str, str]]:
    out: dict[str, tuple[bytes, str, str]] = {}
    folder = importlib.resources.files("rechat") / "static"
    for item in folder.iterdir():
        if item.is_file() and not item.name.startswith("."):
            data = item.read_bytes()
            ext = os.path.splitext(item.name)[1]
            out[item.name] = (data, _TYPES.get(ext, "application/octet-stream"),
                              '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
    css = render.pygments_css().encode()
    out["pygments.css"] = (css, "text/css", '"' + hashlib.sha256(css).hexdigest()[:16] + '"')
    return out


def setup(app: web.Application, store, proxy, config) -> WebUI:
    """Mount the UI and its API on `app`, open the request log with the app, subscribe to `proxy`.

    Mounts `/` and everything under `/_rechat/` (module docstring); must be called before the
    app's catch-all route. The log opens in a cleanup_ctx (after the store has loaded) and is
    flushed and closed when the app stops. Returns the `WebUI` (tests and benchmarks use it).
    """
    ui = WebUI(store, proxy, config)
    g = ui.guard
    r = app.router
    r.add_get("/", g(ui.index))
    r.add_get(PREFIX, g(lambda req: _redirect()))
    r.add_get(PREFIX + "/", g(lambda req: _redirect()))
    r.add_get(PREFIX + "/static/{name}", g(ui.static))
    r.add_get(API, g(ui.api_index))
    r.add_get(API + "/", g(ui.api_index))
    r.add_get(API + "/info", g(ui.info))
    r.add_get(API + "/logs", g(ui.logs))
    r.add_get(API + "/logs/{id}", g(ui.log_entry))
    r.add_get(API + "/stats", g(ui.stats))
    r.add_get(API + "/inflight", g(ui.inflight))
    r.add_get(API + "/sessions", g(ui.sessions))
    r.add_get(API + "/sessions/{name:.+}", g(ui.session))
    r.add_get(API + "/events", g(ui.events))
    r.add_route("*", PREFIX + "/{tail:.*}", g(ui.not_found))
    app.cleanup_ctx.append(ui.lifecycle)
    app.on_shutdown.append(ui.on_shutdown)
    proxy.subscribe(ui.on_event)
    return ui


async def _redirect() -> web.Response:
    raise web.HTTPFound("/")


__all__ = ["setup", "WebUI", "Hub", "PREFIX", "API"]
