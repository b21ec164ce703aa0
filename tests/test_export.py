"""`rechat export`: dumps, HAR and mitmproxy files to markdown sessions, and sessions to HAR.

The reference is live recording: rechat runs in-process in front of the fake upstream,
recording sessions and a dump at once, with the API key sent as `Authorization`, `api-key`,
`x-api-key` and `?api-key=`. Exporting the dump must give the same session files (same
grouping, same text but the recording times); sessions -> HAR -> sessions must give them back
byte for byte. A browser-style HAR and a mitmproxy flow file (written by mitmproxy's own
FlowWriter, when mitmproxy is installed) are exported too, and no output holds the key.
"""

from __future__ import annotations

import base64
import json
import re
import sys

import aiohttp
import pytest

from conftest import SECRET, session_texts
from test_dump import U, client, config, rechat_app
from test_secrets import assert_no_secret, every_file

from rechat import export
from rechat import sessionfile as sf
from rechat.dump import DumpWriter
from rechat.export import ExportError
from rechat.policy import Mode

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


async def conversations(url: str) -> None:
    """Two multi-turn chats (one streamed, one with a tool call) and three other endpoints."""
    async with client(url) as c:
        history = [{"role": "system", "content": "Be brief."}, U("turn one")]
        r = await c.chat.completions.create(model="m", temperature=0.5, messages=history)
        history += [r.choices[0].message.model_dump(exclude_none=True), U("turn two")]
        r = await c.chat.completions.create(model="m", temperature=0.5, messages=history)
        history += [r.choices[0].message.model_dump(exclude_none=True), U("turn three")]
        text = ""
        async for ch in await c.chat.completions.create(
                model="m", temperature=0.5, messages=history, stream=True,
                stream_options={"include_usage": True}):
            text += ch.choices[0].delta.content or "" if ch.choices else ""
        assert text == "Echo: turn three"

        tool_chat = [U("weather?")]
        r = await c.chat.completions.create(model="m", tools=TOOLS, messages=tool_chat)
        call = r.choices[0].message.tool_calls[0]
        tool_chat += [r.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        r = await c.chat.completions.create(model="m", tools=TOOLS, messages=tool_chat)
        assert r.choices[0].message.content == "Tool said: sunny"
        await c.audio.speech.create(model="tts", voice="alloy", input="say it")
    async with aiohttp.ClientSession() as s:
        async with s.post(url + f"/embeddings?api-key={SECRET}", json={"model": "e", "input": "v"},
                          headers={"api-key": SECRET}) as r:
            assert r.status == 200
        async with s.get(url + "/models", headers={"x-api-key": SECRET}) as r:
            assert r.status == 200
        async with s.post(url + "/chat/completions", headers={"x-api-key": SECRET},
                          json={"model": "fail", "messages": [U("boom")]}) as r:
            assert r.status == 500


def without_at(text: str) -> str:
    return re.sub(r'"at":"[^"]*"', '"at":"-"', text)


@pytest.fixture
async def recorded(upstream, tmp_path):
    """Sessions recorded live into `live/`, and the dump written at the same time."""
    live, path = tmp_path / "live", tmp_path / "flows_live.jsonl"
    async with rechat_app(config(Mode.RECORD, live, upstream.url),
                          DumpWriter(str(path), upstream=upstream.url)) as (url, _):
        await conversations(url)
    texts = session_texts(live)
    assert len(texts) == 5, sorted(texts)  # 2 conversations; speech, embeddings, models
    return live, path


def test_dump_to_markdown_groups_conversations_as_live_recording(recorded, tmp_path, capsys):
    live, path = recorded
    out = tmp_path / "exported"
    assert export.main([str(path)], None, str(out)) == 0
    printed = capsys.readouterr()
    assert "exported 8 exchange(s) into 5 session(s)" in printed.out
    assert "status 500" in printed.err  # the failed exchange is reported, not exported
    live_texts, out_texts = session_texts(live), session_texts(out)
    # same files, same text, but for the recording time (the dump's, to the ms)
    assert sorted(map(without_at, live_texts.values())) == sorted(map(without_at, out_texts.values()))
    three = [t for t in out_texts.values() if "turn three" in t]
    assert len(three) == 1 and "turn one" in three[0] and "turn two" in three[0]
    assert '"sse":[' in three[0] and '"sse_ms":[' in three[0]
    assert_no_secret(every_file(tmp_path))


def test_sessions_to_har_and_back_is_exact(recorded, tmp_path, capsys):
    live, _ = recorded
    har_path = tmp_path / "out" / "sessions.har"
    assert export.main(None, str(live), str(har_path)) == 0
    assert "wrote 8 entries" in capsys.readouterr().out
    har = json.loads(har_path.read_text())
    check_har_1_2(har)
    entries = har["log"]["entries"]
    chat = [e for e in entries if e["request"]["url"].endswith("/chat/completions")]
    assert len(chat) == 5
    streamed = [e for e in chat if e["response"]["content"]["mimeType"].startswith("text/event-stream")]
    assert len(streamed) == 1 and streamed[0]["response"]["content"]["text"].endswith("data: [DONE]\n\n")
    speech = next(e for e in entries if e["request"]["url"].endswith("/audio/speech"))
    content = speech["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == bytes(range(256)) * 40
    turn2 = json.loads(chat[1]["request"]["postData"]["text"])
    assert [m["role"] for m in turn2["messages"]] == ["system", "user", "assistant", "user"]
    assert turn2["temperature"] == 0.5

    back = tmp_path / "back"
    assert export.main([str(har_path)], None, str(back)) == 0
    assert sorted(session_texts(live).values()) == sorted(session_texts(back).values())
    assert_no_secret(every_file(tmp_path))


def test_a_single_session_file_exports_and_hand_written_answers_get_a_reply(tmp_path):
    f = tmp_path / "france.md"
    f.write_text("### user\n<blockquote>\nCapital of France?\n</blockquote>\n\n"
                 "### assistant\n<blockquote>\nParis.\n</blockquote>\n")
    har = export.to_har([str(f)])
    check_har_1_2(har)
    (e,) = har["log"]["entries"]
    assert e["request"]["url"] == "http://127.0.0.1:8910/v1/chat/completions"
    body = json.loads(e["response"]["content"]["text"])
    assert body["choices"][0]["message"]["content"] == "Paris."
    assert e["_rechat"]["session"] == "france.md" and e["_rechat"]["line"] == 6


def check_har_1_2(har: dict) -> None:
    """The required fields of HAR 1.2 (log, creator, entries, request, response, timings...)."""
    log = har["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "rechat"
    for e in log["entries"]:
        assert {"startedDateTime", "time", "request", "response", "cache", "timings"} <= set(e)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", e["startedDateTime"])
        rq, rs = e["request"], e["response"]
        assert {"method", "url", "httpVersion", "cookies", "headers", "queryString", "headersSize",
                "bodySize"} <= set(rq)
        assert {"status", "statusText", "httpVersion", "cookies", "headers", "content",
                "redirectURL", "headersSize", "bodySize"} <= set(rs)
        assert {"size", "mimeType"} <= set(rs["content"])
        assert all(isinstance(e["timings"][k], (int, float)) for k in ("send", "wait", "receive"))
        assert rq["cookies"] == [] and rs["cookies"] == []


# ---------------------------------------------------------------------------------------------
# A HAR from a browser (Chrome's devtools shape)


def _h(**kw) -> list[dict]:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in kw.items()]


def _entry(method: str, url: str, status: int, content: dict, post: str | None = None,
           req_headers: list | None = None, resp_headers: list | None = None, t: int = 0) -> dict:
    e = {"startedDateTime": f"2025-05-01T12:00:0{t}.000Z", "time": 120.5,
         "request": {"method": method, "url": url, "httpVersion": "http/2.0",
                     "headers": req_headers or [], "queryString": [], "cookies": [
                         {"name": "session", "value": SECRET}], "headersSize": -1, "bodySize": 0},
         "response": {"status": status, "statusText": "", "httpVersion": "http/2.0",
                      "headers": resp_headers or [], "cookies": [], "content": content,
                      "redirectURL": "", "headersSize": -1, "bodySize": -1},
         "cache": {}, "timings": {"blocked": 1.5, "dns": -1, "ssl": -1, "connect": -1,
                                  "send": 0.5, "wait": 80, "receive": 38.5}}
    if post is not None:
        e["request"]["postData"] = {"mimeType": "application/json", "text": post}
    return e


def browser_har() -> dict:
    auth = _h(**{":authority": "api.openai.com", "authorization": f"Bearer {SECRET}",
                 "cookie": f"session={SECRET}", "content_type": "application/json",
                 "x_api_key": SECRET, "api_key": SECRET})
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!",
                                                       "refusal": None},
                               "finish_reason": "stop", "logprobs": None}],
                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    sse = "".join(f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': d, 'finish_reason': f}]})}\n\n"
                  for d, f in [({"role": "assistant", "content": ""}, None), ({"content": "Bonjour"}, None),
                               ({}, "stop")]) + "data: [DONE]\n\n"
    q = f"?api-key={SECRET}"
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"},
                    "pages": [], "entries": [
        _entry("GET", "https://chat.example.com/", 200, {"size": 10, "mimeType": "text/html",
                                                         "text": "<html></html>"}),
        _entry("OPTIONS", "https://api.openai.com/v1/chat/completions", 204, {"size": 0, "mimeType": ""}),
        _entry("POST", "https://api.openai.com/v1/chat/completions" + q, 200,
               {"size": 300, "mimeType": "application/json", "text": json.dumps(completion)},
               json.dumps({"model": "gpt-4o", "messages": [U("Hi")]}), auth,
               _h(content_type="application/json", set_cookie=f"__cf_bm={SECRET}",
                  openai_organization="org-1"), t=1),
        _entry("POST", f"https://user:{SECRET}@proxy.example.com/openai/v1/chat/completions", 200,
               {"size": len(sse), "mimeType": "text/event-stream", "text": sse},
               json.dumps({"model": "gpt-4o", "stream": True, "messages": [U("Salut")]}), auth,
               _h(content_type="text/event-stream; charset=utf-8"), t=2),
        _entry("GET", "https://api.openai.com/v1/files/file-1/content", 200,
               {"size": 4, "mimeType": "image/png",
                "text": base64.b64encode(b"\x89PNG").decode(), "encoding": "base64"},
               None, auth, _h(content_type="image/png"), t=3),
        _entry("POST", "https://api.openai.com/v1/embeddings", 200,
               {"size": 500, "mimeType": "application/json"},  # body not captured
               json.dumps({"model": "e", "input": "x"}), auth, t=4),
        _entry("POST", "https://api.openai.com/v1/chat/completions", 401,
               {"size": 20, "mimeType": "application/json", "text": '{"error": {}}'},
               json.dumps({"model": "gpt-4o", "messages": [U("no key")]}), auth, t=5),
    ]}}


def test_a_browser_har_exports_its_api_calls_and_no_secret(tmp_path):
    har = tmp_path / "chrome.har"
    har.write_text(json.dumps(browser_har()))
    assert export.detect(str(har)) == "har"
    out = tmp_path / "sessions"
    res = export.export_md([str(har)], str(out))
    assert res.exchanges == 3 and len(res.files) == 3
    reasons = [s.reason for s in res.skipped]
    assert reasons == ["GET https://chat.example.com/: not under /v1",
                       "OPTIONS /v1/chat/completions: not an API call",
                       "POST /v1/embeddings: the response body was not captured",
                       "POST /v1/chat/completions: status 401"], reasons
    sessions = [sf.read(f) for f in res.files]
    hello = next(s for s in sessions if s.kind == "chat" and s.messages[-1].get("content") == "Hello!")
    assert hello.params == {"model": "gpt-4o"} and hello.messages[0] == U("Hi")
    meta = hello.responses[1]
    assert meta["upstream"] == "https://api.openai.com/v1" and meta["at"] == "2025-05-01T12:00:01.120+00:00"
    assert meta["ms"] == {"ttfb": 82.0, "total": 120.5}
    salut = next(s for s in sessions if s.kind == "chat" and s.messages[0] == U("Salut"))
    assert salut.messages[1]["content"] == "Bonjour" and salut.responses[1]["stream"] is True
    assert salut.responses[1]["upstream"] == "https://proxy.example.com/openai/v1"
    png = next(s for s in sessions if s.kind == "generic")
    assert png.endpoint == "GET /v1/files/file-1/content" and png.exchanges[0].body == b"\x89PNG"
    # and back to HAR: nothing secret either way
    assert export.export_har([str(out)], str(tmp_path / "again.har")) == 3
    assert_no_secret(every_file(out))
    assert_no_secret({tmp_path / "again.har": (tmp_path / "again.har").read_bytes()})


def test_rechat_har_keeps_paths_of_an_upstream_serving_at_its_root(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "models.md").write_text(sf.render_generic("GET /v1/models", [sf.GenericExchange(
        b"", 200, b'{"data": []}', {"at": "2025-01-01T00:00:00.000+00:00", "status": 200,
                                    "upstream": "http://127.0.0.1:4010", "ms": {"ttfb": 1.0, "total": 2.0},
                                    "headers": [["Content-Type", "application/json"]]})]))
    har = export.to_har([str(folder)])
    (e,) = har["log"]["entries"]
    assert e["request"]["url"] == "http://127.0.0.1:4010/models"
    ex = export.har_exchange(e)
    assert (ex.request.path, ex.upstream, ex.response.body) == ("/v1/models", "http://127.0.0.1:4010",
                                                                b'{"data": []}')


@pytest.mark.parametrize("url, parts", [
    ("https://api.openai.com/v1/chat/completions", ("https://api.openai.com/v1", "/v1/chat/completions", "")),
    (f"https://k:{SECRET}@h/x/v1/models?key={SECRET}&a=2", ("https://h/x/v1", "/v1/models", "a=2")),
    ("http://127.0.0.1:8000/v1", ("http://127.0.0.1:8000/v1", "/v1", "")),
    ("https://example.com/v1beta/models", None),
    ("https://example.com/", None),
])
def test_split_url(url, parts):
    assert export.split_url(url) == parts


# ---------------------------------------------------------------------------------------------
# mitmproxy flow files (the original rechat's flows_*.dump)


def test_without_mitmproxy_a_flow_file_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mitmproxy", None)  # as if not installed
    f = tmp_path / "flows_20240101.dump"
    f.write_bytes(b"1234:5:hello,}")
    assert export.detect(str(f)) == "mitm"
    with pytest.raises(ExportError, match=re.escape("pip install 'rechat[mitm]'")):
        export.export_md([str(f)], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_mitmproxy_flow_file_exports_like_a_recording(tmp_path):
    pytest.importorskip("mitmproxy", reason="mitmproxy is the optional extra rechat[mitm]")
    from mitmproxy import http, io
    from mitmproxy.test import tflow

    def flow(method, url, body, status, resp_body, resp_headers, t, gzipped=False):
        f = http.HTTPFlow(tflow.tclient_conn(), tflow.tserver_conn())
        f.request = http.Request.make(method, url, body, {
            "Authorization": f"Bearer {SECRET}", "api-key": SECRET, "x-api-key": SECRET,
            "Content-Type": "application/json"})
        f.request.timestamp_start, f.request.timestamp_end = t, t + 0.01
        f.response = http.Response.make(status, b"", resp_headers)
        if gzipped:
            f.response.headers["content-encoding"] = "gzip"
        f.response.content = resp_body  # mitmproxy encodes it as the headers say
        f.response.timestamp_start, f.response.timestamp_end = t + 0.25, t + 0.5
        return f

    def completion(text):
        return json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}]}).encode()

    q = f"?api-key={SECRET}"
    turn1 = [U("one")]
    turn2 = turn1 + [{"role": "assistant", "content": "First."}, U("two")]
    sse = (b'data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
           b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Streamed."},'
           b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    json_h = {"Content-Type": "application/json", "Set-Cookie": f"a={SECRET}"}
    flows = [
        flow("POST", "https://api.openai.com/v1/chat/completions" + q,
             json.dumps({"model": "gpt-4o", "messages": turn1}).encode(), 200, completion("First."),
             json_h, 1700000000.0, gzipped=True),
        flow("POST", "https://api.openai.com/v1/chat/completions",
             json.dumps({"model": "gpt-4o", "messages": turn2}).encode(), 200, completion("Second."),
             json_h, 1700000001.0),
        flow("POST", "https://api.openai.com/v1/chat/completions",
             json.dumps({"model": "gpt-4o", "stream": True, "messages": [U("s")]}).encode(), 200, sse,
             {"Content-Type": "text/event-stream"}, 1700000002.0),
        flow("POST", "https://api.openai.com/v1/chat/completions",
             json.dumps({"model": "gpt-4o", "messages": [U("bad")]}).encode(), 429, b"{}", json_h,
             1700000003.0),
        tflow.ttcpflow(),
    ]
    path = tmp_path / "flows_20240101-120000.dump"
    with open(path, "wb") as fo:
        w = io.FlowWriter(fo)
        for f in flows:
            w.add(f)
    assert export.detect(str(path)) == "mitm"
    res = export.export_md([str(path)], str(tmp_path / "sessions"))
    assert res.exchanges == 3 and len(res.files) == 2
    assert [s.reason for s in res.skipped] == ["POST /v1/chat/completions: status 429",
                                               "not an HTTP flow (TCPFlow)"]
    sessions = sorted((sf.read(f) for f in res.files), key=lambda s: len(s.messages))
    streamed, convo = sessions
    assert [m.get("content") for m in convo.messages] == ["one", "First.", "two", "Second."]
    assert convo.responses[1]["ms"] == {"ttfb": 250.0, "total": 500.0}
    assert convo.responses[1]["at"] == "2023-11-14T22:13:20.500+00:00"
    assert streamed.messages[1]["content"] == "Streamed." and streamed.responses[1]["stream"] is True
    assert_no_secret(every_file(tmp_path / "sessions"))


# ---------------------------------------------------------------------------------------------
# The command


def test_main_usage_and_errors(tmp_path, capsys):
    assert export.main(None, None, "x") == 2
    assert export.main(["a"], "b", "x") == 2
    assert "either --md DUMP... or --har SESSIONS -o FILE" in capsys.readouterr().err
    assert export.main(None, str(tmp_path), None) == 2
    assert "--har needs -o FILE" in capsys.readouterr().err
    assert export.main([str(tmp_path / "nope.jsonl")], None, str(tmp_path / "o")) == 1
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.har"
    bad.write_text('{"log": {}}')
    assert export.main([str(bad)], None, str(tmp_path / "o")) == 1
    assert "not a HAR file (no log.entries)" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.md").write_text("### nobody\n<blockquote>\nx\n</blockquote>\n")
    assert export.main(None, str(broken), str(tmp_path / "o.har")) == 0
    io = capsys.readouterr()
    assert "wrote 0 entries" in io.out and "unknown role 'nobody'" in io.err


def test_a_har_body_is_decoded_so_its_encoding_headers_go(tmp_path):
    # mitmproxy's and browsers' HAR keep Content-Encoding while content.text is decoded.
    e = _entry("GET", "https://api.openai.com/v1/models", 200,
               {"size": 12, "mimeType": "application/json", "text": '{"data": []}'}, None, [],
               _h(content_type="application/json", content_encoding="br", content_length="9"))
    ex = export.har_exchange(e)
    assert ex.response.headers == [("content-type", "application/json")]
    assert ex.response.body == b'{"data": []}' and ex.request.query == ""


@pytest.mark.parametrize("name, data, fmt", [
    ("flows_1.jsonl", b'{"v":1,"id":1,"request":{"body":"' + b"log" * 40_000 + b'"}}\n', "dump"),
    ("x.txt", b'{"kind":"record","v":1,"request":{}}\n', "dump"),
    ("empty.jsonl", b"", "dump"),
    ("chrome.har", b'{\n  "log": {\n    "version": "1.2"}}', "har"),
    ("har.json", b'{"log": {}}', "har"),
    ("flows_1.dump", b"1234:5:hello,}", "mitm"),
])
def test_detect_sniffs_the_format(tmp_path, name, data, fmt):
    (tmp_path / name).write_bytes(data)
    assert export.detect(str(tmp_path / name)) == fmt
