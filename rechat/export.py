"""Export: recordings in other formats to markdown sessions, and sessions to HAR.

Owns `rechat export`: the readers of HAR 1.2 files and mitmproxy flow files (our own dumps are
read by `rechat.dump`), the markdown export through a `Store` (so conversations group into
files exactly as when recording live), and the HAR 1.2 writer for sessions folders. Imports
`dump`, `store`, `answers`, `sessionfile`, `fingerprint`, `sse`; mitmproxy only lazily, inside
`read_mitm` (the optional extra ``rechat[mitm]``). Must not import typer, rich, aiohttp, the
proxy or the app: the CLI calls `main`.

What becomes a session: what live recording keeps. An exchange is exported when its response
is a complete 2xx and it came from an upstream (a dump's "record"/"forward" lines; every HAR
entry and mitmproxy HTTP flow with a 2xx response and a captured body). Everything else is
skipped and reported. A URL is mapped to rechat's client path from its first ``/v1`` segment
(``https://api.openai.com/v1/chat/completions`` and ``https://host/openai/v1/embeddings`` give
``/v1/chat/completions`` and ``/v1/embeddings``, their upstreams ``https://api.openai.com/v1``
and ``https://host/openai/v1``); a URL without one is not OpenAI API traffic and is skipped.

Secrets: readers drop credential headers (`fingerprint.redact_headers`), credential query
parameters (`fingerprint.clean_query`) and ``user:password@`` from URLs before anything else
sees an exchange; the HAR writer writes only headers rechat recorded (already redacted) and a
Content-Type, with no cookies.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

from rechat import __version__, answers
from rechat import sessionfile as sf
from rechat.dump import (OnSkip, Skip, epoch, is_sse, iso, parse_sse, read_entries,
                         strip_userinfo)
from rechat.errors import RechatError, SessionFormatError
from rechat.exchange import Answer, Exchange, Request, Response
from rechat.fingerprint import clean_query, redact_headers
from rechat.store import Store

MITM_HINT = "pip install 'rechat[mitm]'"


class ExportError(RechatError):
    """An input rechat cannot export (unknown format, unreadable file, missing mitmproxy)."""


# ---------------------------------------------------------------------------------------------
# URLs


def split_url(url: str) -> tuple[str, str, str] | None:
    """Return (upstream base, client path, query) for a URL of OpenAI API traffic, else None.

    The client path starts at the URL's first ``/v1`` segment; the upstream is everything
    before it plus ``/v1``, without credentials. ``https://k:s@h/x/v1/models?key=1&a=2`` gives
    ``("https://h/x/v1", "/v1/models", "a=2")``.
    """
    try:
        u = urlsplit(url)
    except ValueError:
        return None
    path = u.path or "/"
    segs = path.split("/")
    if "v1" not in segs:
        return None
    i = segs.index("v1")
    prefix = "/".join(segs[:i])
    client = "/" + "/".join(segs[i:])
    base = strip_userinfo(f"{u.scheme}://{u.netloc}{prefix}/v1")
    return base, client, clean_query(u.query)


def _url_for(upstream: str | None, path: str, query: str) -> str:
    # The inverse of split_url, as rechat forwards: the client's /v1/X went to UPSTREAM/X.
    base = strip_userinfo(upstream or "") or "http://127.0.0.1:8910/v1"
    tail = path[3:] if path.startswith("/v1/") or path == "/v1" else path
    q = clean_query(query)
    return base.rstrip("/") + tail + (f"?{q}" if q else "")


# ---------------------------------------------------------------------------------------------
# Reading: format detection


def detect(path: str) -> str:
    """Return the format of the file at `path`: "dump", "har" or "mitm".

    Sniffed from the content: a dump line starts with ``{"v":`` (or its first line is an
    object with ``v``); any other JSON object is HAR (``{"log": ...}``), unless the name ends
    in ``.jsonl``; anything else is taken for a mitmproxy flow file (tnetstrings), whose reader
    says so if it is not one. Raises OSError.
    """
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    text = head.lstrip()
    jsonl = path.lower().endswith(".jsonl")
    if re.match(rb'\{\s*"v"\s*:', text):
        return "dump"
    if text.startswith(b"{"):
        first = text.split(b"\n", 1)[0]
        try:
            obj = json.loads(first)
        except ValueError:
            obj = None
        if jsonl or (isinstance(obj, dict) and "v" in obj and "request" in obj):
            return "dump"
        return "har"
    return "dump" if jsonl and not text else "mitm"


def read_exchanges(path: str, on_skip: OnSkip | None = None) -> Iterator[Exchange]:
    """Yield the exchanges of a dump, HAR or mitmproxy file that live recording would keep.

    Skipped items go to `on_skip`. Raises OSError, `dump.DumpFormatError`, or `ExportError`
    (a HAR file that is not HAR, a flow file that mitmproxy cannot read, mitmproxy missing).
    """
    fmt = detect(path)
    report = on_skip or (lambda s: None)
    if fmt == "dump":
        for e in read_entries(path, report):
            if e.is_answer:
                yield e.exchange
            elif e.kind in ("record", "forward"):
                why = "incomplete stream" if not e.complete else f"status {e.response.status if e.response else '-'}"
                report(Skip(path, f"id {e.id}", f"{e.request.method} {e.request.path}: {why}"))
        return
    yield from (read_har(path, report) if fmt == "har" else read_mitm(path, report))


# ---------------------------------------------------------------------------------------------
# Reading: HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/)


def _har_text(obj: dict | None) -> bytes | None:
    """Return the bytes of a HAR `content` or `postData` object; None when no text was captured.

    `text` is the body decoded from any Content-Encoding; ``encoding: base64`` marks it base64
    (the spec defines this for `content`; rechat reads and writes it on `postData` too).
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return None
    if obj.get("encoding") == "base64":
        try:
            return base64.b64decode(obj["text"], validate=False)
        except ValueError:
            return None
    return obj["text"].encode("utf-8", "surrogatepass")


def _har_headers(hs: Any) -> list[tuple[str, str]]:
    out = []
    for h in hs if isinstance(hs, list) else []:
        if isinstance(h, dict) and isinstance(h.get("name"), str):
            name = h["name"]
            if name.startswith(":"):
                continue  # HTTP/2 pseudo-headers (Chrome writes :authority, :path...)
            out.append((name, str(h.get("value", ""))))
    return redact_headers(out)


def _ms(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v > 0 else 0.0


def har_exchange(entry: dict, where: str = "entry") -> Exchange:
    """Return the exchange of one HAR 1.2 entry. Raises ValueError saying why it cannot be used.

    SSE responses (``text/event-stream``) are parsed into events from the body text; their
    arrival times come from rechat's own ``_rechat.events_ms`` when present.
    """
    rq, rs = entry.get("request"), entry.get("response")
    if not isinstance(rq, dict) or not isinstance(rs, dict):
        raise ValueError("no request or response")
    ours = entry.get("_rechat") if isinstance(entry.get("_rechat"), dict) else {}
    url = str(rq.get("url", ""))
    if isinstance(ours.get("path"), str) and ours["path"].startswith("/v1"):
        # rechat's own HAR: the client path and upstream as recorded (the URL is the upstream's,
        # which has no /v1 when the upstream serves at its root).
        path, upstream = ours["path"], strip_userinfo(str(ours.get("upstream") or ""))
        try:
            query = clean_query(urlsplit(url).query)
        except ValueError:
            query = ""
    else:
        parts = split_url(url)
        if parts is None:
            raise ValueError(f"{rq.get('method')} {url}: not under /v1")
        upstream, path, query = parts
    method = str(rq.get("method", "GET")).upper()
    if method in ("OPTIONS", "HEAD", "CONNECT"):
        raise ValueError(f"{method} {path}: not an API call")
    status = rs.get("status")
    if not isinstance(status, int) or not 200 <= status < 300:
        raise ValueError(f"{method} {path}: status {status}")
    body = _har_text(rs.get("content"))
    size = rs.get("content", {}).get("size", 0) if isinstance(rs.get("content"), dict) else 0
    if body is None:
        if isinstance(size, int) and size > 0:
            raise ValueError(f"{method} {path}: the response body was not captured")
        body = b""
    req_body = _har_text(rq.get("postData"))
    if req_body is None:
        pd = rq.get("postData")
        if isinstance(pd, dict) and pd.get("params"):
            raise ValueError(f"{method} {path}: the request body was not captured (form params only)")
        req_body = b""
    # content.text is the decoded body: its Content-Encoding and length no longer describe it.
    headers = [(k, v) for k, v in _har_headers(rs.get("headers"))
               if k.lower() not in ("content-encoding", "content-length")]
    mime = rs.get("content", {}).get("mimeType", "") if isinstance(rs.get("content"), dict) else ""
    sse = is_sse(headers) or str(mime).lower().startswith("text/event-stream")
    events = event_ms = None
    if sse:
        events = parse_sse(body)
        ms = ours.get("events_ms")
        if isinstance(ms, list) and len(ms) == len(events) and all(isinstance(m, (int, float)) for m in ms):
            event_ms = [float(m) for m in ms]
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "text/event-stream"))
    t = entry.get("timings") if isinstance(entry.get("timings"), dict) else {}
    ttfb = sum(_ms(t.get(k)) for k in ("blocked", "dns", "connect", "send", "wait"))
    total = _ms(entry.get("time")) or ttfb + _ms(t.get("receive"))
    try:
        started = epoch(str(entry.get("startedDateTime")))
    except ValueError:
        started = 0.0
    recorded = started + total / 1000 if started else 0.0
    if isinstance(ours.get("recorded_at"), str):  # rechat's own, exact to the ms
        try:
            recorded = epoch(ours["recorded_at"])
        except ValueError:
            pass
    req = Request(method, path, query, _har_headers(rq.get("headers")), req_body)
    resp = Response(status, headers, body, events, event_ms, ttfb, total)
    return Exchange(req, resp, upstream, recorded_at=recorded)


def read_har(path: str, on_skip: OnSkip | None = None) -> Iterator[Exchange]:
    """Yield the usable exchanges of a HAR 1.2 file (browsers' devtools, mitmproxy, rechat).

    Entries that are not 2xx API calls with captured bodies go to `on_skip`. Raises OSError or
    `ExportError` when the file is not HAR.
    """
    report = on_skip or (lambda s: None)
    try:
        with open(path, encoding="utf-8-sig") as f:
            har = json.load(f)
    except ValueError as e:
        raise ExportError(f"{path}: not a HAR file (not valid JSON: {e})") from None
    entries = har.get("log", {}).get("entries") if isinstance(har, dict) and isinstance(har.get("log"), dict) else None
    if not isinstance(entries, list):
        raise ExportError(f"{path}: not a HAR file (no log.entries)")
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            report(Skip(path, f"entry {i}", "not an object"))
            continue
        try:
            yield har_exchange(entry)
        except ValueError as e:
            report(Skip(path, f"entry {i}", str(e)))


# ---------------------------------------------------------------------------------------------
# Reading: mitmproxy flow files (the original rechat's flows_*.dump)


def read_mitm(path: str, on_skip: OnSkip | None = None) -> Iterator[Exchange]:
    """Yield the usable exchanges of a mitmproxy flow file, through `mitmproxy.io.FlowReader`.

    Needs the optional extra ``rechat[mitm]``; without it raises `ExportError` saying how to
    install it. Flows that are not HTTP, have no response, are not 2xx under ``/v1``, or whose
    body mitmproxy did not keep (streamed flows) go to `on_skip`. mitmproxy migrates flow files
    of older versions itself.
    """
    try:
        from mitmproxy import http as mhttp
        from mitmproxy import io as mio
        from mitmproxy.exceptions import FlowReadException
    except ImportError:
        raise ExportError(f"{path} looks like a mitmproxy flow file; reading it needs mitmproxy: "
                          f"{MITM_HINT}") from None
    report = on_skip or (lambda s: None)
    with open(path, "rb") as f:
        reader = mio.FlowReader(f)
        i = 0
        try:
            for flow in reader.stream():
                i += 1
                where = f"flow {i}"
                if not isinstance(flow, mhttp.HTTPFlow):
                    report(Skip(path, where, f"not an HTTP flow ({type(flow).__name__})"))
                    continue
                try:
                    yield _mitm_exchange(flow)
                except ValueError as e:
                    report(Skip(path, where, str(e)))
        except FlowReadException as e:
            if i == 0:
                raise ExportError(f"{path}: not a dump, HAR or mitmproxy flow file ({e})") from None
            raise ExportError(f"{path}: mitmproxy cannot read past flow {i}: {e}") from None


def _mitm_exchange(flow: Any) -> Exchange:
    rq, rs = flow.request, flow.response
    parts = split_url(rq.url)
    if parts is None:
        raise ValueError(f"{rq.method} {rq.url}: not under /v1")
    upstream, path, query = parts
    if rs is None:
        raise ValueError(f"{rq.method} {path}: no response")
    if not 200 <= rs.status_code < 300:
        raise ValueError(f"{rq.method} {path}: status {rs.status_code}")
    body = rs.get_content(strict=False)
    if body is None:
        raise ValueError(f"{rq.method} {path}: the response body was not kept (streamed flow)")
    req_body = rq.get_content(strict=False) or b""
    # The body is decoded; its Content-Encoding and length no longer describe it.
    headers = [(k, v) for k, v in rs.headers.items(multi=True)
               if k.lower() not in ("content-encoding", "content-length")]
    headers = redact_headers(headers)
    events = parse_sse(body) if is_sse(headers) else None
    t0 = rq.timestamp_start or 0.0
    ttfb = max(0.0, ((rs.timestamp_start or t0) - t0) * 1000)
    total = max(ttfb, ((rs.timestamp_end or rs.timestamp_start or t0) - t0) * 1000)
    req = Request(rq.method.upper(), path, query, redact_headers(rq.headers.items(multi=True)),
                  req_body)
    return Exchange(req, Response(rs.status_code, headers, body, events, None, ttfb, total),
                    upstream, recorded_at=(rs.timestamp_end or t0))


# ---------------------------------------------------------------------------------------------
# Writing markdown


@dataclass
class Result:
    """What an export did: `files` written (sorted), `exchanges` exported, `skipped` items."""

    files: list[str] = field(default_factory=list)
    exchanges: int = 0
    skipped: list[Skip] = field(default_factory=list)


def _meta_at(meta: dict, ex: Exchange) -> dict:
    # answers stamps `at` with the time of the call; an export keeps the time of the exchange.
    if ex.recorded_at:
        meta["at"] = iso(ex.recorded_at)
    return meta


async def record_all(exchanges: Iterable[Exchange], folder: str,
                     on_skip: OnSkip | None = None) -> tuple[list[str], int]:
    """Record `exchanges`, in order, into sessions under `folder`; return (files, count).

    Goes through `Store.record` exactly as the proxy does (chat answers via
    `answers.chat_answer`, anything else in the generic form), after loading the sessions
    already in `folder`, so a conversation's turns land in one file and a turn continuing a
    session already there is appended to it. An exchange the store refuses goes to `on_skip`.
    Must run inside an event loop.
    """
    store = Store([folder])
    await asyncio.to_thread(store.load)
    files: set[str] = set()
    n = 0
    for i, ex in enumerate(exchanges, 1):
        try:
            chat = answers.chat_answer(ex) if ex.request.is_chat else None
            if chat is not None:
                files.add(store.record(ex, chat[0], _meta_at(chat[1], ex)))
            else:
                files.add(store.record(ex, None, _meta_at(answers.generic_meta(ex), ex)))
        except Exception as e:  # as in the proxy: one odd exchange must not stop the others
            if on_skip is not None:
                on_skip(Skip(folder, f"exchange {i}", f"{ex.request.method} {ex.request.path}: "
                             f"could not be recorded: {e}"))
            continue
        n += 1
        if n % 64 == 0:
            await asyncio.sleep(0)  # let the background writes run
    await store.flush()
    return sorted(files), n


def export_md(inputs: list[str], folder: str) -> Result:
    """Write markdown sessions into `folder` from dumps, HAR files and mitmproxy flow files.

    Inputs are read in the order given, each in file order. Raises OSError,
    `dump.DumpFormatError` or `ExportError` before writing anything when an input cannot be
    read. Returns a `Result`.
    """
    res = Result()
    exchanges: list[Exchange] = []
    for p in inputs:
        if not os.path.isfile(p):
            raise ExportError(f"{p}: no such file")
        exchanges += read_exchanges(p, res.skipped.append)
    os.makedirs(folder, exist_ok=True)
    res.files, res.exchanges = asyncio.run(record_all(exchanges, folder, res.skipped.append))
    return res


# ---------------------------------------------------------------------------------------------
# Writing HAR 1.2


def _har_content(body: bytes, mime: str) -> dict:
    c: dict[str, Any] = {"size": len(body), "mimeType": mime}
    try:
        c["text"] = body.decode("utf-8")
    except UnicodeDecodeError:
        c["text"] = base64.b64encode(body).decode("ascii")
        c["encoding"] = "base64"
    return c


def _har_pairs(headers: Iterable[tuple[str, str]]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in redact_headers(headers)]


def _header(headers: Iterable[tuple[str, str]], name: str, default: str) -> str:
    for k, v in headers:
        if k.lower() == name:
            return v
    return default


def har_entry(method: str, path: str, query: str, req_body: bytes, status: int,
              headers: list[tuple[str, str]], body: bytes, *, upstream: str | None = None,
              started: float = 0.0, ttfb_ms: float = 0.0, total_ms: float = 0.0,
              extra: dict | None = None) -> dict:
    """Return one HAR 1.2 entry for an exchange rechat holds (spec: "entries").

    The URL is the upstream's (rechat's own default address when unknown); request headers are
    only a Content-Type (sessions keep no request headers); response `headers` are redacted
    again. `started` is epoch s; times in ms. `extra` becomes the entry's ``_rechat`` object.
    """
    q = clean_query(query)
    req_mime = "application/json"
    if req_body:
        try:
            json.loads(req_body)
        except ValueError:
            req_mime = "application/octet-stream"
    rq: dict[str, Any] = {
        "method": method, "url": _url_for(upstream, path, q), "httpVersion": "HTTP/1.1",
        "cookies": [], "headers": [{"name": "Content-Type", "value": req_mime}] if req_body else [],
        "queryString": [{"name": k, "value": v} for k, v in parse_qsl(q, keep_blank_values=True)],
        "headersSize": -1, "bodySize": len(req_body)}
    if req_body:
        pd = _har_content(req_body, req_mime)
        del pd["size"]
        rq["postData"] = pd
    mime = _header(headers, "content-type", "application/octet-stream" if body else "")
    rs = {"status": status, "statusText": "", "httpVersion": "HTTP/1.1", "cookies": [],
          "headers": _har_pairs(headers), "content": _har_content(body, mime), "redirectURL": "",
          "headersSize": -1, "bodySize": len(body)}
    entry = {"startedDateTime": iso(started or 0.0), "time": round(total_ms, 3),
             "request": rq, "response": rs, "cache": {},
             "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0,
                         "wait": round(ttfb_ms, 3), "receive": round(max(0.0, total_ms - ttfb_ms), 3)}}
    if extra:
        entry["_rechat"] = extra
    return entry


def _extra(meta: dict, **fields: Any) -> dict:
    # rechat's own entry fields (HAR 1.2 allows custom fields starting with "_"): what the URL
    # and timings cannot say exactly, so a HAR rechat wrote reads back as it was recorded.
    if isinstance(meta.get("upstream"), str):
        fields["upstream"] = strip_userinfo(meta["upstream"])
    if isinstance(meta.get("at"), str):
        fields["recorded_at"] = meta["at"]
    return fields


def _started(meta: dict, total_ms: float, fallback: float) -> float:
    # `at` is when the exchange was recorded (its end); HAR wants when it started.
    at = meta.get("at")
    if isinstance(at, str):
        try:
            return epoch(at) - total_ms / 1000
        except ValueError:
            pass
    return fallback


def session_entries(session: sf.Session, fallback: float = 0.0) -> list[dict]:
    """Return the HAR entries of one parsed session: each request/answer pair, or each exchange.

    A chat answer becomes the request made of the front matter, the messages above it and the
    volatile fields it was recorded with (`stream`...), and the reply rechat would serve for it
    (`answers.chat_reply`: the recorded SSE events, or the completion, with the file's text).
    `fallback` (epoch s) dates answers without a recorded time, 1 ms apart, in file order.
    """
    out: list[dict] = []
    name = os.path.basename(session.file)
    if session.kind == "generic":
        for i, gx in enumerate(session.exchanges):
            meta = gx.meta if isinstance(gx.meta, dict) else {}
            ms = meta.get("ms") if isinstance(meta.get("ms"), dict) else {}
            total = float(ms.get("total") or 0.0)
            headers = [(str(h[0]), str(h[1])) for h in meta.get("headers", [])
                       if isinstance(h, list) and len(h) == 2]
            out.append(har_entry(
                session.method, session.path, session.query, gx.request_body, gx.status or 200,
                headers, gx.body, upstream=meta.get("upstream"),
                started=_started(meta, total, fallback + len(out) / 1000),
                ttfb_ms=float(ms.get("ttfb") or 0.0), total_ms=total,
                extra=_extra(meta, path=session.path, session=name, line=gx.line)))
        return out
    endpoint_path = session.path
    n = 0
    for i, m in enumerate(session.messages):
        if i == 0 or m.get("role") != "assistant":
            continue
        meta = session.responses.get(i, {})
        meta = meta if isinstance(meta, dict) else {}
        volatile = meta.get("request") if isinstance(meta.get("request"), dict) else {}
        body = {**session.params, "messages": session.messages[:i], **volatile}
        if meta.get("stream") is True and "stream" not in body:
            body["stream"] = True
        raw = json.dumps(body, ensure_ascii=False).encode()
        req = Request(session.method, endpoint_path, session.query,
                      [("Content-Type", "application/json")], raw)
        ans = Answer(session=session.file, index=n, line=session.lines[i], kind="chat",
                     message=m, meta=meta)
        n += 1
        reply = answers.chat_reply(ans, req)
        rbody = reply.body if reply.events is None else b"".join(reply.events)
        ms = meta.get("ms") if isinstance(meta.get("ms"), dict) else {}
        total = float(ms.get("total") or 0.0)
        extra = _extra(meta, path=endpoint_path, session=name, line=session.lines[i])
        if reply.events is not None and isinstance(meta.get("sse_ms"), list) and len(
                meta["sse_ms"]) == len(reply.events):
            extra["events_ms"] = meta["sse_ms"]
        out.append(har_entry(
            session.method, endpoint_path, session.query, raw, reply.status, reply.headers, rbody,
            upstream=meta.get("upstream"), started=_started(meta, total, fallback + len(out) / 1000),
            ttfb_ms=float(ms.get("ttfb") or 0.0), total_ms=total, extra=extra))
    return out


def _session_files(paths: list[str]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            files += Store([p]).session_files()
        elif os.path.isfile(p):
            files.append(os.path.abspath(p))
        else:
            raise ExportError(f"{p}: no such file or folder")
    return files


def to_har(paths: list[str], on_error=None) -> dict:
    """Return a HAR 1.2 document (``{"log": ...}``) of the sessions in `paths` (folders or files).

    Files in path order, answers in file order. A session file that does not parse is passed
    to `on_error` (a `SessionFormatError`) and left out; without `on_error` it is raised.
    """
    entries: list[dict] = []
    for f in _session_files(paths):
        try:
            s = sf.read(f)
        except SessionFormatError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        entries += session_entries(s, fallback=os.path.getmtime(f))
    return {"log": {"version": "1.2", "creator": {"name": "rechat", "version": __version__},
                    "entries": entries}}


def export_har(paths: list[str], output: str, on_error=None) -> int:
    """Write the HAR 1.2 file `output` for the sessions in `paths`; return its entry count.

    Written atomically (`sessionfile.write_atomic`). Errors as in `to_har`, and OSError.
    """
    har = to_har(paths, on_error)
    sf.write_atomic(output, json.dumps(har, ensure_ascii=False, indent=1) + "\n")
    return len(har["log"]["entries"])


# ---------------------------------------------------------------------------------------------
# The command


def main(md: list[str] | None, har: str | None, output: str | None) -> int:
    """Run ``rechat export``; return the exit code (0 done, 1 an input failed, 2 bad usage).

    ``--md DUMP...`` writes sessions into `output` (default ``sessions``); ``--har SESSIONS``
    writes the HAR file `output` (required). Progress goes to stdout, problems to stderr.
    """
    if bool(md) == bool(har):
        print("error: give either --md DUMP... or --har SESSIONS -o FILE", file=sys.stderr)
        return 2
    try:
        if md:
            folder = output or "sessions"
            res = export_md(md, folder)
            for s in res.skipped:
                print(f"skipped {s}", file=sys.stderr)
            print(f"exported {res.exchanges} exchange(s) into {len(res.files)} session(s) "
                  f"in {folder}" + (f"; skipped {len(res.skipped)}" if res.skipped else ""))
            return 0
        if not output:
            print("error: --har needs -o FILE", file=sys.stderr)
            return 2
        broken: list[SessionFormatError] = []
        n = export_har([har], output, broken.append)
        for e in broken:
            print(f"skipped {e}", file=sys.stderr)
        print(f"wrote {n} entr{'y' if n == 1 else 'ies'} to {output}"
              + (f"; skipped {len(broken)} broken session(s)" if broken else ""))
        return 0
    except (OSError, RechatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


__all__ = ["ExportError", "Result", "detect", "read_exchanges", "read_har", "read_mitm",
           "har_exchange", "split_url", "record_all", "export_md", "to_har", "export_har",
           "session_entries", "har_entry", "main", "MITM_HINT"]
