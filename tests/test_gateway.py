"""The gateway end to end: several fake upstreams on 127.0.0.1, rechat as a real process, the
real openai client. Routing by model and port, balancing, failover, keys per upstream, model
names, the reasoning rewrite and Ollama's API, through record and replay.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import openai
import pytest

from conftest import SECRET, FakeUpstream, free_port, session_texts
from rechat import sessionfile


@pytest.fixture
def ups():
    started = [FakeUpstream().start() for _ in range(3)]
    yield started
    for u in started:
        u.stop()


def ask(client, model: str, text: str = "hi", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def chats(u: FakeUpstream) -> list[dict]:
    return [json.loads(body) for _, path, _, body in u.received if path.endswith("/chat/completions")]


def test_routes_by_model_and_balances_one_model(ups, start_rechat):
    a, b, c = ups
    rx = start_rechat("record", f"{a.url}::m-a", f"{b.url}::m-b,m-shared", f"{c.url}::m-shared",
                      "--sessions", "s")
    cl = rx.client()
    assert ask(cl, "m-a").model == "m-a-2024"
    assert ask(cl, "m-b").model == "m-b-2024"
    assert [x["model"] for x in chats(a)] == ["m-a"] and [x["model"] for x in chats(b)] == ["m-b"]
    for i in range(10):  # distinct requests: every one is forwarded
        ask(cl, "m-shared", f"q{i}")
    shared_b = sum(1 for x in chats(b) if x["model"] == "m-shared")
    assert (shared_b, len(chats(c))) == (5, 5)  # round robin
    with pytest.raises(openai.NotFoundError) as e:
        ask(cl, "nobody-serves-this")
    assert e.value.body["code"] == "model_not_found"


def test_failover_when_an_upstream_dies(ups, start_rechat):
    a, b, _ = ups
    rx = start_rechat("record", f"{a.url}::m", f"{b.url}::m", "--sessions", "s", "--cooldown", "60")
    cl = rx.client()
    a.stop()
    got = [ask(cl, "m", f"q{i}").choices[0].message.content for i in range(6)]
    assert got == [f"Echo: q{i}" for i in range(6)]  # none lost
    assert len(chats(b)) == 6
    health = {u["url"]: u for u in rx.health()["upstreams"]}
    assert health[a.url]["cooling_s"] > 0 and health[a.url]["failures"] >= 1
    assert health[b.url]["cooling_s"] == 0


def test_failover_on_5xx_before_anything_streams(ups, start_rechat, tmp_path):
    a, b, _ = ups
    # Both upstreams serve "fail"; the first answers 500, so the second... also answers 500:
    # the client gets the last upstream's own error, and the first upstream cools down.
    rx = start_rechat("record", f"{a.url}::fail", f"{b.url}::fail", "--sessions", "s")
    with pytest.raises(openai.InternalServerError) as e:
        ask(rx.client(), "fail")
    assert e.value.body["message"] == "upstream exploded"
    assert len(chats(a)) == 1 and len(chats(b)) == 1
    assert session_texts(tmp_path / "s") == {}


def test_api_key_per_upstream(ups, start_rechat):
    a, b, _ = ups
    rx = start_rechat("record", f"KEY_FOR_A@{a.url}::m-a", f"{b.url}::m-b", "--sessions", "s",
                      env={"KEY_FOR_A": "sk-upstream-a-only"})
    cl = rx.client()
    ask(cl, "m-a")
    ask(cl, "m-b")
    assert a.received[-1][2]["Authorization"] == "Bearer sk-upstream-a-only"
    assert b.received[-1][2]["Authorization"] == f"Bearer {SECRET}"  # passed through
    rx.stop()
    for text in session_texts(rx.cwd / "s").values():
        assert "sk-upstream-a-only" not in text and SECRET not in text


def test_missing_key_variable_fails_at_start(ups, tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "rechat", f"NOPE_KEY@{ups[0].url}", "--port",
                        str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "NOPE_KEY" in p.stdout + p.stderr


def test_model_map_regex_and_the_name_the_client_sees(ups, start_rechat, tmp_path):
    a = ups[0]
    rx = start_rechat("record", a.url, "--sessions", "s",
                      "--model-map", json.dumps({"/gpt-(.*)turbo/": "llama3-\\1instruct",
                                                 "alias": "m1"}))
    r = ask(rx.client(), "gpt-3.5-turbo")
    assert chats(a)[-1]["model"] == "llama3-3.5-instruct"
    assert r.model == "gpt-3.5-turbo"  # the client sees the name it asked for
    models = [m.id for m in rx.client().models.list().data]
    assert "m1" in models and "alias" in models
    rx.stop()
    (text,) = [t for t in session_texts(tmp_path / "s").values() if "### user" in t]
    s = sessionfile.parse(text)
    assert s.params["model"] == "gpt-3.5-turbo"  # the key: what the client sent
    assert '"served_model":"llama3-3.5-instruct"' in text  # and what served it
    assert "llama3-3.5-instruct-2024" in text  # the upstream's raw answer


def test_served_model_option_and_override(ups, start_rechat):
    a = ups[0]
    rx = start_rechat("record", a.url, "--sessions", "s", "--override-model", "forced",
                      "--served-model")
    assert ask(rx.client(), "whatever").model == "forced-2024"
    assert chats(a)[-1]["model"] == "forced"


THINK = "<think>secret plan</think>visible answer"
HARMONY = ("<|channel|>analysis<|message|>plan it<|end|><|start|>assistant<|channel|>final"
           "<|message|>done")


def stream_text(stream) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_think_strip_and_tags_forward_and_replay(ups, start_rechat, tmp_path):
    a = ups[0]
    rx = start_rechat("record", a.url, "--sessions", "s", "--think", "strip")
    cl = rx.client()
    assert ask(cl, "m", THINK).choices[0].message.content == "Echo: visible answer"
    assert stream_text(ask(cl, "m", THINK + " 2", stream=True)) == "Echo: visible answer 2"
    rx.stop()
    # The session keeps the upstream's raw answer.
    assert "secret plan" in "".join(session_texts(tmp_path / "s").values())
    a.stop()
    keep = start_rechat("replay", "s").client()
    assert ask(keep, "m", THINK).choices[0].message.content == "Echo: " + THINK
    strip = start_rechat("replay", "s", "--think", "strip").client()
    assert stream_text(ask(strip, "m", THINK, stream=True)) == "Echo: visible answer"
    assert ask(strip, "m", THINK + " 2").choices[0].message.content == "Echo: visible answer 2"


def test_think_strip_with_two_choices_keeps_each_choices_whitespace(start_rechat):
    # n=2, streamed: choice 1 speaks first, choice 0's text starts while choice 1 is idle,
    # then choice 0 has a block. Its text had started, so the spaces after the block stay.
    from aiohttp import web

    base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def ev(index: int, delta: dict, finish=None) -> bytes:
        return b"data: " + json.dumps({**base, "choices": [{"index": index, "delta": delta,
                                                           "finish_reason": finish}]}).encode() + b"\n\n"
    body = (ev(1, {"role": "assistant", "content": "x"}) + ev(0, {"role": "assistant", "content": "Hi"})
            + ev(0, {"content": "<think>plan</think>"}) + ev(0, {"content": "  there"})
            + ev(0, {}, "stop") + ev(1, {}, "stop") + b"data: [DONE]\n\n")

    async def chat(req: web.Request) -> web.StreamResponse:
        await req.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(body)
        return resp

    loop = asyncio.new_event_loop()
    port = free_port()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        rx = start_rechat("passthrough", f"http://127.0.0.1:{port}/v1", "--think", "strip")
        text = {0: "", 1: ""}
        for c in ask(rx.client(), "m", n=2, stream=True):
            for ch in c.choices:
                text[ch.index] += ch.delta.content or ""
        assert text == {0: "Hi  there", 1: "x"}
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_think_tags_rewrites_harmony_markers(ups, start_rechat):
    rx = start_rechat("record", ups[0].url, "--sessions", "s", "--think", "tags")
    cl = rx.client()
    assert ask(cl, "m", HARMONY).choices[0].message.content == "Echo: <think>plan it</think>done"
    assert stream_text(ask(cl, "m", HARMONY + "!", stream=True)) == "Echo: <think>plan it</think>done!"


def test_no_think_changes_what_goes_upstream_not_the_key(ups, start_rechat, tmp_path):
    a = ups[0]
    rx = start_rechat(a.url, "--sessions", "s", "--no-think")
    cl = rx.client()
    ask(cl, "m", "solve it")
    assert chats(a)[-1]["messages"][-1]["content"] == "solve it /no_think"
    ask(cl, "m", "solve it")
    assert len(chats(a)) == 1  # the second is a hit on the request as the client sent it


def test_each_local_port_named_is_listened_on(ups, start_rechat):
    a, b, _ = ups
    other = free_port()
    rx = start_rechat("record", f"{a.url}", f"{b.url}:{other}:m-b", "--sessions", "s")
    cl = openai.OpenAI(base_url=f"http://127.0.0.1:{other}/v1", api_key="k", max_retries=0)
    assert ask(cl, "m-b").model == "m-b-2024" and len(chats(b)) == 1
    ask(rx.client(), "m-main")
    assert len(chats(a)) == 1


def _ndjson(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.read().splitlines() if line.strip()]


def test_ollama_chat_and_generate_record_and_replay(ups, start_rechat, tmp_path):
    a = ups[0]
    rx = start_rechat("record", a.url, "--sessions", "s", "--think", "strip")
    chat = {"model": "llama3:8b", "messages": [{"role": "user", "content": THINK}]}
    lines = _ndjson(rx.base + "/api/chat", chat)
    assert "".join(x["message"]["content"] for x in lines) == "Echo: visible answer"
    assert lines[-1]["done"] is True
    gen = _ndjson(rx.base + "/api/generate", {"model": "llama3:8b", "prompt": "tell me"})
    assert "".join(x["response"] for x in gen).strip() == "Echo: tell me"
    with urllib.request.urlopen(rx.base + "/api/version", timeout=10) as r:
        assert json.loads(r.read())["version"] == "0.5.0"
    rx.stop()
    a.stop()
    rp = start_rechat("replay", "s")
    lines = _ndjson(rp.base + "/api/chat", chat)
    assert "".join(x["message"]["content"] for x in lines) == "Echo: " + THINK  # raw, think kept
    gen = _ndjson(rp.base + "/api/generate", {"model": "llama3:8b", "prompt": "tell me"})
    assert "".join(x["response"] for x in gen).strip() == "Echo: tell me"


def test_the_config_file_example_in_the_docs_loads(tmp_path):
    import re
    from pathlib import Path

    from rechat.routes import load_config
    doc = (Path(__file__).resolve().parent.parent / "docs" / "gateway.md").read_text()
    (tmp_path / "gw.toml").write_text(re.search(r"```toml\n(.*?)```", doc, re.S).group(1))
    g = load_config(tmp_path / "gw.toml")
    assert [r.models for r in g.routes] == [("gpt-5", "gpt-5-mini"), ("gpt-5",), ("llama3",)]
    assert g.routes[2].local_port == 8911 and g.balance == "least-busy"
    assert g.model_map.resolve("gpt-4-turbo") == "llama3-70b-turbo"


def test_stream_rewriter_by_content_type_and_options():
    from answer_streams import chat_stream, content_of, ollama_chat
    from rechat.gateway import Gateway, GatewaySettings
    from rechat.modelmap import ModelMap
    from rechat.rewrite import NDJSONStreamRewriter, SSEStreamRewriter
    from rechat.routes import parse_routes
    from rechat.think import ThinkMode

    routes = parse_routes(["http://127.0.0.1:1/v1::m"])
    plain = Gateway(GatewaySettings(routes=routes))
    assert plain.stream_rewriter("text/event-stream", "m", "m") is None  # nothing would change
    restore = Gateway(GatewaySettings(routes=routes, model_map=ModelMap.from_json('{"a": "m"}')))
    assert restore.stream_rewriter("text/event-stream", "a", "a") is None
    rw = restore.stream_rewriter("text/event-stream", "a", "m")
    data = chat_stream(["Hi"]).replace(b'"model":"m"', b'"model":"m-2024"')
    assert rw.feed(data) + rw.close() == data.replace(b'"model":"m-2024"', b'"model":"a"')
    strip = Gateway(GatewaySettings(routes=routes, think=ThinkMode.STRIP))
    assert strip.stream_rewriter("application/json", "m", "m") is None  # not a stream
    for n in (1, 2, 1):
        rw = strip.stream_rewriter("text/event-stream; charset=utf-8", "m", "m", n)
        assert isinstance(rw, SSEStreamRewriter)
        data = chat_stream(["<think>x</think>", "Hi", " there"])
        assert content_of(rw.feed(data) + rw.close()) == "Hi there"
    assert len(strip._asides) == 2  # one per choices count, made once
    nd = strip.stream_rewriter("application/x-ndjson", "m", "m")
    assert isinstance(nd, NDJSONStreamRewriter)
    out = nd.feed(ollama_chat(["<think>x</think>", "Hi"])) + nd.close()
    assert b"think" not in out and b"Hi" in out
