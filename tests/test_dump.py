"""Dumps: what the DumpWriter writes for real exchanges, and what the readers make of it.

rechat runs in-process (`create_app` on aiohttp's test server, 127.0.0.1) in front of the fake
upstream, with a `DumpWriter` attached to its proxy by the test (the CLI flags are wired
elsewhere). Clients send the API key as `Authorization`, `api-key`, `x-api-key` and
`?api-key=`; no dump may hold it. The format itself gets a round-trip property (hypothesis)
and hand-made torn, broken and future lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SECRET
from test_secrets import assert_no_secret, every_file

from rechat import dump
from rechat.app import PROXY, STORE, Config, create_app
from rechat.dump import DumpFormatError, DumpWriter, Skip, read_dump, read_entries
from rechat.exchange import CHAT_PATH, Exchange, Request, Response
from rechat.policy import Mode
from rechat.store import Store


@asynccontextmanager
async def rechat_app(config: Config, writer: DumpWriter | None = None):
    """Run rechat in-process; yield its /v1 URL. The writer, if any, is closed on the way out."""
    from aiohttp.test_utils import TestServer
    app = create_app(config)
    if writer is not None:
        writer.attach(app[PROXY])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/v1", app
    finally:
        await server.close()
        if writer is not None:
            await writer.aclose()


def config(mode: Mode, sessions: Path, upstream: str | None) -> Config:
    return Config(mode=mode, upstream=upstream, sessions=[str(sessions)], watch=False, ui=False)


def client(url: str, key: str = SECRET) -> openai.AsyncOpenAI:
    """The real openai client; use it as ``async with client(url) as c`` (closed in the test's loop)."""
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)


def U(text: str) -> dict:
    return {"role": "user", "content": text}


async def traffic(url: str) -> dict:
    """Send a mix of requests, each twice where a replay is possible; return what came back."""
    got: dict = {}
    async with client(url) as c:
        for _ in range(2):  # recorded, then replayed
            r = await c.chat.completions.create(model="m", messages=[U("plain")])
            got.setdefault("plain", []).append(r.choices[0].message.content)
    headers = {"api-key": SECRET, "Content-Type": "application/json"}
    body = {"model": "m", "stream": True, "messages": [U("streamed")]}
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(url + f"/chat/completions?api-key={SECRET}&x=1", json=body,
                              headers=headers) as r:
                got.setdefault("streamed", []).append(await r.read())
        async with s.post(url + "/embeddings", json={"model": "e", "input": "v"},
                          headers={"x-api-key": SECRET}) as r:
            got["embeddings"] = await r.json()
        async with s.post(url + "/audio/speech", json={"model": "tts", "input": "x", "voice": "a"},
                          headers={"Authorization": f"Bearer {SECRET}"}) as r:
            got["speech"] = await r.read()
        async with s.post(url + "/chat/completions", headers=headers,
                          json={"model": "fail", "messages": [U("boom")]}) as r:
            got["fail"] = r.status
    return got


async def test_dump_holds_every_exchange_losslessly_and_no_key(upstream, tmp_path):
    path = tmp_path / "dumps" / "flows_test.jsonl"
    writer = DumpWriter(str(path), upstream=upstream.url)
    async with rechat_app(config(Mode.SERVE, tmp_path / "sessions", upstream.url), writer) as (url, _):
        got = await traffic(url)
    assert got["plain"] == ["Echo: plain"] * 2 and got["fail"] == 500
    assert got["speech"] == bytes(range(256)) * 40

    entries = list(read_entries(str(path)))
    assert [(e.kind, e.request.path) for e in entries] == [
        ("record", CHAT_PATH), ("replay", CHAT_PATH), ("record", CHAT_PATH), ("replay", CHAT_PATH),
        ("record", "/v1/embeddings"), ("record", "/v1/audio/speech"), ("forward", CHAT_PATH)]
    assert writer.written == 7
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert all(e.upstream == upstream.url for e in entries if e.kind != "replay")
    assert all(e.at > time.time() - 60 and e.ms > 0 for e in entries)

    plain, plain_replay, stream, stream_replay, emb, speech, fail = entries
    # the request as sent, less its secrets
    assert json.loads(plain.request.body) == {"model": "m", "messages": [U("plain")]}
    assert stream.request.query == "x=1"
    names = {k.lower() for e in entries for k, _ in e.request.headers}
    assert "content-type" in names and not names & {"authorization", "api-key", "x-api-key"}
    # the response as the client got it: SSE bytes exactly, events with arrival times
    assert stream.response.body == got["streamed"][0]
    assert stream.response.events == dump.parse_sse(got["streamed"][0])
    assert stream.response.events[-1] == "[DONE]" and len(stream.response.events) == 5
    ms = stream.response.event_ms
    assert ms is not None and ms == sorted(ms) and 0 < stream.response.ttfb_ms <= ms[0]
    assert stream.response.total_ms >= ms[-1]
    # a replay holds what was replayed, marked as such, with the session it came from
    assert stream_replay.response.body == got["streamed"][1]
    assert stream_replay.response.events == stream.response.events
    assert stream_replay.response.event_ms is None
    assert plain_replay.session == plain.session and plain.session.endswith(".md")
    assert json.loads(plain_replay.response.body)["choices"][0]["message"]["content"] == "Echo: plain"
    # binary bodies survive; JSON ones too
    assert speech.response.body == bytes(range(256)) * 40
    assert b'"body_b64"' in path.read_bytes()
    assert json.loads(emb.response.body) == got["embeddings"]
    assert fail.response.status == 500

    # answers only: the upstream's complete 2xx exchanges
    answers = list(read_dump(str(path)))
    assert [ex.request.path for ex in answers] == [CHAT_PATH, CHAT_PATH, "/v1/embeddings",
                                                    "/v1/audio/speech"]
    assert all(isinstance(ex, Exchange) and ex.upstream == upstream.url for ex in answers)
    # every line is one whole JSON object
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(ln)["v"] == 1 for ln in lines[:-1])
    assert_no_secret(every_file(tmp_path))


async def test_replays_and_misses_are_dumped_in_replay_mode(upstream, tmp_path):
    sessions = tmp_path / "sessions"
    async with rechat_app(config(Mode.RECORD, sessions, upstream.url)) as (url, _):
        async with client(url) as c:
            await c.chat.completions.create(model="m", messages=[U("hi")])
    path = tmp_path / "flows.jsonl"
    async with rechat_app(config(Mode.REPLAY, sessions, None), DumpWriter(str(path))) as (url, _):
        async with client(url) as c:
            chunks = [ch async for ch in await c.chat.completions.create(
                model="m", stream=True, messages=[U("hi")])]
            with pytest.raises(openai.NotFoundError):
                await c.chat.completions.create(model="m", messages=[U("nobody recorded this")])
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Echo: hi"
    replay, miss = read_entries(str(path))
    assert replay.kind == "replay" and replay.response.events[-1] == "[DONE]"
    assert miss.kind == "miss" and miss.response is None
    assert list(read_dump(str(path))) == []  # neither is an answer
    assert_no_secret(every_file(tmp_path))


@pytest.mark.skipif(not hasattr(Store, "remember"), reason="Store.remember is not there yet")
async def test_a_dump_loaded_with_remember_answers_in_replay_mode(upstream, tmp_path):
    path = tmp_path / "flows_1.jsonl"
    async with rechat_app(config(Mode.RECORD, tmp_path / "rec", upstream.url),
                          DumpWriter(str(path), upstream=upstream.url)) as (url, _):
        async with client(url) as c:
            await c.chat.completions.create(model="m", messages=[U("from the dump")])
            async for _ in await c.chat.completions.create(model="m", stream=True,
                                                           messages=[U("streamed dump")]):
                pass
    n = len(upstream.received)
    empty = tmp_path / "empty"
    empty.mkdir()
    async with rechat_app(config(Mode.REPLAY, empty, None)) as (url, app):
        assert dump.load_answers(app[STORE].remember, dump.find_dumps(str(tmp_path))) == 2
        async with client(url, "other") as c:
            r = await c.chat.completions.create(model="m", messages=[U("from the dump")])
            chunks = [ch async for ch in await c.chat.completions.create(
                model="m", stream=True, messages=[U("streamed dump")])]
    assert r.choices[0].message.content == "Echo: from the dump"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Echo: streamed dump"
    assert len(upstream.received) == n
    assert not list(empty.iterdir())  # remembered, never written


# ---------------------------------------------------------------------------------------------
# The writer


class HeldWriter(DumpWriter):
    """A writer whose thread waits for `release` before encoding anything."""

    def __init__(self, path: str) -> None:
        self.release = threading.Event()
        super().__init__(path)

    def _encode(self, item):
        self.release.wait(10)
        return super()._encode(item)


def test_queueing_never_waits_for_the_disk(tmp_path):
    w = HeldWriter(str(tmp_path / "d" / "flows.jsonl"))
    ex = Exchange(Request("POST", "/v1/x", body=b"x" * 100_000), Response(200, body=b"y" * 100_000))
    t0 = time.perf_counter()
    for _ in range(200):
        w.write_exchange("record", ex)
    assert time.perf_counter() - t0 < 0.5  # 40 MB of bodies queued, nothing encoded yet
    assert not (tmp_path / "d").exists()  # the file is created with its first line
    w.release.set()
    w.close()
    assert w.written == 200 and len(list(read_dump(w.path))) == 200
    w.close()  # idempotent


def test_no_request_no_file(tmp_path):
    w = DumpWriter(str(tmp_path / "flows.jsonl"))
    w.close()
    assert list(tmp_path.iterdir()) == []


def test_default_path_names_by_time_and_never_collides(tmp_path):
    t = time.mktime((2025, 5, 1, 12, 0, 3, 0, 0, -1))
    p1 = dump.default_path(str(tmp_path), t)
    assert os.path.basename(p1) == "flows_2025-05-01_12-00-03.jsonl"
    Path(p1).touch()
    p2 = dump.default_path(str(tmp_path), t)
    assert os.path.basename(p2) == "flows_2025-05-01_12-00-03_2.jsonl"
    Path(p2).touch()
    (tmp_path / "other.jsonl").touch()
    assert dump.find_dumps(str(tmp_path)) == [p1, p2]


_CHILD = r"""
import sys, time
from rechat.dump import DumpWriter
from rechat.exchange import Exchange, Request, Response
w = DumpWriter(sys.argv[1])
ex = Exchange(Request("POST", "/v1/embeddings", body=b'{"input": "%s"}' % (b"z" * 200_000)),
              Response(200, [("Content-Type", "application/json")], b'{"data": []}'))
print("go", flush=True)
while True:
    w.write_exchange("record", ex, at=time.time())
    time.sleep(0.001)
"""


@pytest.mark.slow
def test_kill_9_leaves_a_dump_that_loads(tmp_path):
    path = tmp_path / "flows.jsonl"
    for delay in (0.25, 0.6):
        path.unlink(missing_ok=True)
        p = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"go\n"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        skipped: list[Skip] = []
        got = list(read_dump(str(path), skipped.append))
        assert len(got) > 5 and len(skipped) <= 1
        assert all(len(ex.request.body) > 200_000 for ex in got)


# ---------------------------------------------------------------------------------------------
# Reading: torn, broken and future lines


def _line(kind="record", status=200, body="{}") -> str:
    ex = Exchange(Request("POST", "/v1/embeddings", body=b'{"input": 1}'),
                  Response(status, [("Content-Type", "application/json")], body.encode()))
    return dump.encode_line(kind, ex.request, ex.response, at=1.0)


def test_a_torn_last_line_is_skipped_and_reported(tmp_path):
    p = tmp_path / "flows.jsonl"
    whole = _line() + _line()
    torn = _line()[:-20]
    p.write_text(whole + torn)
    skipped: list[Skip] = []
    assert len(list(read_dump(str(p), skipped.append))) == 2
    assert len(skipped) == 1 and skipped[0].where == "line 3" and "torn" in skipped[0].reason
    # a last line that only lacks its newline is whole
    p.write_text(whole + _line()[:-1])
    assert len(list(read_dump(str(p), skipped.append))) == 3 and len(skipped) == 1


@pytest.mark.parametrize("bad, message", [
    ("{not json\n", "not valid JSON"),
    ('{"kind": "record"}\n', "no schema version"),
    ('{"v": 2, "kind": "record"}\n', "schema version 2 is newer than this rechat reads (1)"),
    ('{"v": 1, "kind": "replayed", "request": {}}\n', "unknown kind 'replayed'"),
    ('{"v": 1, "kind": "record", "request": {"method": "GET"}}\n', "request must be"),
    ('[1]\n', "a dump line must be a JSON object"),
])
def test_a_broken_line_inside_a_dump_is_an_error_with_its_line(tmp_path, bad, message):
    p = tmp_path / "flows.jsonl"
    p.write_text(_line() + bad + _line())
    with pytest.raises(DumpFormatError) as e:
        list(read_dump(str(p)))
    assert (e.value.path, e.value.line) == (str(p), 2) and message in e.value.message
    assert str(e.value).startswith(f"{p}:2: ")


def test_answers_only_keeps_what_live_recording_keeps(tmp_path):
    p = tmp_path / "flows.jsonl"
    broken = json.loads(_line())
    broken["response"]["complete"] = False
    p.write_text(_line() + _line("forward", 500) + _line("replay") + _line("error", 502)
                 + json.dumps(broken) + "\n" + _line("forward", 201))
    assert [e.kind for e in read_entries(str(p))] == ["record", "forward", "replay", "error",
                                                      "record", "forward"]
    assert [ex.response.status for ex in read_dump(str(p))] == [200, 201]
    assert len(list(read_dump(str(p), answers_only=False))) == 6


def test_secrets_are_dropped_on_writing_and_on_reading(tmp_path):
    req = Request("POST", CHAT_PATH, f"api-key={SECRET}&a=1&token={SECRET}", [
        ("Authorization", f"Bearer {SECRET}"), ("api-key", SECRET), ("X-Api-Key", SECRET),
        ("Cookie", f"s={SECRET}"), ("x-goog-api-key", SECRET), ("Content-Type", "application/json")],
        b'{"model": "m", "messages": []}')
    resp = Response(200, [("Set-Cookie", f"s={SECRET}"), ("Content-Type", "application/json")], b"{}")
    text = dump.encode_line("record", req, resp, upstream=f"https://user:{SECRET}@h.example/v1?key={SECRET}")
    assert SECRET not in text and SECRET[8:] not in text
    (e,) = [dump.decode_line(json.loads(text))]
    assert e.request.headers == [("Content-Type", "application/json")] and e.request.query == "a=1"
    assert e.upstream == "https://h.example/v1"
    # a line written by another tool, secrets and all, loses them on reading
    obj = json.loads(text)
    obj["request"]["headers"].append(["Authorization", SECRET])
    obj["request"]["query"] = f"api-key={SECRET}"
    e = dump.decode_line(obj)
    assert SECRET not in repr(e)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "DELETE"]), path=_text.map(lambda t: "/v1/" + t),
       body=st.binary(max_size=64) | _text.map(str.encode), status=st.integers(100, 599),
       headers=st.lists(st.tuples(st.sampled_from(["Content-Type", "X-Req", "openai-model"]), _text),
                        max_size=3),
       events=st.none() | st.lists(st.tuples(st.floats(0, 1e6), _text), max_size=5),
       ttfb=st.floats(0, 1e6), at=st.floats(0, 4e9))
def test_encode_then_decode_is_lossless(method, path, body, status, headers, events, ttfb, at):
    req = Request(method, path, "q=1", headers, body)
    resp = Response(status, headers, body[::-1],
                    None if events is None else [d for _, d in events],
                    None if events is None else [m for m, _ in events], ttfb, ttfb * 2)
    text = dump.encode_line("record", req, resp, at=at, ms=3.5, id=9, upstream="http://u/v1")
    assert text.endswith("\n") and "\n" not in text[:-1]
    e = dump.decode_line(json.loads(text))
    assert (e.request.method, e.request.path, e.request.query, e.request.headers, e.request.body) == (
        method, path, "q=1", headers, body)
    r = e.response
    assert (r.status, r.headers, r.body, r.events, r.event_ms, r.ttfb_ms, r.total_ms) == (
        status, headers, body[::-1], resp.events, resp.event_ms, ttfb, ttfb * 2)
    assert e.at == pytest.approx(at or e.at, abs=5e-4) and (e.id, e.ms) == (9, 3.5)


_SSE_HEADERS = [("Content-Type", "text/event-stream")]


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["replay", "record", "miss", "error"]), body=st.binary(max_size=64) | _text.map(str.encode),
       headers=st.lists(st.tuples(st.sampled_from(["Content-Type", "Authorization", "X-Req"]), _text),
                        max_size=3),
       query=st.sampled_from(["", "a=1", f"api-key={SECRET}&b=2"]),
       answer=st.none() | st.tuples(st.integers(100, 599), st.booleans(), _text),
       timing=st.none() | st.floats(0, 1e6), at=st.floats(1, 4e9), ms=st.floats(0, 1e6),
       session=st.none() | _text, detail=_text, upstream=st.none() | st.just(f"https://u:{SECRET}@h/v1"))
def test_the_line_encoder_writes_what_encode_line_writes(kind, body, headers, query, answer, timing,
                                                          at, ms, session, detail, upstream):
    # The writer's encoder caches what repeats; twice over the same objects (a cache hit for a
    # replay's response, whose objects the proxy reuses) and once over equal copies.
    resp = None
    if answer is not None:
        status, sse, text = answer
        data = (f"data: {json.dumps(text)}\n\ndata: [DONE]\n\n" if sse else text).encode()
        resp = Response(status, _SSE_HEADERS if sse else headers, data,
                        ttfb_ms=timing, total_ms=None if timing is None else timing * 2)
    req = Request("POST", "/v1/chat/completions", query, headers, body)
    kw = dict(id=7, at=at, ms=ms, client="127.0.0.1", upstream=upstream, session=session,
              detail=detail, complete=kind != "error")
    want = dump.encode_line(kind, req, resp, **kw)
    enc = dump.LineEncoder()
    assert enc.line(kind, req, resp, **kw) == want
    assert enc.line(kind, req, resp, **kw) == want
    copy = None if resp is None else Response(resp.status, list(resp.headers), bytes(resp.body),
                                              ttfb_ms=resp.ttfb_ms, total_ms=resp.total_ms)
    assert enc.line(kind, Request("POST", "/v1/chat/completions", query, list(headers), bytes(body)),
                    copy, **kw) == want
    assert SECRET not in want


def test_the_line_encoder_never_serves_a_stale_response():
    enc = dump.LineEncoder()
    req = Request("POST", "/v1/x", "", [], b"{}")
    first = enc.line("replay", req, Response(200, [], b'{"a": 1}'), at=1.0)
    # A new body object (an edited answer) may reuse a freed object's id: never the old text.
    for i in range(50):
        body = f'{{"a": {i + 2}}}'.encode()
        assert enc.line("replay", req, Response(200, [], body), at=1.0) == dump.encode_line(
            "replay", req, Response(200, [], body), at=1.0)
    assert '{\\"a\\": 1}' in first


def test_the_example_line_in_the_docs_is_a_valid_dump_line():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "recordings.md").read_text()
    block = doc.split("<!-- dump example -->\n```json\n", 1)[1].split("```", 1)[0]
    e = dump.decode_line(json.loads(block))
    assert e.kind == "record" and e.is_answer and e.request.json["stream"] is True
    assert e.response.events == dump.parse_sse(e.response.body)
    assert e.response.event_ms == [231.4, 240.9, 241.2]
    # and it is what the writer writes for that exchange
    line = dump.encode_line(e.kind, e.request, e.response, id=e.id, at=e.at, ms=e.ms,
                            client=e.client, upstream=e.upstream, session=e.session)
    assert json.loads(line) == json.loads(block)


_DUMP = (_line(body='{"text": "caf\u00e9 \u2028 \u65e5\u672c"}') + _line("forward", 201, "x" * 300)
         + _line(body="\u00e9" * 100)).encode()


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(_DUMP)))
def test_a_dump_cut_anywhere_loads_its_whole_lines(tmp_path_factory, cut):
    p = tmp_path_factory.mktemp("cut") / "flows.jsonl"
    p.write_bytes(_DUMP[:cut])
    skipped: list[Skip] = []
    got = list(read_entries(str(p), skipped.append))
    whole = _DUMP[:cut].count(b"\n")
    # every whole line loads; a cut line is reported, or loads when only its newline is missing
    assert len(got) in (whole, whole + 1) and len(got) + len(skipped) == whole + (
        not _DUMP[:cut].endswith(b"\n") and cut > 0)
