"""Tests for rechat.modelmap: exact and regex mapping, override, request and answer rewriting."""

from __future__ import annotations

import json

import pytest

from rechat.errors import ConfigError
from rechat.modelmap import ModelMap, ModelRestore, restore_response_model
from rechat.think import SSEStreamRewriter, NDJSONStreamRewriter, ThinkTransform, rewrite_json

# The rerouter's own examples (seed: openai-model-rerouter-README.md), as JSON text.
SEED_EXACT = '{"gpt-3.5-turbo": "llama3-8b", "gpt-4": "llama3-70b", "text-davinci-003": "codellama-34b"}'
SEED_REGEX = r'{"/gpt-(.*)turbo/": "llama3-\\1-instruct", "/gpt-4(.*)$/": "claude-3-opus\\1"}'

# (map json, requested, served)
RESOLVE_CASES = [
    (SEED_EXACT, "gpt-3.5-turbo", "llama3-8b"),
    (SEED_EXACT, "gpt-4", "llama3-70b"),
    (SEED_EXACT, "gpt-4o", "gpt-4o"),  # exact means exact
    (SEED_EXACT, "GPT-4", "GPT-4"),  # and case-sensitive
    (SEED_REGEX, "gpt-3.5-turbo", "llama3-3.5--instruct"),
    (SEED_REGEX, "gpt-4-turbo", "llama3-4--instruct"),  # first pattern in order wins
    (SEED_REGEX, "gpt-4o", "claude-3-opuso"),
    (SEED_REGEX, "gpt-4", "claude-3-opus"),
    (SEED_REGEX, "openai/gpt-4o", "claude-3-opuso"),  # search: the pattern may sit anywhere...
    (SEED_REGEX, "gpt-3.5-turbo-0125", "llama3-3.5--instruct"),  # ...and the whole name is replaced
    (SEED_REGEX, "llama3", "llama3"),
    ('{"gpt-4": "exact-wins", "/gpt-4/": "pattern"}', "gpt-4", "exact-wins"),
    ('{"/^gpt-4$/": "only-whole"}', "gpt-4o", "gpt-4o"),
    ('{"/^GPT-(?P<v>\\\\d)/i": "m\\\\g<v>"}', "gpt-4o", "m4"),  # named group, case-insensitive
    ('{"/^(a)|(b)$/": "x\\\\2y"}', "a", "xy"),  # a group that did not take part gives ""
    ('{"/a/b/": "slash"}', "xa/b", "slash"),  # slashes inside a pattern
    ('{"meta-llama/Llama-3": "l3"}', "meta-llama/Llama-3", "l3"),  # not /.../: an exact name
    ('{"/": "s"}', "/", "s"),
    ('{"//": "s"}', "//", "s"),
    ('{"/x/": "/y/"}', "x", "/y/"),  # applied once, never to its own result
    ("", "anything", "anything"),
    ("{}", "anything", "anything"),
]


@pytest.mark.parametrize("text,asked,served", RESOLVE_CASES)
def test_resolve(text, asked, served):
    assert ModelMap.from_json(text).resolve(asked) == served


def test_override_wins_over_everything():
    m = ModelMap.from_json(SEED_EXACT, override="qwen3")
    assert m.resolve("gpt-4") == "qwen3"
    assert m.resolve("unknown") == "qwen3"
    assert m.with_override(None).resolve("gpt-4") == "llama3-70b"
    assert ModelMap(override="x").resolve("y") == "x"
    with pytest.raises(ConfigError):
        ModelMap(override="")


@pytest.mark.parametrize("text,match", [
    ('{"/gpt-(/": "x"}', r"not a valid regular expression"),
    ('{"/gpt-(.*)/": "x\\\\2"}', r"refers to a group the pattern does not have"),
    ('{"/gpt-(.*)/": "x\\\\g<name>"}', r"refers to a group"),
    ('{"gpt-4": 4}', r"must be a non-empty model name"),
    ('{"gpt-4": ""}', r"must be a non-empty model name"),
    ('["gpt-4"]', r"must be a JSON object"),
    ("{gpt-4: x}", r"not valid JSON"),
])
def test_bad_maps_fail_at_load_with_the_key(text, match):
    with pytest.raises(ConfigError, match=match):
        ModelMap.from_json(text)


def test_error_names_the_source():
    with pytest.raises(ConfigError, match="RECHAT_MODEL_MAP"):
        ModelMap.from_json("{", source="RECHAT_MODEL_MAP")


def test_truthiness_and_aliases():
    assert not ModelMap()
    assert ModelMap(override="x")
    m = ModelMap.from_json(SEED_EXACT[:-1] + ", " + SEED_REGEX[1:])
    assert m
    assert m.aliases() == ["gpt-3.5-turbo", "gpt-4", "text-davinci-003"]


def test_direct_construction_validates_patterns():
    m = ModelMap({"a": "b"}, [("^x(.)$", r"y\1")])
    assert m.resolve("xz") == "yz"
    with pytest.raises(ConfigError):
        ModelMap(patterns=[("(x)", r"\3")])


def test_rewrite_request():
    m = ModelMap.from_json(SEED_EXACT)
    body = {"model": "gpt-4", "messages": []}
    new, asked, served = m.rewrite_request(body)
    assert (new, asked, served) == ({"model": "llama3-70b", "messages": []}, "gpt-4", "llama3-70b")
    assert body == {"model": "gpt-4", "messages": []}  # not mutated
    same = {"model": "other"}
    assert m.rewrite_request(same) == (same, "other", "other")
    assert m.rewrite_request(same)[0] is same
    for odd in ({"messages": []}, {"model": 3}, [1], None):
        assert m.rewrite_request(odd) == (odd, None, None)


def test_restore_response_model():
    obj = {"id": "x", "model": "llama3-70b", "choices": []}
    assert restore_response_model(obj, "gpt-4") == {"id": "x", "model": "gpt-4", "choices": []}
    assert obj["model"] == "llama3-70b"
    same = {"model": "gpt-4"}
    assert restore_response_model(same, "gpt-4") is same
    assert restore_response_model({"data": []}, "gpt-4") == {"data": []}
    assert restore_response_model([1], "gpt-4") == [1]


def test_model_restore_on_a_json_body_and_streams():
    body = b'{"id":"x","model":"llama3-70b","choices":[{"index":0,"message":{"content":"<think>a</think>B"}}]}'
    out = json.loads(rewrite_json(body, [ThinkTransform("strip"), ModelRestore("gpt-4")]))
    assert out["model"] == "gpt-4" and out["choices"][0]["message"]["content"] == "B"
    assert rewrite_json(b'{"model":"gpt-4"}', [ModelRestore("gpt-4")]) == b'{"model":"gpt-4"}'

    chunk = {"id": "x", "object": "chat.completion.chunk", "model": "llama3-70b",
             "choices": [{"index": 0, "delta": {"content": "Hi <th"}, "finish_reason": None}]}
    fin = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in (chunk, fin)) + b"data: [DONE]\n\n"
    rw = SSEStreamRewriter([ThinkTransform("strip"), ModelRestore("gpt-4")])
    out = rw.feed(data) + rw.close()
    objs = [json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    assert [o["model"] for o in objs] == ["gpt-4"] * 3  # the flushed chunk is renamed too
    assert "".join(o["choices"][0]["delta"].get("content", "") for o in objs) == "Hi <th"

    nd = b'{"model":"llama3-70b","response":"a","done":false}\n{"model":"llama3-70b","response":"","done":true}\n'
    rw2 = NDJSONStreamRewriter([ModelRestore("gpt-4")])
    out2 = rw2.feed(nd) + rw2.close()
    assert [json.loads(x)["model"] for x in out2.splitlines()] == ["gpt-4", "gpt-4"]
