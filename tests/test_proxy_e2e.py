"""End to end: the real openai client -> rechat (a real process) -> a fake upstream on 127.0.0.1.

Each test records through `rechat record` or `rechat serve`, then stops the upstream and checks
that `rechat replay` gives the same answers offline.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import SECRET, FakeUpstream, free_port, session_texts
from rechat import sessionfile

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def _text(stream) -> tuple[str, list]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_record_then_replay_offline(upstream, start_rechat, tmp_path):
    sessions = tmp_path / "sessions"
    rec = start_rechat("record", upstream.url, "--sessions", str(sessions))
    c = rec.client()
    r1 = c.chat.completions.create(model="m1", messages=[
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is the capital of France?"}],
        temperature=0.2)
    turn2 = [{"role": "system", "content": "Be terse."},
             {"role": "user", "content": "What is the capital of France?"},
             {"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "And of Italy?"}]
    s2, _ = _text(c.chat.completions.create(model="m1", messages=turn2, temperature=0.2, stream=True))
    assert r1.choices[0].message.content == "Echo: What is the capital of France?"
    assert s2 == "Echo: And of Italy?"
    assert rec.stop() == 0
    files = session_texts(sessions)
    assert len(files) == 1, files  # turn 2 was appended to the file of turn 1
    (name, text), = files.items()
    assert "what-is-the-capital-of-france" in name
    s = sessionfile.read(str(sessions / name))
    assert s.params == {"model": "m1", "temperature": 0.2}
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user", "assistant"]

    upstream.stop()
    rep = start_rechat("replay", str(sessions))
    c = rep.client()
    again = c.chat.completions.create(model="m1", messages=turn2[:2], temperature=0.2)
    assert again.choices[0].message.content == r1.choices[0].message.content
    assert again.id == r1.id and again.usage.total_tokens == r1.usage.total_tokens
    s2b, chunks = _text(c.chat.completions.create(model="m1", messages=turn2, temperature=0.2, stream=True))
    assert s2b == s2
    assert chunks[-1].choices[0].finish_reason == "stop"
    # A different temperature is a different request: a miss in replay mode.
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="m1", messages=turn2[:2], temperature=0.9)
    err = e.value.body
    assert err["code"] == "rechat_miss" and err["type"] == "invalid_request_error"
    assert name in err["message"] and "similarity" in err["message"]
    assert set(e.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_stream_and_non_stream_cross_over(upstream, start_rechat, tmp_path):
    rec = start_rechat("record", upstream.url, "--sessions", "s")
    c = rec.client()
    plain = c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "plain one"}])
    streamed_text, streamed = _text(c.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "streamed one"}], stream=True,
        stream_options={"include_usage": True}))
    rec.stop()
    upstream.stop()
    c = start_rechat("replay", "s").client()

    # Non-streamed recording asked for as a stream: role chunk, content, finish, usage, [DONE].
    text, chunks = _text(c.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "plain one"}], stream=True,
        stream_options={"include_usage": True}))
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert all(ch.id == plain.id for ch in chunks)

    # Streamed recording asked for without streaming: a valid chat.completion.
    full = c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "streamed one"}])
    assert full.object == "chat.completion"
    assert full.choices[0].message.content == streamed_text
    assert full.choices[0].finish_reason == "stop"
    assert full.usage.total_tokens == streamed[-1].usage.total_tokens
    assert full.id == streamed[0].id


def test_tool_calls_and_reasoning_survive_both_directions(upstream, start_rechat):
    rec = start_rechat("record", upstream.url, "--sessions", "s")
    c = rec.client()
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    r = c.chat.completions.create(model="m1-reasoner", messages=ask, tools=TOOLS)
    tc = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    follow = ask + [r.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": tc.id, "content": "22 C, sunny"}]
    final = c.chat.completions.create(model="m1-reasoner", messages=follow, tools=TOOLS, stream=True)
    final_text, _ = _text(final)
    rec.stop()
    upstream.stop()

    files = session_texts(rec.cwd / "s")
    assert len(files) == 1
    text = next(iter(files.values()))
    assert "#### tool_call get_weather" in text and "### tool tool_call_id=" in text
    assert "#### reasoning_content" in text

    c = start_rechat("replay", "s").client()
    # Recorded non-streamed, replayed streamed: the tool call arrives as deltas.
    chunks = list(c.chat.completions.create(model="m1-reasoner", messages=ask, tools=TOOLS, stream=True))
    args = "".join(ch.choices[0].delta.tool_calls[0].function.arguments or ""
                   for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls)
    names = [ch.choices[0].delta.tool_calls[0].function.name
             for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls]
    assert args == tc.function.arguments and names[0] == "get_weather"
    reasoning = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or ""
                        for ch in chunks if ch.choices)
    assert reasoning == "Let me think.\nYes."
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    # Recorded streamed, replayed whole: content and reasoning assembled.
    whole = c.chat.completions.create(model="m1-reasoner", messages=follow, tools=TOOLS)
    assert whole.choices[0].message.content == final_text == "Tool said: 22 C, sunny"
    assert whole.choices[0].message.model_extra["reasoning_content"] == "Let me think.\nYes."


def test_serve_answers_hits_without_the_upstream(upstream, start_rechat):
    rx = start_rechat(upstream.url, "--sessions", "s")  # `rechat URL` is `rechat serve URL`
    assert rx.health()["mode"] == "serve"
    c = rx.client()
    msgs = [{"role": "user", "content": "cache me"}]
    a = c.chat.completions.create(model="m1", messages=msgs)
    assert upstream.chat_count() == 1
    resp = c.chat.completions.with_raw_response.create(model="m1", messages=msgs, user="someone-else")
    assert resp.headers["x-rechat"].startswith("replay")
    assert resp.parse().choices[0].message.content == a.choices[0].message.content
    assert upstream.chat_count() == 1  # `user` is volatile: still a hit, upstream untouched


def test_hand_written_france_session_exactly_as_in_the_readme(start_rechat, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "france.md").write_text(
        "### user\n<blockquote>\nWhat is the capital of France?\n</blockquote>\n\n"
        "### assistant\n<blockquote>\nParis.\n</blockquote>\n")
    c = start_rechat("replay", "s").client()
    for kw in ({}, {"temperature": 0.7, "max_tokens": 5}):  # missing params match any value
        r = c.chat.completions.create(model="any-model", messages=[
            {"role": "user", "content": "What is the capital of France?"}], **kw)
        assert r.choices[0].message.content == "Paris."
        assert r.choices[0].finish_reason == "stop" and r.model == "any-model"
    text, _ = _text(c.chat.completions.create(model="x", stream=True, messages=[
        {"role": "user", "content": "What is the capital of France?"}]))
    assert text == "Paris."


def test_upstream_errors(start_rechat, tmp_path):
    up = FakeUpstream().start()
    try:
        rx = start_rechat("record", up.url, "--sessions", "s", "--timeout", "1")
        c = rx.client()
        # The upstream's own error goes back as sent, and is not recorded.
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="fail", messages=[{"role": "user", "content": "x"}])
        assert e.value.body["message"] == "upstream exploded"
        # A timeout is rechat's own 504 in OpenAI's shape.
        status, _, body = _http("POST", rx.url + "/chat/completions", json.dumps(
            {"model": "hang", "messages": [{"role": "user", "content": "x"}]}).encode(),
            {"Content-Type": "application/json"})
        assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"
    finally:
        up.stop()
    # A refused connection is rechat's own 502.
    status, _, body = _http("POST", rx.url + "/chat/completions", json.dumps(
        {"model": "m1", "messages": [{"role": "user", "content": "x"}]}).encode(),
        {"Content-Type": "application/json"})
    err = json.loads(body)["error"]
    assert status == 502 and err["code"] == "upstream_unreachable" and set(err) == {
        "message", "type", "param", "code"}
    rx.stop()
    assert session_texts(tmp_path / "s") == {}  # no failed exchange stored as an answer


def test_unchanged_headers_and_binary_bodies(upstream, start_rechat):
    rx = start_rechat("record", upstream.url, "--sessions", "s")
    status, headers, body = _http("POST", rx.url + "/audio/speech", b'{"model":"tts-1","input":"hi"}',
                                  {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json",
                                   "X-Custom": "kept", "Connection": "keep-alive"})
    assert status == 200 and body == bytes(range(256)) * 40
    assert headers["Content-Type"] == "audio/mpeg"
    method, path, got, sent = upstream.received[-1]
    assert (method, path) == ("POST", "/v1/audio/speech")
    assert got["Authorization"] == f"Bearer {SECRET}" and got["X-Custom"] == "kept"
    assert sent == b'{"model":"tts-1","input":"hi"}'
    status, headers, body = _http("GET", rx.url + "/models", headers={"Authorization": "Bearer k"})
    assert headers["x-request-id"] == "req_123" and json.loads(body)["data"][0]["id"] == "m1"
    rx.stop()
    upstream.stop()
    rp = start_rechat("replay", "s")
    status, headers, body = _http("POST", rp.url + "/audio/speech", b'{"model":"tts-1","input":"hi"}',
                                  {"Content-Type": "application/json"})
    assert status == 200 and body == bytes(range(256)) * 40 and headers["Content-Type"] == "audio/mpeg"
    status, headers, body = _http("GET", rp.url + "/models")
    assert status == 200 and headers["x-request-id"] == "req_123"


def test_upstream_without_v1_is_joined_like_openai_base_url(start_rechat):
    root = FakeUpstream(prefix="").start()
    try:
        rx = start_rechat("record", root.url, "--sessions", "s")
        r = rx.client().embeddings.create(model="e1", input="hello")
        assert r.data[0].embedding == [0.1, -0.25, 3.5e-05]
        assert root.received[-1][1] == "/embeddings"
    finally:
        root.stop()


def test_sse_reaches_the_client_chunk_by_chunk(upstream, start_rechat):
    rx = start_rechat("record", upstream.url, "--sessions", "s")
    t0 = time.monotonic()
    stream = rx.client().chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "count"}], stream=True)
    arrivals = [time.monotonic() - t0 for _ in stream]
    # The upstream spends about 1.2 s producing the stream; the first chunks must arrive
    # long before the last, i.e. rechat does not buffer the response.
    assert arrivals[-1] > 1.0
    assert arrivals[1] < arrivals[-1] / 2


def test_client_disconnect_mid_stream_keeps_server_and_recording(upstream, start_rechat, tmp_path):
    rx = start_rechat("record", upstream.url, "--sessions", "s")
    c = rx.client()
    stream = c.chat.completions.create(model="slow", messages=[{"role": "user", "content": "leave"}],
                                       stream=True)
    next(iter(stream))
    stream.close()  # the client hangs up after the first chunk
    r = c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "still there?"}])
    assert r.choices[0].message.content == "Echo: still there?"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        texts = [t for t in session_texts(tmp_path / "s").values() if "leave" in t]
        if texts and " 19" in texts[0]:
            break
        time.sleep(0.1)
    assert texts, "the interrupted stream was not recorded"
    s = sessionfile.parse(texts[0])
    assert s.messages[-1]["content"] == "Echo: leave" + "".join(f" {i}" for i in range(20))
    rx.stop()


def test_health_not_found_and_malformed_json(start_rechat, tmp_path):
    (tmp_path / "s").mkdir()
    rx = start_rechat("replay", "s")
    h = rx.health()
    assert h["status"] == "ok" and h["mode"] == "replay" and h["sessions"] == 0
    status, _, body = _http("GET", rx.base + "/nope")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, _, body = _http("POST", rx.url + "/embeddings", b"{not json",
                            {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    assert rx.stop() == 0


def test_cli_rejects_a_bad_upstream(tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "rechat", "serve", "ftp://x", "--port", str(free_port())],
                       cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "must start with http:// or https://" in p.stdout + p.stderr
