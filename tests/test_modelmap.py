"""Tests for rechat.modelmap: exact and regex mapping, override, request and answer rewriting."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rechat.errors import ConfigError
from rechat.modelmap import (_ABSENT, ModelMap, ModelRestore, _model_span, restore_response_model,
                             rewrite_request_bytes)
from rechat.rewrite import NDJSONStreamRewriter, SSEStreamRewriter, rewrite_json
from rechat.think import ThinkTransform

# Every test runs with the C helpers and with the Python beside them (conftest.both_paths).
pytestmark = pytest.mark.usefixtures("both_paths")

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


# -- the byte-level rename --------------------------------------------------------------------

REQ = {"messages": [{"role": "user", "content": 'Set "model": "gpt-4" in {"model": "gpt-4"}'}],
       "metadata": {"model": "gpt-4"}, "model": "gpt-4", "stream": True}


@pytest.mark.parametrize("dumps", [
    lambda b: json.dumps(b),                                    # Python's default spelling
    lambda b: json.dumps(b, separators=(",", ":")),             # compact (JS clients)
    lambda b: json.dumps(b, indent=2),                          # newlines
    lambda b: json.dumps(b).replace('"model": "gpt-4", "stream"', '"model"\t :\r\n "gpt-4" , "stream"'),
])
@pytest.mark.parametrize("decoded", [False, True])
def test_request_bytes_rename_only_the_top_level_model(dumps, decoded):
    raw = dumps(REQ).encode()
    out = rewrite_request_bytes(raw, "gpt-4", "llama3-70b", decoded=decoded)
    assert out is not None
    assert json.loads(out) == {**REQ, "model": "llama3-70b"}  # content and nested untouched
    assert out.replace(b'"llama3-70b"', b'"gpt-4"') == raw    # nothing else re-spelled


@pytest.mark.parametrize("body", [
    # As SDKs send it: the conversation first, with quotes, braces and the word in the text.
    {"messages": [{"role": "user", "content": 'Say \"model\" {"a": [1]} ' * 50}] * 20,
     "model": "gpt-4", "stream": True},
    {"model": "gpt-4", "messages": [{"role": "model", "content": "x"}]},  # a value, not a key
    {"messages": [], "model": "gpt-4", "tools": [{"name": "t", "parameters": {"model": 1}}]},
])
def test_request_bytes_rename_of_a_decoded_body(body):
    raw = json.dumps(body).encode()
    out = rewrite_request_bytes(raw, "gpt-4", "llama3-70b", decoded=True)
    assert out == rewrite_request_bytes(raw, "gpt-4", "llama3-70b")
    assert out is not None and json.loads(out) == {**body, "model": "llama3-70b"}
    assert out.replace(b'"llama3-70b"', b'"gpt-4"') == raw


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4", "model": "gpt-4"}',                  # repeated: the decoder keeps the last
    b'{"\\u006dodel": "gpt-4", "model": "gpt-4"}',            # a key spelled with escapes
    b'{"model": "gpt\\u002d4"}',                              # an escaped value
    b'{"messages": []}',                                       # no model
    b'{"x": {"model": "gpt-4"}}',                             # only a nested one
    b'{"model": "gpt-4o"}',                                    # not the name asked for
])
def test_request_bytes_rename_declines_unclear_bodies(raw):
    assert rewrite_request_bytes(raw, "gpt-4", "llama3-70b") is None


def test_gateway_outbound_keeps_the_clients_bytes_but_the_model():
    from rechat.exchange import Request
    from rechat.gateway import Gateway, GatewaySettings
    gw = Gateway(GatewaySettings(model_map=ModelMap.from_dict({"gpt-4": "llama3-70b"})))
    raw = json.dumps(REQ, separators=(",", ":")).encode()
    out = gw.outbound(Request("POST", "/v1/chat/completions", body=raw))
    assert (out.asked, out.served) == ("gpt-4", "llama3-70b")
    assert out.body == raw.replace(b'"model":"gpt-4","stream"', b'"model":"llama3-70b","stream"')
    odd = b'{"model": "gpt-4", "model": "gpt-4", "messages": []}'  # falls back to re-encoding
    out = gw.outbound(Request("POST", "/v1/chat/completions", body=odd))
    assert json.loads(out.body) == {"model": "llama3-70b", "messages": []}
    gw2 = Gateway(GatewaySettings(model_map=ModelMap.from_dict({"gpt-4": "llama3-70b"}), no_think=True))
    out = gw2.outbound(Request("POST", "/v1/chat/completions", body=raw))
    assert json.loads(out.body)["messages"][0]["content"].endswith(" /no_think")
    assert json.loads(out.body)["model"] == "llama3-70b"


@pytest.mark.parametrize("raw, expected", [
    (b'{"id":"x","model":"llama3","choices":[]}', b'{"id":"x","model":"gpt-4","choices":[]}'),
    (b'{ "model" :  "llama3" }', b'{ "model" :  "gpt-4" }'),
    (b'{"choices":[{"delta":{"content":"\\"model\\": \\"llama3\\""}}],"model":"llama3"}',
     b'{"choices":[{"delta":{"content":"\\"model\\": \\"llama3\\""}}],"model":"gpt-4"}'),
    (b'{"id":"a\\"b","model":"llama3"}', b'{"id":"a\\"b","model":"gpt-4"}'),  # an escaped quote before
    (b'{"model":"gpt-4","x":1}', None),       # already the name asked for: the same bytes
    (b'{"x":{"model":"llama3"}}', None),      # nested only: unchanged
    (b'[{"model":"llama3"}]', None),          # not an object: unchanged
])
def test_model_restore_feed_raw(raw, expected):
    out = ModelRestore("gpt-4").feed_raw(raw)
    if expected is None:
        assert out is raw
    else:
        assert out == expected
        assert json.loads(out) == restore_response_model(json.loads(raw), "gpt-4")


@pytest.mark.parametrize("think", [False, True])
def test_several_events_renamed_at_once_keep_a_nested_model_of_the_same_name(think):
    # A chunk whose head holds a nested "model" naming the same model before the top-level
    # one: renaming several events in one replace must not take the nested one for it (the
    # replace may start at the key only when the head holds the key once).
    def chunk(text):
        return {"id": "x", "meta": {"model": "llama3"}, "model": "llama3",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    first, rest = chunk("Hello"), [chunk(f" word {i}") for i in range(4)]
    def sse(objs):
        return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs)
    transforms = ([ThinkTransform("strip")] if think else []) + [ModelRestore("gpt-4")]
    rw = SSEStreamRewriter(transforms)
    out = rw.feed(sse([first])) + rw.feed(sse(rest)) + rw.feed(sse(rest), whole=len(rest))
    out += rw.close()
    objs = [json.loads(e[6:]) for e in out.split(b"\n\n") if e]
    assert objs == [restore_response_model(o, "gpt-4") for o in [first] + rest + rest]
    assert all(o["meta"] == {"model": "llama3"} and o["model"] == "gpt-4" for o in objs)


@pytest.mark.parametrize("raw", [b'{"model":null}', b'{"model":"a","model":"b"}',
                                 b'{"\\u006Dodel":"a"}', b'{"model":"a\\"b"}', b'{"model":"llama3"'])
def test_model_restore_feed_raw_declines_to_guess(raw):
    assert ModelRestore("gpt-4").feed_raw(raw) is None  # decoded instead (or left as it is)


def test_resolve_is_memoized_and_bounded():
    mm = ModelMap.from_json(SEED_REGEX)
    assert mm.resolve("gpt-3.5-turbo") == mm.resolve("gpt-3.5-turbo") == "llama3-3.5--instruct"
    for i in range(3000):
        assert mm.resolve(f"gpt-4-{i}") == f"claude-3-opus-{i}"
    assert len(mm._resolved) <= 1024


# `_model_span` against the decoder: whatever it locates must be the top-level model's value
# (replacing those bytes renames it and changes nothing else); it may decline (None), never
# err. Objects with a model at the top, in nested objects, as text inside strings, with and
# without escapes, in three spellings.
_names = st.sampled_from(["gpt-4", "llama3", "m", "", 'say "hi"', "caf\u00e9", "a\\b"])
_leaf = st.one_of(st.none(), st.integers(), _names,
                  st.sampled_from(['"model": "x"', '{"model": "y"}', "model", '\\"model\\"']))
_value = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["model", "id", "messages", "x"]), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "object", "messages", "choices", "x"]), _value,
                       max_size=4),
       st.one_of(st.none(), _names, st.integers()), st.integers(min_value=0, max_value=4),
       st.sampled_from(["default", "compact", "indent"]))
def test_model_span_finds_only_the_top_level_model(body, model, at, spelling):
    items = list(body.items())
    if model is not None:
        items.insert(min(at, len(items)), ("model", model))
    obj = dict(items)
    raw = {"default": lambda o: json.dumps(o), "compact": lambda o: json.dumps(o, separators=(",", ":")),
           "indent": lambda o: json.dumps(o, indent=1)}[spelling](obj).encode()
    span = _model_span(raw)
    if span is None:
        return  # declined: the caller decodes
    if span == _ABSENT:
        assert "model" not in obj
        return
    a, b = span
    assert isinstance(obj.get("model"), str) and json.loads(raw[a:b + 1]) == obj["model"]
    renamed = json.loads(raw[:a] + b'"renamed"' + raw[b + 1:])
    assert renamed == {**obj, "model": "renamed"}


def test_request_bytes_rename_to_another_name_for_the_same_asked_name():
    # The spellings are kept per name asked; a second map sending that name elsewhere (another
    # gateway in the process, a reloaded map) must not get the first one's target.
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}
    for dumps in (json.dumps, lambda b: json.dumps(b, separators=(",", ":"))):
        raw = dumps(body).encode()
        for served in ("llama3-70b", "qwen3", "llama3-70b"):
            for decoded in (True, False):
                out = rewrite_request_bytes(raw, "gpt-4", served, decoded=decoded)
                assert json.loads(out) == {**body, "model": served}


def test_what_the_think_rewrite_holds_at_the_end_is_renamed_too():
    # A stream cut short (no finish_reason, no [DONE]) while the think rewrite holds the start
    # of a marker: end() sends it in a new chunk, which the model renames must take as well.
    chunk = {"id": "x", "object": "chat.completion.chunk", "model": "llama3-70b",
             "choices": [{"index": 0, "delta": {"content": "Hi <th"}, "finish_reason": None}]}
    raw = json.dumps(chunk).encode()
    for names in (["gpt-4"], ["gpt-4", "gpt-5"]):
        for make, piece in ((SSEStreamRewriter, b"data: " + raw + b"\n\n"),
                            (NDJSONStreamRewriter, raw + b"\n")):
            rw = make([ThinkTransform("strip"), *[ModelRestore(n) for n in names]])
            out = rw.feed(piece) + rw.close()
            objs = [json.loads(x.removeprefix(b"data: ")) for x in out.split(b"\n") if x.strip()]
            assert [o["choices"][0]["delta"]["content"] for o in objs] == ["Hi ", "<th"]
            assert [o["model"] for o in objs] == [names[-1]] * 2


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_an_event_that_does_not_start_with_the_head_is_renamed_where_it_is(kind):
    # The fused path takes an event that starts with the head of the chunks renamed before;
    # one with another head (another id, the model elsewhere or none) goes the general way,
    # whether the piece comes as bytes or as a bytearray.
    def event(obj):
        return b"data: " + json.dumps(obj).encode() + b"\n\n"
    first = {"id": "a", "model": "llama3", "choices": [{"index": 0, "delta": {"content": "x"}}]}
    moved = {"id": "b", "object": "chunk", "model": "llama3",
             "choices": [{"index": 0, "delta": {"content": "y"}}]}
    none = {"id": "c", "choices": [{"index": 0, "delta": {"content": "z"}}]}
    for whole in (0, 1):
        rw = SSEStreamRewriter([ModelRestore("gpt-4")])
        out = b"".join(rw.feed(kind(event(o)), whole) for o in (first, first, moved, first, none))
        out += rw.close()
        objs = [json.loads(e[6:]) for e in bytes(out).split(b"\n\n") if e]
        assert objs == [restore_response_model(o, "gpt-4") for o in (first, first, moved, first, none)]
