"""Tests for rechat's C helpers (rechat/_fused.c, imported by rechat.speedups).

Each helper must give what its rule says, which is what the Python beside its caller gives:
`event` and `events` against a plain-Python statement of the fused rule, on generated events;
`locate` against `rechat.modelmap._locate` with the C pass turned off, on generated JSON
objects. The rewriter, think and model-map tests run both paths as well (conftest.both_paths).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rechat import modelmap, speedups

if not speedups.BUILT:
    # The install builds it wherever a C compiler is at hand (setup.py); make test's machine has one.
    if shutil.which("cc") or shutil.which("gcc"):
        pytest.fail("rechat._fused is not built although a C compiler is here: "
                    "reinstall (pip install -e .) and read the build's output", pytrace=False)
    pytest.skip("rechat._fused is not built (no C compiler)", allow_module_level=True)

from rechat import _fused  # noqa: E402  (after the check above)

HEAD = b'data: {"id":"c1","object":"chat.completion.chunk","model":"served-7"'
NEW = b'data: {"id":"c1","object":"chat.completion.chunk","model":"asked"'
STOPS = (b"\r", b"<", b"\\u")
TAIL = (b'"model"', b"\\u")


def rule(data: bytes, plan: tuple) -> bytes | None:
    """The fused rule as `_fused.event`'s docstring states it, in plain Python."""
    stops, head, new, tail = plan[:4]
    if not (data.startswith(head) and len(data) >= len(head) + 3 and data.endswith(b"}\n\n")
            and data.find(b"\n") == len(data) - 2):
        return None
    if any(data.find(x) >= 0 for x in stops) or any(data.find(x, len(head)) >= 0 for x in tail):
        return None
    return data if new is None else new + data[len(head):]


# Text around the places the rule looks at: stops, tail stops, near misses, framing bytes.
_PIECES = st.sampled_from([b"a", b" ", b'"', b":", b",", b"}", b"{", b"\n", b"\r", b"<", b"\\",
                           b"u", b"\\u003c", b'"model"', b'"mode"', b'model"', b"\\n", b"\xc3\xa9",
                           b'"content":"hi"', b"}\n\n"])
_BODY = st.lists(_PIECES, max_size=12).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(start=st.sampled_from([HEAD, NEW, HEAD[:-1], b"data: {", b""]), body=_BODY,
       end=st.sampled_from([b"}\n\n", b"}\n", b"}", b"\n\n", b"}\r\n\r\n", b""]),
       new=st.sampled_from([None, NEW, b"data: {"]),
       stops=st.sampled_from([STOPS, (b"\r",), (), (b"\r", b"<", b"\\u", b"</think>")]),
       tail=st.sampled_from([TAIL, (), (b'"model"',), (b"\\u",)]))
def test_event_follows_its_rule(start, body, end, new, stops, tail):
    data = start + body + end
    plan = (stops, HEAD, new, tail, 0)
    want = rule(data, plan)
    history: list[bytes] = []
    assert _fused.event(data, plan, history) == want
    assert _fused.event(data, plan, None) == want
    # The piece joins the history exactly when the rule takes it.
    assert history == ([] if want is None else [data])


_EVENT = st.tuples(st.sampled_from([HEAD, HEAD, NEW, b"data: {"]), _BODY,
                   st.sampled_from([b"}\n\n", b"}\n\n", b"}\n\n", b"\n\n", b"}\r\n\r\n"])
                   ).map(b"".join)


DONE = b"data: [DONE]\n\n"


@settings(max_examples=400, deadline=None)
@given(evs=st.lists(_EVENT, min_size=1, max_size=5), new=st.sampled_from([None, NEW]),
       tail=st.sampled_from([TAIL, (), (b'"model"',), (b"\\u",)]),
       extra=st.sampled_from([b"", b"x", b"\n", DONE, DONE, b"\n" + DONE, DONE + b"x", DONE + DONE]),
       off=st.sampled_from([0, 0, 1, -1]))
def test_events_is_event_over_each(evs, new, tail, extra, off):
    plan = (STOPS, HEAD, new, tail, 0)
    data = b"".join(evs) + extra
    each = [rule(e, plan) for e in evs]
    # Exactly `count` events the rule takes each, then nothing or the stream's last event as
    # it is: their results, joined.
    want = (b"".join(each) + extra if extra in (b"", DONE) and not off and None not in each
            and all(e.count(b"\n") == 2 for e in evs) else None)
    got = _fused.events(data, len(evs) + off, plan)
    assert got == want
    if want is not None and new is None:
        assert got is data


@pytest.mark.parametrize("count", [63, 64, 65, 200])
@pytest.mark.parametrize("last", [b"", DONE])
def test_events_renames_a_piece_of_more_events_than_it_keeps_the_ends_of(count, last):
    # `events` keeps the ends of the first 64 events for its copy and finds the rest again.
    evs = [HEAD + b',"choices":[{"delta":{"content":"' + b"x" * (i % 7) + b'"}}]}\n\n'
           for i in range(count)]
    got = _fused.events(b"".join(evs) + last, count, (STOPS, HEAD, NEW, TAIL, 0))
    assert got == b"".join(NEW + e[len(HEAD):] for e in evs) + last
    # The last event holds a stop: the whole piece is declined.
    evs[-1] = evs[-1].replace(b'"content":"', b'"content":"<')
    assert _fused.events(b"".join(evs), count, (STOPS, HEAD, NEW, TAIL, 0)) is None


def test_events_finds_each_end_and_a_key_in_a_tail_at_every_offset():
    # `events` looks for an event's end and a key after its head 16 places at a time where
    # it can: the next event's head, whose key comes right after the blank line, must not
    # count for the event before it; a key anywhere in a tail must.
    head, new = b'data: {"model":"served-7"', b'data: {"model":"asked"'
    plan = ((b"\r", b"<"), head, new, TAIL, 0)
    for size in range(0, 60):
        evs = [head + b',"c":"' + b"m" * ((size + i) % 40) + b'l"}\n\n' for i in range(4)]
        want = b"".join(new + e[len(head):] for e in evs)
        for last in (b"", DONE):
            assert _fused.events(b"".join(evs) + last, 4, plan) == want + last, size
        for at in range(len(head), len(evs[1]) - 9):
            keyed = evs[1][:at] + b'"model"' + evs[1][at:]
            assert _fused.events(b"".join([evs[0], keyed, *evs[2:]]), 4, plan) is None, (size, at)
            near = evs[1][:at] + b'"mode1"' + evs[1][at:]
            assert _fused.events(b"".join([evs[0], near, *evs[2:]]), 4, plan) is not None


@settings(max_examples=300, deadline=None)
@given(data=_BODY, stops=st.sampled_from([(b"<",), (b"<", b"\xe2"), (), (b"\r", b"<")]),
       escape=st.booleans())
def test_touches_follows_its_rule(data, stops, escape):
    # SSEStreamRewriter.feed's test of a piece against the transform it has set aside.
    want = (any(data.find(x) >= 0 for x in stops)
            or (escape and (data.find(b"\\u") >= 0 or data.endswith(b"\\"))))
    assert _fused.touches(data, stops, escape) is want


def test_touches_declines_what_is_not_bytes():
    assert _fused.touches(bytearray(b"<"), (b"<",), False) is None
    assert _fused.touches(b"<", [b"<"], False) is None
    assert _fused.touches(b"<", ("<",), False) is None
    assert _fused.touches(b"a\\", (), True) is True and _fused.touches(b"a\\", (), False) is False
    with pytest.raises(TypeError):
        _fused.touches(b"<", (b"<",))


def test_event_shares_an_unchanged_piece_and_renames_the_head():
    data = HEAD + b',"choices":[{"delta":{"content":"hi"}}]}\n\n'
    assert _fused.event(data, (STOPS, HEAD, None, TAIL, 0), None) is data
    assert _fused.event(data, (STOPS, HEAD, NEW, TAIL, 0), None) == NEW + data[len(HEAD):]
    # A stop anywhere, a tail stop after the head, a second line: the general path's work.
    for bad in (data.replace(b"hi", b"<hi"), data.replace(b"hi", b"\\u0068i"),
                data.replace(b'"hi"', b'"hi","model":"m"'), data[:-3] + b"}\ndata: x}\n\n",
                data.replace(b"hi", b"h\ri")):
        assert _fused.event(bad, (STOPS, HEAD, NEW, TAIL, 0), None) is None, bad


def test_event_declines_what_is_not_its_shape_and_checks_its_arguments():
    plan = (STOPS, HEAD, NEW, TAIL, 0)
    data = HEAD + b"}\n\n"
    assert _fused.event(bytearray(data), plan, None) is None  # bytes only
    assert _fused.event(data, list(plan), None) is None
    assert _fused.event(data, (STOPS, HEAD), None) is None
    assert _fused.event(data, ([b"\r"], HEAD, NEW, TAIL), None) is None
    assert _fused.event(data, (STOPS, HEAD, NEW, TAIL), ()) is None  # history: a list or None
    assert _fused.event(data, ((b"",), HEAD, NEW, TAIL), None) is None  # an empty stop: held
    assert _fused.event(data, (STOPS, b"", NEW, TAIL), None) is None
    with pytest.raises(TypeError):
        _fused.event(data, plan)
    with pytest.raises(TypeError):
        _fused.locate()
    with pytest.raises(TypeError):
        _fused.events(data, "1", plan)
    assert _fused.events(data, 0, plan) is None
    assert _fused.events(data, 1, plan) == NEW + b"}\n\n"


# -- locate ---------------------------------------------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5),
                     st.text(alphabet='ab"\\<:,{}[] \né\u2028', max_size=6))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["model", "a", "b", "mo\"del", "choices"]), inner,
                    max_size=3)), max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(before=st.dictionaries(st.sampled_from(["id", "object", "created", "x"]), _VALUES,
                              max_size=3),
       after=st.dictionaries(st.sampled_from(["choices", "usage", "y"]), _VALUES, max_size=3),
       model=st.one_of(st.text(alphabet='gpt-4o"\\é<', max_size=8), st.integers(), st.none()),
       has_model=st.booleans(), separators=st.sampled_from([(", ", ": "), (",", ":")]),
       ascii_only=st.booleans())
def test_locate_agrees_with_the_python_it_stands_for(before, after, model, has_model,
                                                     separators, ascii_only):
    obj = {**before, **({"model": model} if has_model else {}), **after}
    raw = json.dumps(obj, separators=separators, ensure_ascii=ascii_only).encode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modelmap, "_fused_locate", None)
        want = modelmap._locate(raw)
    got = _fused.locate(raw)
    assert got is None or got == want
    # The usual answer is the C pass's to give: a flat start (no bracket before the key, even
    # inside a string: the bytes cannot tell), no escapes, a string model.
    flat = not any(c in b"{}[]" for c in raw[1:raw.find(b'"model"')])
    if (has_model and isinstance(model, str) and flat and b"\\" not in raw
            and raw.count(b'"model"') == 1):
        assert got == want and got is not None
    # learn: what ModelRestore._learn keeps of the same chunk, where locate takes it.
    for asked in ("gpt-4o", model if isinstance(model, str) else "x"):
        restore = modelmap.ModelRestore(asked)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(modelmap, "_fused_learn", None)
            memo = restore._learn(raw)
        learned = _fused.learn(raw, restore._asked_raw)
        assert learned == (None if got is None else memo)
        if learned is not None and memo[1] is memo[0]:
            assert learned[1] is learned[0]  # unchanged: the head itself, as _learn keeps it


@settings(max_examples=300, deadline=None)
@given(first=st.sampled_from([b'{"id":"c1","model":"served-7","x":1}', b'{"id":"c1","model":"asked"}',
                              b'{"model":1}', b'{"a":{"model":"m"}}', b'{"id":"c1"}', b"[DONE]",
                              b'{"id":"c1","model":"served-7"']),
       rest=st.lists(st.sampled_from([b'{"id":"c1","model":"served-7","c":"a"}',
                                      b'{"id":"c1","model":"served-7","c":"<\\u"}',
                                      b'{"id":"c1","model":"asked","c":"b"}', b'{"id":"c2"}',
                                      b'{"id":"c1","model":"served-7","model":"x"}']), max_size=4),
       frame=st.sampled_from([b"data: ", b"data:", b"data: data: "]),
       last=st.sampled_from([b"", DONE, b"\n"]), off=st.sampled_from([0, 0, 1, -1]),
       asked=st.sampled_from([b'"asked"', b'"served-7"']))
def test_learn_events_is_learn_then_events(first, rest, frame, last, off, asked):
    # ModelRestore.feed_raw_events' first piece: learn over the first event's JSON, then
    # events under the plan made of the memo.
    data = b"".join(frame + x + b"\n\n" for x in [first, *rest]) + last
    count = 1 + len(rest) + off
    lf = data.find(b"\n")
    memo = (_fused.learn(data[6:lf], asked)
            if lf >= 6 and data[lf + 1:lf + 2] == b"\n" else None)
    got = _fused.learn_events(data, count, asked, TAIL)
    if memo is None:
        assert got is None
        return
    head, new, cut = memo
    plan = ((), b"data: " + head, None if new is head else b"data: " + new, TAIL)
    assert got == (_fused.events(data, count, plan), memo, plan)
    assert (got[1][1] is got[1][0]) is (new is head) and (got[2][2] is None) is (new is head)


def test_the_key_is_found_at_every_offset_and_a_second_one_anywhere_after():
    # The key search takes 16 places at a time where it can, and the last ones one by one:
    # a key at any offset, and a second key (which must decline) at any offset after it.
    for pad in range(0, 70):
        raw = b'{"x":"' + b"m" * pad + b'","model":"m"}'
        assert _fused.locate(raw) == (raw.index(b'"m"}'), len(raw) - 2, raw.index(b'"model"'))
        for gap in range(0, 40):
            twice = raw[:-1] + b',"y":"' + b"l" * gap + b'","model":"n"}'
            assert _fused.locate(twice) is None, (pad, gap)
            near = raw[:-1] + b',"y":"' + b"l" * gap + b'","mode1":"n"}'
            assert _fused.locate(near) == _fused.locate(raw)[:2] + (raw.index(b'"model"'),)


def test_locate_leaves_unusual_bodies_to_python():
    for raw in (b'{"a":{"model":"x"}}', b'{"model":"x","model":"y"}', b'{"model":1}',
                b'{"a":"\\u0041","model":"x"}', b'{"model" : "x"}', b'[{"model":"x"}]',
                b'{"model":"x"', b'{"model":"x}', b"", b'{"model":"x"} ', bytearray(b'{"model":"x"}')):
        assert _fused.locate(raw) is None, raw
    # Not JSON: an odd quote before the key puts it in a string as far as the bytes tell.
    odd = b'{"a":"x"model":"y"}'
    assert _fused.locate(odd) is None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modelmap, "_fused_locate", None)
        assert modelmap._locate(odd) == modelmap._ABSENT
    assert _fused.locate(b'{"id":"1", "model": "gpt-4o"}') == (20, 27, 11)
    assert _fused.locate(b'{"model":"m","choices":[]}') == (9, 11, 1)
    assert _fused.learn(b'{"model":"m","n":1}', b'"gpt"') == (b'{"model":"m"', b'{"model":"gpt"', 1)
    assert _fused.learn(b'{"model":"m"}', "m") is None  # bytes only
    with pytest.raises(TypeError):
        _fused.learn(b"{}")
    assert _fused.learn_events(bytearray(b'data: {"model":"m"}\n\n'), 1, b'"a"', TAIL) is None
    assert _fused.learn_events(b'data: {"model":"m"}\n\n', 1, b'"a"', [b"x"]) is None
    with pytest.raises(TypeError):
        _fused.learn_events(b'data: {"model":"m"}\n\n', 1, b'"a"')


# -- swap ----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(before=st.dictionaries(st.sampled_from(["messages", "x", "stream"]), _VALUES, max_size=3),
       after=st.dictionaries(st.sampled_from(["temperature", "y"]), _VALUES, max_size=3),
       asked=st.text(alphabet='gpt-4o"\\é<', min_size=1, max_size=8),
       served=st.text(alphabet='lama3"\\é', max_size=6),
       separators=st.sampled_from([(", ", ": "), (",", ":"), (",", " : ")]),
       ascii_only=st.booleans())
def test_swap_agrees_with_the_python_it_stands_for(before, after, asked, served, separators,
                                                   ascii_only):
    raw = json.dumps({**before, "model": asked, **after}, separators=separators,
                     ensure_ascii=ascii_only).encode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modelmap, "_fused_swap", None)
        want = modelmap.rewrite_request_bytes(raw, asked, served, decoded=True)
    renaming = modelmap._remember_renaming(asked, served)
    got = _fused.swap(raw, renaming)
    assert got is None or got == want
    if want is not None:
        assert json.loads(want) == {**before, "model": served, **after}
    # The usual body is the C pass's to rename: no backslash, the key once, a usual spelling.
    if b"\\" not in raw and raw.count(b'"model"') == 1 and separators[1] in (": ", ":"):
        assert got == want and got is not None


def test_swap_leaves_unusual_bodies_to_python_and_checks_its_arguments():
    renaming = modelmap._remember_renaming("gpt-4o", "llama3")
    assert _fused.swap(b'{"model": "gpt-4o", "n": 1}', renaming) == b'{"model": "llama3", "n": 1}'
    assert _fused.swap(b'{"n":1,"model":"gpt-4o"}', renaming) == b'{"n":1,"model":"llama3"}'
    for raw in (b'{"model" : "gpt-4o"}', b'{"model": "gpt"}',
                b'{"model": "gpt-4o", "a": {"model": "x"}}', b'{"a": "\\n", "model": "gpt-4o"}',
                b'{"mod\\u0065l": "gpt-4o"}', b"", bytearray(b'{"model": "gpt-4o"}')):
        assert _fused.swap(raw, renaming) is None, raw
    with pytest.raises(TypeError):
        _fused.swap(b"{}", renaming[:4])
    with pytest.raises(TypeError):
        _fused.swap(b"{}")
    assert _fused.swap(b'{"model": "gpt-4o"}', ("x", 1, 2, 3, 4)) is None


def test_no_extensions_turns_the_c_helpers_off():
    code = ("from rechat import speedups; "
            "print(speedups.BUILT, *(getattr(speedups, x) for x in speedups.__all__[1:]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "RECHAT_NO_EXTENSIONS": "1"}).stdout
    assert out.split() == ["True"] + ["None"] * (len(speedups.__all__) - 1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items()
                              if k != "RECHAT_NO_EXTENSIONS"}).stdout
    assert out.split()[0] == "True" and "built-in function event" in out
