"""Ollama's POST /api/chat in the chat form (rechat/ollama.py, docs/format.md "Ollama chats").

End to end: a fake Ollama on 127.0.0.1 (conftest's FakeUpstream, its /api/chat made richer
here through the `routes` hook: thinking, tool calls, stats), rechat as a real process, plain
HTTP with urllib (the openai client does not speak /api/chat). Recordings land in the chat
form, replay with the upstream stopped (byte for byte when unedited), hand edits are served
within a second streamed or not, turns append, and hand-written files replay. Unit tests prove
the message mapping round-trips through the session file with hypothesis.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SECRET, FakeUpstream, session_texts
from rechat import ollama
from rechat import sessionfile as sf
from rechat.exchange import Request, Response
from rechat.fingerprint import canonical, normalize_message

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
STATS = {"total_duration": 5043500667, "load_duration": 5025959, "prompt_eval_count": 26,
         "prompt_eval_duration": 325953000, "eval_count": 290, "eval_duration": 4709213000}


class FakeOllama(FakeUpstream):
    """FakeUpstream whose /api/chat answers like Ollama 0.9+: `think: true` adds `thinking`,
    `tools` with a user turn last calls the first tool (arguments an object), a tool result
    last answers "Tool said: ..."; streams end with a `done` line carrying the stats."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self.chat_api)
        super().routes(app)

    async def chat_api(self, req: web.Request) -> web.StreamResponse:
        b = json.loads(await self._record(req))
        last = b["messages"][-1]
        msg: dict = {"role": "assistant", "content": ""}
        thinking = "Let me think.\nYes." if b.get("think") else None
        calls = None
        if last["role"] == "tool":
            msg["content"] = f"Tool said: {last['content']}"
        elif b.get("tools"):
            calls = [{"function": {"name": b["tools"][0]["function"]["name"],
                                   "arguments": {"city": last["content"][:20]}}}]
        else:
            msg["content"] = f"Echo: {last['content']}"
        base = {"model": b["model"], "created_at": "2026-11-21T00:00:00.123456Z"}
        if b.get("stream", True) is False:
            full = dict(msg)
            if thinking:
                full["thinking"] = thinking
            if calls:
                full["tool_calls"] = calls
            return web.json_response({**base, "message": full, "done_reason": "stop",
                                      "done": True, **STATS})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(req)
        pieces: list[dict] = []
        if thinking:
            pieces += [{"role": "assistant", "content": "", "thinking": t}
                       for t in ("Let me think.", "\nYes.")]
        words = msg["content"].split(" ") if msg["content"] else []
        pieces += [{"role": "assistant", "content": w if i == 0 else " " + w}
                   for i, w in enumerate(words)]
        if calls:
            pieces.append({"role": "assistant", "content": "", "tool_calls": calls})
        for p in pieces:
            await resp.write((json.dumps({**base, "message": p, "done": False}) + "\n").encode())
        await resp.write((json.dumps({**base, "message": {"role": "assistant", "content": ""},
                                      "done_reason": "stop", "done": True, **STATS})
                          + "\n").encode())
        return resp


@pytest.fixture
def fake():
    u = FakeOllama().start()
    yield u
    u.stop()


def post(base: str, body: dict, timeout: float = 10) -> tuple[int, str, bytes]:
    """POST /api/chat; return (status, content type, body bytes)."""
    req = urllib.request.Request(base + "/api/chat", json.dumps(body).encode(),
                                 {"Content-Type": "application/json",
                                  "Authorization": f"Bearer {SECRET}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def lines(body: bytes) -> list[dict]:
    return [json.loads(x) for x in body.splitlines() if x.strip()]


def text_of(ctype: str, body: bytes) -> str:
    """The answer's content, from a whole JSON answer or an NDJSON stream."""
    if "ndjson" in ctype:
        return "".join(o["message"].get("content", "") for o in lines(body))
    return json.loads(body)["message"]["content"]


def chat(text: str, **kw) -> dict:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": text}], **kw}


def only_file(folder: Path) -> tuple[Path, str]:
    files = sorted(folder.glob("*.md"))
    assert len(files) == 1, [f.name for f in files]
    return files[0], files[0].read_text()


def until(check, timeout: float = 3.0):
    t0 = time.monotonic()
    while True:
        v = check()
        if v or time.monotonic() - t0 > timeout:
            return v, time.monotonic() - t0
        time.sleep(0.01)


def assert_chat_form(text: str) -> None:
    assert text.startswith("---\n")
    s = sf.parse(text)
    assert (s.kind, s.endpoint) == ("chat", "POST /api/chat")
    assert "### user" in text and "### assistant" in text
    assert "```" not in text and "### request" not in text  # not the generic form
    assert "endpoint: POST /api/chat" in text and "kind: chat" in text


# ---------------------------------------------------------------------------------------------
# End to end


def test_streamed_chat_is_recorded_in_chat_form_and_replays_byte_identical(fake, start_rechat,
                                                                           tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s")
    status, ctype, recorded = post(rx.base, chat("hello there"))  # no `stream`: streams
    assert status == 200 and ctype.startswith("application/x-ndjson")
    assert text_of(ctype, recorded) == "Echo: hello there"
    assert lines(recorded)[-1]["done"] is True and b"[DONE]" not in recorded
    rx.stop()
    _, text = only_file(tmp_path / "s")
    assert_chat_form(text)
    assert "<blockquote>\n\nhello there\n\n</blockquote>" in text
    assert "<blockquote>\n\nEcho: hello there\n\n</blockquote>" in text
    assert "model: llama3.2" in text and "stream" not in text.split("---")[1]
    assert SECRET not in text and "Authorization" not in text
    fake.stop()
    rp = start_rechat("replay", "s")
    status, ctype, replayed = post(rp.base, chat("hello there"))
    assert (status, replayed) == (200, recorded)
    assert ctype.startswith("application/x-ndjson")
    # `stream: true` is the same request (stream never counts): the same bytes.
    assert post(rp.base, chat("hello there", stream=True))[2] == recorded
    # `stream: false` gets the answer assembled into one object, in Ollama's shape.
    status, ctype, whole = post(rp.base, chat("hello there", stream=False))
    obj = json.loads(whole)
    assert ctype.startswith("application/json")
    assert obj["message"] == {"role": "assistant", "content": "Echo: hello there"}
    assert obj["done"] is True and obj["eval_count"] == 290 and "choices" not in obj
    assert post(rp.base, chat("something else"))[0] == 404


def test_non_streamed_chat_is_recorded_and_replays_byte_identical(fake, start_rechat, tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s")
    status, ctype, recorded = post(rx.base, chat("plain", stream=False, options={"seed": 1}))
    assert status == 200 and json.loads(recorded)["message"]["content"] == "Echo: plain"
    rx.stop()
    _, text = only_file(tmp_path / "s")
    assert_chat_form(text)
    assert "options:\n  seed: 1" in text
    assert "<blockquote>\n\nEcho: plain\n\n</blockquote>" in text
    fake.stop()
    rp = start_rechat("replay", "s")
    assert post(rp.base, chat("plain", stream=False, options={"seed": 1}))[2] == recorded
    # Streamed (the default) from a whole recording: NDJSON made from the file.
    status, ctype, streamed = post(rp.base, chat("plain", options={"seed": 1}))
    assert ctype.startswith("application/x-ndjson")
    objs = lines(streamed)
    assert text_of(ctype, streamed) == "Echo: plain"
    assert [o["done"] for o in objs] == [False] * (len(objs) - 1) + [True]
    assert objs[-1]["eval_count"] == 290 and objs[-1]["done_reason"] == "stop"
    assert post(rp.base, chat("plain", options={"seed": 2}))[0] == 404  # params count


def test_a_hand_edited_answer_is_replayed_edited_within_a_second(fake, start_rechat, tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s")
    post(rx.base, chat("one"))  # streamed
    post(rx.base, chat("two", stream=False))
    rx.stop()
    fake.stop()
    rp = start_rechat("replay", "s")
    for q in ("one", "two"):
        f = next(p for p in (tmp_path / "s").glob("*.md") if f"\n{q}\n" in p.read_text())
        f.write_text(f.read_text().replace(f"Echo: {q}", f"Edited {q}\nsecond line"))

        def served(stream: bool) -> str:
            _, ctype, body = post(rp.base, chat(q, stream=stream))
            assert ctype.startswith("application/x-ndjson" if stream else "application/json")
            return text_of(ctype, body)

        got, delay = until(lambda: served(True) == f"Edited {q}\nsecond line")
        assert got and delay < 1.0, (served(True), delay)
        assert served(False) == f"Edited {q}\nsecond line"


def test_two_turns_append_to_one_file_and_replay(fake, start_rechat, tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s")
    first = chat("turn one", stream=False)
    _, _, b1 = post(rx.base, first)
    second = {**first, "messages": [*first["messages"], json.loads(b1)["message"],
                                    {"role": "user", "content": "turn two"}]}
    _, ctype, b2 = post(rx.base, {**second, "stream": True})
    assert text_of(ctype, b2) == "Echo: turn two"
    rx.stop()
    _, text = only_file(tmp_path / "s")
    s = sf.parse(text)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert text.count("### assistant") == 2 and text.count("rechat:response") == 2
    fake.stop()
    rp = start_rechat("replay", "s")
    assert post(rp.base, first)[2] == b1
    assert post(rp.base, {**second, "stream": True})[2] == b2
    assert post(rp.base, {**second, "stream": False})[2] != b2  # one object, made from the file
    assert json.loads(post(rp.base, second)[2])["message"]["content"] == "Echo: turn two"


def test_tool_calls_and_thinking_survive_a_round_trip(fake, start_rechat, tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s")
    ask = chat("Paris", tools=[WEATHER], think=True)
    _, ctype, streamed = post(rx.base, ask)
    call = [o["message"]["tool_calls"] for o in lines(streamed) if o["message"].get("tool_calls")]
    assert call == [[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]]
    _, _, whole = post(rx.base, {**ask, "stream": False, "keep_alive": "5m"})
    answer = json.loads(whole)["message"]
    assert answer["thinking"] == "Let me think.\nYes."
    turn2 = {**ask, "stream": False, "keep_alive": "5m", "messages": [
        *ask["messages"], answer, {"role": "tool", "content": "22 C", "tool_name": "get_weather"}]}
    _, _, b2 = post(rx.base, turn2)
    assert json.loads(b2)["message"]["content"] == "Tool said: 22 C"
    rx.stop()
    texts = session_texts(tmp_path / "s")
    assert len(texts) == 2  # keep_alive is a parameter: another file
    for text in texts.values():
        assert_chat_form(text)
        assert "#### reasoning_content\n\n<blockquote>\n\nLet me think.\nYes.\n\n</blockquote>" in text
        assert "#### tool_call get_weather\n\n<blockquote>\n\n{\"city\": \"Paris\"}" in text
        assert "think: true" in text and "name: get_weather" in text
    (two,) = [t for t in texts.values() if "22 C" in t]
    assert "### tool name=get_weather" in two and "keep_alive: 5m" in two
    fake.stop()
    rp = start_rechat("replay", "s")
    assert post(rp.base, ask)[2] == streamed
    assert post(rp.base, {**ask, "stream": False, "keep_alive": "5m"})[2] == whole
    assert post(rp.base, turn2)[2] == b2
    # The other shape, made from the file: the tool call and the thinking are there.
    _, _, made = post(rp.base, {**ask, "stream": False})
    m = json.loads(made)["message"]
    assert m["tool_calls"] == call[0] and m["thinking"] == "Let me think.\nYes."
    _, _, made = post(rp.base, {**ask, "keep_alive": "5m"})
    got = lines(made)
    assert "".join(o["message"].get("thinking", "") for o in got) == "Let me think.\nYes."
    assert [o["message"]["tool_calls"] for o in got if "tool_calls" in o["message"]] == call


HAND_WRITTEN = """---
model: llama3.2
rechat:
  endpoint: POST /api/chat
---

### user

<blockquote>

Why is the sky blue?

</blockquote>

### assistant

<blockquote>

Rayleigh scattering.

</blockquote>
"""


def test_a_hand_written_minimal_file_replays(start_rechat, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sky.md").write_text(HAND_WRITTEN)
    rp = start_rechat("replay", "s")
    q = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    status, ctype, body = post(rp.base, q)
    assert status == 200 and ctype.startswith("application/x-ndjson")
    objs = lines(body)
    assert text_of(ctype, body) == "Rayleigh scattering."
    assert objs[-1]["done"] is True and objs[-1]["model"] == "llama3.2"
    assert all(set(o) >= {"model", "created_at", "message", "done"} for o in objs)
    status, ctype, body = post(rp.base, {**q, "stream": False, "options": {"temperature": 0}})
    obj = json.loads(body)
    assert obj["message"] == {"role": "assistant", "content": "Rayleigh scattering."}
    assert obj["done"] is True and obj["done_reason"] == "stop"
    assert post(rp.base, {**q, "model": "other"})[0] == 404


def test_model_map_applies_and_the_file_keeps_the_clients_name(fake, start_rechat, tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s",
                      "--model-map", json.dumps({"alias": "llama3.2"}))
    _, _, body = post(rx.base, {**chat("mapped"), "model": "alias", "stream": False})
    assert json.loads(body)["model"] == "alias"  # the name the client asked for
    assert json.loads(fake.received[-1][3])["model"] == "llama3.2"
    rx.stop()
    _, text = only_file(tmp_path / "s")
    assert "model: alias" in text and '"served_model":"llama3.2"' in text
    fake.stop()
    rp = start_rechat("replay", "s", "--model-map", json.dumps({"alias": "llama3.2"}))
    _, _, body = post(rp.base, {**chat("mapped"), "model": "alias", "stream": False})
    assert json.loads(body)["model"] == "alias"
    _, ctype, body = post(rp.base, {**chat("mapped"), "model": "alias"})  # made from the file
    assert {o["model"] for o in lines(body)} == {"alias"} and text_of(ctype, body) == "Echo: mapped"


def test_think_strip_applies_to_replayed_ndjson(fake, start_rechat, tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s")
    q = chat("<think>secret plan</think>visible answer")
    _, ctype, recorded = post(rx.base, q)
    rx.stop()
    fake.stop()
    rp = start_rechat("replay", "s", "--think", "strip")
    _, ctype, body = post(rp.base, q)
    assert ctype.startswith("application/x-ndjson")
    assert text_of(ctype, body) == "Echo: visible answer"
    _, ctype, body = post(rp.base, {**q, "stream": False})
    assert text_of(ctype, body) == "Echo: visible answer"
    assert "secret plan" in only_file(tmp_path / "s")[1]  # the session keeps the raw answer


# ---------------------------------------------------------------------------------------------
# Units: the mapping


SAMPLES = [
    {"role": "user", "content": "hi"},
    {"role": "user", "content": "look", "images": ["iVBORw0KGgo=", "R0lGODlh"]},
    {"role": "user", "content": "", "images": ["iVBORw0KGgo="]},
    {"role": "assistant", "content": "", "thinking": "hmm",
     "tool_calls": [{"function": {"name": "f", "arguments": {"a": [1, 2.5, None]}}},
                    {"id": "c2", "function": {"name": "g", "arguments": {}}}]},
    {"role": "tool", "content": "22 C", "tool_name": "get_weather"},
    # What does not fit is kept whole.
    {"role": "user", "content": "x", "images": []},
    {"role": "user", "content": "x", "images": ["data:image/png;base64,AA=="]},
    {"role": "user", "content": ["a", 1]},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}", "index": 0}}]},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "has space",
                                                                      "arguments": {"a": 1}}}]},
    {"role": "user", "content": "x", "reasoning_content": "not Ollama's", "name": "n",
     "ollama": {"nested": True}, "thinking": 3, "tool_name": None, "extra": "kept"},
]


def same(a, b) -> bool:
    return canonical(normalize_message(a)) == canonical(normalize_message(b))


def through_file(messages: list) -> list:
    text = sf.render_chat({"model": "m"}, ollama.chat_messages(messages), {}, "POST /api/chat")
    s = sf.parse(text)
    assert (s.kind, s.path) == ("chat", "/api/chat")
    return ollama.request_messages(s.messages)


@pytest.mark.parametrize("message", SAMPLES)
def test_mapping_round_trips_through_the_file(message):
    assert same(ollama.from_chat(ollama.to_chat(message)), message)
    (back,) = through_file([message])
    assert same(back, message)


def test_mapping_uses_the_readable_forms():
    m = ollama.to_chat(SAMPLES[3])
    assert m["reasoning_content"] == "hmm" and "ollama" not in m
    assert m["tool_calls"][0] == {"type": "function", "function": {
        "name": "f", "arguments": '{"a": [1, 2.5, null]}'}}
    assert ollama.to_chat(SAMPLES[1])["content"][1] == {
        "type": "image_url", "image_url": {"url": "iVBORw0KGgo="}}
    assert ollama.to_chat(SAMPLES[4])["name"] == "get_weather"
    assert set(ollama.to_chat(SAMPLES[-1])["ollama"]) == {"reasoning_content", "name", "ollama",
                                                          "thinking"}


def test_hand_written_variants_read_as_ollama_messages():
    tc = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{ "a" : 1 }'}}
    assert ollama.from_chat({"role": "assistant", "content": "", "tool_calls": [tc]}) == {
        "role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]}
    assert ollama.from_chat({"role": "user", "content": [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]}) == {
        "role": "user", "content": "see", "images": ["QUJD"]}
    assert ollama.from_chat({"role": "assistant", "thinking": "t", "content": "c"}) == {
        "role": "assistant", "thinking": "t", "content": "c"}


def _nest(children):
    return st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children,
                                                            max_size=3)


_json = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6)
                     | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                     _nest, max_leaves=8)
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_tool_call = st.fixed_dictionaries(
    {"function": st.fixed_dictionaries({"name": _name | st.text(min_size=1, max_size=5),
                                        "arguments": st.dictionaries(st.text(max_size=6), _json,
                                                                     max_size=3)})},
    optional={"id": st.text(max_size=6)})
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
    optional={"content": st.text(max_size=40) | _json,
              "images": st.lists(st.text(max_size=12), max_size=2) | _json,
              "thinking": st.text(max_size=20) | _json,
              "tool_calls": st.lists(_tool_call, max_size=2) | _json,
              "tool_name": _name | _json,
              "reasoning_content": _json, "name": _json, "ollama": _json,
              "index": st.integers(0, 5), "extra": _json})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message, min_size=1, max_size=4))
def test_any_message_round_trips_through_the_file(messages):
    assert [canonical(normalize_message(m)) for m in through_file(messages)] == \
        [canonical(normalize_message(m)) for m in messages]


def _response(body: str, ctype: str) -> Response:
    return Response(200, [("Content-Type", ctype)], body.encode())


def test_capture_keeps_the_raw_answer_and_detects_edits():
    ndjson = ('{"model":"m","created_at":"t","message":{"role":"assistant","content":"",'
              '"thinking":"hm"},"done":false}\n'
              '{"model":"m","created_at":"t","message":{"role":"assistant","content":"Hi"},'
              '"done":false}\n'
              '{"model":"m","created_at":"t","message":{"role":"assistant","content":""},'
              '"done":true,"done_reason":"stop","eval_count":2}\n')
    msg, meta = ollama.capture(_response(ndjson, "application/x-ndjson"))
    assert msg == {"role": "assistant", "content": "Hi", "reasoning_content": "hm"}
    assert meta["stream"] is True and "\n".join(meta["ndjson"]) + "\n" == ndjson
    assert ollama.unedited(msg, meta) and not ollama.unedited({**msg, "content": "Ho"}, meta)
    assert b"".join(ollama.recorded_bytes(meta)[1]) == ndjson.encode()
    whole = '{"model":"m","message":{"role":"assistant","content":"Hi"},"done":true}'
    msg, meta = ollama.capture(_response(whole, "application/json; charset=utf-8"))
    assert meta == {"stream": False, "body": whole}
    assert ollama.response_object({**msg, "content": "Yo"}, meta, {})["message"] == {
        "role": "assistant", "content": "Yo"}
    assert ollama.capture(_response('{"error":"model not found"}', "application/json")) is None
    assert ollama.capture(_response("not json", "text/plain")) is None


def test_request_streams_by_default_on_ollama_chat_only():
    def req(path: str, body: dict) -> Request:
        return Request("POST", path, body=json.dumps(body).encode())
    assert req("/api/chat", {"messages": []}).wants_stream
    assert req("/api/chat", {"messages": [], "stream": None}).wants_stream
    assert not req("/api/chat", {"messages": [], "stream": False}).wants_stream
    assert not req("/v1/chat/completions", {"messages": []}).wants_stream
    assert req("/api/chat", {"model": "m", "messages": []}).is_chat


def test_the_format_doc_examples_read_as_documented():
    import re
    doc = (Path(__file__).resolve().parent.parent / "docs" / "format.md").read_text()
    section = doc[doc.index("## Ollama chats"):doc.index("## Other endpoints")]
    recorded, minimal = re.findall(r"^````markdown\n(.*?)^````$", section, re.S | re.M)
    s = sf.parse(recorded)
    assert (s.kind, s.endpoint, s.params["think"]) == ("chat", "POST /api/chat", True)
    msgs = ollama.request_messages(s.messages)
    assert msgs[1]["thinking"] and msgs[1]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert msgs[2] == {"role": "tool", "content": "18 °C, light rain", "tool_name": "get_weather"}
    for i in (1, 3):  # the answers as recorded: their bytes would be replayed
        assert ollama.unedited(s.messages[i], s.responses[i])
    assert sf.render_chat(s.params, s.messages, s.responses, s.endpoint) == recorded
    m = sf.parse(minimal)
    assert (m.kind, m.endpoint, m.params) == ("chat", "POST /api/chat", {"model": "llama3.2"})
    assert minimal == HAND_WRITTEN


def test_a_conversation_the_chat_form_cannot_hold_is_kept_generic(fake, start_rechat, tmp_path):
    rx = start_rechat("record", fake.url, "--sessions", "s")
    q = {"model": "llama3.2", "messages": [{"role": "critic", "content": "odd role"}]}
    _, _, recorded = post(rx.base, q)
    rx.stop()
    _, text = only_file(tmp_path / "s")
    s = sf.parse(text)
    assert (s.kind, s.endpoint) == ("generic", "POST /api/chat") and "kind: generic" in text
    fake.stop()
    rp = start_rechat("replay", "s")
    assert post(rp.base, q)[2] == recorded


def test_the_request_log_counts_an_ollama_chat_without_stream_as_streamed():
    from rechat.exchange import Request, Response
    from rechat.logdb import COLUMNS, row_from_event
    from rechat.proxy import ProxyEvent

    body = b'{"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}'
    stream = COLUMNS.index("stream")
    rows = {}
    for path in ("/api/chat", "/v1/chat/completions", "/api/generate"):
        ev = ProxyEvent("forward", Request("POST", path, body=body), Response(200, [], b"{}"))
        rows[path] = row_from_event(ev, "run")[0][stream]
    assert rows == {"/api/chat": 1, "/v1/chat/completions": 0, "/api/generate": 1}
    off = b'{"model": "llama3", "stream": false, "messages": []}'
    ev = ProxyEvent("forward", Request("POST", "/api/chat", body=off), Response(200, [], b"{}"))
    assert row_from_event(ev, "run")[0][stream] == 0
