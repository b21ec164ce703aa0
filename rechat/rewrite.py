"""Answer rewriting on the way to the client: whole JSON bodies, SSE streams, NDJSON streams.

Owns the byte-level application of a chain of object transforms (`rechat.think.ThinkTransform`,
`rechat.modelmap.ModelRestore`, ...) to the three answer formats rechat forwards: whole JSON
bodies (`rewrite_json`), ``text/event-stream`` chunk streams (`SSEStreamRewriter`, framing per
WHATWG HTML 9.2.6) and newline-delimited JSON streams (`NDJSONStreamRewriter`, Ollama). What
is not an answer object passes through byte for byte, and so does every object the
transforms leave unchanged. Sessions keep the upstream's raw answer: this runs only on the way
to the client. Pure and stdlib only: must not import aiohttp, nor any rechat module but
`sse`, whose framing it shares, and `speedups`, the optional C form of the fused path (the
transforms are duck-typed, so that modules need not import each other).

The object-transform protocol: ``feed(obj) -> list[dict]`` returns the objects to emit for
`obj`: the last one stands for `obj` itself (the same object when unchanged), any before it
are new objects to emit first. ``end() -> list[dict]`` returns new objects to emit when the
stream ends. Transforms never mutate their input. Optional byte-level shortcuts, which spare
decoding and re-encoding: ``passes(raw, whole) -> bool`` (True: every object in the JSON bytes
`raw` passes unchanged) and ``feed_raw(raw, whole) -> bytes | None`` (the JSON bytes `feed`
would turn the one object `raw` into, as a single object and without any change of state;
None: decode and `feed`), ``feed_raw_events(events, count) -> bytes | None``, the same over
several whole SSE events, which may be followed by the stream's last event
``data: [DONE]\n\n``, passed on as is (a transform's own must decline unless every other
event is an object it has taken), and ``raw_rule() -> (stops, head, new_head, tail_stops, cut) |
None``: while the state stays as it is, the JSON bytes of an object that start with `head`,
hold none of `stops`, none of `tail_stops` after `head` and end with ``}`` turn into
`new_head` + the rest (None: no rule now); `cut` is 0, or where the two heads start to differ
and `head[cut:]` holds a tail stop that `head` holds once. ``deferral_stops() -> (stops,
escape) | None``: while fresh, a transform whose stream holds none of these bytes (nor a
``\\u`` escape, with `escape`) may be fed it later (`SSEStreamRewriter`'s set-aside). A
transform without `feed_raw` is fed decoded objects; one whose `feed_raw` declines is fed the
decoded object, and the transforms after it go on with the bytes while it returns the object
unchanged.

Hot paths test bytes with ``find() >= 0`` rather than ``in``: CPython 3.11's bytes ``in``
first tries its operand as an integer and formats a TypeError it then drops (about 1,000
instructions a test, counted by bench/bench_instructions.py). On the per-event paths "does
`data` hold `stop`" is ``data.partition(stop)[1]`` (empty when it does not): ``find``,
``startswith`` and ``endswith`` parse their arguments with a format string (about 800 of
the 1,000 instructions of a test), ``partition`` takes its one argument directly and
returns `data` itself when nothing is found. A known prefix or suffix is tested by comparing
a slice (``data[:len(head)] == head``): about 200 instructions.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol, Sequence

from rechat.sse import whole_data_lines
# None: the Python fused paths (the same bytes)
from rechat.speedups import event as _fused_event, events as _fused_events
from rechat.speedups import touches as _fused_touches

__all__ = ["Aside", "ObjectTransform", "rewrite_json", "SSEStreamRewriter", "NDJSONStreamRewriter",
           "make_aside", "stream_rewriter"]


class ObjectTransform(Protocol):
    """A stateful rewrite of the objects of one answer (see the module docstring)."""

    def feed(self, obj: dict) -> list[dict]: ...

    def end(self) -> list[dict]: ...


def _chain_feed(transforms: Sequence[ObjectTransform], obj: dict) -> list[dict]:
    items = [obj]
    for t in transforms:
        items = [x for it in items for x in t.feed(it)]
    return items


def _chain_end(transforms: Sequence[ObjectTransform]) -> list[dict]:
    items: list[dict] = []
    for t in transforms:
        if items:  # (a comprehension is a call: skipped while there is nothing to feed)
            items = [x for it in items for x in t.feed(it)]
        got = t.end()
        if got:
            items = items + got
    return items


def _all_pass(transforms: Sequence[ObjectTransform], raw: bytes, whole: bool = False) -> bool:
    # True when every transform can tell from the bytes alone that the object passes unchanged.
    for t in transforms:
        passes = getattr(t, "passes", None)
        if passes is None or not passes(raw, whole):
            return False
    return True


def _chain_raw(transforms: Sequence[ObjectTransform], raw: bytes,
               whole: bool = False) -> bytes | None:
    """Return the JSON bytes the transforms turn the one object encoded as `raw` into, when
    each of them can tell from the bytes alone (`feed_raw`); None: decode and `_chain_feed`.
    `feed_raw` changes no state, so a None part-way leaves the transforms as they were."""
    for t in transforms:
        feed_raw = getattr(t, "feed_raw", None)
        if feed_raw is None:
            return None
        raw = feed_raw(raw, whole)
        if raw is None:
            return None
    return raw


def _chain(transforms: Sequence[ObjectTransform], raw: bytes, whole: bool = False,
           one_line: bool = False) -> tuple[list[dict], bytes] | None:
    """Run the one object encoded as `raw` through the transforms, as bytes where they can.

    Each transform gets the bytes through its `feed_raw` when it has one and that decides;
    otherwise the bytes are decoded (once, while they stay the same) and it gets the object
    through `feed`. While `feed` returns the object itself, the next transforms go on with the
    bytes, so e.g. a model renamed in the bytes keeps the upstream's spelling even when the
    think rewrite had to decode. Returns ``(new objects to emit first, the bytes standing for
    `raw`)``, those bytes `raw` itself when nothing changed (and, with `one_line`, free of CR
    and LF, re-encoded otherwise); None when `raw` is not a JSON object (it then passes as is).
    """
    cur: bytes = raw
    obj: Any = None  # cur decoded, when it has been
    for i, t in enumerate(transforms):
        feed_raw = getattr(t, "feed_raw", None)
        if feed_raw is not None:
            new = feed_raw(cur, whole)
            if new is not None:
                if new is not cur:
                    cur, obj = new, None
                continue
        if obj is None:
            try:
                obj = json.loads(cur)
            except (ValueError, UnicodeDecodeError):
                return None
            if not isinstance(obj, dict):
                return None
        items = t.feed(obj)
        if len(items) == 1 and items[0] is obj:
            continue
        for u in transforms[i + 1:]:
            items = [x for it in items for x in u.feed(it)]
        last = cur if items[-1] is obj else _dumps(items[-1])
        return items[:-1], last
    if one_line and cur is not raw and (cur.find(b"\n") >= 0 or cur.find(b"\r") >= 0):
        return [], _dumps(json.loads(cur) if obj is None else obj)
    return [], cur


def _raw_events_of(t: ObjectTransform):
    """Return ``f(events, count) -> bytes | None``: `t`'s `feed_raw_events`, else its `passes`
    over the whole events (None: take them one by one), else a function that always declines."""
    many = getattr(t, "feed_raw_events", None)
    if many is not None:
        return many
    passes = getattr(t, "passes", None)
    if passes is None:
        return lambda events, count: None

    def many(events: bytes, count: int) -> bytes | None:
        # A [DONE] among the events must end the transforms first: take them one by one
        # then. One that ends them is passed on (the caller ends the transforms before it).
        body = events[:-14] if events[-14:] == _DONE else events
        return events if body.find(b"[DONE]") < 0 and passes(body) else None
    return many


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def rewrite_json(body: bytes, transforms: Sequence[ObjectTransform]) -> bytes:
    """Rewrite a whole JSON answer body; return `body` itself when nothing changes.

    A body that is not a JSON object passes unchanged. A body whose only change is made in the
    bytes (the model renamed) keeps its spelling; any other changed body is re-encoded as
    compact UTF-8 JSON. Either way its length may change: set Content-Length from the result.
    """
    fast = _chain_raw(transforms, body, True)  # whole (positional: a keyword costs a slower call)
    if fast is not None:
        return fast
    got = _chain(transforms, body, whole=True)
    _chain_end(transforms)  # a whole answer leaves nothing held; this resets the transforms
    return body if got is None else got[1]


# -- byte streams ----------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
_DONE = b"data: [DONE]\n\n"  # the usual last event of a stream

# A first transform an SSE rewriter is to set aside, not made yet (`SSEStreamRewriter`'s
# `aside`, made by `make_aside`): (what makes it fresh, the stops its fresh `deferral_stops()`
# gives, whether ``\\u`` is one, and whether it may be set aside: its stops are a byte each).
Aside = tuple[Callable[[], ObjectTransform], tuple[bytes, ...], bool, bool]


def make_aside(make: Callable[[], ObjectTransform]) -> Aside | None:
    """The `aside` of an SSE rewriter (`SSEStreamRewriter`) for the transform `make` makes
    fresh, worked out once for the many rewriters that take it (`Aside`): None when a fresh
    one has no `deferral_stops` (then it cannot be set aside: put it in the chain)."""
    got = _deferral_stops(make())
    if got is None:
        return None
    stops, escape = got
    return make, stops, escape, _one_byte(stops)


def _deferral_stops(t: ObjectTransform) -> tuple[tuple[bytes, ...], bool] | None:
    # `t.deferral_stops()`, or None when it has none (the method is optional).
    stops_of = getattr(t, "deferral_stops", None)
    return stops_of() if stops_of is not None else None


def _one_byte(stops: tuple[bytes, ...]) -> bool:
    # A stop split between pieces would show in neither: a transform is set aside only when
    # its stops are one byte each.
    for x in stops:
        if len(x) != 1:
            return False
    return True

# SSEStreamRewriter._make_plan's fused rule: (stops, head, new head or None, tail stops, cut).
_Plan = tuple[tuple[bytes, ...], bytes, "bytes | None", tuple[bytes, ...], int]
# A plan's stops and tail stops as the Python fused path looks for them (`_stop_sets`).
_Variants = tuple[tuple[tuple[bytes, ...], tuple[bytes, ...]], ...]


def _stop_sets(aside: tuple[bytes, ...], escape: bool, extra: tuple[bytes, ...],
               tail: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], _Variants]:
    """The stops of a fused plan (`SSEStreamRewriter._make_plan`) and their variants.

    From the set-aside transform's stops (`aside`, and ``\\u`` when `escape`), the other
    transforms' stops (`extra`) and the renaming rule's tail stops: ``(stops, variants)``.
    `stops` is CR first, then each stop once in order. `variants` holds ``(stops, tail
    stops)`` as the Python fused path looks for them in a piece, indexed by 2 x "the caller's
    SSE parser found it whole" (LF only: no CR to look for) + "it holds a backslash" (else
    those that start with one, such as ``\\u``, cannot occur in it and are left out).
    """
    stops: list[bytes] = [b"\r"]
    for x in (*aside, *((b"\\u",) if escape else ()), *extra):
        if x not in stops:
            stops.append(x)
    plain = tuple([x for x in stops if x[:1] != b"\\"])
    plain_tail = tuple([x for x in tail if x[:1] != b"\\"])
    return tuple(stops), ((plain, plain_tail), (tuple(stops), tail),
                          (plain[1:], plain_tail), (tuple(stops[1:]), tail))


# (aside stops, escape, the transforms' stops, the tail stops) -> `_stop_sets` of them.
_STOP_SETS: dict[tuple, tuple[tuple[bytes, ...], _Variants]] = {}


class SSEStreamRewriter:
    """Rewrite a ``text/event-stream`` body incrementally: ``feed(bytes) -> bytes``, ``close()``.

    Framing follows WHATWG HTML 9.2.6 (lines end in LF, CRLF or CR; a blank line ends a block;
    one leading BOM). Each complete block with data is decoded; if its data is a JSON object
    and the block has no event type other than "message", it goes through the transforms.
    Every other block, and every block the transforms leave unchanged, is passed on byte for
    byte as soon as its blank line arrives (comments and keep-alives included). A changed block
    keeps its other lines (comments, id, event, retry) and gets one ``data:`` line in place of
    its data lines. Objects a transform adds go out as ``data: {json}\\n\\n`` events.

    Before ``data: [DONE]``, and at `close()` when the stream ends without it, the transforms'
    `end()` objects are emitted. `close()` then returns any unterminated final block as is.

    Fused fast path: once every transform gives a `raw_rule` (the think rewriters idle, the
    model's place known from an earlier chunk) and nothing is held, a piece that is exactly
    one ``data: {...}\n\n`` event without CR, starting with the rule's head and holding none
    of its stop bytes (for the think rewrite, ``<`` or the first byte of another marker, and
    ``\\u``) goes out as is or with its head swapped, in a few C calls and no state change.

    Fast path: a piece that arrives with nothing held and is made of whole ``data: X\n\n``
    events (LF only; maybe followed by the start of the next, which is held as usual) skips
    the line-by-line framing. If no transform can change anything in it (`passes` on its
    bytes), it goes out as is; otherwise each event goes through the transforms' byte-level
    `feed_raw` (a renamed model is swapped in the bytes), and only the events those cannot
    decide are decoded. All paths give the same bytes: an event changed only at byte level
    (a transform that decoded it left it unchanged) keeps the upstream's own JSON spelling;
    one whose object changed is re-encoded as compact JSON.

    Set aside: a first transform with `deferral_stops` (the think rewrite, fresh) is left out
    of the chain while no piece holds one of its stops, so that the stream's first chunks are
    not decoded to learn where the text starts; the first piece that holds one gets it fed
    the stream so far (`_settle`) and back in the chain. `defer=False` keeps every transform
    in the chain from the start (the reference the tests compare against). `aside` gives that
    first transform not made yet (`Aside`, from `make_aside`): it is made when a piece first
    holds one of its stops, so that a stream which never concerns it never makes it (the
    gateway's think rewrite, most streams: `rechat.gateway.Gateway.stream_rewriter`); with
    stops longer than a byte, or `defer` False, it is made at once.
    """

    # One is made per streamed answer: slots make making one, and reading its state, cheaper.
    __slots__ = ("transforms", "_aside", "_aside_make", "_aside_stops", "_aside_escape",
                 "_history", "_many", "_block", "_partial", "_first_line", "_bom", "_ended",
                 "_closed", "_plan", "_variants", "_bulk_rule")

    def __init__(self, transforms: Sequence[ObjectTransform], defer: bool = True,
                 aside: Aside | None = None) -> None:
        self.transforms = list(transforms)
        # The first transform, set aside while no piece concerns it (see `_settle`), or what
        # makes it (`aside`, not made yet), with its one-byte stops and whether ``\\u`` is one;
        # the pieces it has not seen (a list exactly while one is set aside, else None).
        # (Each slot is set once: one rewriter is made per streamed answer.)
        self._aside: ObjectTransform | None = None
        if aside is not None and defer and aside[3]:
            self._aside_make, self._aside_stops, self._aside_escape, _ = aside
            self._history: list[bytes] | None = []
        else:
            self._aside_make: Callable[[], ObjectTransform] | None = None
            self._aside_stops: tuple[bytes, ...] = ()
            self._aside_escape = False
            self._history = None
            if aside is not None:
                self.transforms.insert(0, aside[0]())
            elif defer and self.transforms:
                got = _deferral_stops(self.transforms[0])
                if got is not None and _one_byte(got[0]):
                    self._aside = self.transforms.pop(0)
                    self._aside_stops, self._aside_escape = got
                    self._history = []
        # See _feed_events, which works them out on first use: a stream whose pieces are one
        # event each takes the fused path and never needs them.
        self._many: list | None = None
        self._block: list[bytes] = []  # complete lines of the current block
        self._partial: list[bytes] = []  # an unterminated line, or one ending in CR
        self._first_line = True
        self._bom = False  # the current block is the first and starts with a BOM
        self._ended = False  # end() objects already emitted
        self._closed = False
        # The transforms' fused rule (_make_plan) while nothing is held; None: no fused path.
        self._plan: _Plan | None = None
        # The plan's stops as the Python fused path looks for them (`_stop_sets`).
        self._variants: _Variants = ()
        # `_bulk`'s parts of the last plan it took: (plan, ((tail stop, how often the head
        # holds it), ...), the head from its cut on, the new head from there or None).
        self._bulk_rule: tuple | None = None

    def feed(self, data: bytes, whole: int = 0) -> bytes:
        """Take the next piece of the upstream's body; return the bytes for the client.

        `whole`: the number of whole one-line ``data: X\n\n`` events (LF only) that `data`
        is made of, when the caller's SSE parser has found so (`rechat.sse.SSEParser.whole`),
        else 0; it spares the rewriter framing the piece again.
        """
        plan = self._plan
        if plan is not None:
            # While a transform is set aside, the plan's stops include its own: a piece that
            # passes has nothing for it either.
            if whole > 1:
                out = self._bulk(plan, data, whole)
                if out is not None:
                    if self._history is not None:
                        self._history.append(data)
                    return out
            elif _fused_event is not None:
                # The fused fast path below, in one C call (rechat/_fused.c), which also adds
                # the piece to the set-aside transform's history.
                out = _fused_event(data, plan, self._history)
                if out is not None:
                    return out
            else:
                # What follows the head, when the piece starts with it: one removeprefix both
                # compares and slices (a slice to compare and another of the rest: 900
                # instructions more). The lengths tell whether it did: a bytearray piece
                # comes back as a copy either way.
                rest = data.removeprefix(plan[1])
                if len(rest) != len(data) and (whole or (
                        data[-3:] == b"}\n\n" and data.find(b"\n") == len(data) - 2)):
                    # The fused fast path (class docstring): one ``data: {...}\n\n`` event,
                    # nothing held. (`whole` is 0 or 1 here.)
                    stops, tail = self._variants[2 * whole + (data.partition(b"\\")[1] == b"\\")]
                    for stop in stops:
                        if data.partition(stop)[1]:
                            break
                    else:
                        # The rest searched with `partition` (a `find` from an index parses
                        # its arguments: 1,000 instructions) and sent on.
                        for stop in tail:
                            if rest.partition(stop)[1]:
                                break
                        else:
                            if self._history is not None:
                                self._history.append(data)
                            return data if plan[2] is None else plan[2] + rest
        if self._history is not None:  # a transform is set aside
            # Does the piece concern it: in one C call (rechat/_fused.c), or in Python.
            touched = (_fused_touches(data, self._aside_stops, self._aside_escape)
                       if _fused_touches is not None else None)
            if touched is None:
                # (partition: no arguments parsed, as find does, on every piece of a stream)
                touched = False
                for stop in self._aside_stops:
                    if data.partition(stop)[1]:
                        touched = True
                        break
                else:
                    # (a \\u split between pieces: the first ends in \\)
                    touched = bool(self._aside_escape and data.partition(b"\\")[1] and (
                        data.find(b"\\u") >= 0 or data[-1:] == b"\\"))
            if touched:
                self._settle()
            else:
                self._history.append(data)  # (a list while a transform is set aside)
        if self._closed:
            raise ValueError("SSEStreamRewriter.feed() called after close()")
        if not data:
            return b""
        if not self._partial and not self._block:
            if data == b"data: [DONE]\n\n":
                # The usual last piece: end the transforms before it (as _feed_events would).
                self._first_line, self._plan = False, None
                return self._done()
            if whole == 1 or (not whole and data.endswith(b"}\n\n")
                              and data.startswith(b"data: {")
                              and data.find(b"\n") == len(data) - 2 and data.find(b"\r") < 0):
                # One event (as _feed_events takes it, without its framing of several).
                self._first_line = False
                out = self._event(data[6:-2], data)
                self._update_plan()
                return out
            if whole:
                out = self._feed_events(data, whole, plan if whole > 1 else None)
                # (_update_plan's test here: nothing is held after whole events, and a stream
                # ended by its [DONE], as the usual last piece is, needs no plan)
                self._plan = None if self._ended else self._make_plan()
                return out
        out = self._feed(bytes(data))
        self._update_plan()
        return out

    def _settle(self) -> None:
        """Give the transform set aside (`deferral_stops`) the stream so far and put it back
        first in the chain: a fresh rewriter with it alone is fed the pieces it has not seen
        (its output is theirs, unchanged: they hold none of its stops), which leaves it as the
        general path would have, at the same event boundary (both frame alike)."""
        aside, self._aside = self._aside, None
        if aside is None:  # not made yet: made now, fresh
            aside, self._aside_make = self._aside_make(), None
        self._aside_stops, self._aside_escape = (), False  # its own rule has them now
        if self._history:
            SSEStreamRewriter([aside], defer=False).feed(b"".join(self._history))
        self._history = None
        self.transforms.insert(0, aside)
        if self._many is not None:
            self._many.insert(0, _raw_events_of(aside))
        self._update_plan()

    def _update_plan(self) -> None:
        # After [DONE] (the stream's end, as a rule) no plan is worked out for what follows.
        self._plan = (None if self._partial or self._block or self._closed or self._ended
                      else self._make_plan())

    def _make_plan(self) -> _Plan | None:
        """Fuse the transforms' `raw_rule`s into one test on an event's bytes, or None.

        ``(stops, head, new, tail, cut)``: `head` and `new` are ``data: `` and the renaming
        rule's head and new head (`new` None: no rename); `tail` its tail stops, and `cut`
        where the two heads start to differ (`raw_rule`'s, moved past ``data: ``; 0: none
        given). Only one transform (the last with a rule, so that no other rule reads renamed
        bytes) may change bytes; the event must also hold no CR, so that its one line is its
        one data line. Leaves the stops' variants in `_variants` (see `_stop_sets`). What
        `_bulk` needs beyond these it works out itself, on first use.
        """
        if self._first_line:
            return None
        head, new, cut = b"", None, 0
        tail: tuple[bytes, ...] = ()
        extra: tuple[bytes, ...] = ()  # the transforms' own stops, in order
        for t in self.transforms:
            rule = getattr(t, "raw_rule", None)
            got = rule() if rule is not None else None
            if got is None or head:
                return None  # no rule, or a rule after a renaming one
            t_stops, t_head, t_new, t_tail, t_cut = got
            if t_stops:
                extra += t_stops
            if t_head:
                head, tail, cut = t_head, t_tail, t_cut
                new = None if t_new is t_head or t_new == t_head else b"data: " + t_new
            elif t_tail:
                return None
        # The stops depend on the configuration only (the same for every stream of a
        # gateway): worked out once per set, not per stream.
        key = (self._aside_stops, self._aside_escape, extra, tail)
        sets = _STOP_SETS.get(key)
        if sets is None:
            if len(_STOP_SETS) >= 64:
                _STOP_SETS.clear()
            sets = _STOP_SETS[key] = _stop_sets(*key)
        self._variants = sets[1]
        return sets[0], b"data: " + head, new, tail, cut + 6 if cut else 0

    def _feed(self, data: bytes) -> bytes:
        if not self._partial and not self._block:
            fast = self._feed_events(data)
            if fast is not None:
                return fast
        partial = self._partial
        held_cr = bool(partial) and partial[-1].endswith(b"\r")
        if data.find(b"\n") < 0 and data.find(b"\r") < 0 and not held_cr:
            partial.append(data)  # no line can complete; join later (O(n) for long lines)
            return b""
        if partial and not self._block and not held_cr:
            # The piece completes an event begun in an earlier one (pieces need not end where
            # events do): that event takes the general path, the whole events after it the
            # fast one. A blank line ends every line before it and the block: nothing is held.
            end = data.find(b"\n\n")
            if end >= 0 and data[:end].find(b"\r") < 0:
                partial.append(data[:end + 2])
                first = b"".join(partial)
                partial.clear()
                plan = None  # the fused rule, when the event left the transforms as they were
                if (not self._first_line and first[:6] == b"data: "
                        and first.find(b"\n") == len(first) - 2 and first.find(b"\r") < 0):
                    # The usual case, one one-line data event: as _feed_events takes one
                    # (framing it line by line costs ten times as much).
                    if first == b"data: [DONE]\n\n":
                        out = self._done()
                    else:
                        # Under the fused rule in C when it takes the event (no state
                        # changes: the rule holds for the events after it too).
                        plan = self._make_plan() if _fused_event is not None else None
                        out = _fused_event(first, plan, None) if plan is not None else None
                        if out is None:
                            plan = None
                            out = self._event(first[6:-2], first)
                else:
                    out = self._lines(first, final=False)
                rest = data[end + 2:]
                if rest:
                    fast = self._feed_events(rest, 0, None, plan)  # (positional: faster)
                    out += fast if fast is not None else self._feed(rest)
                return out
        if partial:
            partial.append(data)
            data = b"".join(partial)
            partial.clear()
        return self._lines(data, final=False)

    def _feed_events(self, data: bytes, count: int = 0, tried: _Plan | None = None,
                     known: _Plan | None = None) -> bytes | None:
        """The fast path (class docstring) for `data` arriving with nothing held; None when
        `data` is not whole ``data: X\n\n`` events (the general path then frames it).
        `count`: how many whole one-line events `data` is known to be (`feed`'s `whole`), or 0
        to find out; `tried`: a plan `_bulk` has already declined them under (`feed`);
        `known`: the plan as it stands, when the caller has just worked it out (`_feed`)."""
        if count:
            head = data
        else:
            cut = data.rfind(b"\n\n") + 2
            if cut < 2 or not data.startswith(b"data: ") or data.find(b"\r") >= 0:
                return None
            head = data[:cut] if cut < len(data) else data
            lines = whole_data_lines(head)
            if lines is None:
                return None
            count = len(lines)
            if cut < len(data):
                self._partial.append(data[cut:])
        if self._first_line:
            # The stream's first piece: no plan is looked for, as its transforms are fresh
            # and learn from its first events (a model restore where the model is, say);
            # their feed_raw_events below take it in one go as well.
            self._first_line, plan = False, None  # (data: starts the first line: no BOM)
        else:
            plan = known if known is not None else self._make_plan()
        if plan is not None and plan != tried:
            whole = self._bulk(plan, head, count)
            if whole is not None:
                return whole
        # A last [DONE] ends the transforms after the events before it (as the loop below);
        # the transforms' feed_raw_events pass it on.
        done = head[-14:] == _DONE
        new, n = head, count - 1 if done else count
        if n:
            many_of = self._many
            transforms = self.transforms
            if many_of is None and len(transforms) == 1 and (
                    many := getattr(transforms[0], "feed_raw_events", None)) is not None:
                new = many(head, n)  # one transform (the usual chain): without making the list
            else:
                if many_of is None:
                    many_of = self._many = [_raw_events_of(t) for t in transforms]
                for many in many_of:
                    new = many(new, n)
                    if new is None:
                        break
            if new is not None:
                return self._before_done(new) if done else new
        out = []
        values = head[6:-2].split(b"\n\ndata: ")
        pos, tries = 0, 2  # pos: where the next event starts in head
        for i, value in enumerate(values):
            if value == b"[DONE]":
                out.append(self._done())
            else:
                out.append(self._event(value))
            pos += len(value) + 8
            if tries and i + 1 < len(values):
                # Once the transforms are idle (after the first events of a stream, say),
                # the rest may go in one go under their fused rule.
                plan = self._make_plan()
                if plan is not None:
                    tries -= 1
                    rest = self._bulk(plan, head[pos:], len(values) - i - 1)
                    if rest is not None:
                        out.append(rest)
                        break
        return b"".join(out)

    def _event(self, value: bytes, event: bytes | None = None) -> bytes:
        """The bytes for the client of one ``data: value\n\n`` event (`event`: those bytes,
        when at hand): renamed at byte level by the transforms, or decoded and rewritten."""
        new = _chain_raw(self.transforms, value)
        if new is None:
            return self._rewrite_block([b"data: " + value + b"\n", b"\n"])
        if new is value and event is not None:
            return event
        return b"data: " + new + b"\n\n"

    def _bulk(self, plan: _Plan, events: bytes, count: int) -> bytes | None:
        """Apply the fused rule `plan` to `count` whole ``data: X\n\n`` events side by side
        (LF only, one line each), maybe ending in ``data: [DONE]``; None: take them one by one.

        Each X must be an object that starts with the rule's head and holds the tail stops
        only there, as the fused path asks of one event. Since the events are one line each,
        their only LF pairs are the blank lines that end them: the first event starts with
        `head` and each blank line but the last is ``}\n\n`` + `head` exactly when every event
        starts with `head` and ends its object before its blank line (`head` has quotes that
        are not escaped: it can start nowhere inside a JSON string). Each tail stop occurs as
        often as the heads hold it, so no event holds one after its head. A rename is then one
        replace of `old`, which holds a tail stop that the head holds once (`raw_rule`'s
        `cut`): it occurs once per event, at its head. A handful of C scans, whatever `count`;
        with the C helper (`rechat.speedups.events`), each event is checked as the fused path
        checks one, which takes the same pieces but for corner cases that then go one by one.
        """
        done = events[-14:] == _DONE
        if count > done and _fused_events is not None:
            # Event by event in C (rechat/_fused.c), which passes a last [DONE] on: a C scan
            # of a few KB for each of the checks below costs more than walking the events once.
            events = _fused_events(events, count - done, plan)
            if events is not None and done:
                events = self._before_done(events)
                self._plan = None  # the transforms ended: feed() works out the next plan
            return events
        if done:
            events, count = events[:-14], count - 1
        if count:
            stops, head, new, tail_stops, cut = plan
            rule = self._bulk_rule
            if rule is None or rule[0] is not plan:
                # How often the head holds each tail stop (none starting with a backslash
                # when it holds no backslash: a memchr instead of a count), and the heads
                # from `cut` on.
                slash = head.partition(b"\\")[1]
                counted = []
                for x in tail_stops:
                    counted.append((x, head.count(x) if slash or x[:1] != b"\\" else 0))
                rule = self._bulk_rule = (plan, tuple(counted), head[cut:],
                                          None if new is None else new[cut:])
            _, tail, old, fresh = rule
            if (events[:len(head)] != head or events[-3:] != b"}\n\n"
                    or (count > 1 and events.count(b"}\n\n" + head) != count - 1)):
                return None
            slash = events.find(b"\\") >= 0  # stops like \\u cannot occur without one (memchr first)
            for stop in stops:
                if (slash or stop[:1] != b"\\") and events.partition(stop)[1]:
                    return None
            for stop, per_head in tail:
                if ((slash or stop[:1] != b"\\")  # else 0 here and in the head (inside events)
                        and events.count(stop) != count * per_head):
                    return None
            if new is not None:
                # One scan (split, then join), where replace scans twice (it counts first).
                events = fresh.join(events.split(old))
        if done:
            events += self._done()
            self._plan = None  # the transforms ended: feed() works out the next plan
        return events

    def close(self) -> bytes:
        """End the stream; return the remaining bytes for the client."""
        if self._closed:
            return b""
        self._closed, self._plan = True, None  # no fast path past the end: feed() raises
        # A transform still set aside has seen nothing that concerns it: it holds nothing, and
        # its end() would add nothing.
        out = b""
        if self._partial:
            data = b"".join(self._partial)
            self._partial.clear()
            out = self._lines(data, final=True)
        if not self._ended:
            out += self._end()
        if self._block or self._partial:
            out += b"".join(self._block) + b"".join(self._partial)
        return out

    def _lines(self, buf: bytes, final: bool) -> bytes:
        lines = buf.splitlines(True)
        last = lines[-1]
        if last[-1:] != b"\n" and (not final or last[-1:] != b"\r"):
            # Unterminated, or a CR whose LF may come next; at end of stream a CR ends a line.
            # (An unterminated final line stays in _partial for close() to pass on.)
            lines.pop()
            self._partial.append(last)
        out: list[bytes] = []
        for line in lines:
            self._block.append(line)
            content = line.rstrip(b"\r\n")
            if self._first_line:
                self._first_line = False
                if content.startswith(_BOM):
                    content = content[3:]
                    self._bom = True
            if not content:
                block, self._block = self._block, []
                out.append(self._rewrite_block(block))
        return b"".join(out)

    def _rewrite_block(self, lines: list[bytes]) -> bytes:
        raw = b"".join(lines)
        bom, self._bom = self._bom, False
        values: list[bytes] = []
        first_data = -1
        if len(lines) == 2 and not bom and lines[0].startswith(b"data: "):
            # The usual ``data: {json}\n\n``: one data line, nothing else.
            values.append(lines[0][6:].rstrip(b"\r\n"))
            first_data = 0
            lines_to_scan: list[bytes] = []
        else:
            lines_to_scan = lines
        for j, line in enumerate(lines_to_scan):
            content = line.rstrip(b"\r\n")
            if bom and j == 0:
                content = content[3:]
            name, _, value = content.partition(b":")
            value = value[1:] if value[:1] == b" " else value
            if name == b"event" and value not in (b"", b"message"):
                return raw  # a typed event is not a chat chunk
            if name == b"data":
                values.append(value)
                if first_data < 0:
                    first_data = j
        if not values:
            return raw
        data = b"\n".join(values)
        if data == b"[DONE]":
            return (b"" if self._ended else self._end()) + raw
        if _all_pass(self.transforms, data):
            return raw  # the common chunk: nothing to rewrite, no need to decode it
        got = _chain(self.transforms, data, one_line=True)
        if got is None:
            return raw
        before, new = got
        out = [b"data: " + _dumps(o) + b"\n\n" for o in before]
        # A changed object has one line, as data: needs (_chain's one_line).
        out.append(raw if new is data else self._replace_data(lines, first_data, new, bom))
        return b"".join(out)

    @staticmethod
    def _replace_data(lines: list[bytes], first_data: int, payload: bytes, bom: bool) -> bytes:
        out = []
        for j, line in enumerate(lines):
            content = line.rstrip(b"\r\n")
            prefix = b""
            if bom and j == 0:
                prefix, content = _BOM, content[3:]
            if content.partition(b":")[0] != b"data":
                out.append(line)
            elif j == first_data:
                out.append(prefix + b"data: " + payload + line[len(line.rstrip(b"\r\n")):])
        return b"".join(out)

    def _done(self) -> bytes:
        """The bytes for a ``data: [DONE]`` event: the transforms' `end()` objects first,
        unless they have been given already."""
        return (b"" if self._ended else self._end()) + _DONE

    def _before_done(self, out: bytes) -> bytes:
        """`out`, which ends with a ``data: [DONE]`` event, with the transforms' `end()`
        objects before that event, unless they have been given already (as `_done`)."""
        if self._ended:
            return out
        ends = self._end()
        return out[:-14] + ends + _DONE if ends else out

    def _end(self) -> bytes:
        """The bytes of the transforms' `end()` objects, as events; they are ended after it."""
        self._ended = True
        transforms = self.transforms
        # (one transform, the usual chain: one call less than through _chain_end)
        objs = transforms[0].end() if len(transforms) == 1 else _chain_end(transforms)
        return b"".join([b"data: " + _dumps(o) + b"\n\n" for o in objs]) if objs else b""


class NDJSONStreamRewriter:
    """Rewrite a newline-delimited JSON body incrementally (Ollama's /api/chat, /api/generate).

    Lines end in LF (a CR before it is kept). Each complete line holding a JSON object goes
    through the transforms (through their byte-level `feed_raw` first, decoded only when that
    cannot decide); every other line, and every line they leave unchanged, passes byte
    for byte. A changed line keeps its line ending; added objects go out as ``{json}\\n``.
    `close()` treats an unterminated last line as a line, then emits the transforms' `end()`.
    """

    def __init__(self, transforms: Sequence[ObjectTransform]) -> None:
        self.transforms = list(transforms)
        self._partial: list[bytes] = []
        self._closed = False

    def feed(self, data: bytes) -> bytes:
        """Take the next piece of the upstream's body; return the bytes for the client."""
        if self._closed:
            raise ValueError("NDJSONStreamRewriter.feed() called after close()")
        if data.find(b"\n") < 0:
            if data:
                self._partial.append(bytes(data))
            return b""
        self._partial.append(bytes(data))
        buf = b"".join(self._partial)
        self._partial.clear()
        cut = buf.rfind(b"\n") + 1
        if cut < len(buf):
            self._partial.append(buf[cut:])
        return b"".join(self._line(line) for line in buf[:cut].splitlines(True))

    def close(self) -> bytes:
        """End the stream; return the remaining bytes for the client."""
        if self._closed:
            return b""
        self._closed = True
        out = self._line(b"".join(self._partial)) if self._partial else b""
        self._partial.clear()
        tail = b"".join(_dumps(o) + b"\n" for o in _chain_end(self.transforms))
        if tail and out and not out.endswith(b"\n"):
            out += b"\n"
        return out + tail

    def _line(self, line: bytes) -> bytes:
        body = line.rstrip(b"\r\n")
        if not body.strip():
            return line
        got = _chain(self.transforms, body)
        if got is None:
            return line
        before, new = got
        out = [_dumps(o) + b"\n" for o in before]
        out.append(line if new is body else new + line[len(body):])
        return b"".join(out)


def stream_rewriter(content_type: str, transforms: Sequence[ObjectTransform],
                    aside: Aside | None = None
                    ) -> SSEStreamRewriter | NDJSONStreamRewriter | None:
    """Return the stream rewriter for a response's Content-Type, or None if it is not a stream.

    ``text/event-stream`` -> SSE; ``application/x-ndjson`` (Ollama), ``application/ndjson``,
    ``application/jsonl`` -> NDJSON. For ``application/json`` use `rewrite_json` on the body.
    `aside`: a first transform, before `transforms`, that is made only when the stream needs
    it (SSE; `SSEStreamRewriter`), or at once (NDJSON).
    """
    kind = _STREAM_KINDS.get(content_type, _UNSEEN)
    if kind is _UNSEEN:
        ctype = content_type.split(";", 1)[0].strip().lower()
        kind = (SSEStreamRewriter if ctype == "text/event-stream" else NDJSONStreamRewriter
                if ctype in ("application/x-ndjson", "application/ndjson", "application/jsonl",
                             "application/x-jsonlines") else None)
        if len(_STREAM_KINDS) >= 64:
            _STREAM_KINDS.clear()
        _STREAM_KINDS[content_type] = kind
    if kind is None:
        return None
    if aside is None:
        return kind(transforms)
    if kind is SSEStreamRewriter:
        return SSEStreamRewriter(transforms, True, aside)  # (a keyword costs a slower call)
    return kind([aside[0](), *transforms])


# Content-Type header value -> its rewriter's class (None: not a stream). Upstreams send a
# handful of spellings, each on every answer: parsed once each (four calls: 2,500 instructions).
_STREAM_KINDS: dict[str, Any] = {}
_UNSEEN = object()
