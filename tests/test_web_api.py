"""The request log and the UI's JSON API, against rechat as a real process.

One rechat (`serve`, in front of the fake upstream) is driven by the real openai client through
every kind of outcome: recorded, replayed (plain and streamed), forwarded (an upstream 500),
a generic endpoint; then a `replay` rechat on the same sessions and log adds a miss and an
error. The tests read it all back through `/_rechat/api/` only, and the log file itself to
check that no API key reached it.
"""

from __future__ import annotations

import http.client as httpclient
import json
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import SECRET, FakeUpstream, Rechat
from rechat import logdb
from rechat.exchange import Answer, Request, Response
from rechat.proxy import ProxyEvent

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
HOSTILE = """---
model: evil-model
---

### user

<blockquote>

Show me <script>window.__pwned = 1</script> and <img src=x onerror="window.__pwned = 2">
and [a link](javascript:alert(1)).

</blockquote>

### assistant

<blockquote>

Here: <script>alert("answer")</script>

```python
print("<b>bold</b>")
```

</blockquote>
"""


def fetch(url: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """Return (status, headers, body bytes) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def api(r: Rechat, path: str, **params) -> dict:
    qs = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    status, _, body = fetch(f"{r.base}/_rechat/api/{path}" + (f"?{qs}" if qs else ""))
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def until(check, timeout: float = 5.0, interval: float = 0.05):
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; last value {got!r}")
        time.sleep(interval)


def all_logs(r: Rechat, **params) -> list[dict]:
    out, cursor = [], None
    for _ in range(100):
        page = api(r, "logs", cursor=cursor, **params)
        out += page["items"]
        cursor = page["next"]
        if cursor is None:
            return out
    raise AssertionError("too many pages")


class EventReader:
    """Reads /_rechat/api/events in a thread; `events` is a list of (type, data)."""

    def __init__(self, base: str) -> None:
        self.events: list[tuple[str, dict]] = []
        host, port = base.removeprefix("http://").split(":")
        self._conn = httpclient.HTTPConnection(host, int(port), timeout=30)
        self._conn.request("GET", "/_rechat/api/events")
        self._resp = self._conn.getresponse()
        assert self._resp.headers["Content-Type"].startswith("text/event-stream")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        kind = None
        try:
            while True:
                raw = self._resp.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    self.events.append((kind, json.loads(line[6:])))
                    kind = None
        except Exception:
            pass

    def of(self, kind: str) -> list[dict]:
        return [d for k, d in self.events if k == kind]

    def close(self) -> None:
        try:
            self._conn.sock.shutdown(socket.SHUT_RDWR)  # unblocks the reading thread
        except (OSError, AttributeError):
            pass
        self._thread.join(5)
        self._conn.close()


# ---------------------------------------------------------------------------------------------
# One populated log for the read-only tests


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    sessions, db = tmp / "sessions", tmp / "log.sqlite"
    sessions.mkdir()
    (sessions / "hostile.md").write_text(HOSTILE)
    (sessions / "broken.md").write_text("### user\n<blockquote>\nnever closed\n")
    up = FakeUpstream().start()
    procs = []
    try:
        serve = Rechat("serve", up.url, "--sessions", str(sessions), "--log-db", str(db), cwd=tmp)
        procs.append(serve)
        c = serve.client()
        t0 = time.time()
        hello = [{"role": "user", "content": "Hello there"}]
        c.chat.completions.create(model="m1", messages=hello)                      # record
        c.chat.completions.create(model="m1", messages=hello)                      # replay
        stream_msgs = [{"role": "user", "content": "Stream me a story"}]
        for _ in range(2):                                                          # record, replay
            list(c.chat.completions.create(model="m2", messages=stream_msgs, stream=True,
                                           stream_options={"include_usage": True}))
        c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "Weather?"}],
                                  tools=TOOLS)                                      # record
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="fail", messages=hello)                 # forward 500
        c.embeddings.create(model="e1", input="embed me")                          # record, generic
        until(lambda: len(api(serve, "logs")["items"]) == 7)
        assert serve.stop() == 0
        summary = serve.output()
        replay = Rechat("replay", str(sessions), "--log-db", str(db), cwd=tmp)
        procs.append(replay)
        rc = replay.client()
        with pytest.raises(openai.NotFoundError):
            rc.chat.completions.create(model="m1", messages=[{"role": "user", "content": "Hello theer"}])
        status, _, _ = fetch(replay.url + "/chat/completions", method="POST", body=b"{not json",
                            headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
        assert status == 400                                                        # error
        rc.chat.completions.create(model="m1", messages=hello)                     # replay
        until(lambda: len(api(replay, "logs")["items"]) == 10)
        yield {"rechat": replay, "sessions": sessions, "db": db, "t0": t0, "tmp": tmp,
               "summary": summary}
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(5)
        up.stop()


def by_prompt(rows: list[dict], prompt: str, kind: str) -> dict:
    found = [r for r in rows if r["prompt"] == prompt and r["kind"] == kind]
    assert found, (prompt, kind, [(r["prompt"], r["kind"]) for r in rows])
    return found[-1]  # oldest first of the matching ones (rows are newest first)


def test_every_request_is_a_row_with_its_facts(world):
    r = world["rechat"]
    rows = all_logs(r)
    assert [x["kind"] for x in rows] == ["replay", "error", "miss", "record", "forward", "record",
                                         "replay", "record", "replay", "record"]
    assert [x["id"] for x in rows] == sorted((x["id"] for x in rows), reverse=True)
    rec = by_prompt(rows, "Hello there", "record")
    assert rec["model"] == "m1" and rec["served_model"] == "m1-2024"
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (7, 3, 10)
    assert rec["status"] == 200 and rec["match"] == "none" and rec["reply"] == "Echo: Hello there"
    assert rec["session_name"].endswith("hello-there.md") and rec["exchange"] == 0 and rec["line"] > 0
    assert rec["ms"] > 0 and rec["ttfb_ms"] > 0 and rec["req_bytes"] > 0 and rec["resp_bytes"] > 0
    assert rec["client"] == "127.0.0.1" and rec["at"] >= world["t0"] - 1
    rep = [x for x in rows if x["prompt"] == "Hello there" and x["kind"] == "replay"]
    assert len(rep) == 2
    for x in rep:
        assert x["match"] == "exact" and x["score"] == 1.0 and x["session"] == rec["session"]
        assert x["exchange"] == 0 and x["total_tokens"] == 10 and x["served_model"] == "m1-2024"
        assert x["saved_ms"] > 0 and x["play"] == 1 and x["plays"] == 1
    srec, srep = by_prompt(rows, "Stream me a story", "record"), by_prompt(rows, "Stream me a story", "replay")
    assert srec["stream"] == 1 and srec["total_tokens"] == 10 and srec["reply"] == "Echo: Stream me a story"
    assert srep["stream"] == 1 and srep["resp_bytes"] == srec["resp_bytes"]
    fwd = by_prompt(rows, "Hello there", "forward")
    assert fwd["status"] == 500 and fwd["model"] == "fail" and fwd["session"] is None
    tool = by_prompt(rows, "Weather?", "record")
    assert tool["reply"].startswith("→ get_weather(")
    emb = by_prompt(rows, "embed me", "record")
    assert emb["path"] == "/v1/embeddings" and emb["total_tokens"] == 2 and emb["served_model"] == "e1"
    miss = by_prompt(rows, "Hello theer", "miss")
    assert miss["status"] == 404 and miss["match"] == "nearest" and 0.8 < miss["score"] < 1
    assert miss["session"] == rec["session"] and miss["line"] == rec["line"]
    err = next(x for x in rows if x["kind"] == "error")
    assert err["status"] == 400 and "not valid JSON" in err["detail"]
    assert len({x["run"] for x in rows}) == 2  # two rechat processes wrote to one log
    # the console's exit summary of the first one adds up the same
    assert re.search(r"rechat: 7 requests · 2 replayed · 4 recorded · 1 forwarded · 0 missed · "
                     r"\d+\.\d s saved", world["summary"]), world["summary"][-500:]


def test_the_log_never_holds_an_api_key(world):
    # Everything written so far is in the database file or its write-ahead log.
    files = [p for p in world["db"].parent.glob("log.sqlite*")]
    assert any(p.name.endswith("-wal") for p in files)
    for p in files:
        data = p.read_bytes()
        assert SECRET.encode() not in data and SECRET[8:].encode() not in data, p
    with sqlite3.connect(world["db"]) as db:
        headers = " ".join(h or "" for (h,) in db.execute("SELECT req_headers FROM requests"))
    assert "User-Agent" in headers and "Authorization" not in headers and "authorization" not in headers


def test_logs_filters_and_pages(world):
    r = world["rechat"]
    every = all_logs(r)
    assert [x["kind"] for x in all_logs(r, kind="replay")] == [x["kind"] for x in every if x["kind"] == "replay"]
    assert {x["kind"] for x in all_logs(r, kind="miss,error")} == {"miss", "error"}
    assert {x["model"] for x in all_logs(r, model="m2")} == {"m2"}
    assert {x["model"] for x in all_logs(r, model="m1-2024")} == {"m1"}  # served model matches too
    assert {x["status"] for x in all_logs(r, status="4xx")} == {400, 404}
    assert {x["status"] for x in all_logs(r, status="error")} == {400, 404, 500}
    assert {x["status"] for x in all_logs(r, status="500")} == {500}
    assert {x["prompt"] for x in all_logs(r, q="STREAM story")} == {"Stream me a story"}
    assert all_logs(r, q="no such words anywhere") == []
    session = every[0]["session_name"]
    assert {x["session_name"] for x in all_logs(r, session=session)} == {session}
    assert all_logs(r, since=time.time() + 60) == []
    assert len(all_logs(r, since=world["t0"] - 1, until=time.time() + 1)) == len(every)
    assert len(all_logs(r, since="1h")) == len(every)
    paged = all_logs(r, limit=3)
    assert [x["id"] for x in paged] == [x["id"] for x in every]
    first = api(r, "logs", limit=3)
    assert len(first["items"]) == 3 and first["next"] == first["items"][-1]["id"]
    for bad in ({"kind": "nope"}, {"status": "teapot"}, {"since": "yesterday-ish"},
                {"limit": "x"}, {"cursor": "-"}):
        qs = urllib.parse.urlencode(bad)
        status, _, body = fetch(f"{r.base}/_rechat/api/logs?{qs}")
        assert status == 400 and json.loads(body)["error"]["message"], bad


def test_stats(world):
    st = api(world["rechat"], "stats")
    t = st["totals"]
    assert t["requests"] == 10 and t["hits"] == 3 and t["errors"] == 1
    assert t["misses"] == 6  # 4 recorded + 1 forwarded + 1 missed
    assert t["hit_rate"] == pytest.approx(3 / 9)
    assert t["tokens_saved"] == 30 and t["time_saved_ms"] > 0
    assert t["by_kind"] == {"replay": 3, "record": 4, "forward": 1, "miss": 1, "error": 1}
    m1 = next(m for m in st["by_model"] if m["model"] == "m1")
    assert m1["requests"] == 5 and m1["hits"] == 2 and m1["tokens_saved"] == 20
    assert {k["kind"] for k in st["by_kind"]} == set(logdb.KINDS)
    assert sum(sum(p[k] for k in logdb.KINDS) for p in st["timeline"]["points"]) == 10
    assert st["timeline"]["bucket_s"] > 0 and st["inflight"] == 0
    assert api(world["rechat"], "stats", since=time.time() + 60)["totals"]["requests"] == 0


def test_one_request_in_detail(world):
    r = world["rechat"]
    rows = all_logs(r)
    rec = by_prompt(rows, "Hello there", "record")
    d = api(r, f"logs/{rec['id']}")
    assert d["request"]["json"]["messages"][0]["content"] == "Hello there"
    assert d["response"]["json"]["choices"][0]["message"]["content"] == "Echo: Hello there"
    names = [k.lower() for k, _ in d["request"]["headers"]]
    assert "user-agent" in names and "authorization" not in names
    assert "content-type" in [k.lower() for k, _ in d["response"]["headers"]]
    assert "Echo: Hello there" in d["conversation_html"] and 'class="msg role-assistant' in d["conversation_html"]
    assert d["session"]["exists"] and d["session"]["exchange"] == 0
    srep = by_prompt(rows, "Stream me a story", "replay")
    d = api(r, f"logs/{srep['id']}")
    assert d["response_rebuilt"] and "data: [DONE]" in d["response"]["text"]
    assert ["x-rechat", f"replay; session={Path(srep['session']).name}"] in d["response"]["headers"]
    miss = by_prompt(rows, "Hello theer", "miss")
    d = api(r, f"logs/{miss['id']}")
    near = d["nearest"]
    assert near["name"] == rec["session_name"] and near["similarity"] > 0.8
    assert "-Hello there" in near["diff"] and "+Hello theer" in near["diff"]
    assert 'class="hl"' in near["diff_html"]
    status, _, _ = fetch(f"{r.base}/_rechat/api/logs/999999")
    assert status == 404


def test_sessions_search_filter_and_render(world):
    r = world["rechat"]
    listing = api(r, "sessions")
    names = {s["name"] for s in listing["items"]}
    assert {"hostile.md", "broken.md"} <= names and listing["total"] == 6
    assert {k: listing["models"].get(k) for k in ("m1", "m2", "evil-model")} == {"m1": 2, "m2": 1, "evil-model": 1}
    assert {s["name"] for s in api(r, "sessions", q="story")["items"]} == {
        next(n for n in names if "stream-me" in n)}
    assert {s["model"] for s in api(r, "sessions", model="m1")["items"]} == {"m1"}
    assert [s["name"] for s in api(r, "sessions", kind="broken")["items"]] == ["broken.md"]
    assert [s["endpoint"] for s in api(r, "sessions", kind="generic")["items"]] == ["POST /v1/embeddings"]
    assert all(s["stream"] for s in api(r, "sessions", kind="stream")["items"])
    assert [s["model"] for s in api(r, "sessions", kind="tools")["items"]] == ["m1"]
    assert api(r, "sessions", since=time.time() + 3600)["items"] == []
    assert len(api(r, "sessions", since=world["t0"] - 5)["items"]) == 6
    hello = next(s for s in listing["items"] if s["name"].endswith("hello-there.md"))
    assert hello["answers"] == 1 and hello["title"] == "Hello there" and hello["model"] == "m1"
    s = api(r, "sessions/" + urllib.parse.quote(hello["name"]))
    assert [m["role"] for m in s["messages"]] == ["user", "assistant"]
    assert s["params"] == {"model": "m1"} and "### assistant" in s["text"]
    assert "Echo: Hello there" in s["html"] and "front-matter" in s["html"]
    assert {x["kind"] for x in s["log"]} == {"record", "replay", "miss"}  # the miss came nearest
    broken = api(r, "sessions/broken.md")
    assert broken["error"]["line"] == 2 and "never closed" in broken["error"]["message"]
    for bad in ("nope.md", "..%2Flog.sqlite", "../log.sqlite"):
        status, _, _ = fetch(f"{r.base}/_rechat/api/sessions/{bad}")
        assert status == 404, bad


def test_untrusted_content_is_escaped(world):
    s = api(world["rechat"], "sessions/hostile.md")
    html = s["html"]
    assert "<script" not in html.lower() and "onerror=" not in html.replace("onerror=&quot;", "")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html
    assert "javascript:" not in html
    assert '<span class="n">print</span>' in html or 'class="nb">print' in html  # pygments ran


def test_page_assets_and_prefix(world):
    r = world["rechat"]
    status, headers, body = fetch(r.base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page = body.decode()
    for asset in ("app.js", "app.css", "pygments.css", "favicon.svg"):
        assert f"/_rechat/static/{asset}" in page
        st, h, data = fetch(f"{r.base}/_rechat/static/{asset}")
        assert st == 200 and data, asset
        text = data.decode()
        assert "https://" not in text.replace("https://example", "") or asset == "favicon.svg", asset
        st2, _, _ = fetch(f"{r.base}/_rechat/static/{asset}", headers={"If-None-Match": h["ETag"]})
        assert st2 == 304
    assert fetch(r.base + "/_rechat/static/../app.py")[0] == 404
    assert fetch(r.base + "/_rechat/api/nope")[0] == 404
    routes = api(r, "")["routes"]
    assert "GET /_rechat/api/logs" in routes and "GET /_rechat/api/events" in routes
    info = api(r, "info")
    assert info["mode"] == "replay" and info["log"]["enabled"] and info["log"]["path"] == str(world["db"])
    assert fetch(r.base + "/_rechat/api/info", headers={"Host": "evil.example:80"})[0] == 403


# ---------------------------------------------------------------------------------------------
# Live: in-flight requests and the event stream


def start_slow_request(r: Rechat) -> threading.Event:
    """Stream an answer of the fake upstream's "slow" model (about 1 s) in a thread; the event
    is set when the client has read it all."""
    done = threading.Event()

    def slow() -> None:
        list(r.client().chat.completions.create(
            model="slow", stream=True, messages=[{"role": "user", "content": "take your time"}]))
        done.set()

    threading.Thread(target=slow, daemon=True).start()
    return done


def test_inflight_and_live_events(upstream, start_rechat, tmp_path):
    r = start_rechat("serve", upstream.url, "--sessions", str(tmp_path / "s"))  # default log place
    reader = EventReader(r.base)
    try:
        until(lambda: reader.of("hello"))
        done = start_slow_request(r)
        item = until(lambda: api(r, "inflight")["items"])[0]
        assert item["model"] == "slow" and item["stream"] and item["path"] == "/v1/chat/completions"
        first = item["elapsed_ms"]
        time.sleep(0.2)
        later = api(r, "inflight")["items"]
        assert later and later[0]["elapsed_ms"] >= first + 150
        assert api(r, "stats")["inflight"] == 1
        assert done.wait(10)
        until(lambda: not api(r, "inflight")["items"])
        ex = until(lambda: reader.of("exchange"))[0]
        start = reader.of("start")[0]
        assert start["id"] == item["id"] and start["model"] == "slow"
        assert [e["id"] for e in reader.of("end")] == [item["id"]]
        assert ex["req"] == item["id"] and ex["kind"] == "record" and ex["model"] == "slow"
        assert ex["id"] == api(r, "logs")["items"][0]["id"] and ex["session_name"]
        assert api(r, "info")["log"]["path"] == str(tmp_path / "s" / ".rechat" / "log.sqlite")
        t0 = time.monotonic()
        assert r.stop() == 0
        assert time.monotonic() - t0 < 5  # an open event stream does not hold up shutdown
    finally:
        reader.close()
    assert (tmp_path / "s" / ".rechat" / ".gitignore").read_text().strip().endswith("*")
    with sqlite3.connect(tmp_path / "s" / ".rechat" / "log.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1


def test_quick_requests_reach_the_live_stream_only_as_rows(upstream, start_rechat, tmp_path):
    # A request answered within 50 ms of its start gets no start/end frames, only its row: a
    # start frame goes out only for a request that has run 50 ms (a stalled replay may).
    r = start_rechat("serve", upstream.url, "--sessions", str(tmp_path / "s"))
    c = r.client()
    ask = [{"role": "user", "content": "quick"}]
    c.chat.completions.create(model="m", messages=ask)  # recorded: the rest are replays
    reader = EventReader(r.base)
    try:
        until(lambda: reader.of("hello"))
        for _ in range(10):
            assert c.chat.completions.create(model="m", messages=ask).choices[0].message.content
        # (the recording's row may come too: rows are written behind)
        replays = lambda: [x for x in reader.of("exchange") if x["kind"] == "replay"]  # noqa: E731
        rows = until(lambda: len(replays()) >= 10 and replays())
        assert len({x["req"] for x in rows}) == 10
        # each row as the API gives it, key for key (the shape's part is encoded once)
        listed = {x["id"]: x for x in api(r, "logs")["items"]}
        assert rows == [listed[x["id"]] for x in rows]
        assert rows[0]["session_name"] and rows[0]["prompt"] == "quick" and rows[0]["model"] == "m"
        time.sleep(0.2)  # a tick would have announced a request still thought to be running
        starts = reader.of("start")
        assert all(x["elapsed_ms"] >= 45 for x in starts)
        assert sorted(x["id"] for x in reader.of("end")) == sorted(x["id"] for x in starts)
    finally:
        reader.close()


def test_a_request_in_flight_at_hello_gets_its_end(upstream, start_rechat, tmp_path):
    r = start_rechat("serve", upstream.url, "--sessions", str(tmp_path / "s"))
    done = start_slow_request(r)
    item = until(lambda: api(r, "inflight")["items"])[0]
    reader = EventReader(r.base)  # connects while the request runs: it is in the hello
    try:
        hello = until(lambda: reader.of("hello"))[0]
        assert [i["id"] for i in hello["inflight"]] == [item["id"]]
        assert done.wait(10)
        until(lambda: reader.of("exchange"))
        assert [e["id"] for e in until(lambda: reader.of("end"))] == [item["id"]]
        assert reader.of("start") == []  # it started before this client connected
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------
# Options: token, no UI, default location, retention, schema


def test_ui_token(upstream, start_rechat, tmp_path):
    r = start_rechat("serve", upstream.url, "--sessions", str(tmp_path / "s"), "--ui-token", "tok-123")
    assert fetch(r.base + "/_rechat/api/info")[0] == 401
    assert fetch(r.base + "/")[0] == 401
    assert fetch(r.base + "/_rechat/api/info", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert fetch(r.base + "/_rechat/api/info", headers={"Authorization": "Bearer tok-123"})[0] == 200
    assert fetch(r.base + "/_rechat/api/info?token=tok-123")[0] == 200
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(r.base + "/?token=tok-123", timeout=10) as resp:  # 302 to / with a cookie
        assert resp.status == 200 and resp.url == r.base + "/"
    with opener.open(r.base + "/_rechat/api/info", timeout=10) as resp:
        info = json.loads(resp.read())
    assert info["token"] is True and info["mode"] == "serve" and info["upstream"] == upstream.url
    # the proxy itself needs no UI token, and /v1 stays the proxy (forwarded upstream)
    got = r.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert got.choices[0].message.content == "Echo: hi"
    status, headers, _ = fetch(r.url + "/_rechat/api/info")
    assert status == 404 and headers["x-rechat"] == "forward"
    assert r.health()["status"] == "ok"


def test_no_ui_means_no_routes_and_no_log(upstream, start_rechat, tmp_path):
    r = start_rechat("serve", upstream.url, "--sessions", str(tmp_path / "s"), "--no-ui")
    r.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert fetch(r.base + "/")[0] == 404 and fetch(r.base + "/_rechat/api/logs")[0] == 404
    assert r.stop() == 0
    assert not (tmp_path / "s" / ".rechat").exists()


def test_retention_deletes_old_rows_and_their_bodies(upstream, start_rechat, tmp_path):
    db_path = tmp_path / "log.sqlite"
    args = ("serve", upstream.url, "--sessions", str(tmp_path / "s"), "--log-db", str(db_path))
    r = start_rechat(*args)
    c = r.client()
    for text in ("old one", "old two", "fresh"):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    until(lambda: len(api(r, "logs")["items"]) == 3)
    assert r.stop() == 0
    with sqlite3.connect(db_path) as db:
        # `requests` is a view: a row's time is in log_rows
        db.execute("UPDATE log_rows SET at = at - 10 * 86400 "
                   "WHERE id IN (SELECT id FROM requests WHERE prompt LIKE 'old%')")
        assert db.execute("SELECT COUNT(*) FROM bodies").fetchone()[0] == 6
    r = start_rechat(*args, "--log-max-age-days", "7")
    assert [x["prompt"] for x in api(r, "logs")["items"]] == ["fresh"]
    assert r.stop() == 0
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM bodies").fetchone()[0] == 2


def test_migrations_are_named_ordered_and_versioned(tmp_path):
    db = logdb.connect(str(tmp_path / "l.sqlite"))
    assert logdb.migrate(db) == [name for name, _ in logdb.MIGRATIONS]
    assert logdb.migrate(db) == []
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(logdb.MIGRATIONS)
    assert [n for (n,) in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == [
        name for name, _ in logdb.MIGRATIONS]
    db.execute("PRAGMA user_version = 999")
    with pytest.raises(logdb.LogError, match="newer rechat"):
        logdb.migrate(db)
    db.close()


def test_a_log_from_a_newer_rechat_turns_the_log_off_not_rechat(upstream, start_rechat, tmp_path):
    db_path = tmp_path / "log.sqlite"
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version = 999")
    db.close()
    r = start_rechat("serve", upstream.url, "--sessions", str(tmp_path / "s"), "--log-db", str(db_path))
    info = api(r, "info")
    assert not info["log"]["enabled"] and "newer rechat" in info["log"]["error"]
    assert fetch(r.base + "/_rechat/api/logs")[0] == 503
    got = r.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert got.choices[0].message.content == "Echo: hi"
    assert api(r, "sessions")["total"] == 1


# ---------------------------------------------------------------------------------------------
# Rows from events (pure)


def _row(ev: ProxyEvent) -> dict:
    row, blobs = logdb.row_from_event(ev, "run-1", None, {})
    out = dict(zip(logdb.COLUMNS, row))
    out["blobs"] = blobs
    return out


CHAT = json.dumps({"model": "m", "stream": True,
                   "messages": [{"role": "user", "content": "  many   spaces\nhere "}]}).encode()
HEADERS = [("Content-Type", "application/json"), ("Authorization", f"Bearer {SECRET}"),
           ("api-key", SECRET), ("User-Agent", "ua/1"), ("X-Stainless-Lang", "python")]
META = {"ms": {"ttfb": 10.0, "total": 250.0}, "completion": {
    "model": "m-2024", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}}


@pytest.mark.parametrize("ev, expect", [
    (ProxyEvent("replay", Request("POST", "/v1/chat/completions", "", HEADERS, CHAT),
                Response(200, [("Content-Type", "text/event-stream")], b""),
                answer=Answer("/s/a.md", 2, 30, "chat", message={"role": "assistant", "content": "ok"},
                              meta=META), ms=1.5, position=(1, 3), id=4, started_at=100.0),
     {"kind": "replay", "match": "exact", "score": 1.0, "play": 2, "plays": 3, "session": "/s/a.md",
      "exchange": 2, "line": 30, "served_model": "m-2024", "total_tokens": 7, "saved_ms": 250.0,
      "stream": 1, "prompt": "many spaces here", "reply": "ok", "resp_headers": None}),
    (ProxyEvent("replay", Request("POST", "/v1/chat/completions", "", [], CHAT), Response(200),
                answer=Answer("/s/a.md", 0, 5, "chat", message={"role": "assistant", "content": "x"}),
                similarity=0.9234567),
     {"match": "fuzzy", "score": 0.9235, "saved_ms": None, "total_tokens": None}),
    (ProxyEvent("miss", Request("POST", "/v1/chat/completions", "api-key=SECRETQ&x=1", HEADERS, CHAT),
                detail="The nearest recorded request is the one answered at /s/b c.md:12 (similarity 0.81).",
                similarity=0.81, nearest_file="/s/b c.md", nearest_line=12),
     {"kind": "miss", "status": 404, "match": "nearest", "score": 0.81, "session": "/s/b c.md",
      "line": 12, "query": "x=1"}),
    (ProxyEvent("forward", Request("GET", "/v1/models", "", HEADERS, b""),
                Response(500, [("Set-Cookie", "s=1"), ("x-request-id", "r1")], b'{"error": {}}',
                         ttfb_ms=3.25)),
     {"kind": "forward", "status": 500, "ttfb_ms": 3.25, "resp_headers": "x-request-id: r1",
      "resp_bytes": 13, "req_bytes": 0, "model": None}),
])
def test_rows_from_events(ev, expect):
    row = _row(ev)
    got = {k: row[k] for k in expect}
    assert got == expect
    assert "Authorization" not in row["req_headers"] and "api-key" not in row["req_headers"]
    assert SECRET not in repr(row) and "SECRETQ" not in repr(row)
    if ev.request.body:
        assert row["req_body"] == row["blobs"][0][0] and row["blobs"][0][1] == ev.request.body
    if ev.kind == "replay":
        assert row["resp_body"] is None  # the session holds it
