"""Tests for rechat.completion: assembling chunk streams, synthesizing them."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rechat.completion import assemble, synthesize
from rechat.sse import DONE, SSEParser, encode_event

# --- assemble: recorded-style streams ------------------------------------------

_OPENAI_HEAD = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion.chunk",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "service_tier": "default",
    "system_fingerprint": "fp_eb9dce56a8",
}


def _openai(choices: list, usage: dict | None = None, obfuscation: str = "xY") -> dict:
    return {**_OPENAI_HEAD, "choices": choices, "usage": usage, "obfuscation": obfuscation}


def _c0(delta: dict, finish_reason: str | None = None) -> list:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]


OPENAI_USAGE = {
    "prompt_tokens": 82,
    "completion_tokens": 57,
    "total_tokens": 139,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

# A stream as OpenAI sends it with stream_options.include_usage and two
# parallel tool calls after a little content.
OPENAI_STREAM = [
    _openai(_c0({"role": "assistant", "content": "", "refusal": None}), obfuscation="k"),
    _openai(_c0({"content": "Let me"})),
    _openai(_c0({"content": " check both"})),
    _openai(_c0({"content": " cities."})),
    _openai(
        _c0(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        )
    ),
    _openai(_c0({"tool_calls": [{"index": 0, "function": {"arguments": '{"lo'}}]})),
    _openai(_c0({"tool_calls": [{"index": 0, "function": {"arguments": 'cation": "Pa'}}]})),
    _openai(_c0({"tool_calls": [{"index": 0, "function": {"arguments": 'ris, France"}'}}]})),
    _openai(
        _c0(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_ABqdxV1uY2mO6Lc3YeqjAFDD",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        )
    ),
    _openai(_c0({"tool_calls": [{"index": 1, "function": {"arguments": '{"location": '}}]})),
    _openai(_c0({"tool_calls": [{"index": 1, "function": {"arguments": '"Tokyo, Japan"}'}}]})),
    _openai(_c0({}, "tool_calls")),
    _openai([], OPENAI_USAGE, obfuscation="Q8"),
]

OPENAI_COMPLETION = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check both cities.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris, France"}'},
                    },
                    {
                        "id": "call_ABqdxV1uY2mO6Lc3YeqjAFDD",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Tokyo, Japan"}'},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": OPENAI_USAGE,
    "service_tier": "default",
    "system_fingerprint": "fp_eb9dce56a8",
}


def test_assemble_openai_stream_with_parallel_tool_calls() -> None:
    before = copy.deepcopy(OPENAI_STREAM)
    result = assemble(OPENAI_STREAM)
    assert result == OPENAI_COMPLETION
    assert list(result) == ["id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint"]
    assert list(result["choices"][0]["message"]) == ["role", "content", "refusal", "tool_calls"]
    assert OPENAI_STREAM == before  # input untouched


def _vllm(delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-7f3c",
        "object": "chat.completion.chunk",
        "created": 1740000000,
        "model": "Qwen/QwQ-32B",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}],
        "usage": usage,
    }


# vLLM with a reasoning parser and continuous usage stats: role repeated in
# every chunk, content null while reasoning, reasoning_content null after.
VLLM_STREAM = [
    _vllm({"role": "assistant", "content": ""}, usage={"prompt_tokens": 9, "total_tokens": 9, "completion_tokens": 0}),
    _vllm({"role": "assistant", "content": None, "reasoning_content": "Okay, "}),
    _vllm({"role": "assistant", "content": None, "reasoning_content": "2 + 2"}),
    _vllm({"role": "assistant", "content": None, "reasoning_content": " is 4."}),
    _vllm({"role": "assistant", "content": "\n\nThe answer", "reasoning_content": None}),
    _vllm({"role": "assistant", "content": " is **4**.", "reasoning_content": None}),
    _vllm({}, "stop", usage={"prompt_tokens": 9, "total_tokens": 21, "completion_tokens": 12}),
]


def test_assemble_vllm_reasoning_stream() -> None:
    assert assemble(VLLM_STREAM) == {
        "id": "chatcmpl-7f3c",
        "object": "chat.completion",
        "created": 1740000000,
        "model": "Qwen/QwQ-32B",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "\n\nThe answer is **4**.",
                    "reasoning_content": "Okay, 2 + 2 is 4.",
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "total_tokens": 21, "completion_tokens": 12},
    }


def _n2(index: int, delta: dict | None, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-n2",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


N2_STREAM = [
    _n2(1, {"role": "assistant", "content": ""}),
    _n2(0, {"role": "assistant", "content": ""}),
    _n2(0, {"content": "Red"}),
    _n2(1, {"content": "Blue"}),
    _n2(1, {"content": " sky"}),
    _n2(0, {"content": " rose"}),
    _n2(0, {}, "stop"),
    _n2(1, {"content": " and"}),
    _n2(1, {}, "length"),
]


def test_assemble_n2_interleaved() -> None:
    assert assemble(N2_STREAM) == {
        "id": "chatcmpl-n2",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Red rose"},
                "logprobs": None,
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "Blue sky and"},
                "logprobs": None,
                "finish_reason": "length",
            },
        ],
        "system_fingerprint": None,
    }


# --- assemble: odd inputs, table-driven -----------------------------------------


def _ch(*choices: dict, **top: object) -> dict:
    return {**top, "choices": list(choices)}


def _msg(role: str | None = None, **fields: object) -> dict:
    return {"role": role, "content": None, **fields}


def _tc(**fields: object) -> dict:
    return fields


ASSEMBLE_CASES = [
    ("no chunks", [], []),
    ("only choices []", [_ch(), _ch()], []),
    (
        "missing and null delta",
        [_ch({"index": 0}), _ch({"index": 0, "delta": None, "finish_reason": "stop"})],
        [{"index": 0, "message": {"role": None, "content": None}, "logprobs": None, "finish_reason": "stop"}],
    ),
    (
        "missing index means 0",
        [_ch({"delta": {"role": "assistant", "content": "hi"}})],
        [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None, "finish_reason": None}],
    ),
    (
        "content only ever null",
        [_ch({"index": 0, "delta": {"role": "assistant", "content": None}}), _ch({"index": 0, "delta": {"content": None}})],
        [{"index": 0, "message": _msg("assistant"), "logprobs": None, "finish_reason": None}],
    ),
    (
        "empty content string is content",
        [_ch({"index": 0, "delta": {"role": "assistant", "content": ""}})],
        [{"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
    ),
    (
        "role in every chunk is not concatenated",
        [
            _ch({"index": 0, "delta": {"role": "assistant", "content": "a"}}),
            _ch({"index": 0, "delta": {"role": "assistant", "content": "b"}}),
        ],
        [{"index": 0, "message": {"role": "assistant", "content": "ab"}, "logprobs": None, "finish_reason": None}],
    ),
    (
        "last non-null finish_reason",
        [
            _ch({"index": 0, "delta": {}, "finish_reason": "length"}),
            _ch({"index": 0, "delta": {}, "finish_reason": "stop"}),
            _ch({"index": 0, "delta": {}, "finish_reason": None}),
        ],
        [{"index": 0, "message": {"role": None, "content": None}, "logprobs": None, "finish_reason": "stop"}],
    ),
    (
        "reasoning (OpenRouter, Ollama) and refusal concatenated",
        [
            _ch({"index": 0, "delta": {"role": "assistant", "reasoning": "Hm", "content": None}}),
            _ch({"index": 0, "delta": {"reasoning": "m.", "refusal": "I can"}}),
            _ch({"index": 0, "delta": {"refusal": "'t."}}),
        ],
        [{"index": 0, "message": _msg("assistant", reasoning="Hmm.", refusal="I can't."), "logprobs": None, "finish_reason": None}],
    ),
    (
        "null first, string later",
        [
            _ch({"index": 0, "delta": {"role": "assistant", "refusal": None}}),
            _ch({"index": 0, "delta": {"refusal": "No."}}),
        ],
        [{"index": 0, "message": _msg("assistant", refusal="No."), "logprobs": None, "finish_reason": None}],
    ),
    (
        "tool call id, type and name repeated in every delta",
        [
            _ch({"index": 0, "delta": {"tool_calls": [_tc(index=0, id="c1", type="function", function={"name": "f", "arguments": "{"})]}}),
            _ch({"index": 0, "delta": {"tool_calls": [_tc(index=0, id="c1", type="function", function={"name": "f", "arguments": "}"})]}}),
        ],
        [
            {
                "index": 0,
                "message": _msg(tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    ),
    (
        "several fragments of one tool call in one chunk",
        [
            _ch(
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            _tc(index=0, id="c1", type="function", function={"name": "f", "arguments": '{"a"'}),
                            _tc(index=0, function={"arguments": ": 1}"}),
                        ]
                    },
                }
            )
        ],
        [
            {
                "index": 0,
                "message": _msg(tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]),
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    ),
    (
        "tool calls without index: a new id starts a new call",
        [
            _ch({"index": 0, "delta": {"tool_calls": [_tc(id="c1", type="function", function={"name": "f", "arguments": "{}"})]}}),
            _ch({"index": 0, "delta": {"tool_calls": [_tc(id="c2", type="function", function={"name": "g", "arguments": "["})]}}),
            _ch({"index": 0, "delta": {"tool_calls": [_tc(function={"arguments": "]"})]}}),
        ],
        [
            {
                "index": 0,
                "message": _msg(
                    tool_calls=[
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[]"}},
                    ]
                ),
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    ),
    (
        "every call at index 0 with its own id",
        [
            _ch({"index": 0, "delta": {"tool_calls": [_tc(index=0, id="c1", type="function", function={"name": "f", "arguments": "1"})]}}),
            _ch({"index": 0, "delta": {"tool_calls": [_tc(index=0, id="c2", type="function", function={"name": "g", "arguments": "2"})]}}),
            _ch({"index": 0, "delta": {"tool_calls": [_tc(index=0, function={"arguments": "3"})]}}),
        ],
        [
            {
                "index": 0,
                "message": _msg(
                    tool_calls=[
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "1"}},
                        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "23"}},
                    ]
                ),
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    ),
    (
        "tool call without type defaults to function; empty tool_calls ignored",
        [
            _ch({"index": 0, "delta": {"tool_calls": []}}),
            _ch({"index": 0, "delta": {"tool_calls": None}}),
            _ch({"index": 0, "delta": {"tool_calls": [_tc(index=0, id="c1", function={"name": "f", "arguments": None})]}}),
        ],
        [
            {
                "index": 0,
                "message": _msg(tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": None}}]),
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    ),
    (
        "logprobs concatenated",
        [
            _ch({"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [{"token": "a", "logprob": -0.1}], "refusal": None}}),
            _ch({"index": 0, "delta": {"content": "b"}, "logprobs": {"content": [{"token": "b", "logprob": -0.2}], "refusal": None}}),
            _ch({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}),
        ],
        [
            {
                "index": 0,
                "message": {"role": None, "content": "ab"},
                "logprobs": {"content": [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.2}], "refusal": None},
                "finish_reason": "stop",
            }
        ],
    ),
    (
        "non-string fields merged like the SDK (audio, annotations)",
        [
            _ch({"index": 0, "delta": {"role": "assistant", "audio": {"id": "au_1", "data": "AA", "expires_at": 5, "transcript": "Hi"}}}),
            _ch({"index": 0, "delta": {"audio": {"data": "BB", "transcript": " there"}, "annotations": [{"type": "url_citation"}]}}),
            _ch({"index": 0, "delta": {"audio": {"expires_at": 5}, "annotations": [{"type": "file"}]}}),
        ],
        [
            {
                "index": 0,
                "message": _msg(
                    "assistant",
                    audio={"id": "au_1", "data": "AABB", "expires_at": 5, "transcript": "Hi there"},
                    annotations=[{"type": "url_citation"}, {"type": "file"}],
                ),
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    ),
]


@pytest.mark.parametrize(("chunks", "choices"), [c[1:] for c in ASSEMBLE_CASES], ids=[c[0] for c in ASSEMBLE_CASES])
def test_assemble_cases(chunks: list[dict], choices: list[dict]) -> None:
    result = assemble(chunks)
    assert result["choices"] == choices
    assert result["object"] == "chat.completion"


def test_assemble_top_level_fields() -> None:
    chunks = [
        {"id": None, "created": None, "model": None, "system_fingerprint": None, "choices": []},
        {"id": "a", "created": 2, "model": "m", "system_fingerprint": "fp", "service_tier": "flex", "choices": [], "usage": None},
        {"id": "b", "created": 3, "model": "n", "system_fingerprint": "fp2", "choices": [], "x_groq": {"id": "q"}},
    ]
    assert assemble(chunks) == {
        "id": "a",
        "object": "chat.completion",
        "created": 2,
        "model": "m",
        "choices": [],
        "service_tier": "flex",
        "system_fingerprint": "fp",
    }
    assert assemble([]) == {"id": None, "object": "chat.completion", "created": None, "model": None, "choices": []}


def test_assemble_last_usage_wins() -> None:
    chunks = [
        {"choices": [], "usage": {"total_tokens": 1}},
        {"choices": [], "usage": None},
        {"choices": [], "usage": {"total_tokens": 2}},
        {"choices": []},
    ]
    assert assemble(chunks)["usage"] == {"total_tokens": 2}


def test_assemble_message_key_order() -> None:
    chunks = [
        _ch({"index": 0, "delta": {"tool_calls": [_tc(index=0, id="c", type="function", function={"name": "f", "arguments": ""})]}}),
        _ch({"index": 0, "delta": {"reasoning_content": "r"}}),
        _ch({"index": 0, "delta": {"refusal": None, "content": "x"}}),
        _ch({"index": 0, "delta": {"role": "assistant", "audio": None}}),
    ]
    message = assemble(chunks)["choices"][0]["message"]
    assert list(message) == ["role", "content", "reasoning_content", "refusal", "audio", "tool_calls"]


# --- synthesize ------------------------------------------------------------------

SMALL = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 7,
    "model": "gpt-4o",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello there world",
                "reasoning_content": "Think.",
                "refusal": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}


def _chunk(delta: dict, finish_reason: str | None = None, index: int = 0) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "gpt-4o",
        "system_fingerprint": "fp_1",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def test_synthesize_exact() -> None:
    assert synthesize(SMALL, include_usage=True, piece_chars=6) == [
        _chunk({"role": "assistant", "content": "", "refusal": None}),
        _chunk({"reasoning_content": "Think."}),
        _chunk({"content": "Hello"}),
        _chunk({"content": " there"}),
        _chunk({"content": " world"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
        _chunk({}, "tool_calls"),
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 7,
            "model": "gpt-4o",
            "system_fingerprint": "fp_1",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
    ]


def test_synthesize_without_usage() -> None:
    chunks = synthesize(SMALL, piece_chars=100)
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"reasoning_content": "Think."},
        {"content": "Hello there world"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]},
        {},
    ]


def test_synthesize_include_usage_without_usage() -> None:
    completion = {k: v for k, v in SMALL.items() if k != "usage"}
    chunks = synthesize(completion, include_usage=True)
    assert all(c["usage"] is None and len(c["choices"]) == 1 for c in chunks)


def test_synthesize_content_none_and_empty() -> None:
    def deltas(content: str | None) -> list[dict]:
        c = {"id": "x", "created": 0, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        return [ch["choices"][0]["delta"] for ch in synthesize(c)]

    assert deltas(None) == [{"role": "assistant", "content": None}, {}]
    assert deltas("") == [{"role": "assistant", "content": ""}, {}]


def test_synthesize_chunk_shape() -> None:
    completion = {**SMALL, "service_tier": "default", "choices": SMALL["choices"] * 1}
    completion.pop("system_fingerprint")
    for chunk in synthesize(completion, include_usage=True):
        assert list(chunk) == ["id", "object", "created", "model", "service_tier", "choices", "usage"]
        for choice in chunk["choices"]:
            assert list(choice) == ["index", "delta", "logprobs", "finish_reason"]


def test_synthesize_n2_in_choice_order() -> None:
    completion = {
        "id": "c",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a"}, "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "b"}, "logprobs": None, "finish_reason": "length"},
        ],
    }
    chunks = synthesize(completion)
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"content": "a"}, None),
        (0, {}, "stop"),
        (1, {"role": "assistant", "content": ""}, None),
        (1, {"content": "b"}, None),
        (1, {}, "length"),
    ]
    assert assemble(chunks)["choices"] == completion["choices"]


FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"

SPLIT_CASES = [
    ("short", "Hi", 24, ["Hi"]),
    ("exact size", "abcdef", 6, ["abcdef"]),
    ("words whole", "Hello there world", 6, ["Hello", " there", " world"]),
    ("newline counts as a break", "line one\nline two", 9, ["line one", "\nline two"]),
    ("leading spaces", "   a b", 2, ["  ", " a", " b"]),
    ("long word extends its piece", "abcdefghij kl", 4, ["abcdefghij", " kl"]),
    ("very long word is hard-cut", "abcdefghijklmnopqrstuvwxyz", 4, ["abcd", "efgh", "ijkl", "mnop", "qrst", "uvwx", "yz"]),
    ("no spaces (CJK)", "日本語のテキストです", 3, ["日本語", "のテキ", "ストで", "す"]),
    ("combining marks stay whole", "e\u0301" * 4, 3, ["e\u0301"] * 4),
    ("ZWJ sequence stays whole", FAMILY * 2 + "x", 6, [FAMILY, FAMILY + "x"]),
    ("skin tone modifier stays whole", "\U0001f44d\U0001f3fd" * 3, 3, ["\U0001f44d\U0001f3fd"] * 3),
]


@pytest.mark.parametrize(("text", "size", "pieces"), [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_synthesize_content_pieces(text: str, size: int, pieces: list[str]) -> None:
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    chunks = synthesize(completion, piece_chars=size)
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]] == pieces


def test_synthesize_pieces_keep_words_whole() -> None:
    text = "The quick brown fox jumps over the lazy dog, again and again.\nAnd then it rested. " * 20
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    pieces = [c["choices"][0]["delta"]["content"] for c in synthesize(completion)[1:-1]]
    assert "".join(pieces) == text
    assert all(p[0] in " \n" for p in pieces[1:])
    assert all(len(p) <= 24 for p in pieces)


def test_synthesize_errors() -> None:
    with pytest.raises(ValueError):
        synthesize(SMALL, piece_chars=0)
    with pytest.raises(TypeError):
        synthesize({"choices": [{"index": 0, "message": {"role": "assistant", "content": [{"type": "text"}]}}]})


def test_synthesize_logprobs_and_extra_fields_round_trip() -> None:
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": "Sorry, I can't help with that.",
                    "annotations": [],
                    "audio": {"id": "au", "data": "QUJD", "expires_at": 9, "transcript": "abc"},
                },
                "logprobs": {"content": None, "refusal": [{"token": "Sorry", "logprob": -0.01, "bytes": [83], "top_logprobs": []}]},
                "finish_reason": "stop",
            }
        ],
    }
    chunks = synthesize(completion, piece_chars=5)
    assert assemble(chunks) == completion
    # Token logprobs ride on the finish chunk; every other chunk has None.
    assert [c["choices"][0]["logprobs"] is None for c in chunks] == [True] * (len(chunks) - 1) + [False]


def test_openai_stream_round_trip() -> None:
    chunks = synthesize(OPENAI_COMPLETION, include_usage=True, piece_chars=8)
    assert assemble(chunks) == OPENAI_COMPLETION


def test_round_trip_through_sse() -> None:
    chunks = synthesize(OPENAI_COMPLETION, include_usage=True, piece_chars=5)
    stream = b"".join(encode_event(json.dumps(c, separators=(",", ":"))) for c in chunks) + DONE
    parser = SSEParser()
    events = [e for i in range(0, len(stream), 37) for e in parser.feed(stream[i : i + 37])] + parser.close()
    assert events[-1].is_done
    assert assemble([json.loads(e.data) for e in events[:-1]]) == OPENAI_COMPLETION


def test_synthesized_chunks_accepted_by_openai_sdk() -> None:
    openai_chunk = pytest.importorskip("openai.types.chat")
    streaming = pytest.importorskip("openai.lib.streaming.chat")
    completion = copy.deepcopy(OPENAI_COMPLETION)
    completion["choices"][0]["message"]["reasoning_content"] = "First think."
    state = streaming.ChatCompletionStreamState()
    for chunk in synthesize(completion, include_usage=True, piece_chars=7):
        state.handle_chunk(openai_chunk.ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me check both cities."
    assert [(t.id, t.function.name, t.function.arguments) for t in message.tool_calls] == [
        (t["id"], t["function"]["name"], t["function"]["arguments"])
        for t in OPENAI_COMPLETION["choices"][0]["message"]["tool_calls"]
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage.total_tokens == 139
    assert final.model_dump()["choices"][0]["message"]["reasoning_content"] == "First think."


# --- property: assemble(synthesize(c)) == c ----------------------------------------

_text = st.text(max_size=80)
_tool_call = st.fixed_dictionaries(
    {
        "id": _text,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": _text, "arguments": _text}),
    }
)
_message = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.none() | _text},
    optional={
        "reasoning_content": _text,
        "refusal": st.none() | _text,
        "tool_calls": st.lists(_tool_call, min_size=1, max_size=3),
    },
)
_usage = st.fixed_dictionaries(
    {
        "prompt_tokens": st.integers(0, 10**6),
        "completion_tokens": st.integers(0, 10**6),
        "total_tokens": st.integers(0, 10**6),
    }
)


@st.composite
def _completions(draw: st.DrawFn) -> dict:
    messages = draw(st.lists(_message, min_size=1, max_size=3))
    completion = {
        "id": draw(st.text(max_size=10)),
        "object": "chat.completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(st.text(min_size=1, max_size=10)),
        "choices": [
            {
                "index": i,
                "message": m,
                "logprobs": None,
                "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", None])),
            }
            for i, m in enumerate(messages)
        ],
    }
    usage = draw(st.none() | _usage)
    if usage is not None:
        completion["usage"] = usage
    return completion


@settings(max_examples=400, deadline=None)
@given(_completions(), st.integers(1, 30))
def test_property_assemble_inverts_synthesize(completion: dict, piece_chars: int) -> None:
    original = copy.deepcopy(completion)
    chunks = synthesize(completion, include_usage=True, piece_chars=piece_chars)
    assert completion == original
    assert all(c["usage"] is None for c in chunks[:-1])
    result = assemble(chunks)
    assert result["choices"] == completion["choices"]
    assert result.get("usage") == completion.get("usage")
    assert result == completion


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(1, 40))
def test_property_pieces_concatenate_exactly(text: str, piece_chars: int) -> None:
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    pieces = [c["choices"][0]["delta"]["content"] for c in synthesize(completion, piece_chars=piece_chars)[1:-1]]
    assert "".join(pieces) == text
    assert all(pieces)
    assert all(len(p) <= 4 * piece_chars for p in pieces)
