"""The session file format (rechat/sessionfile.py, docs/format.md): golden files, exact round
trips proved with hypothesis, errors at the right line, atomic writes.

Golden files live in tests/sample_data/: the ones in `CHAT_GOLDEN`/`GENERIC_GOLDEN`/
`FORM_GOLDEN` are what the code renders for the data below (rewrite them with
`RECHAT_UPDATE_GOLDEN=1`), the ones in `HAND_WRITTEN`/`HAND_WRITTEN_FORMS` are written by hand
and only read. docs/format.md embeds golden files between
`<!-- golden: NAME -->` and a ````markdown fence; `RECHAT_UPDATE_DOCS=1` rewrites those blocks.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
from pathlib import Path

import mistune
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rechat import forms
from rechat import sessionfile as sf
from rechat.errors import SessionFormatError
from rechat.exchange import CHAT_PATH, Exchange, Request, Response
from rechat.fingerprint import normalize_message
from rechat.store import Store

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "sample_data"
DOC = HERE.parent / "docs" / "format.md"
README = HERE.parent.parent / "shared" / "seeds" / "rechat-README.md"
UPDATE_GOLDEN = bool(os.environ.get("RECHAT_UPDATE_GOLDEN"))
UPDATE_DOCS = bool(os.environ.get("RECHAT_UPDATE_DOCS"))


def norm(messages: list) -> list:
    return [normalize_message(m) for m in messages]


def roundtrip(params: dict, messages: list, responses: dict | None = None) -> sf.Session:
    return sf.parse(sf.render_chat(params, messages, responses), "t.md")


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


# ---------------------------------------------------------------------------------------------
# Golden data: what the code renders for these must equal tests/sample_data/NAME byte for byte.

T0 = "2025-03-14T09:26:53.589+00:00"
T1 = "2025-03-14T09:27:10.114+00:00"
UPSTREAM = "https://api.openai.com/v1"

COMPLETION_META = {
    "at": T0, "status": 200, "upstream": UPSTREAM, "ms": {"ttfb": 412.3, "total": 418.9},
    "stream": False,
    "completion": {
        "id": "chatcmpl-BAbc123XYZ", "object": "chat.completion", "created": 1741944413,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"refusal": None}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 23, "completion_tokens": 2, "total_tokens": 25},
        "service_tier": "default", "system_fingerprint": "fp_06737a9306",
    },
}

_CHUNK = {"id": "chatcmpl-BAdef456", "object": "chat.completion.chunk", "created": 1741944430,
          "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_06737a9306"}


def _sse(delta: dict, finish=None) -> str:
    return json.dumps({**_CHUNK, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}]}, separators=(",", ":"))


STREAM_META = {
    "at": T1, "status": 200, "upstream": UPSTREAM, "ms": {"ttfb": 230.1, "total": 301.7},
    "request": {"stream": True, "stream_options": {"include_usage": True}},
    "stream": True,
    "sse": [_sse({"role": "assistant", "content": "", "refusal": None}),
            _sse({"content": "About"}), _sse({"content": " 2.1 million."}),
            _sse({}, "stop"),
            json.dumps({**_CHUNK, "choices": [], "usage": {
                "prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}},
                separators=(",", ":")),
            "[DONE]"],
    "sse_ms": [230.1, 231.0, 262.4, 300.9, 301.2, 301.5],
}

SYSTEM = {"role": "system", "content": "You are a concise geography assistant."}
Q1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Paris."}
Q2 = {"role": "user", "content": "And its population?"}
A2 = {"role": "assistant", "content": "About 2.1 million."}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}

ESCAPE_TEXT = (
    "A block ends at a line that is exactly </blockquote>, like this one:\n"
    "</blockquote>\n"
    "  <blockquote>   \n"
    "\\</blockquote>\n"
    "### user\n"
    "<!-- rechat:response {} -->\n"
    "```python\n"
    "print('</blockquote>')\n"
    "```\n"
    "trailing spaces   \n"
    "\n"
)

# name -> (params, messages, responses by message index)
CHAT_GOLDEN: dict[str, tuple[dict, list, dict]] = {
    "chat_recorded.md": (
        {"model": "gpt-4o-mini", "temperature": 0.2},
        [SYSTEM, Q1, A1],
        {2: COMPLETION_META},
    ),
    "chat_multi_turn.md": (
        {"model": "gpt-4o-mini", "temperature": 0.2},
        [SYSTEM, Q1, A1, Q2, A2],
        {2: COMPLETION_META, 4: STREAM_META},
    ),
    "tool_calls.md": (
        {"model": "gpt-4o", "tools": [WEATHER_TOOL], "tool_choice": "auto"},
        [
            {"role": "user", "content": "Weather in Paris and Tokyo?"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_ABqdxV1uY2mO6Lc3YeqjAFDD", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
             "content": '{"temp_c": 14, "sky": "cloudy"}'},
            {"role": "tool", "tool_call_id": "call_ABqdxV1uY2mO6Lc3YeqjAFDD",
             "content": '{"temp_c": 21, "sky": "clear"}'},
            {"role": "assistant", "content": "Paris: 14 °C, cloudy.\nTokyo: 21 °C, clear."},
        ],
        {},
    ),
    "multipart.md": (
        {"model": "gpt-4o", "max_tokens": 300},
        [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {
                    "url": "https://upload.wikimedia.org/wikipedia/commons/a/a8/Tour_Eiffel.jpg",
                    "detail": "low"}},
            ]},
            {"role": "assistant", "content": "The **Eiffel Tower**, seen from below."},
        ],
        {},
    ),
    "names.md": (
        {"model": "gpt-4o"},
        [
            {"role": "developer", "content": "Answer in one word.", "name": "policy"},
            {"role": "user", "name": "alice", "content": "Capital of Japan?"},
            {"role": "user", "name": "Bob Smith", "content": "And of Italy?"},
            {"role": "assistant", "content": "Tokyo. Rome."},
        ],
        {},
    ),
    "reasoning.md": (
        {"model": "deepseek-reasoner"},
        [
            {"role": "user", "content": "Is 221 prime?"},
            {"role": "assistant",
             "reasoning_content": "221 = 13 × 17.\nSo it is not prime.",
             "content": "No: 221 = 13 × 17."},
            {"role": "user", "content": "Help me pick a lock."},
            {"role": "assistant", "refusal": "I can't help with that."},
        ],
        {},
    ),
    "escaping.md": (
        {"model": "gpt-4o"},
        [
            {"role": "user", "content": "\nShow me how blocks end.   "},
            {"role": "assistant", "content": ESCAPE_TEXT},
        ],
        {},
    ),
    "hidden_fields.md": (
        {"model": "gpt-4o-audio-preview", "modalities": ["text", "audio"],
         "audio": {"voice": "alloy", "format": "wav"}, "seed": 7, "stop": ["yes", "null"],
         "logit_bias": {"1734": -100}},
        [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!", "index": 0,
             "annotations": [{"type": "url_citation", "url_citation": {"url": "https://x.test"}}],
             "audio": {"id": "audio_abc123", "expires_at": 1741948013, "transcript": "Hi!"}},
        ],
        {1: {"status": 200, "note": "--> and > cannot close <!-- this comment -->"}},
    ),
    "chat_choices.md": (
        {"model": "gpt-4o-mini", "n": 2, "temperature": 1.2},
        [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Teal."}],
        {1: {"at": T0, "status": 200, "stream": False, "completion": {
            "id": "chatcmpl-BAcho1ce", "object": "chat.completion", "created": 1741944413,
            "model": "gpt-4o-mini-2024-07-18", "choices": [
                {"index": 0, "message": {"refusal": None}, "logprobs": None, "finish_reason": "stop"},
                {"index": 1, "message": {"refusal": None}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}},
            "choices": [{"role": "assistant", "content": "Crimson, like\n\n- a cardinal."}]}},
    ),
}

UPLOAD_PART = bytes(range(64))  # a blob in the golden file (the threshold lowered to 64 bytes)
UPLOAD = (b"--rechat-boundary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
          b"whisper-1\r\n--rechat-boundary\r\nContent-Disposition: form-data; name=\"file\"; "
          b"filename=\"hello.wav\"\r\nContent-Type: audio/wav\r\n\r\n" + UPLOAD_PART +
          b"\r\n--rechat-boundary--\r\n")

# name -> (endpoint, exchanges[, blob threshold])
GENERIC_GOLDEN: dict[str, tuple] = {
    "generic_embeddings.md": ("POST /v1/embeddings", [sf.GenericExchange(
        request_body=b'{"model": "text-embedding-3-small", "input": "hello"}',
        status=200,
        body=b'{"object": "list", "data": [{"object": "embedding", "index": 0, '
             b'"embedding": [0.1, -0.25, 3.5e-05]}], "model": "text-embedding-3-small", '
             b'"usage": {"prompt_tokens": 1, "total_tokens": 1}}\n',
        meta={"at": T0, "status": 200, "upstream": UPSTREAM, "ms": {"ttfb": 88.0, "total": 90.2},
              "headers": [["content-type", "application/json"], ["x-request-id", "req_42"]]})]),
    "generic_speech.md": ("POST /v1/audio/speech", [sf.GenericExchange(
        request_body=b'{"model": "tts-1", "voice": "alloy", "input": "Hi"}',
        status=200,
        body=bytes(range(256)) + b"\xff\xfb\x90\x00",
        meta={"at": T0, "status": 200, "headers": [["content-type", "audio/mpeg"]]})]),
    "generic_models.md": ("GET /v1/models?limit=2", [
        sf.GenericExchange(request_body=b"", status=200,
                           body=b'{"object": "list", "data": []}'),
        sf.GenericExchange(request_body=b"", status=404,
                           body=b"Not found: ```no such page```\n"),
    ]),
    "generic_upload.md": ("POST /v1/audio/transcriptions", [sf.GenericExchange(
        request_body=UPLOAD, status=200, body=b'{"text": "Hello."}',
        meta={"at": T0, "status": 200, "headers": [["content-type", "application/json"]]})], 64),
}


# ---------------------------------------------------------------------------------------------
# Golden data of the readable forms (rechat/forms.py): name -> (form, endpoint, turns), each
# turn (request JSON, response JSON or None, SSE events' data or None, meta so far).

def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _rmeta(at: str = T0, **extra) -> dict:
    return {"at": at, "status": 200, "upstream": UPSTREAM, "ms": {"ttfb": 512.4, "total": 530.8},
            **extra}


GEO = "You are a concise geography assistant."
WEATHER_FN = {"type": "function", "name": "get_weather", "description": "Current weather.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}
RESP = {"object": "response", "created_at": 1741476542, "status": "completed", "error": None,
        "incomplete_details": None, "model": "gpt-4o-mini-2024-07-18", "parallel_tool_calls": True,
        "store": True, "temperature": 1.0, "tool_choice": "auto", "top_p": 1.0}
USAGE = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 39}


def _msg(id_: str, text: str) -> dict:
    return {"id": id_, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}


def _ev(type_: str, n: int, **data) -> str:
    return json.dumps({"type": type_, "sequence_number": n, **data}, separators=(",", ":"))


_R2 = {"id": "resp_67ccd3a9da748190", **RESP, "instructions": GEO, "tools": [],
       "previous_response_id": "resp_67ccd2bed1ec8190", "usage": USAGE}
_M2 = _msg("msg_67ccd3aa0a408190", "Madrid.")
_P2 = {**_R2, "status": "in_progress", "output": [], "usage": None}
RESPONSES_STREAM = [
    _ev("response.created", 0, response=_P2), _ev("response.in_progress", 1, response=_P2),
    _ev("response.output_item.added", 2, output_index=0,
        item={**_M2, "status": "in_progress", "content": []}),
    _ev("response.content_part.added", 3, item_id=_M2["id"], output_index=0, content_index=0,
        part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""}),
    _ev("response.output_text.delta", 4, item_id=_M2["id"], output_index=0, content_index=0,
        delta="Madrid", logprobs=[], obfuscation="k2Rz"),
    _ev("response.output_text.delta", 5, item_id=_M2["id"], output_index=0, content_index=0,
        delta=".", logprobs=[], obfuscation="9Qe1xT"),
    _ev("response.output_text.done", 6, item_id=_M2["id"], output_index=0, content_index=0,
        text="Madrid.", logprobs=[]),
    _ev("response.content_part.done", 7, item_id=_M2["id"], output_index=0, content_index=0,
        part=_M2["content"][0]),
    _ev("response.output_item.done", 8, output_index=0, item=_M2),
    _ev("response.completed", 9, response={**_R2, "output": [_M2]}),
]

_CHUNK_C = {"id": "cmpl-8PhK3R2vWq", "object": "text_completion", "created": 1741944430,
            "model": "gpt-3.5-turbo-instruct"}


def _cc(choices: list, **extra) -> str:
    return json.dumps({**_CHUNK_C, "choices": choices, **extra}, separators=(",", ":"))


VECTORS = [[f32(x) for x in (0.0023064255, -0.009327292, -0.0028842222, 0.017162029)],
           [f32(x) for x in (-0.012416781, 0.0034576892, 0.021983337, -0.0068213074)]]
B64_VECTOR = base64.b64encode(struct.pack("<8f", *[f32(x / 7) for x in range(-4, 4)])).decode()

FORM_GOLDEN: dict[str, tuple[str, str, list]] = {
    "responses_turns.md": ("responses", "POST /v1/responses", [
        ({"model": "gpt-4o-mini", "instructions": GEO, "input": "What is the capital of France?"},
         {"id": "resp_67ccd2bed1ec8190", **RESP, "instructions": GEO,
          "output": [_msg("msg_67ccd2bf17f08190", "Paris.")], "previous_response_id": None,
          "tools": [], "usage": USAGE}, None,
         _rmeta(headers=[["content-type", "application/json"], ["x-request-id", "req_1"]])),
        ({"model": "gpt-4o-mini", "instructions": GEO, "stream": True,
          "previous_response_id": "resp_67ccd2bed1ec8190",
          "input": [{"role": "user", "content": "And of Spain?"}]},
         None, RESPONSES_STREAM, _rmeta(T1, request={"stream": True})),
    ]),
    "responses_tools.md": ("responses", "POST /v1/responses", [
        ({"model": "o4-mini", "reasoning": {"effort": "low", "summary": "auto"},
          "tools": [WEATHER_FN], "input": [{"role": "user", "content": "Weather in Paris?"}]},
         {"id": "resp_68a1f0c2e5d08190", **RESP, "model": "o4-mini-2025-04-16", "output": [
             {"id": "rs_68a1f0c3a1c48190", "type": "reasoning", "summary": [
                 {"type": "summary_text",
                  "text": "**Checking the weather**\n\nThe user wants Paris: call get_weather."}]},
             {"id": "fc_68a1f0c4b2d88190", "type": "function_call", "status": "completed",
              "arguments": '{"city":"Paris"}', "call_id": "call_w1DpT3", "name": "get_weather"}],
          "tools": [WEATHER_FN], "usage": USAGE}, None, _rmeta()),
        ({"model": "o4-mini", "reasoning": {"effort": "low", "summary": "auto"},
          "tools": [WEATHER_FN], "previous_response_id": "resp_68a1f0c2e5d08190",
          "input": [{"type": "function_call_output", "call_id": "call_w1DpT3",
                     "output": '{"temp_c": 14, "sky": "cloudy"}'}]},
         {"id": "resp_68a1f0c9f7e08190", **RESP, "model": "o4-mini-2025-04-16",
          "output": [_msg("msg_68a1f0ca08f48190", "Paris: 14 °C, cloudy.")],
          "tools": [WEATHER_FN], "usage": USAGE}, None, _rmeta(T1)),
    ]),
    "completion.md": ("completion", "POST /v1/completions", [
        ({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7,
          "temperature": 0},
         {"id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7", "object": "text_completion", "created": 1589478378,
          "model": "gpt-3.5-turbo-instruct", "system_fingerprint": "fp_44709d6fcb", "choices": [
              {"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None,
               "finish_reason": "length"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}, None, _rmeta()),
    ]),
    "completion_streamed.md": ("completion", "POST /v1/completions", [
        ({"model": "gpt-3.5-turbo-instruct", "prompt": ["Once upon a", "Roses are"],
          "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}},
         None, [_cc([{"text": " time", "index": 0, "logprobs": None, "finish_reason": None}],
                    usage=None),
                _cc([{"text": " red", "index": 1, "logprobs": None, "finish_reason": None}],
                    usage=None),
                _cc([{"text": ",", "index": 0, "logprobs": None, "finish_reason": "length"}],
                    usage=None),
                _cc([{"text": ",", "index": 1, "logprobs": None, "finish_reason": "length"}],
                    usage=None),
                _cc([], usage={"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}),
                "[DONE]"],
         _rmeta(request={"stream": True, "stream_options": {"include_usage": True}})),
    ]),
    "embeddings.md": ("embedding", "POST /v1/embeddings", [
        ({"model": "text-embedding-3-small", "input": ["The food was delicious.",
                                                       "The waiter was friendly."],
          "dimensions": 4, "encoding_format": "float"},
         {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v}
                                     for i, v in enumerate(VECTORS)],
          "model": "text-embedding-3-small", "usage": {"prompt_tokens": 10, "total_tokens": 10}},
         None, _rmeta(headers=[["content-type", "application/json"]])),
    ]),
    "embeddings_base64.md": ("embedding", "POST /v1/embeddings", [
        ({"model": "text-embedding-3-small", "input": "hello", "dimensions": 8,
          "encoding_format": "base64"},
         {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": B64_VECTOR}],
          "model": "text-embedding-3-small", "usage": {"prompt_tokens": 1, "total_tokens": 1}},
         None, _rmeta()),
    ]),
}


def form_golden(name: str) -> tuple[str, list[forms.Capture]]:
    form, endpoint, turns = FORM_GOLDEN[name]
    caps = [forms.capture(form, rq, rs, ev, meta) for rq, rs, ev, meta in turns]
    assert all(c is not None for c in caps), name
    return sf.render_form(form, endpoint, caps[0].params, [c.turn for c in caps]), caps


# Written by hand; read, never rendered: name -> [(request, reply object)] of each exchange
HAND_WRITTEN_FORMS: dict[str, list[tuple[dict, dict]]] = {
    "responses_hand_written.md": [
        ({"model": "gpt-4o", "input": "Hello?"}, {"id": "resp_hand_1", "output_text": "Hi!"}),
        ({"model": "gpt-4o", "previous_response_id": "resp_hand_1",
          "input": [{"role": "user", "content": "Weather in Paris?"}]},
         {"output_text": "", "call": ("get_weather", '{"city": "Paris"}')}),
    ],
    "embeddings_hand_written.md": [
        ({"model": "e", "input": "cat"}, {"vectors": [[0.5, -1.25]]}),
        ({"model": "e", "input": ["a", "b"]}, {"vectors": [[1.0, 0.0], [0.0, 1.0]]}),
    ],
}

# Written by hand; read, never rendered. name -> (params, messages, endpoint)
FRANCE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "Paris."}]
HAND_WRITTEN: dict[str, tuple[dict, list]] = {
    "france.md": ({}, FRANCE),
    "france_model.md": ({"model": "gpt-4o"}, FRANCE),
    "hand_written_forms.md": (
        {"model": "gpt-4o", "temperature": 0},
        [
            {"role": "system", "content": "Reply in French."},
            {"role": "user", "name": "alice", "content": "Hello **there**"},
            {"role": "assistant", "reasoning_content": "Greet back.", "content": "Bonjour !",
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "log", "arguments": '{"ok": true}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "logged"},
            {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                         {"type": "image_url",
                                          "image_url": {"url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": ""},
        ],
    ),
}


def test_golden_files_are_all_listed():
    listed = (set(CHAT_GOLDEN) | set(GENERIC_GOLDEN) | set(HAND_WRITTEN) | set(FORM_GOLDEN)
              | set(HAND_WRITTEN_FORMS))
    assert {p.name for p in SAMPLES.glob("*.md")} == listed


@pytest.mark.parametrize("name", sorted(CHAT_GOLDEN))
def test_chat_golden_file_is_rendered_exactly(name):
    params, messages, responses = CHAT_GOLDEN[name]
    text = sf.render_chat(params, messages, responses)
    if UPDATE_GOLDEN:
        (SAMPLES / name).write_text(text, encoding="utf-8", newline="")
    assert (SAMPLES / name).read_text(encoding="utf-8") == text


@pytest.mark.parametrize("name", sorted(GENERIC_GOLDEN))
def test_generic_golden_file_is_rendered_exactly(name):
    endpoint, exchanges, *blob_min = GENERIC_GOLDEN[name]
    blobs: dict[str, bytes] = {}
    text = sf.render_generic(endpoint, exchanges, blobs, *blob_min)
    if UPDATE_GOLDEN:
        (SAMPLES / name).write_text(text, encoding="utf-8", newline="")
        for sha, data in blobs.items():
            sf.write_blob(str(SAMPLES), sha, data)
    assert (SAMPLES / name).read_text(encoding="utf-8") == text
    for sha, data in blobs.items():
        assert (SAMPLES / "blobs" / sha).read_bytes() == data


@pytest.mark.parametrize("name", sorted(FORM_GOLDEN))
def test_form_golden_file_is_rendered_exactly(name):
    text, _ = form_golden(name)
    if UPDATE_GOLDEN:
        (SAMPLES / name).write_text(text, encoding="utf-8", newline="")
    assert (SAMPLES / name).read_text(encoding="utf-8") == text


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
@pytest.mark.parametrize("name", sorted(FORM_GOLDEN))
def test_form_golden_file_parses_back(name, line_end):
    form, endpoint, _ = FORM_GOLDEN[name]
    _, caps = form_golden(name)
    text = (SAMPLES / name).read_text(encoding="utf-8")
    s = sf.parse(text.replace("\n", line_end), str(SAMPLES / name))
    assert (s.kind, s.form, s.endpoint, s.params) == ("generic", form, endpoint, caps[0].params)
    assert len(s.exchanges) == len(caps)
    for ex, cap in zip(s.exchanges, caps):
        assert forms.matches(form, ex.request, ex.answer, cap)
        assert ex.meta == cap.turn.meta
    starts = [i + 1 for i, ln in enumerate(text.split("\n")) if ln.startswith("## request")]
    assert [ex.line for ex in s.exchanges] == starts


def _heading_lines(text: str) -> list[int]:
    # 1-based lines of the `### ` message headings outside <blockquote> blocks (not choices)
    out, inside = [], False
    for i, ln in enumerate(text.split("\n"), 1):
        inside = (inside or ln == "<blockquote>") and ln != "</blockquote>"
        if not inside and ln.startswith("### ") and " choice=" not in ln:
            out.append(i)
    return out


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
@pytest.mark.parametrize("name", sorted(CHAT_GOLDEN))
def test_chat_golden_file_parses_back(name, line_end):
    params, messages, responses = CHAT_GOLDEN[name]
    text = (SAMPLES / name).read_text(encoding="utf-8")
    s = sf.parse(text.replace("\n", line_end), name)
    assert (s.kind, s.endpoint) == ("chat", "POST /v1/chat/completions")
    assert s.params == params
    assert norm(s.messages) == norm(messages)
    assert s.responses == responses
    assert s.lines == _heading_lines(text)


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
@pytest.mark.parametrize("name", sorted(GENERIC_GOLDEN))
def test_generic_golden_file_parses_back(name, line_end):
    endpoint, exchanges, *_ = GENERIC_GOLDEN[name]
    text = (SAMPLES / name).read_text(encoding="utf-8")
    s = sf.parse(text.replace("\n", line_end), str(SAMPLES / name))  # blobs/ is beside it
    assert (s.kind, s.endpoint) == ("generic", endpoint)
    assert [(e.request_body, e.status, e.body, e.meta) for e in s.exchanges] == \
        [(e.request_body, e.status, e.body, e.meta) for e in exchanges]
    assert [e.line for e in s.exchanges] == \
        [i + 1 for i, ln in enumerate(text.split("\n")) if ln == "### request"]


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_file_parses(name, line_end):
    params, messages = HAND_WRITTEN[name]
    text = (SAMPLES / name).read_text(encoding="utf-8")
    s = sf.parse(text.replace("\n", line_end), name)
    assert s.kind == "chat" and s.params == params and s.responses == {}
    assert s.messages == messages


@pytest.mark.parametrize("name", sorted(FORM_GOLDEN))
def test_every_exchange_of_a_form_golden_file_answers_its_request(name):
    from rechat import answers
    store = Store([str(SAMPLES)])
    store.load()
    form, endpoint, turns = FORM_GOLDEN[name]
    for rq, rs, ev, _ in turns:
        for stream in (False, True):
            req = Request("POST", endpoint.split()[1], body=json.dumps(
                {**rq, "stream": stream, "user": "u"}).encode())
            hit = store.lookup(req, play=False)
            assert hit is not None and hit.answer.session == str(SAMPLES / name)
            if stream and form == "embedding":
                continue
            reply = answers.generic_reply(hit.answer, req)
            if not stream:
                want = rs if rs is not None else (
                    forms.rs.assemble([json.loads(e) for e in ev]) if form == "responses" else
                    forms.cc.assemble_text([json.loads(e) for e in ev if e != "[DONE]"]))
                assert forms.same(json.loads(reply.body), want)
            elif ev is not None:  # a recorded stream replays as recorded
                assert reply.events == [sf.forms.encode_event(
                    e, json.loads(e)["type"] if form == "responses" else None) for e in ev]


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN_FORMS))
def test_hand_written_form_file_answers_its_requests(name):
    from rechat import answers
    store = Store([str(SAMPLES)])
    store.load()
    assert store.errors == {}
    path = "/v1/responses" if name.startswith("responses") else "/v1/embeddings"
    for request, want in HAND_WRITTEN_FORMS[name]:
        req = Request("POST", path, body=json.dumps(request).encode())
        hit = store.lookup(req, play=False)
        assert hit is not None and hit.answer.session == str(SAMPLES / name), request
        obj = json.loads(answers.generic_reply(hit.answer, req).body)
        if "vectors" in want:
            assert [d["embedding"] for d in obj["data"]] == want["vectors"]
            assert obj["object"] == "list" and obj["model"] == "e"
            continue
        assert obj["object"] == "response" and obj["status"] == "completed"
        assert obj["id"] == want.get("id", obj["id"]) and obj["id"].startswith("resp_")
        texts = [p["text"] for i in obj["output"] if i["type"] == "message" for p in i["content"]]
        assert "".join(texts) == want["output_text"]
        if "call" in want:
            [call] = obj["output"]
            assert (call["name"], call["arguments"]) == want["call"]
            assert call["call_id"].startswith("call_rechat_") and call["status"] == "completed"


# ---------------------------------------------------------------------------------------------
# The README's example and the minimal hand-written form

FRANCE_TEXT = """\
### user
<blockquote>
What is the capital of France?
</blockquote>

### assistant
<blockquote>
Paris.
</blockquote>
"""


def test_france_example_is_the_readme_example_exactly():
    assert (SAMPLES / "france.md").read_text(encoding="utf-8") == FRANCE_TEXT
    assert (SAMPLES / "france_model.md").read_text(encoding="utf-8") == \
        "---\nmodel: gpt-4o\n---\n" + FRANCE_TEXT
    if README.exists():  # ../shared sits beside the project in every checkout and CI run
        block = re.search(r"```markdown\n(.*?)```", README.read_text(), re.S).group(1)
        assert block == FRANCE_TEXT


@pytest.mark.parametrize("text,params,lines", [
    (FRANCE_TEXT, {}, [1, 6]),
    ("---\nmodel: gpt-4o\n---\n" + FRANCE_TEXT, {"model": "gpt-4o"}, [4, 9]),
    ("---\nmodel: gpt-4o\n---\n\n" + FRANCE_TEXT, {"model": "gpt-4o"}, [5, 10]),
    ("---\n---\n" + FRANCE_TEXT, {}, [3, 8]),
    (FRANCE_TEXT.rstrip("\n"), {}, [1, 6]),  # no newline at the end of the file
    ("\ufeff" + FRANCE_TEXT, {}, [1, 6]),  # a byte order mark some editors add
    ("# Notes about France\n\nSome text the parser ignores.\n\n" + FRANCE_TEXT, {}, [5, 10]),
    (FRANCE_TEXT.replace("### user", "### User").replace("### assistant", "###   ASSISTANT  "),
     {}, [1, 6]),
    (FRANCE_TEXT.replace("<blockquote>", "   <blockquote> \t")
     .replace("</blockquote>", "  </blockquote>  "),
     {}, [1, 6]),
])
def test_minimal_hand_written_form(text, params, lines):
    for t in (text, crlf(text)):
        s = sf.parse(t, "france.md")
        assert (s.params, s.messages, s.lines, s.responses) == (params, FRANCE, lines, {})


def test_minimal_and_padded_blocks_read_the_same():
    padded = sf.render_chat({}, FRANCE)
    assert padded == ("### user\n\n<blockquote>\n\nWhat is the capital of France?\n\n"
                      "</blockquote>\n\n### assistant\n\n<blockquote>\n\nParis.\n\n</blockquote>\n")
    assert sf.parse(padded).messages == sf.parse(FRANCE_TEXT).messages == FRANCE


@given(st.lists(st.text(st.characters(exclude_characters="\n"), max_size=8),
                min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_unpadded_block_reads_its_lines_when_first_and_last_are_not_blank(lines):
    # Without padding, a content whose first or last line is blank needs the padding lines.
    assume(lines[0] not in ("", "\r") and lines[-1] not in ("", "\r"))
    text = "\n".join(lines)
    body = "\n".join(sf.quote(text)[2:-2])  # the escaped content lines, without the padding
    s = sf.parse(f"### user\n<blockquote>\n{body}\n</blockquote>\n")
    assert s.messages == [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------
# Structure: front matter, sections, padded blocks, hidden comments


def test_layout_of_a_recorded_file():
    text = (SAMPLES / "chat_recorded.md").read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[:4] == ["---", "model: gpt-4o-mini", "temperature: 0.2", "---"]
    assert [ln for ln in lines if ln.startswith("#")] == ["### system", "### user", "### assistant"]
    # every block: heading, blank, <blockquote>, blank, content, blank, </blockquote>
    for i, ln in enumerate(lines):
        if ln == "<blockquote>":
            assert lines[i - 1] == "" and lines[i - 2].startswith("### ") and lines[i + 1] == ""
        if ln == "</blockquote>":
            assert lines[i - 1] == ""
    assert lines[-2].startswith("<!-- rechat:response {") and lines[-2].endswith("} -->")
    assert text.endswith("-->\n") and "\r" not in text


def _visible_html(text: str) -> str:
    # What GitHub or VSCode show: the markdown rendered, HTML comments hidden.
    return re.sub(r"<!--.*?-->", "", mistune.html(text), flags=re.S)


def test_padding_makes_renderers_show_the_markdown_inside_the_block():
    msg = [{"role": "user", "content": "Hello **there**\n\n- one\n- two"}]
    html = _visible_html(sf.render_chat({}, msg))
    assert "<strong>there</strong>" in html and "<li>one</li>" in html
    unpadded = "### user\n<blockquote>\nHello **there**\n</blockquote>\n"
    assert "<strong>" not in mistune.html(unpadded)  # why rechat writes the padding lines
    assert sf.parse(unpadded).messages == [{"role": "user", "content": "Hello **there**"}]


@pytest.mark.parametrize("name", ["chat_recorded.md", "chat_multi_turn.md", "hidden_fields.md"])
def test_what_is_not_part_of_the_request_is_hidden_from_rendering(name):
    text = (SAMPLES / name).read_text(encoding="utf-8")
    html = _visible_html(text)
    for hidden in ("chatcmpl-", "1741944413", "prompt_tokens", "finish_reason", "ttfb", UPSTREAM,
                   "sse_ms", "include_usage", "data:", "audio_abc123", "url_citation", "note"):
        assert hidden not in html
    for shown in ("Paris.", "Say hi.", "Hi!"):
        assert shown in html or shown not in text


@pytest.mark.parametrize("value", [
    "-->", "a --> b", ">", "<!-- x -->", "--!>", "->", "<!-- rechat:response {} -->", "\n-->\n",
    "}} -->", "\u2028-->", "\r>", "\\u003e",
])
def test_angle_brackets_and_comment_ends_cannot_break_the_hidden_comment(value):
    meta = {"id": "SECRET" + value, value: [value, {"k": value}], "sse": [value + "data"]}
    msgs = [Q1, {"role": "assistant", "content": "ok", "audio": {"transcript": value}}]
    text = sf.render_chat({"model": "m"}, msgs, {1: meta})
    comments = [ln for ln in text.split("\n") if ln.startswith("<!-- rechat:")]
    assert len(comments) == 2  # rechat:fields and rechat:response, one line each
    for c in comments:
        assert c.endswith(" -->") and c.count("-->") == 1 and ">" not in c[:-3]
    s = sf.parse(text)
    assert s.responses == {1: meta} and s.messages == msgs
    assert "SECRET" not in _visible_html(text)


def test_comment_escapes_only_greater_than():
    assert sf.comment("response", {"a": "x>y", "é": 1}) == \
        '<!-- rechat:response {"a":"x\\u003ey","é":1} -->'


def test_ordinary_comments_and_text_outside_blocks_are_ignored():
    text = ("# Title\n\nA note.\n\n<!-- a note for people -->\n\n### user\n\nsome words\n\n"
            "<blockquote>\nhi\n</blockquote>\n\n> a quote\n\n- a list\n\n## Part two\n\n"
            "##### small\n\n###### smaller\n\n### assistant\n\n"
            "<blockquote>\nhello\n</blockquote>\n\n<!-- rechat:other {\"x\": 1} -->\n")
    s = sf.parse(text)
    assert s.messages == [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]
    assert s.responses == {}


def test_null_fields_are_not_written_and_null_equals_absent():
    m = {"role": "assistant", "content": "Paris.", "refusal": None, "name": None,
         "tool_calls": None, "audio": None, "function_call": None}
    text = sf.render_chat({"model": "m", "seed": None}, [Q1, m])
    assert "null" not in text.split("---", 2)[2] and "refusal" not in text
    s = sf.parse(text)
    assert s.params == {"model": "m", "seed": None}  # the front matter keeps what it is given
    assert s.messages[1] == {"role": "assistant", "content": "Paris."} == normalize_message(m)
    hand = "### user\n<blockquote>\nhi\n</blockquote>\n### assistant\n<!-- rechat:fields " \
           '{"refusal":null,"audio":null} -->\n<blockquote>\nyo\n</blockquote>\n'
    assert norm(sf.parse(hand).messages) == [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]


def test_hand_written_generic_session():
    text = ("---\nrechat:\n  endpoint: POST /v1/moderations\n---\n### request\n```json\n"
            '{"input": "hi"}\n```\n### response\n```text\nok\n```\n')
    s = sf.parse(text)
    assert [(e.request_body, e.status, e.body, e.meta) for e in s.exchanges] == \
        [(b'{"input": "hi"}', 200, b"ok", {})]


def test_endpoint_key_in_front_matter():
    default = sf.render_chat({"model": "m"}, FRANCE, endpoint="POST /v1/chat/completions")
    assert "rechat" not in default
    explicit = "---\nmodel: m\nrechat:\n  endpoint: POST /v1/chat/completions\n---\n" + FRANCE_TEXT
    s = sf.parse(explicit)
    assert (s.kind, s.params, s.messages) == ("chat", {"model": "m"}, FRANCE)
    g = sf.parse(sf.render_generic("GET /v1/models?limit=2&after=x", []))
    assert (g.kind, g.method, g.path, g.query) == \
        ("generic", "GET", "/v1/models", "limit=2&after=x")


# ---------------------------------------------------------------------------------------------
# Readable forms of every kind of message (see the golden files for the whole picture)


def _section(name: str, heading: str) -> list[str]:
    lines = (SAMPLES / name).read_text(encoding="utf-8").split("\n")
    i = lines.index(heading)
    j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("### ")), len(lines))
    return [ln for ln in lines[i:j] if ln]


def test_tool_calls_and_tool_results_read_as_headings_and_blocks():
    text = (SAMPLES / "tool_calls.md").read_text(encoding="utf-8")
    assert "#### tool_call get_weather id=call_DdmO9pD3xa9XTPNJ32zg2hcA\n\n<blockquote>\n\n" \
           '{"city": "Paris"}\n\n</blockquote>' in text
    assert "### tool tool_call_id=call_ABqdxV1uY2mO6Lc3YeqjAFDD\n" in text
    assert "rechat:fields" not in text


def test_tool_call_without_type_or_id_keeps_its_shape():
    calls = [{"function": {"name": "f", "arguments": ""}},
             {"id": 7, "type": "function", "function": {"name": "g.h", "arguments": "{}"}},
             {"id": None, "type": "function", "function": {"name": "k", "arguments": "x"}}]
    text = sf.render_chat({}, [{"role": "assistant", "tool_calls": calls}])
    assert "#### tool_call f type=null\n" in text and "#### tool_call g.h id=7\n" in text
    assert "#### tool_call k id=null\n" in text
    s = roundtrip({}, [{"role": "assistant", "tool_calls": calls}])
    assert s.messages[0]["tool_calls"] == calls


@pytest.mark.parametrize("call", [
    {"id": "c", "type": "custom", "custom": {"name": "x", "input": "y"}},  # another type
    {"id": "c", "type": "function", "index": 0, "function": {"name": "f", "arguments": ""}},
    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "", "x": 1}},
    {"id": "c", "type": "function", "function": {"name": "my tool", "arguments": "{}"}},
    {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}},
    {"id": ["c"], "type": "function", "function": {"name": "f", "arguments": "{}"}},
])
def test_unreadable_tool_calls_go_to_the_fields_comment(call):
    m = {"role": "assistant", "tool_calls": [{"id": "ok", "type": "function", "function": {
        "name": "g", "arguments": "{}"}}, call]}
    text = sf.render_chat({}, [m])
    assert "#### tool_call" not in text and '<!-- rechat:fields {"tool_calls":[' in text
    assert sf.parse(text).messages == [m]


def test_multi_part_content_reads_as_part_blocks():
    assert _section("multipart.md", "### user") == [
        "### user", "#### part text", "<blockquote>", "What is in this image?", "</blockquote>",
        "#### part image_url detail=low", "<blockquote>",
        "https://upload.wikimedia.org/wikipedia/commons/a/a8/Tour_Eiffel.jpg", "</blockquote>"]


def test_parts_without_a_readable_form_are_json_blocks():
    content = [{"type": "text", "text": "hi"}, {"type": "file", "file": {"file_id": "f1"}}, "raw"]
    text = sf.render_chat({}, [{"role": "user", "content": content}])
    assert "#### part\n\n<blockquote>\n\n" + '{"type": "file", "file": {"file_id": "f1"}}' in text
    assert "#### part text\n" in text
    assert sf.parse(text).messages[0]["content"] == content
    audio = [{"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}]
    text = sf.render_chat({}, [{"role": "user", "content": audio}])
    assert "#### part input_audio format=wav\n\n<blockquote>\n\nUklGR\n" in text
    assert sf.parse(text).messages[0]["content"] == audio


def test_names_are_heading_attributes_quoted_when_needed():
    assert _section("names.md", "### user name=alice")[0] == "### user name=alice"
    assert '### user name="Bob Smith"' in (SAMPLES / "names.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("value,written", [
    ("alice", "name=alice"), ("Bob Smith", 'name="Bob Smith"'), ("true", 'name="true"'),
    ("12", 'name="12"'), ("null", 'name="null"'), ("a\"b", 'name="a\\"b"'), ("", 'name=""'),
    ("Infinity", 'name="Infinity"'), ("é", 'name="é"'), ("x#", 'name="x#"'),
    ("user@example.com", "name=user@example.com"),
])
def test_heading_attribute_quoting(value, written):
    text = sf.render_chat({}, [{"role": "user", "name": value, "content": "x"}])
    assert text.startswith(f"### user {written}\n")
    assert sf.parse(text).messages[0]["name"] == value


def test_string_fields_are_labelled_blocks_when_their_name_can_be_a_label():
    m = {"role": "user", "content": "c", "note_1": "n", "Foo": "f", "part": "p", "a-b": "x"}
    text = sf.render_chat({}, [m])
    assert "#### note_1\n" in text and "#### content\n" in text
    assert '<!-- rechat:fields {"Foo":"f","part":"p","a-b":"x"} -->' in text
    assert sf.parse(text).messages == [m]
    hand = "### assistant\n#### Reasoning_Content\n<blockquote>\nr\n</blockquote>\n" \
           "#### CONTENT\n<blockquote>\nc\n</blockquote>\n"
    assert sf.parse(hand).messages == [
        {"role": "assistant", "reasoning_content": "r", "content": "c"}]


def test_hand_written_attribute_values():
    s = sf.parse('### user name=bob n=3 f=1.5 ok=true x="a b"\n<blockquote>\nhi\n</blockquote>\n')
    assert s.messages == [{"role": "user", "name": "bob", "n": 3, "f": 1.5, "ok": True,
                           "x": "a b", "content": "hi"}]


def test_reasoning_and_refusal_are_labelled_blocks():
    assert _section("reasoning.md", "### assistant")[:9] == [
        "### assistant", "#### reasoning_content", "<blockquote>", "221 = 13 × 17.",
        "So it is not prime.", "</blockquote>", "#### content", "<blockquote>",
        "No: 221 = 13 × 17."]
    text = (SAMPLES / "reasoning.md").read_text(encoding="utf-8")
    assert "#### refusal\n\n<blockquote>\n\nI can't help with that.\n" in text


def test_other_fields_go_to_the_fields_comment_or_heading():
    assert _section("hidden_fields.md", "### assistant index=0")[:2] == [
        "### assistant index=0",
        '<!-- rechat:fields {"annotations":[{"type":"url_citation","url_citation":'
        '{"url":"https://x.test"}}],"audio":{"id":"audio_abc123","expires_at":1741948013,'
        '"transcript":"Hi!"}} -->']


def test_escaped_marker_lines():
    text = (SAMPLES / "escaping.md").read_text(encoding="utf-8")
    assert "\n\\</blockquote>\n  \\<blockquote>   \n\\\\</blockquote>\n" in text
    assert "print('</blockquote>')" in text  # not alone on its line: left as it is


@pytest.mark.parametrize("line,written", [
    ("</blockquote>", "\\</blockquote>"), ("<blockquote>", "\\<blockquote>"),
    ("   </blockquote>  ", "   \\</blockquote>  "), ("</blockquote>\t\r", "\\</blockquote>\t\r"),
    ("\\</blockquote>", "\\\\</blockquote>"), ("\\\\\\<blockquote>", "\\\\\\\\<blockquote>"),
    ("    </blockquote>", "    </blockquote>"), ("</blockquote> x", "</blockquote> x"),
    ("</BLOCKQUOTE>", "</BLOCKQUOTE>"), ("<blockquote >", "<blockquote >"),
    ("\t</blockquote>", "\t</blockquote>"),
])
def test_escaping_rule(line, written):
    assert sf.quote(line) == ["<blockquote>", "", written, "", "</blockquote>"]
    s = sf.parse(f"### user\n<blockquote>\n{written}\n</blockquote>\n")
    assert s.messages[0]["content"] == line


# ---------------------------------------------------------------------------------------------
# Exact round trip, proved with hypothesis

ROLES = ["system", "developer", "user", "assistant", "tool", "function"]


def _marker_lines():
    return st.builds(
        lambda sp, bs, tag, tail: " " * sp + "\\" * bs + tag + tail,
        st.integers(0, 5), st.integers(0, 3), st.sampled_from(["<blockquote>", "</blockquote>"]),
        st.sampled_from(["", " ", "  ", "\t", "\r", " \r", "\r ", " x", "\\"]))


NASTY_LINES = [
    "", " ", "  \t", "\r", "### user", "### assistant name=x", "#### content", "#### part text",
    "# title", "---", "----", "...", "===", "```", "```python", "~~~", "    code", "\tcode",
    "<!-- rechat:response {} -->", '<!-- rechat:fields {"a":1} -->', "<!-- x -->", "-->",
    "> quoted", "- item", "1. item", "<div>", "<blockquote >", "<BLOCKQUOTE>", "</blockquote >x",
    "\u2028", "\u2029", "\x00", "\ufeff", "\x85", "\x0b\x0c", "\x1c", "Paris.", "| a | b |",
]
_pieces = st.one_of(st.sampled_from(NASTY_LINES), _marker_lines(), st.text(max_size=10))
_separators = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "", " ", "\n\n"])
nasty_text = st.builds(
    lambda pieces, head, tail: head + "".join(p + s for p, s in pieces) + tail,
    st.lists(st.tuples(_pieces, _separators), max_size=5),
    st.sampled_from(["", "", "\n", "\n\n", "\r\n", " "]),
    st.sampled_from(["", "", "\n", "\n\n", " ", "\r", "\r\n"]))
texts = st.one_of(nasty_text, st.text(max_size=20))

YAMLISH = ["yes", "no", "on", "off", "null", "Null", "~", "1e3", "1.0", "0x1F", "0o7", "01",
           "true", "2001-12-14", "12:30", "1_000", ".inf", "-.inf", ".nan", "-", ":", "? x",
           "@x", "'", '"', "#", "# c", "---", "...", "= x", "!tag", "&a", "*a", "|", ">", "%x",
           "[1]", "{a: 1}", " lead", "trail ", "a: b", "a #b", "\t"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=False, allow_infinity=False), texts, st.sampled_from(YAMLISH))
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=3),
    max_leaves=5)
field_names = st.one_of(
    st.sampled_from(["name", "tool_call_id", "reasoning_content", "refusal", "audio",
                     "annotations", "function_call", "index", "x", "Foo", "x.y", "my key",
                     "part", "tool_call", "tool_calls", "content", "a=b", "#", "", "ünï", "1a"]),
    st.text(max_size=8))
function_names = st.one_of(st.sampled_from(["get_weather", "a.b", "x-y", "1", "true", "null"]),
                           st.text(max_size=10))
tool_calls = st.builds(
    lambda id_, has_id, typ, name, args, extra: {
        **({"id": id_} if has_id else {}), **typ,
        "function": {"name": name, "arguments": args}, **extra},
    st.one_of(texts, st.none(), st.integers()), st.booleans(),
    st.sampled_from([{"type": "function"}, {"type": "function"}, {}, {"type": "custom"}]),
    function_names, texts, st.sampled_from([{}, {}, {}, {"index": 0}]))
parts = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(lambda u, d: {"type": "image_url", "image_url": {"url": u, **d}}, texts,
              st.sampled_from([{}, {"detail": "low"}, {"detail": "a b"}, {"my key": 1},
                               {"detail": None}, {"detail": 3}])),
    st.builds(lambda d, f: {"type": "input_audio", "input_audio": {"data": d, "format": f}},
              texts, texts),
    st.dictionaries(texts, json_values, max_size=3), json_values)
contents = st.one_of(st.none(), texts, texts, st.lists(parts, max_size=4), json_values)


chat_messages = st.builds(
    lambda extra, message: {**extra, **message},
    st.dictionaries(field_names.filter(lambda k: k != "role"), json_values, max_size=3),
    st.fixed_dictionaries({"role": st.sampled_from(ROLES)}, optional={
        "content": contents, "name": texts, "tool_call_id": texts,
        "tool_calls": st.lists(tool_calls, max_size=3), "reasoning_content": texts,
        "refusal": st.one_of(st.none(), texts)}))


params_st = st.dictionaries(
    st.one_of(field_names, st.sampled_from(["model", "temperature", *YAMLISH]), texts)
    .filter(lambda k: k != "rechat"),
    json_values, max_size=4)
metas = st.dictionaries(texts, json_values, max_size=3)


def _chat(params: dict, turns: list) -> tuple[dict, list, dict]:
    messages = [m for m, _ in turns]
    responses = {i: meta for i, (m, meta) in enumerate(turns)
                 if meta is not None and m["role"] == "assistant"}
    return params, messages, responses


# (params, messages, responses by index of an assistant message)
chats = st.builds(_chat, params_st,
                  st.lists(st.tuples(chat_messages, st.one_of(st.none(), metas)), max_size=4))


HYPO = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@given(chats)
@settings(max_examples=500, **HYPO)
def test_chat_session_round_trips_exactly(chat):
    params, messages, responses = chat
    text = sf.render_chat(params, messages, responses)
    s = sf.parse(text, "t.md")
    assert (s.kind, s.params, s.responses) == ("chat", params, responses)
    assert norm(s.messages) == norm(messages)
    assert len(s.lines) == len(messages)
    assert sf.render_chat(s.params, s.messages, s.responses) == text  # and renders the same


@given(texts)
@settings(max_examples=1000, **HYPO)
def test_any_content_text_round_trips_exactly(text):
    for role in ("user", "assistant"):
        msgs = [{"role": role, "content": text, "reasoning_content": text}]
        assert roundtrip({}, msgs).messages == msgs


@given(st.dictionaries(st.one_of(texts, st.sampled_from(YAMLISH)).filter(lambda k: k != "rechat"),
                       json_values, max_size=6))
@settings(max_examples=150, **HYPO)
def test_front_matter_round_trips_any_json_params(params):
    s = roundtrip(params, FRANCE)
    assert s.params == params and s.messages == FRANCE
    assert json.dumps(s.params, sort_keys=True) == json.dumps(params, sort_keys=True)


@pytest.mark.parametrize("params", [
    {"model": "gpt-4o", "temperature": 1, "top_p": 1.0, "n": 10**30, "x": 1e-07, "y": -0.0},
    {"stop": ["yes", "no", "null", "~", "1e3", "0x1F", "01", "2001-12-14", "true", "", " "]},
    {"model": "模型", "emoji": "🙂", "nel": "a\x85b", "ls": "a\u2028b", "nul": "\x00",
     "bom": "\ufeff", "cr": "x\ry", "multi": "line 1\nline 2\n\n---\n"},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": ["string", "null"]}}}}}},
    {"yes": True, "null": None, "1": 1, "": "", "-": "-", "a\nb": [], "e": {}},
])
def test_front_matter_keeps_yaml_lookalikes_and_types(params):
    s = roundtrip(params, FRANCE)
    assert s.params == params
    assert [type(v) for v in s.params.values()] == [type(v) for v in params.values()]


def test_hand_written_front_matter_is_read_as_yaml_1_1():
    s = sf.parse("---\na: yes\nb: off\nc: ~\nd: 1e3\ne: 1.0e+3\nf: 1000\ng: '1.5'\n---\n")
    assert s.params == {"a": True, "b": False, "c": None, "d": "1e3", "e": 1000.0, "f": 1000,
                        "g": "1.5"}


endpoints = st.builds(
    lambda m, p, q: f"{m} /v1/{p}" + (f"?{q}" if q else ""),
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    st.from_regex(r"[a-z0-9_./-]{0,20}", fullmatch=True),
    st.from_regex(r"[a-z0-9=&%._-]{0,12}", fullmatch=True))
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    texts.map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"", b"\n", b"```", b"````\n```\n", b"\xff\xfe", b"~~~\nx\n~~~", b"{}\r\n",
                     b"\x00", b"```json\n{}\n```"]))
generic_exchanges = st.builds(
    lambda rq, status, body, meta: sf.GenericExchange(rq, status, body, meta),
    bodies, st.integers(100, 599), bodies, metas)


@given(endpoints.filter(lambda e: not e.endswith(" /v1/chat/completions")),
       st.lists(generic_exchanges, max_size=3))
@settings(max_examples=200, **HYPO)
def test_generic_session_round_trips_exact_bytes(endpoint, exchanges):
    text = sf.render_generic(endpoint, exchanges)
    s = sf.parse(text, "g.md")
    assert (s.kind, s.endpoint) == ("generic", endpoint)
    assert [(e.request_body, e.status, e.body, e.meta) for e in s.exchanges] == \
        [(e.request_body, e.status, e.body, e.meta) for e in exchanges]


@given(chats, st.lists(chat_messages, min_size=1, max_size=3), metas, st.booleans())
@settings(max_examples=100, **HYPO)
def test_appending_a_turn_parses_to_the_whole_conversation(chat, new, meta, local_index):
    params, messages, responses = chat
    text = sf.render_chat(params, messages, responses)
    if local_index:  # what Store._record_chat does: the new messages numbered from 0
        lines = sf.render_messages(new, {len(new) - 1: meta}, 0)
    else:
        lines = sf.render_messages(new, {len(messages) + len(new) - 1: meta}, len(messages))
    appended = text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    s = sf.parse(appended, "t.md")
    assert s.params == params
    assert norm(s.messages) == norm(messages + new)
    assert s.responses == {**responses, len(messages) + len(new) - 1: meta}


# Regressions the properties found (each failed before the fix in sessionfile.py).

@pytest.mark.parametrize("message", [
    {"role": "system", "#": ""},  # a field named "#" was a `#### #` heading: parse crashed
    {"role": "system", "#": False},  # `### system #=false` could not be read back
    {"role": "system", "a=b": False},  # read back as {"a": "b=false"}
    {"role": "user", "my key": 1, "Foo": "x", "part": "p", "tool_call": "t", "1a": 2},
    {"role": "user", "name": {"first": "Ann"}, "tool_call_id": [1, 2]},  # non-scalar heading field
    {"role": "assistant", "refusal": {"reason": "policy"}},  # render raised ValueError
    {"role": "assistant", "refusal": False, "tool_calls": 0},
    {"role": "assistant", "tool_calls": "not a list"},  # render raised TypeError
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "my key": 1}}]},
])
def test_regression_fields_without_a_readable_form_round_trip(message):
    assert roundtrip({}, [message]).messages == [message]


def test_regression_nel_in_front_matter_round_trips():
    # PyYAML wrote U+0085 raw in single quotes and read it back as a space.
    params = {"\x85": "a\x85b", "k": "\x85"}
    assert roundtrip(params, []).params == params


# ---------------------------------------------------------------------------------------------
# Errors: reported with the path and the line where the problem is

HEAD = """\
---
model: gpt-4o
---

### system

<blockquote>

Be brief.

</blockquote>

"""  # 12 lines: the cases below start on line 13

ERRORS = [
    # (text after HEAD, expected line, words the message must hold)
    ("### usr\n<blockquote>\nhi\n</blockquote>\n", 13, ["unknown role", "usr"]),
    ("\n### user\n\n<blockquote>\n\nhi\n", 16, ["<blockquote>", "never closed"]),
    ("### user\n<blockquote>\nhi\n\n### assistant\n<blockquote>\nyo\n</blockquote>\n", 14,
     ["never closed"]),
    ("### user\n<blockquote>\nhi\n\n### assistant\n\nyo\n", 14, ["never closed"]),
    ("### user\n<blockquote class=x>\nhi\n</blockquote>\n", 14, ["never closed"]),
    ("### user\n\n#### content\n\n### assistant\n<blockquote>\nyo\n</blockquote>\n", 15,
     ["#### content", "no <blockquote>"]),
    ("### assistant\n<blockquote>\nyo\n</blockquote>\n\n#### reasoning_content\n", 18,
     ["#### reasoning_content", "no <blockquote>"]),
    ("### user\n#### part text\n#### part text\n<blockquote>\nx\n</blockquote>\n", 14,
     ["#### part", "no <blockquote>"]),
    ("### user\n<blockquote>\nhi\n</blockquote>\n\n<blockquote>\nagain\n</blockquote>\n", 18,
     ["second <blockquote>", "#### heading"]),
    ("### user\n#### content\n<blockquote>\na\n</blockquote>\n<blockquote>\nb\n</blockquote>\n",
     18, ["second <blockquote>"]),
    ("### user\n<blockquote>\nhi\n</blockquote>\n<!-- rechat:response {bad} -->\n", 17,
     ["rechat:response", "not valid JSON"]),
    ("### user\n\n<!-- rechat:fields [1] -->\n", 15, ["rechat:fields", "JSON object"]),
    ("### user\n#### content\n<blockquote>\na\n</blockquote>\n#### content\n<blockquote>\nb\n"
     "</blockquote>\n", 18, ["content", "twice"]),
    ("### user\n<blockquote>\na\n</blockquote>\n#### part text\n<blockquote>\nb\n</blockquote>\n",
     13, ["both content and #### part"]),
    ("### user\n#### part\n<blockquote>\nnot json\n</blockquote>\n", 15, ["part", "JSON"]),
    ("### assistant\n#### tool_call id=c1\n<blockquote>\n{}\n</blockquote>\n", 14,
     ["tool_call", "function name"]),
    ("### user foo\n", 13, ["unexpected 'foo'", "key=value"]),
    ("### user role=assistant\n<blockquote>\nhi\n</blockquote>\n", 13, ["role= attribute"]),
    ('### user name="abc\n', 13, ["bad quoted value"]),
    ("###\n", 13, ["empty ### heading"]),
    ("### user\n#### #\n<blockquote>\nx\n</blockquote>\n", 14, ["empty #### heading"]),
]


def _error(text: str, file: str = "sessions/broken.md") -> SessionFormatError:
    with pytest.raises(SessionFormatError) as e:
        sf.parse(text, file)
    return e.value


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
@pytest.mark.parametrize("text,line,words", ERRORS)
def test_error_is_reported_at_its_line(text, line, words, line_end):
    e = _error((HEAD + text).replace("\n", line_end))
    assert (e.path, e.line) == ("sessions/broken.md", line), e
    assert str(e).startswith(f"sessions/broken.md:{line}: ")
    for w in words:
        assert w in e.message, e


@pytest.mark.parametrize("text,line,words", [
    ("<blockquote>\nhi\n</blockquote>\n", 1, ["before any ### role heading"]),
    ("Intro.\n\n<blockquote>\nhi\n</blockquote>\n### user\n", 3, ["before any ### role"]),
    ("---\nmodel: m\n---\n\n<blockquote>\nhi\n</blockquote>\n", 5, ["before any ###"]),
    ("#### content\n<blockquote>\nhi\n</blockquote>\n", 1, ["before any ### role"]),
    ('<!-- rechat:response {"id": 1} -->\n### user\n', 1, ["outside a message section"]),
    ("---\nmodel: gpt-4o\ntemperature: : 1\n---\n" + FRANCE_TEXT, 3, ["not valid YAML"]),
    ("---\nmodel: gpt-4o\nseed: 1\n  bad: indent\n---\n" + FRANCE_TEXT, 4, ["not valid YAML"]),
    ("---\n\n\nmodel: m\nx: [1, 2\ny: 3\n---\n", 6, ["not valid YAML"]),
    ("---\nmodel: gpt-4o\n" + FRANCE_TEXT, 1, ["front matter", "never closed"]),
    ("---\n- a\n- b\n---\n", 2, ["front matter must be a mapping"]),
    ("---\nmodel: m\nrechat: 5\n---\n", 4, ["`rechat`", "endpoint"]),
    ("---\nrechat:\n  endpoint: /v1/embeddings\n---\n", 4, ["`rechat`", "endpoint"]),
    ("---\nrechat:\n  endpoint: POST /v1/embeddings\n---\n### request\n### response OK\n", 6,
     ["status code"]),
    ("---\nrechat:\n  endpoint: POST /v1/embeddings\n---\n### reply\n", 5,
     ["### request or ### response"]),
    ("---\nrechat:\n  endpoint: POST /v1/embeddings\n---\n\n###\n", 6,
     ["### request or ### response"]),
    ("---\nrechat:\n  endpoint: POST /v1/x\n---\n### request\n```base64\n!!\n```\n", 6,
     ["base64"]),
    ("---\nrechat:\n  endpoint: POST /v1/x\n---\n<!-- rechat:response {} -->\n### request\n", 5,
     ["before any ### request"]),
])
def test_error_without_the_common_head(text, line, words):
    e = _error(text)
    assert e.line == line, e
    for w in words:
        assert w in e.message, e


def test_read_reports_the_path_and_non_utf8_files(tmp_path):
    f = tmp_path / "bad.md"
    f.write_text("### user\n<blockquote>\nhi\n", encoding="utf-8")
    with pytest.raises(SessionFormatError, match=re.escape(f"{f}:2: ")):
        sf.read(str(f))
    f.write_bytes(b"### user\n<blockquote>\n\xff\n</blockquote>\n")
    with pytest.raises(SessionFormatError) as e:
        sf.read(str(f))
    assert (e.value.path, e.value.line) == (str(f), 0) and "not UTF-8" in e.value.message
    g = tmp_path / "ok.md"
    g.write_bytes(crlf(FRANCE_TEXT).encode())
    assert sf.read(str(g)).messages == FRANCE


# ---------------------------------------------------------------------------------------------
# write_atomic


def test_write_atomic_creates_folders_and_writes_the_exact_text(tmp_path):
    f = tmp_path / "a" / "b" / "s.md"
    text = "line\r\nother\n\u2028é\n"
    sf.write_atomic(str(f), text)
    assert f.read_bytes() == text.encode("utf-8")
    assert os.listdir(f.parent) == ["s.md"]


def test_write_atomic_replaces_the_file_whole(tmp_path):
    f = tmp_path / "s.md"
    f.write_text("old " * 1000)
    with open(f) as reader:  # a reader that opened the old file keeps seeing all of it
        sf.write_atomic(str(f), "new\n")
        assert reader.read() == "old " * 1000
    assert f.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["s.md"]


def test_write_atomic_failure_leaves_the_old_file_and_no_temp_file(tmp_path):
    f = tmp_path / "s.md"
    f.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        sf.write_atomic(str(f), "half written\ud800")  # fails while writing the temp file
    assert f.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["s.md"]


def test_write_atomic_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    f = tmp_path / "s.md"
    f.write_text("old\n")
    temps = []

    def refuse(src, dst):
        temps.append((os.path.dirname(src), os.path.basename(src), Path(src).read_text()))
        raise PermissionError("no")

    monkeypatch.setattr(sf.os, "replace", refuse)
    with pytest.raises(PermissionError):
        sf.write_atomic(str(f), "new\n")
    assert f.read_text() == "old\n" and os.listdir(tmp_path) == ["s.md"]
    [(folder, name, text)] = temps  # the whole text went to `.s.md.*.tmp` beside the file
    assert folder == str(tmp_path) and re.fullmatch(r"\.s\.md\..+\.tmp", name) and text == "new\n"


# ---------------------------------------------------------------------------------------------
# What the sessions mean to the store (docs/format.md, "Answers"), on the golden files


def _req(messages: list, **params) -> Request:
    return Request("POST", CHAT_PATH, body=json.dumps({"messages": messages, **params}).encode())


def _store(folder: Path, files: dict[str, str]) -> Store:
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    s = Store([str(folder)])
    s.load()
    assert s.errors == {}
    return s


def test_every_assistant_section_of_the_golden_files_answers_the_request_above_it():
    store = Store([str(SAMPLES)])
    store.load()
    assert store.errors == {}
    count = 0
    for name, (params, messages, _) in {**CHAT_GOLDEN, **{
            k: (p, m, {}) for k, (p, m) in HAND_WRITTEN.items()}}.items():
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and i:
                hit = store.lookup(_req(messages[:i], **params, stream=True, user="u"), play=False)
                assert hit is not None and hit.answer.message == m, (name, i)
                count += 1
    assert count == store.answer_count - sum(len(x[1]) for x in GENERIC_GOLDEN.values()) - sum(
        len(x[2]) for x in FORM_GOLDEN.values()) - sum(len(x) for x in HAND_WRITTEN_FORMS.values())


def test_a_missing_parameter_matches_any_value(tmp_path):
    store = _store(tmp_path, {"any.md": FRANCE_TEXT, "model.md": "---\nmodel: gpt-4o\n---\n" +
                              FRANCE_TEXT.replace("Paris.", "Paris (gpt-4o).")})
    ask = [FRANCE[0]]
    assert store.lookup(_req(ask, model="gpt-4o", temperature=0.5)).answer.message["content"] == \
        "Paris (gpt-4o)."  # the file that names more of the request's params wins
    assert store.lookup(_req(ask, model="other")).answer.message["content"] == "Paris."
    assert store.lookup(_req(ask)).answer.message["content"] == "Paris."
    spain = {"role": "user", "content": "What is the capital of Spain?"}
    assert store.lookup(_req([spain])) is None


def test_several_answers_play_in_recorded_order_then_the_last_repeats(tmp_path):
    def answer(text: str, at: str | None) -> str:
        return sf.render_chat({"model": "m"}, [Q1, {"role": "assistant", "content": text}],
                              {1: {"at": at}} if at else {})
    files = {"b.md": answer("recorded first", T0), "a.md": answer("recorded last", T1),
             "z.md": answer("hand-written 2", None), "y.md": answer("hand-written 1", None)}
    store = _store(tmp_path, files)
    played = [store.lookup(_req([Q1], model="m")).answer.message["content"] for _ in range(6)]
    assert played == ["hand-written 1", "hand-written 2", "recorded first", "recorded last",
                      "recorded last", "recorded last"]
    restarted = _store(tmp_path, {})  # play counts live in memory: a restart starts over
    assert restarted.lookup(_req([Q1], model="m")).answer.message["content"] == "hand-written 1"


def test_an_assistant_section_at_the_top_answers_nothing(tmp_path):
    greeting = {"role": "assistant", "content": "Hello! Ask me about capitals."}
    text = sf.render_chat({}, [greeting, Q1, A1])
    store = _store(tmp_path, {"greet.md": text})
    assert store.answer_count == 1
    assert store.lookup(_req([])) is None
    assert store.lookup(_req([greeting, Q1])).answer.message == A1
    assert store.lookup(_req([Q1])) is None  # the request must hold every message above


def test_matching_ignores_stream_user_and_the_type_of_integral_numbers(tmp_path):
    store = Store([str(SAMPLES)])
    store.load()
    params, messages = HAND_WRITTEN["hand_written_forms.md"]
    assert params["temperature"] == 0
    req = _req(messages[:2], model="gpt-4o", temperature=0.0, stream=True,
               stream_options={"include_usage": True}, user="someone")
    assert store.lookup(req).answer.message == messages[2]
    assert store.lookup(_req(messages[:2], model="gpt-4o", temperature=0.5)) is None


def test_null_fields_in_the_request_equal_absent_ones(tmp_path):
    store = _store(tmp_path, {"two.md": (SAMPLES / "chat_multi_turn.md").read_text()})
    echoed = {**A1, "refusal": None, "tool_calls": [], "annotations": [], "audio": None}
    hit = store.lookup(_req([SYSTEM, Q1, echoed, Q2], model="gpt-4o-mini", temperature=0.2))
    assert hit.answer.message == A2


def test_a_broken_file_is_reported_and_its_last_good_version_kept(tmp_path):
    f = tmp_path / "france.md"
    store = _store(tmp_path, {"france.md": FRANCE_TEXT})
    f.write_text(FRANCE_TEXT.replace("</blockquote>\n\n### assistant", "\n### assistant"))
    store.reload_file(str(f))
    e = store.errors[str(f)]
    assert (e.path, e.line) == (str(f), 2) and "never closed" in e.message
    assert store.lookup(_req([FRANCE[0]])).answer.message == FRANCE[1]
    f.write_text(FRANCE_TEXT.replace("Paris.", "Paris, of course."))
    store.reload_file(str(f))
    assert store.errors == {}
    assert store.lookup(_req([FRANCE[0]])).answer.message["content"] == "Paris, of course."


def test_response_comment_keys_are_the_documented_ones():
    from rechat.answers import chat_answer, completion_for, generic_meta
    documented = {"at", "status", "upstream", "ms", "stream", "completion", "sse", "sse_ms",
                  "request"}
    body = json.dumps({"model": "m", "messages": [Q1], "stream": True, "user": "u"}).encode()
    req = Request("POST", CHAT_PATH, body=body)
    completion = {"id": "x", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Paris.", "refusal": None}}]}
    plain = Response(200, body=json.dumps(completion).encode(), ttfb_ms=1, total_ms=2)
    message, meta = chat_answer(Exchange(req, plain, upstream=UPSTREAM))
    assert message == A1 and set(meta) == documented - {"sse", "sse_ms"}
    assert meta["request"] == {"stream": True, "user": "u"} and set(meta["ms"]) == {"ttfb", "total"}
    # the completion keeps only what the section does not show: the message's null fields
    assert meta["completion"]["choices"][0]["message"] == {"refusal": None}
    events = [_sse({"role": "assistant", "content": "Paris."}), _sse({}, "stop"), "[DONE]"]
    streamed = Response(200, events=events, event_ms=[1.0, 2.0, 3.0])
    message, meta = chat_answer(Exchange(req, streamed, upstream=UPSTREAM))
    assert message == A1 and set(meta) == documented - {"completion"} and meta["sse"] == events
    assert set(generic_meta(Exchange(req, plain, upstream=UPSTREAM))) == \
        {"at", "status", "upstream", "ms", "request", "headers"}
    # a hand-written answer gets a made-up id and zero usage
    store = Store([str(SAMPLES)])
    store.load()
    hit = store.lookup(_req([FRANCE[0]]))
    made_up = completion_for(hit.answer, _req([FRANCE[0]]))
    assert made_up["id"].startswith("chatcmpl-rechat-") and made_up["usage"]["total_tokens"] == 0
    assert isinstance(made_up["created"], int)
    assert made_up["choices"][0]["message"]["content"] == "Paris."


async def test_recording_turn_two_appends_to_the_file_of_turn_one(tmp_path):
    store = Store([str(tmp_path)])
    store.load()
    params = {"model": "gpt-4o-mini", "temperature": 0.2}

    def record(messages: list, answer: dict, meta: dict) -> str:
        req = _req(messages, **params, stream=True, stream_options={"include_usage": True})
        return store.record(Exchange(req, Response(200)), answer, meta)

    f1 = record([SYSTEM, Q1], A1, COMPLETION_META)
    f2 = record([SYSTEM, Q1, A1, Q2], A2, STREAM_META)
    await store.flush()
    assert f1 == f2 and os.listdir(tmp_path) == [Path(f1).name]
    text = Path(f1).read_text(encoding="utf-8")
    assert text == (SAMPLES / "chat_multi_turn.md").read_text(encoding="utf-8")
    params["temperature"] = 0.7  # other params: another conversation, another file
    f3 = record([SYSTEM, Q1, A1, Q2], A2, STREAM_META)
    await store.flush()
    assert f3 != f1 and len(os.listdir(tmp_path)) == 2


# ---------------------------------------------------------------------------------------------
# docs/format.md shows the golden files as they are

DOC_BLOCK = re.compile(r"(<!-- golden: (?P<name>[\w.-]+) -->\n(?P<fence>`{4,})markdown\n)"
                       r"(?P<body>.*?)(^(?P=fence)\n)", re.S | re.M)


def test_format_doc_embeds_the_golden_files():
    text = DOC.read_text(encoding="utf-8")
    if UPDATE_DOCS:
        text = DOC_BLOCK.sub(lambda m: m.group(1) + (SAMPLES / m["name"]).read_text(
            encoding="utf-8") + m.group(5), text)
        DOC.write_text(text, encoding="utf-8")
    blocks = list(DOC_BLOCK.finditer(text))
    assert len(blocks) >= 6
    for m in blocks:
        assert m["body"] == (SAMPLES / m["name"]).read_text(encoding="utf-8"), m["name"]


def test_every_markdown_example_in_the_format_doc_parses():
    text = DOC.read_text(encoding="utf-8")
    examples = re.findall(r"^(`{3,})markdown\n(.*?)^\1$", text, re.S | re.M)
    assert examples
    for _, body in examples:
        sf.parse(body, "docs/format.md")
