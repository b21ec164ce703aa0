"""Tests for rechat.sse: WHATWG 9.2.6 parsing, raw-byte fidelity, encoding."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rechat.sse import DONE, SSEEvent, SSEParser, encode_event


def parse_all(pieces: list[bytes]) -> tuple[list[SSEEvent], bytes]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.close()
    return events, parser.tail


def fields(events: list[SSEEvent]) -> list[tuple]:
    return [(e.data, e.event, e.id, e.retry) for e in events]


# (name, stream, [(data, event, id, retry), ...], [raw, ...], tail)
CASES = [
    (
        "openai",
        b'data: {"a":1}\n\ndata: [DONE]\n\n',
        [('{"a":1}', None, None, None), ("[DONE]", None, None, None)],
        [b'data: {"a":1}\n\n', b"data: [DONE]\n\n"],
        b"",
    ),
    ("crlf", b"data: x\r\n\r\n", [("x", None, None, None)], [b"data: x\r\n\r\n"], b""),
    # A final lone CR can only be told from a CRLF at close().
    ("cr", b"data: x\r\rdata: y\r\r", [("x", None, None, None), ("y", None, None, None)], [b"data: x\r\r", b"data: y\r\r"], b""),
    ("mixed endings", b"data: a\r\ndata: b\rdata: c\n\r\n", [("a\nb\nc", None, None, None)], [b"data: a\r\ndata: b\rdata: c\n\r\n"], b""),
    ("bom", b"\xef\xbb\xbfdata: x\n\n", [("x", None, None, None)], [b"\xef\xbb\xbfdata: x\n\n"], b""),
    # Only one leading BOM is stripped; a second makes the field name unknown.
    ("second bom", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n", [("y", None, None, None)], [b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n"], b""),
    ("bom alone", b"\xef\xbb\xbf\ndata: x\n\n", [("x", None, None, None)], [b"\xef\xbb\xbf\ndata: x\n\n"], b""),
    (
        "comment belongs to next event",
        b": keep-alive\n\n: hi\ndata: x\n\n: bye\n",
        [("x", None, None, None)],
        [b": keep-alive\n\n: hi\ndata: x\n\n"],
        b": bye\n",
    ),
    ("no space after colon", b"data:x\n\n", [("x", None, None, None)], [b"data:x\n\n"], b""),
    ("only one space removed", b"data:  x \n\n", [(" x ", None, None, None)], [b"data:  x \n\n"], b""),
    ("colon in value", b'data: {"a": "b:c"}\n\n', [('{"a": "b:c"}', None, None, None)], [b'data: {"a": "b:c"}\n\n'], b""),
    ("multiline data", b"data: a\ndata:\ndata: b\n\n", [("a\n\nb", None, None, None)], [b"data: a\ndata:\ndata: b\n\n"], b""),
    ("field without colon", b"data\n\n", [("", None, None, None)], [b"data\n\n"], b""),
    ("empty data field dispatches", b"data:\n\n", [("", None, None, None)], [b"data:\n\n"], b""),
    (
        "event type",
        b"event: delta\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n",
        [("1", "delta", None, None), ("2", None, None, None), ("3", None, None, None)],
        [b"event: delta\ndata: 1\n\n", b"data: 2\n\n", b"event:\ndata: 3\n\n"],
        b"",
    ),
    (
        # The spec resets the event type buffer even when nothing is dispatched.
        "event type reset by empty block",
        b"event: a\n\ndata: 1\n\n",
        [("1", None, None, None)],
        [b"event: a\n\ndata: 1\n\n"],
        b"",
    ),
    (
        "id persists, resets, NUL ignored",
        b"id: 7\ndata: a\n\ndata: b\n\nid: 8\x00\ndata: c\n\nid\ndata: d\n\n",
        [("a", None, "7", None), ("b", None, "7", None), ("c", None, "7", None), ("d", None, "", None)],
        [b"id: 7\ndata: a\n\n", b"data: b\n\n", b"id: 8\x00\ndata: c\n\n", b"id\ndata: d\n\n"],
        b"",
    ),
    (
        "id from block without data persists",
        b"id: 9\n\ndata: a\n\n",
        [("a", None, "9", None)],
        [b"id: 9\n\ndata: a\n\n"],
        b"",
    ),
    (
        "retry",
        b"retry: 3000\ndata: a\n\ndata: b\n\nretry: 12a\ndata: c\n\nretry:\nretry: -1\nretry: \xd9\xa3\ndata: d\n\n",
        [("a", None, None, 3000), ("b", None, None, None), ("c", None, None, None), ("d", None, None, None)],
        [b"retry: 3000\ndata: a\n\n", b"data: b\n\n", b"retry: 12a\ndata: c\n\n", b"retry:\nretry: -1\nretry: \xd9\xa3\ndata: d\n\n"],
        b"",
    ),
    (
        "retry in block without data goes to next event",
        b"retry: 10\n\ndata: a\n\n",
        [("a", None, None, 10)],
        [b"retry: 10\n\ndata: a\n\n"],
        b"",
    ),
    ("unknown field ignored", b"foo: bar\ndata: a\nDATA: b\n\n", [("a", None, None, None)], [b"foo: bar\ndata: a\nDATA: b\n\n"], b""),
    (
        "block without data is not dispatched, raw kept",
        b"event: ping\n\ndata: a\n\n",
        [("a", None, None, None)],
        [b"event: ping\n\ndata: a\n\n"],
        b"",
    ),
    ("incomplete final event discarded", b"data: a\n\ndata: b\n", [("a", None, None, None)], [b"data: a\n\n"], b"data: b\n"),
    ("unterminated final line discarded", b"data: a\n\ndata: b", [("a", None, None, None)], [b"data: a\n\n"], b"data: b"),
    ("block without data at end goes to tail", b"data: a\n\nevent: x\n\n", [("a", None, None, None)], [b"data: a\n\n"], b"event: x\n\n"),
    ("blank lines only", b"\n\r\n\r", [], [], b"\n\r\n\r"),
    ("empty stream", b"", [], [], b""),
    (
        "utf-8",
        "data: héllo 日本 🎉\n\n".encode(),
        [("héllo 日本 🎉", None, None, None)],
        ["data: héllo 日本 🎉\n\n".encode()],
        b"",
    ),
    ("invalid utf-8 replaced", b"data: a\xffb\xe6\x97\n\n", [("a\ufffdb\ufffd", None, None, None)], [b"data: a\xffb\xe6\x97\n\n"], b""),
]


@pytest.mark.parametrize(("stream", "expected", "raws", "tail"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_whole_stream(stream: bytes, expected: list[tuple], raws: list[bytes], tail: bytes) -> None:
    events, got_tail = parse_all([stream])
    assert fields(events) == expected
    assert [e.raw for e in events] == raws
    assert got_tail == tail
    assert b"".join(raws) + tail == stream


@pytest.mark.parametrize(("stream", "expected", "raws", "tail"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_byte_by_byte(stream: bytes, expected: list[tuple], raws: list[bytes], tail: bytes) -> None:
    events, got_tail = parse_all([stream[i : i + 1] for i in range(len(stream))])
    assert fields(events) == expected
    assert [e.raw for e in events] == raws
    assert got_tail == tail


# Small streams that exercise everything at once: BOM, comments, all three
# line endings (including CRLF pairs to be split), multi-byte UTF-8, a block
# without data, id/event/retry, and either a final lone CR or a discarded
# unterminated event.
SPLIT_STREAMS = [
    b"\xef\xbb\xbf: c\r\nid: 1\r\nevent: e\r\ndata: h\xc3\xa9\r\ndata:\xf0\x9f\x8e\x89\r\n\r\n"
    b"retry: 5\n\n:x\rdata: \xe6\x97\xa5\r\rdata: [DONE]\r\n\r\ndata: z\r\r",
    b"data: a\r\n\r\ndata:b\n\nevent: only\r\n\r\n: c\rdata: \xc3\xa9\xe6\x97\xa5\ndata: t\r",
]


def whole(stream: bytes) -> tuple[list[SSEEvent], bytes]:
    return parse_all([stream])


@pytest.mark.parametrize("stream", SPLIT_STREAMS, ids=["final-cr", "discarded-tail"])
def test_split_at_every_byte_position(stream: bytes) -> None:
    expected, expected_tail = whole(stream)
    assert len(expected) >= 2
    for i in range(len(stream) + 1):
        events, tail = parse_all([stream[:i], stream[i:]])
        assert events == expected, i
        assert tail == expected_tail, i
        assert b"".join(e.raw for e in events) + tail == stream


@pytest.mark.parametrize("stream", SPLIT_STREAMS, ids=["final-cr", "discarded-tail"])
def test_split_at_every_pair_of_positions(stream: bytes) -> None:
    expected, expected_tail = whole(stream)
    n = len(stream)
    for i in range(n + 1):
        for j in range(i, n + 1):
            events, tail = parse_all([stream[:i], stream[i:j], stream[j:]])
            assert events == expected and tail == expected_tail, (i, j)


def test_split_streams_expected_values() -> None:
    events, tail = whole(SPLIT_STREAMS[0])
    assert fields(events) == [
        ("hé\n🎉", "e", "1", None),
        ("日", None, "1", 5),
        ("[DONE]", None, "1", None),
        ("z", None, "1", None),
    ]
    assert tail == b""
    events, tail = whole(SPLIT_STREAMS[1])
    assert fields(events) == [("a", None, None, None), ("b", None, None, None)]
    assert tail == b"event: only\r\n\r\n: c\rdata: \xc3\xa9\xe6\x97\xa5\ndata: t\r"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SPLIT_STREAMS), st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_random_splits(stream: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    assert parse_all(pieces) == whole(stream)


def test_events_returned_as_soon_as_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert fields(parser.feed(b"\ndata: b")) == [("a", None, None, None)]
    assert parser.tail == b"data: b"
    assert parser.feed(b"\n") == []
    assert fields(parser.feed(b"\n")) == [("b", None, None, None)]
    assert parser.close() == []


def test_cr_waits_for_possible_lf_but_not_longer() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == []  # the second CR may start a CRLF
    [event] = parser.feed(b"\n")
    assert event.raw == b"data: a\r\r\n"
    assert parser.feed(b"data: b\r\r") == []
    [event] = parser.feed(b"d")  # no LF came: the CR ended the blank line
    assert event.raw == b"data: b\r\r"
    assert parser.tail == b"d"


def test_state_attributes() -> None:
    parser = SSEParser()
    parser.feed(b"id: x\nretry: 100\n\nretry: 200\ndata: a\n\n")
    assert parser.last_event_id == "x"
    assert parser.retry == 200


def test_feed_accepts_bytes_like_and_empty() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert fields(parser.feed(bytearray(b"data: a\n\n"))) == [("a", None, None, None)]
    assert fields(parser.feed(memoryview(b"data: b\n\n"))) == [("b", None, None, None)]


def test_feed_after_close_raises_and_close_is_idempotent() -> None:
    parser = SSEParser()
    parser.feed(b"data: a")
    assert parser.close() == []
    assert parser.close() == []
    assert parser.tail == b"data: a"
    with pytest.raises(ValueError):
        parser.feed(b"\n\n")


def test_long_line_in_many_pieces() -> None:
    payload = "x" * 200_000
    stream = encode_event(payload)
    events, tail = parse_all([stream[i : i + 7] for i in range(0, len(stream), 7)])
    assert [e.data for e in events] == [payload]
    assert tail == b""


def test_is_done() -> None:
    [event] = SSEParser().feed(DONE)
    assert event.is_done
    assert event.raw == DONE == b"data: [DONE]\n\n"
    assert not SSEEvent(data="[DONE] ").is_done
    assert not SSEEvent(data='{"a":1}').is_done


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("x",), b"data: x\n\n"),
        (("",), b"data: \n\n"),
        (('{"a": 1}',), b'data: {"a": 1}\n\n'),
        (("a\nb",), b"data: a\ndata: b\n\n"),
        (("a\r\nb\rc\n",), b"data: a\ndata: b\ndata: c\ndata: \n\n"),
        ((" lead",), b"data:  lead\n\n"),
        (("é",), "data: é\n\n".encode()),
        (("x", "ping"), b"event: ping\ndata: x\n\n"),
        (("x", None, "42"), b"id: 42\ndata: x\n\n"),
        (("x", "e", ""), b"event: e\nid: \ndata: x\n\n"),
    ],
)
def test_encode_event(args: tuple, expected: bytes) -> None:
    assert encode_event(*args) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"event": "a\nb"}, {"event": "a\rb"}, {"id": "a\nb"}, {"id": "a\x00b"}],
)
def test_encode_event_rejects_unframeable_fields(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        encode_event("x", **kwargs)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.one_of(st.none(), st.text().filter(lambda s: s and not set(s) & {"\r", "\n"})))
def test_encode_parse_round_trip(data: str, event: str | None) -> None:
    stream = encode_event(data, event)
    [parsed] = SSEParser().feed(stream)
    assert parsed.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert parsed.event == event
    assert parsed.raw == stream


def _openai_stream(size: int) -> bytes:
    words = ["Hello", " world", ",", " the", " quick", " brown", " fox", " über", " 日本語", "\n\n"]
    parts = []
    total = 0
    i = 0
    while total < size:
        chunk = {
            "id": "chatcmpl-AbC123",
            "object": "chat.completion.chunk",
            "created": 1731000000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [{"index": 0, "delta": {"content": words[i % len(words)]}, "logprobs": None, "finish_reason": None}],
        }
        event = encode_event(json.dumps(chunk, separators=(",", ":")))
        parts.append(event)
        total += len(event)
        i += 1
    parts.append(DONE)
    return b"".join(parts)


def test_performance_1mb_in_small_pieces() -> None:
    stream = _openai_stream(1_000_000)
    sizes = [1024, 4096, 1500, 3000, 2048]
    pieces = []
    pos = 0
    k = 0
    while pos < len(stream):
        pieces.append(stream[pos : pos + sizes[k % len(sizes)]])
        pos += sizes[k % len(sizes)]
        k += 1
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        events, tail = parse_all(pieces)
        best = min(best, time.perf_counter() - start)
    assert events[-1].is_done
    assert b"".join(e.raw for e in events) + tail == stream
    assert best < 0.05, f"parsing 1 MB took {best * 1000:.1f} ms"


# Pieces made of whole one-line `data: X` events (LF only) take a fast path in `feed`. It must
# give what the general path gives (fed a byte at a time, which never takes it) for every
# stream and every way of cutting it, with the constructs around it that rule it out: a BOM,
# CR, comments, id/event/retry fields (a retry-only block carries over to the next event),
# several data lines, `data:` without a space, blocks without data, "data: " inside a value.
FAST_BLOCKS = [
    b'data: {"a": 1}\n\n', b"data: [DONE]\n\n", b"data: \n\n", b"data:  two spaces\n\n",
    b"data:x\n\n", b"data: a\ndata: b\n\n", b"id: 7\ndata: with id\n\n", b"retry: 9\n\n",
    b"event: ping\n\n", b": comment\n\n", b"event: e\ndata: typed\n\n", b"data: \xc3\xa9\xff\n\n",
    b"data: x\n\ndata: y\n\n", b"data: has data: inside\n\n", b"data: cr\r\n\r\n", b"\n",
]


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.lists(st.sampled_from(FAST_BLOCKS), min_size=1, max_size=10),
       st.lists(st.integers(min_value=0, max_value=40), max_size=8), st.booleans())
def test_the_whole_events_fast_path_gives_what_the_general_path_gives(bom: bool, blocks: list[bytes],
                                                                     cuts: list[int], at_blocks: bool) -> None:
    stream = (b"\xef\xbb\xbf" if bom else b"") + b"".join(blocks)
    if at_blocks:  # cut where blocks end (pieces of whole events), some merged
        ends = [sum(len(b) for b in blocks[:i + 1]) + (3 if bom else 0) for i in range(len(blocks))]
        points = sorted({ends[c % len(ends)] for c in cuts} | {ends[-1]})
    else:
        points = sorted({min(c * 3, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    assert parse_all(pieces) == parse_all([stream[i:i + 1] for i in range(len(stream))])


def test_pieces_of_whole_events_parse_as_their_events() -> None:
    p = SSEParser()
    one = p.feed(b'data: {"a": 1}\n\n')
    many = p.feed(b"data: x\n\ndata: [DONE]\n\n")
    assert [(e.data, e.raw) for e in one + many] == [
        ('{"a": 1}', b'data: {"a": 1}\n\n'), ("x", b"data: x\n\n"), ("[DONE]", b"data: [DONE]\n\n")]
    p.feed(b"id: 3\n\n")  # sets the last event id, dispatches nothing
    assert [(e.data, e.id) for e in p.feed(b"data: y\n\n")] == [("y", "3")]
    p.feed(b"retry: 5\n\n")  # carried to the next event
    assert [(e.data, e.retry) for e in p.feed(b"data: z\n\n")] == [("z", 5)]
