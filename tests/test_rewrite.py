"""Tests for rechat.rewrite: transforms applied to JSON bodies and SSE streams at byte level.

Every byte path (an event per piece, several whole events in one piece, the fused one-event
rule once the transforms are idle, a piece completing an event begun earlier) must give the
bytes of the general path, which frames the stream line by line (fed one byte at a time).
"""

from __future__ import annotations

import json
import re

import pytest

from answer_streams import (CLOSE, OPEN, SSE_CONTENTS, by_events, byte_by_byte, chat_stream, relayed,
                            chunk, content_of, events, nd_content, ollama_chat, run_sse, sse)
from rechat.modelmap import ModelRestore
from rechat.rewrite import (NDJSONStreamRewriter, SSEStreamRewriter, make_aside, rewrite_json,
                            stream_rewriter)
from rechat.sse import SSEParser
from rechat.think import ThinkTransform

# Every test runs with the C helpers and with the Python beside them (conftest.both_paths).
pytestmark = pytest.mark.usefixtures("both_paths")


# -- whole bodies and stream choice ---------------------------------------------------------


def test_rewrite_json_chat_completion():
    body = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "<think>r</think>\nA",
                                 "reasoning_content": "<think>kept</think>"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": []},
         "finish_reason": "tool_calls"}]}).encode()
    out = json.loads(rewrite_json(body, [ThinkTransform("strip")]))
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "A",
                                            "reasoning_content": "<think>kept</think>"}
    assert out["choices"][1]["message"]["content"] is None
    tags = json.loads(rewrite_json(json.dumps({"choices": [{"message": {
        "content": f"{OPEN}r{CLOSE}A"}, "finish_reason": "stop"}]}).encode(), [ThinkTransform("tags")]))
    assert tags["choices"][0]["message"]["content"] == "<think>r</think>A"


def test_rewrite_json_other_shapes():
    t = [ThinkTransform("strip")]
    legacy = {"object": "text_completion", "choices": [{"index": 0, "text": "<think>x</think>y",
                                                        "finish_reason": "length"}]}
    assert json.loads(rewrite_json(json.dumps(legacy).encode(), t))["choices"][0]["text"] == "y"
    ollama = {"model": "q", "message": {"role": "assistant", "content": "<think>x</think>y",
                                        "thinking": "t"}, "done": True}
    assert json.loads(rewrite_json(json.dumps(ollama).encode(), t))["message"] == {
        "role": "assistant", "content": "y", "thinking": "t"}
    gen = {"model": "q", "response": "<think>x</think>y", "done": True}
    assert json.loads(rewrite_json(json.dumps(gen).encode(), t))["response"] == "y"


def test_rewrite_json_unchanged_returns_the_same_bytes():
    t = [ThinkTransform("strip")]
    for body in [b'{"choices": [{"message": {"content": "plain"}}]}', b"not json", b"[1]",
                 b'{"data": []}', b"\xff\xfe"]:
        assert rewrite_json(body, t) is body


def test_stream_rewriter_by_content_type():
    assert isinstance(stream_rewriter("text/event-stream; charset=utf-8", []), SSEStreamRewriter)
    assert isinstance(stream_rewriter("application/x-ndjson", []), NDJSONStreamRewriter)
    assert stream_rewriter("application/json", []) is None
    # The class is kept per header value: asked again, in any order, each gets its own.
    for _ in range(2):
        for ctype, kind in (("Text/Event-Stream", SSEStreamRewriter),
                            ("application/json; charset=utf-8", type(None)),
                            ("application/jsonl", NDJSONStreamRewriter),
                            ("text/event-stream; charset=utf-8", SSEStreamRewriter),
                            ("application/json", type(None))):
            rw = stream_rewriter(ctype, [ModelRestore("m")])
            assert type(rw) is kind and (rw is None or rw.transforms[0].asked == "m")


def test_transforms_never_mutate_their_input():
    obj = chunk({"content": "<think>x</think>y"}, "stop")
    before = json.dumps(obj)
    ThinkTransform("strip").feed(obj)
    assert json.dumps(obj) == before


# -- the whole-event fast path ---------------------------------------------------------------
# A piece made of whole `data: X\n\n` events skips the line framing (SSEStreamRewriter's fast
# path); fed one byte at a time the same stream always takes the general path.


@pytest.mark.parametrize("mode", ["strip", "tags"])
@pytest.mark.parametrize("contents", SSE_CONTENTS)
def test_sse_fast_path_gives_the_general_paths_bytes(mode, contents):
    data = chat_stream(contents)
    slow = byte_by_byte(data, [ThinkTransform(mode)])
    assert by_events(data, [ThinkTransform(mode)]) == slow
    assert run_sse(data, [], mode) == slow  # the whole stream as one piece


def test_sse_fast_path_piece_without_lt_then_one_starting_a_tag():
    plain = sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello "}),
                 chunk({"content": "world. "})], done=False)
    tagged = sse([chunk({"content": "<thi"}), chunk({"content": "nk>secret</think>Bye"}),
                  chunk({}, "stop")])
    rw = SSEStreamRewriter([ThinkTransform("strip")])
    first = rw.feed(plain)
    assert first == plain  # nothing in it can start a marker: forwarded as is
    second = rw.feed(tagged[:len(tagged) // 2]) + rw.feed(tagged[len(tagged) // 2:])
    out = first + second + rw.close()
    assert content_of(out) == "Hello world. Bye"
    assert out == byte_by_byte(plain + tagged, [ThinkTransform("strip")])


def test_sse_fast_path_holds_the_start_of_the_next_event():
    data = chat_stream(["Hi ", "<think>x</think>", "there"])
    ends = [m.end() for m in re.finditer(b"\n\n", data)]
    for end in ends[:-1]:
        for extra in (1, 6, 9):  # "d", "data: ", "data: {\"i"
            cut = end + extra
            assert run_sse(data, [cut]) == run_sse(data, []), cut


def test_sse_fast_path_leaves_a_pending_tag_to_the_rewriter():
    # The rewriter holds "<th" after the first event, so the next plain piece is decoded.
    data = chat_stream(["Hi <th", "ink>x</think>", " there", " again"])
    out = by_events(data, [ThinkTransform("strip")])
    assert content_of(out) == "Hi  there again"
    assert out == byte_by_byte(data, [ThinkTransform("strip")])


@pytest.mark.parametrize("piece", [
    b"data: {\"a\":1}\n\n\n",                      # a blank block after the event
    b"data: {\"a\":1}\ndata: {\"b\":2}\n\n",        # two data lines in one event
    b"data: {\"a\":1}\r\n\r\n",                    # CRLF
    b"data: {\"a\":1}\n\nevent: ping\ndata: x\n\n",  # a typed event
    b"data: {\"a\":1}\n\n: keep-alive\n\n",         # a comment
])
def test_sse_fast_path_declines_other_framings(piece):
    t = [ThinkTransform("strip"), ModelRestore("gpt-4")]
    assert by_events(piece, t) == byte_by_byte(piece, t) == run_sse(piece, [], transforms=t)


def test_sse_events_side_by_side_that_are_not_whole_objects_are_not_renamed():
    # Once the rule is known (after the first events), several events in one piece go in one
    # go only when each is an object that closes; one cut short (invalid JSON) passes as the
    # decoder leaves it: unrenamed.
    good = [{**chunk({"content": c}), "model": "llama3"} for c in ["Hi", " there", "!"]]
    cut = b"data: " + json.dumps({**chunk({"content": "x"}), "model": "llama3"},
                                   separators=(",", ":")).encode()[:-1] + b"\n\n"
    head, rest = sse(good[:2], done=False), sse(good[2:], done=False) + cut + sse([], done=True)
    t = lambda: [ThinkTransform("strip"), ModelRestore("gpt-4")]  # noqa: E731
    in_two = SSEStreamRewriter(t())
    out = in_two.feed(head) + in_two.feed(rest) + in_two.close()
    assert out == by_events(head + rest, t()) == byte_by_byte(head + rest, t())
    assert cut in out and out.count(b'"model":"gpt-4"') == 3


def test_sse_fast_path_renames_a_model_key_repeated_after_the_head():
    # A decoder keeps a repeated key's last value: an event that names the model again after
    # the head the fused path compares must not pass with only the head renamed.
    objs = [{**chunk({"content": c}), "model": "llama3"} for c in ["Hi", " there", "!"]]
    data = (sse(objs[:2], done=False) + sse(objs[2:], done=False)[:-3]
            + b',"model":"llama3"}\n\n' + sse([], done=True))
    t = lambda: [ThinkTransform("strip"), ModelRestore("gpt-4")]  # noqa: E731
    for out in (by_events(data, t()), relayed(re.split(b"(?<=\n\n)", data), t())):
        assert out == byte_by_byte(data, t())
        assert [json.loads(e)["model"] for e in events(out) if e != "[DONE]"] == ["gpt-4"] * 3


def test_sse_model_rename_at_every_byte_boundary():
    # The model name split across network pieces, with the think rewrite in the same chain.
    objs = [{**chunk({"content": c}), "model": "llama3-70b-2024"} for c in ["Hi <th", "ink>x</think>", "!"]]
    objs.append({**chunk({}, "stop"), "model": "llama3-70b-2024"})
    data = sse(objs)
    def check(out: bytes) -> None:
        got = [json.loads(e) for e in events(out) if e != "[DONE]"]
        assert {o["model"] for o in got} == {"gpt-4"}
        assert "".join(o["choices"][0]["delta"].get("content", "") for o in got) == "Hi !"
    whole = run_sse(data, [], transforms=[ThinkTransform("strip"), ModelRestore("gpt-4")])
    check(whole)
    for i in range(len(data) + 1):
        out = run_sse(data, [i], transforms=[ThinkTransform("strip"), ModelRestore("gpt-4")])
        check(out)
        assert events(out) == events(whole), i


@pytest.mark.parametrize("contents", SSE_CONTENTS)
def test_an_event_completed_by_the_next_piece_gives_the_general_paths_bytes(contents):
    # A piece that completes an event begun in the one before (an upstream whose writes do
    # not end where events do), at every cut, the rename and the think rewrite in the chain:
    # the completed event (a [DONE] among them, after text the rewrite still holds) and the
    # whole events after it must come out as the byte-at-a-time reference gives them.
    objs = [{**chunk({"content": c}), "model": "llama3-70b"} for c in ["", *contents]]
    data = sse(objs)
    chain = lambda: [ThinkTransform("strip"), ModelRestore("gpt-4")]  # noqa: E731
    want = byte_by_byte(data, chain())
    for i in range(1, len(data)):
        pieces = [data[:i], data[i:]]
        assert relayed(pieces, chain()) == want, i
        assert run_sse(data, [i], transforms=chain()) == want, i


def test_sse_model_rename_keeps_the_upstreams_spelling_and_nested_models():
    ev = (b'data: {"id": "x", "model" :\t"llama3", "choices": [{"index": 0, "delta": '
          b'{"content": "say \\"model\\": \\"llama3\\""}, "tool": {"model": "llama3"}}]}\n\n')
    out = run_sse(ev, [], transforms=[ModelRestore("gpt-4")])
    assert out == ev.replace(b'"model" :\t"llama3"', b'"model" :\t"gpt-4"')
    # With a fresh think rewriter in the chain the event is decoded: same objects.
    decoded = run_sse(ev, [], transforms=[ThinkTransform("strip"), ModelRestore("gpt-4")])
    for o in (out, decoded):
        obj = json.loads(events(o)[0])
        assert obj["model"] == "gpt-4" and obj["choices"][0]["tool"] == {"model": "llama3"}
        assert obj["choices"][0]["delta"]["content"] == 'say "model": "llama3"'


def test_sse_model_rename_in_an_event_of_several_data_lines():
    ev = b'data: {"id": "x",\ndata:  "model": "llama3", "choices": []}\n\n'
    out = run_sse(ev, [], transforms=[ModelRestore("gpt-4")])
    assert json.loads(events(out)[0]) == {"id": "x", "model": "gpt-4", "choices": []}


def test_ndjson_model_rename_at_every_byte_boundary():
    data = ollama_chat(["Hi <th", "ink>x</think>", "!"]).replace(b'"model":"qwen3"', b'"model":"llama3"')
    assert data.count(b'"model":"llama3"') == 4
    def run(cuts):
        rw = NDJSONStreamRewriter([ThinkTransform("strip"), ModelRestore("gpt-4")])
        bounds = [0, *cuts, len(data)]
        return b"".join(rw.feed(data[a:b]) for a, b in zip(bounds, bounds[1:])) + rw.close()
    whole = run([])
    assert nd_content(whole) == "Hi !"
    assert {json.loads(x)["model"] for x in whole.splitlines()} == {"gpt-4"}
    for i in range(len(data) + 1):
        assert run([i]) == whole, i


def test_sse_several_events_renamed_in_one_go_or_one_by_one():
    t = lambda: [ThinkTransform("strip"), ModelRestore("gpt-4")]  # noqa: E731
    obj = lambda c, **kw: {**chunk({"content": c}), "model": "llama3", **kw}  # noqa: E731
    head = sse([obj("Hi"), obj(" there"), obj(" you")], done=False)
    tails = [
        sse([obj(" a"), obj(" b"), obj(" c")]),                                  # all alike
        sse([obj(" a"), obj(" b", tool={"model": "llama3"}), obj(" c")]),        # a nested model
        sse([obj(" a"), {**obj(" b"), "id": "other"}, obj(" c", model2=1)]),     # another prefix
        sse([obj(" a"), obj(" b <think>x</think>"), obj(" c")]),                 # a tag in one
        sse([obj(" a"), obj(" b").__or__({"model": "gpt-4"}), obj(" c")]),       # already asked
    ]
    for tail in tails:
        ref = [json.loads(e) for e in events(byte_by_byte(head + tail, t())) if e != "[DONE]"]
        rw = SSEStreamRewriter(t())
        out = b"".join(rw.feed(p) for p in re.split(b"(?<=\n\n)", head)) + rw.feed(tail) + rw.close()
        got = [json.loads(e) for e in events(out) if e != "[DONE]"]
        assert got == ref
        assert all(o["model"] == "gpt-4" for o in got if isinstance(o, dict))


# -- the fused one-event fast path -----------------------------------------------------------
# Once the transforms are idle (SSEStreamRewriter._plan), a piece that is one whole
# ``data: {...}\n\n`` event is answered with one or two byte operations. Each stream below is
# fed one event per piece, then at every split into two pieces, and must give exactly the
# bytes of the general path (one byte at a time).

def _renamed(objs: list, model: str = "llama3") -> list:
    return [{**o, "model": model} if isinstance(o, dict) else o for o in objs]


FUSED_STREAMS = {
    "plain": chat_stream(["Hello", " world", ". How", " are you?"]),
    "lt-later": chat_stream(["Hello", " world", " a < b", " and", " <think>x</think>", " end"]),
    "marker-after-fast": chat_stream(["Hi", " there", " <th", "ink>secret</th", "ink>", " bye"]),
    "harmony-after-fast": chat_stream(["Hi", " there", OPEN[:3], OPEN[3:] + "r", CLOSE + "ok"]),
    "leading-ws": chat_stream(["  ", "\n", "<think>x</think>", "  \n", "Hi", " there"]),
    "ws-then-text": chat_stream([" ", "\t", "Hi", " there", " again"]),
    "escaped-ws": chat_stream(["\n\n", "\u00a0Hi", " there", " \u003cthink>"]),
    "think-first": chat_stream(["<think>a", "b</think>", "\n\n", "Answer", " here"]),
    "crlf-later": chat_stream(["Hi", " there"], done=False)
        + b'data: {"model":"llama3","choices":[{"index":0,"delta":{"content":"x"}}]}\r\n\r\n'
        + chat_stream([" more", " text"]),
    "comment-later": chat_stream(["Hi", " there"], done=False) + b": keep-alive\n\n"
        + chat_stream([" more", " text"]),
    "multi-data-later": chat_stream(["Hi", " there"], done=False)
        + b'data: {"model":"llama3",\ndata: "choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        + chat_stream([" more"]),
    "typed-event-later": chat_stream(["Hi", " there"], done=False)
        + b'event: other\ndata: {"model":"llama3","choices":[]}\n\n' + chat_stream([" more"]),
    "other-prefix-later": chat_stream(["Hi", " there"], done=False)
        + sse([{"id": "other", "model": "llama3", "choices": []}], done=False)
        + chat_stream([" more"]),
    "nested-model-later": chat_stream(["Hi", " there"], done=False)
        + sse([chunk({"content": "x"}, tool={"model": "llama3"})], done=False)
        + chat_stream([" more"]),
    "two-choices": sse([chunk({"content": "Hi"}), chunk({"content": " a"}),
                        chunk({"content": "b"}, index=1), chunk({"content": " <think>"}, index=1),
                        chunk({"content": "x</think> c"}, index=1), chunk({}, "stop")]),
}

FUSED_CHAINS = {
    "strip+restore": lambda: [ThinkTransform("strip"), ModelRestore("gpt-4")],
    "tags+restore": lambda: [ThinkTransform("tags"), ModelRestore("gpt-4")],
    "strip": lambda: [ThinkTransform("strip")],
    "restore": lambda: [ModelRestore("gpt-4")],
    "keep+restore": lambda: [ThinkTransform("keep"), ModelRestore("gpt-4")],
    "restore+strip": lambda: [ModelRestore("gpt-4"), ThinkTransform("strip")],
    "restore-asked": lambda: [ThinkTransform("strip"), ModelRestore("llama3")],
}


@pytest.mark.parametrize("chain", sorted(FUSED_CHAINS))
@pytest.mark.parametrize("name", sorted(FUSED_STREAMS))
def test_fused_fast_path_gives_the_general_paths_bytes(name, chain):
    base = FUSED_STREAMS[name]
    assert base.count(b'"model":"m"') >= 3
    for data in (base, base.replace(b'"model":"m"', b'"model":"llama3"')):
        make = FUSED_CHAINS[chain]
        slow = byte_by_byte(data, make())
        assert by_events(data, make()) == slow
        assert relayed(re.split(b"(?<=\n\n)", data), make()) == slow
        assert run_sse(data, [], transforms=make()) == slow
        ends = [m.end() for m in re.finditer(b"\n\n", data)]
        for end in ends[:-1]:
            # A fast-path piece, then the rest cut inside the next event (a marker or the model
            # name split across pieces right after a fused piece).
            for extra in (3, 9, 40, 80, 120):
                rw = SSEStreamRewriter(make())
                pieces = re.split(b"(?<=\n\n)", data[:end]) + [data[end:end + extra],
                                                                  data[end + extra:]]
                out = b"".join(rw.feed(p) for p in pieces if p) + rw.close()
                assert out == slow, (end, extra)


def test_fused_fast_path_is_taken_and_renames_in_the_bytes():
    data = sse(_renamed([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                         chunk({"content": " there"}), chunk({"content": " you"})]),
               done=False)
    rw = SSEStreamRewriter([ThinkTransform("strip"), ModelRestore("gpt-4")])
    pieces = re.split(b"(?<=\n\n)", data)
    outs = []
    for p in pieces[:-1]:
        outs.append(rw.feed(p))
    assert rw._plan is not None  # idle after the first events: the next plain event is fused
    assert outs[-1] == pieces[-2].replace(b'"model":"llama3"', b'"model":"gpt-4"')
    # Every event keeps the upstream's spelling, the first ones (decoded) included.
    assert b"".join(outs) == b"".join(pieces[:-1]).replace(b'"model":"llama3"', b'"model":"gpt-4"')


@pytest.mark.parametrize("chain", sorted(FUSED_CHAINS))
@pytest.mark.parametrize("name", sorted(FUSED_STREAMS))
def test_several_events_per_piece_give_the_general_paths_bytes(name, chain):
    # The whole-event path goes one by one until the transforms are idle, then takes the
    # rest of the piece in one go under the fused rule.
    for data in (FUSED_STREAMS[name], FUSED_STREAMS[name].replace(b'"model":"m"', b'"model":"llama3"'),
                 FUSED_STREAMS[name].replace(b"data: [DONE]\n\n", b"data: [DONE]\n\n: tail\n\n")):
        make = FUSED_CHAINS[chain]
        slow = byte_by_byte(data, make())
        evs = re.split(b"(?<=\n\n)", data)
        for size in (2, 3, 5, len(evs)):
            for start in range(size):
                groups = [b"".join(evs[:start])] + [b"".join(evs[j:j + size])
                                                    for j in range(start, len(evs), size)]
                rw = SSEStreamRewriter(make())
                out = b"".join(rw.feed(g) for g in groups if g) + rw.close()
                assert out == slow, (size, start)
                assert relayed(groups, make()) == slow, (size, start)


def test_a_whole_stream_in_one_piece_is_renamed_in_one_go():
    data = sse(_renamed([chunk({"role": "assistant", "content": ""})]
                        + [chunk({"content": c}) for c in ["Hi", " there", " you", " all"]]
                        + [chunk({}, "stop")]))
    rw = SSEStreamRewriter([ThinkTransform("strip"), ModelRestore("gpt-4")])
    out = rw.feed(data) + rw.close()
    assert out == data.replace(b'"model":"llama3"', b'"model":"gpt-4"')
    assert out == byte_by_byte(data, [ThinkTransform("strip"), ModelRestore("gpt-4")])


class _RestoreThenSign(ModelRestore):
    """A model restore that adds one object when the stream ends (as a transform may)."""

    __slots__ = ()

    def end(self) -> list[dict]:
        return [{"object": "signature"}]


def test_objects_a_transform_adds_at_the_end_come_before_a_done_in_a_whole_piece():
    # The byte paths pass a last [DONE] on with the events before it: the transforms'
    # end() objects must still go out before it, as on the general path.
    data = FUSED_STREAMS["plain"].replace(b'"model":"m"', b'"model":"llama3"')
    slow = byte_by_byte(data, [_RestoreThenSign("gpt-4")])
    assert slow.endswith(b'data: {"object":"signature"}\n\ndata: [DONE]\n\n')
    evs = re.split(b"(?<=\n\n)", data)
    for groups in ([data], [evs[0], b"".join(evs[1:])], [b"".join(evs[:2]), b"".join(evs[2:])]):
        rw = SSEStreamRewriter([_RestoreThenSign("gpt-4")])
        assert b"".join(rw.feed(g) for g in groups) + rw.close() == slow
        assert relayed(groups, [_RestoreThenSign("gpt-4")]) == slow
        assert relayed(groups, [ThinkTransform("strip"), _RestoreThenSign("gpt-4")]) == slow


@pytest.mark.parametrize("chain", ["strip+restore", "tags+restore", "strip", "restore"])
@pytest.mark.parametrize("name", ["plain", "marker-after-fast", "leading-ws", "crlf-later",
                                  "multi-data-later", "nested-model-later"])
def test_a_piece_that_completes_an_event_then_brings_whole_ones(name, chain):
    # Pieces cut anywhere: the event completed by a piece takes the general path, the whole
    # events after it the fast ones; the bytes are the general path's at every cut.
    data = FUSED_STREAMS[name].replace(b'"model":"m"', b'"model":"llama3"')
    make = FUSED_CHAINS[chain]
    slow = byte_by_byte(data, make())
    for i in range(1, len(data)):
        assert run_sse(data, [i], transforms=make()) == slow, i
        assert relayed([data[:i], data[i:]], make()) == slow, i
        j = i + (len(data) - i) // 3
        if i < j:
            assert run_sse(data, [i, j], transforms=make()) == slow, (i, j)


# -- the think transform set aside until a piece concerns it ----------------------------------
# SSEStreamRewriter sets a fresh ThinkTransform aside (`deferral_stops`) and feeds it the
# stream so far once a piece holds a marker's first character or a \u escape.

@pytest.mark.parametrize("chain", ["strip+restore", "strip", "tags+restore"])
def test_a_marker_spelled_with_escapes_ends_the_set_aside(chain):
    data = chat_stream(["Hi", " there", "<think>x</think>", " end"])
    data = data.replace(b"<think>", b"\\u003cthink>").replace(b"</think>", b"\\u003c/think>")
    assert b"<" not in data
    make = FUSED_CHAINS[chain]
    slow = byte_by_byte(data, make())
    assert by_events(data, make()) == slow
    assert relayed(re.split(b"(?<=\n\n)", data), make()) == slow
    assert run_sse(data, [], transforms=make()) == slow
    if chain != "tags+restore":
        assert content_of(slow) == "Hi there end"
    # One escaped marker, never closed: a piece may end between its backslash and its u.
    data = chat_stream(["Hi", " there", "<think>x", " end"]).replace(b"<think>", b"\\u003cthink>")
    slow = byte_by_byte(data, make())
    if chain != "tags+restore":
        assert content_of(slow) == "Hi there"
    for i in range(1, len(data)):
        assert run_sse(data, [i], transforms=make()) == slow, i


def test_the_transform_set_aside_learns_where_the_text_started():
    # Whitespace only, then a leading block: the whitespace after it goes. Text, then a block:
    # the whitespace after it stays. Either way the block comes after pieces it was not fed.
    for contents, expected in ((["  ", "\n", "<think>x</think>", "\n\nHi"], "  \nHi"),
                               (["Hi", " ", "<think>x</think>", "\n\nthere"], "Hi \n\nthere")):
        data = chat_stream(contents)
        rw = SSEStreamRewriter([ThinkTransform("strip")])
        out = b"".join(rw.feed(p) for p in re.split(b"(?<=\n\n)", data)) + rw.close()
        assert content_of(out) == expected
        assert out == byte_by_byte(data, [ThinkTransform("strip")])


def test_a_done_between_events_of_one_piece_ends_the_transforms_there():
    # [DONE] ends the think rewrite (its choices start afresh), even with events after it in
    # the same piece: a leading block after it then drops the whitespace that follows it.
    first = sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "<think>a</think>Hi"})],
                done=False)
    middle = sse([chunk({"content": " b"})]) + sse([chunk({"content": " "})], done=False)
    last = sse([chunk({"content": "<think>x</think>\n\nthere"}), chunk({}, "stop")], done=False)
    for make in (FUSED_CHAINS["strip"], FUSED_CHAINS["strip+restore"]):
        slow = byte_by_byte(first + middle + last, make())
        assert content_of(slow).endswith(" b there")
        rw = SSEStreamRewriter(make())
        assert rw.feed(first) + rw.feed(middle) + rw.feed(last) + rw.close() == slow
        assert relayed([first, middle, last], make()) == slow


# -- a transform set aside that is not made yet (SSEStreamRewriter's `aside`) -----------------
# The gateway hands the think rewrite over as what makes it, with a fresh one's stops: it is
# made only when a piece holds one of them, and must then leave the stream as one made at once.

def _aside(mode: str, made: list):
    def make():
        made.append(1)
        return ThinkTransform(mode)
    aside = make_aside(make)
    made.clear()  # (make_aside made one to learn its stops)
    return aside


@pytest.mark.parametrize("chain", ["strip+restore", "tags+restore", "strip", "restore-asked"])
@pytest.mark.parametrize("name", sorted(FUSED_STREAMS))
def test_a_transform_not_made_yet_gives_the_bytes_of_one_made_at_once(name, chain):
    mode = "tags" if chain.startswith("tags") else "strip"
    data = FUSED_STREAMS[name].replace(b'"model":"m"', b'"model":"llama3"')
    full = FUSED_CHAINS[chain]
    slow = byte_by_byte(data, full())
    pieces = re.split(b"(?<=\n\n)", data)
    ways = {"by events": lambda rw: [rw.feed(p) for p in pieces],
            "relayed": None,
            "whole": lambda rw: [rw.feed(data)],
            "cut": lambda rw: [rw.feed(data[:len(data) // 3]), rw.feed(data[len(data) // 3:])]}
    for way, feed in ways.items():
        made: list = []
        rest = full()[1:]
        if feed is None:
            rw, parser, out = SSEStreamRewriter(rest, aside=_aside(mode, made)), SSEParser(), []
            for p in pieces:
                parser.feed(p)
                out.append(rw.feed(p, parser.whole))
        else:
            rw = SSEStreamRewriter(rest, aside=_aside(mode, made))
            out = feed(rw)
        assert b"".join(out) + rw.close() == slow, way
        # Made once when the stream holds a marker's first byte or an escape, else never.
        assert len(made) == (1 if b"<" in data or b"\\u" in data else 0), way


class _LongStops(ThinkTransform):
    """A think rewrite whose deferral stops are longer than a byte."""

    def deferral_stops(self):
        return (b"<t",), super().deferral_stops()[1]


def test_a_transform_not_made_yet_with_stops_longer_than_a_byte_is_made_at_once():
    made: list = []
    aside = make_aside(lambda: made.append(1) or _LongStops("strip"))
    assert aside is not None and aside[1] == (b"<t",) and not aside[3]
    made.clear()
    data = chat_stream(["Hi", " <think>x</think>", " there"])
    rw = SSEStreamRewriter([], aside=aside)
    assert len(made) == 1 and len(rw.transforms) == 1
    assert rw.feed(data) + rw.close() == byte_by_byte(data, [ThinkTransform("strip")])
    # defer=False makes it at once too, and NDJSON streams have no set-aside.
    SSEStreamRewriter([], defer=False, aside=_aside("strip", made))  # (_aside clears `made`)
    assert len(made) == 1
    lines = ollama_chat(["<think>a</think>", "Hi"])
    ndjson = stream_rewriter("application/x-ndjson", [], _aside("strip", made))
    assert isinstance(ndjson, NDJSONStreamRewriter) and len(made) == 1
    want = NDJSONStreamRewriter([ThinkTransform("strip")])
    assert ndjson.feed(lines) + ndjson.close() == want.feed(lines) + want.close()
