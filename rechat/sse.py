"""Server-sent events: incremental parsing and encoding of SSE byte streams.

Owns the wire framing of ``text/event-stream`` bodies (WHATWG HTML, section
9.2.6 "Interpreting an event stream") and nothing above it: no JSON, no
chat completion semantics. Stdlib only; must not import aiohttp or any other
rechat module, because it sits on the proxy's hot path.

Hot paths test bytes with ``find() >= 0`` rather than ``in``: CPython 3.11's bytes ``in``
first tries its operand as an integer and formats a TypeError it then drops (about 1,000
instructions a test, counted by bench/bench_instructions.py).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DONE", "SSEEvent", "SSEParser", "encode_event", "whole_data_lines"]

DONE = b"data: [DONE]\n\n"
"""The sentinel SSE event that ends an OpenAI chunk stream."""

_BOM = b"\xef\xbb\xbf"
_EOL = b"\r\n"


@dataclass(slots=True)
class SSEEvent:
    """One dispatched SSE event.

    ``data`` is the event's data buffer: the values of its ``data`` fields
    joined with ``"\\n"`` (spec 9.2.6, "dispatch the event" step 3).
    ``event`` is the event type, or None when the stream gave none (or an
    empty one), which the spec reads as ``"message"``. ``id`` is the last
    event ID string in force when the event was dispatched: as in the spec it
    persists across events until another ``id`` field changes it, and is None
    while the stream has not set one. ``retry`` is the reconnection time in
    milliseconds from the last valid ``retry`` field seen since the previous
    dispatched event, else None.

    ``raw`` is the exact bytes of the event as received, from the first byte
    after the previous dispatched event (so including any leading BOM,
    comments, and blocks that were not dispatched because they had no data)
    through the event's terminating blank line inclusive. Concatenating the
    ``raw`` of every event of a stream and then ``SSEParser.tail`` gives back
    the stream byte for byte.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    raw: bytes = b""

    @property
    def is_done(self) -> bool:
        """True for OpenAI's end-of-stream sentinel (``data: [DONE]``)."""
        return self.data == "[DONE]"


def whole_data_lines(data: bytes) -> list[bytes] | None:
    """The lines of `data` when it is made of whole one-line events ``data: X\n\n`` and
    nothing else, one per event without its blank line; None otherwise. The caller has
    checked that `data` starts with ``data: ``, ends with a blank line and holds no CR.

    Split at each blank line, such a piece is its events' lines: each part starts with
    ``data: `` (the events are one at the start plus one per ``\n\ndata: ``, whose
    occurrences cannot overlap) and holds no LF. The LF test is one memchr over the joined
    parts: counting LFs is a byte-at-a-time loop in CPython, several times the cost. Shared
    by `SSEParser`'s fast path and `rechat.rewrite.SSEStreamRewriter`'s.
    """
    parts = data[:-2].split(b"\n\n")
    if b"".join(parts).find(b"\n") >= 0 or data.count(b"\n\ndata: ") + 1 != len(parts):
        return None
    return parts


class SSEParser:
    """Incremental SSE parser following WHATWG HTML 9.2.6.

    Feed it the body of an event stream in pieces of any size, split at any
    byte (inside a CRLF pair or a multi-byte UTF-8 character included), and
    it returns each SSEEvent as soon as its terminating blank line is
    complete. Lines end with LF, CRLF or a lone CR; one leading UTF-8 BOM is
    ignored; invalid UTF-8 decodes to U+FFFD, as the spec's UTF-8 decode does.

    Work is done per line with ``bytes.splitlines`` (which, unlike
    ``str.splitlines``, breaks only at CR, LF and CRLF, exactly the spec's
    line endings), never per byte.

    Attributes:
        last_event_id: the spec's "last event ID string" (None until set).
        retry: the stream's reconnection time in milliseconds, from the last
            valid ``retry`` field (None until set).
        whole: after each `feed`, how many events its piece was made of when
            that piece, arriving with nothing pending, was exactly whole
            one-line ``data: X\n\n`` events (LF only), else 0. A rewriter
            fed the same piece need not frame it again (`rechat.rewrite`).
    """

    __slots__ = (
        "_carry",
        "_partial",
        "_data",
        "_event",
        "_event_retry",
        "_first_line",
        "_closed",
        "last_event_id",
        "retry",
        "whole",
    )

    def __init__(self) -> None:
        # Bytes already split into lines but not yet part of a dispatched event.
        self._carry: list[bytes] = []
        # Bytes not yet split into lines: an unterminated line, or a line
        # ending in CR that may still turn out to be half of a CRLF.
        self._partial: list[bytes] = []
        # One entry per data field, so that "data:" (empty value) still makes
        # the event dispatchable, as the spec's trailing-LF buffer does.
        self._data: list[str] = []
        self._event = ""
        self._event_retry: int | None = None
        self._first_line = True
        self._closed = False
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.whole = 0

    @property
    def tail(self) -> bytes:
        """Bytes received but not part of any dispatched event's ``raw``.

        While the stream is open these are pending (an incomplete event or
        line); after ``close()`` they are what the spec discards at end of
        file: an unterminated final event, trailing comments, or a final
        block without data.
        """
        return b"".join(self._carry) + b"".join(self._partial)

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse the next piece of the stream; return the events it completes.

        ``data`` is any bytes-like object, possibly empty. Raises ValueError
        if called after ``close()``.
        """
        if self._closed:
            raise ValueError("SSEParser.feed() called after close()")
        if not data:
            self.whole = 0
            return []
        if type(data) is not bytes:
            data = bytes(data)
        if (data[-2:] == b"\n\n" and data.startswith(b"data: ") and data.find(b"\r") < 0
                and not (self._carry or self._partial or self._data or self._event)):
            # The fast path (`_whole_data_events`); inline for a piece that is one event.
            if data.find(b"\n") == len(data) - 2:
                self._first_line = False
                self.whole = 1
                return [SSEEvent(data[6:-2].decode("utf-8", "replace"), None,
                                 self.last_event_id, None, data)]
            events = self._whole_data_events(data)
            if events is not None:
                self.whole = len(events)
                return events
        self.whole = 0
        partial = self._partial
        held_cr = partial and partial[-1].endswith(b"\r")
        if data.find(b"\n") < 0 and data.find(b"\r") < 0 and not held_cr:
            # No line can complete: defer joining so that a long line arriving
            # in many pieces costs O(n), not O(n^2).
            partial.append(data)
            return []
        if partial:
            partial.append(data)
            data = b"".join(partial)
            partial.clear()
        return self._parse(data, False)

    def _whole_data_events(self, data: bytes) -> list[SSEEvent] | None:
        """The fast path of `feed` for a piece arriving with nothing pending that is made of
        whole one-line events ``data: X\n\n`` (LF only, no CR: the caller checked that it
        starts with ``data: `` and ends with a blank line), as OpenAI streams arrive: their
        events, as `_parse` would give them; None when `data` is anything else.

        No BOM can be first (the piece starts with ``data: ``).
        """
        parts = whole_data_lines(data)
        if parts is None:
            return None
        self._first_line = False
        last_id = self.last_event_id
        return [SSEEvent(x[6:].decode("utf-8", "replace"), None, last_id, None, x + b"\n\n")
                for x in parts]

    def close(self) -> list[SSEEvent]:
        """End the stream; return the events that only end of file completes.

        The only such event is one whose blank line is a final lone CR (it
        could not be told from the start of a CRLF before). Per the spec an
        event still unterminated at end of file is discarded; its bytes stay
        in ``tail``. Calling ``close()`` again returns [].
        """
        if self._closed:
            return []
        self._closed = True
        partial = self._partial
        if not partial:
            return []
        data = b"".join(partial)
        partial.clear()
        return self._parse(data, True)

    def _parse(self, buf: bytes, final: bool) -> list[SSEEvent]:
        lines = buf.splitlines(True)
        last = lines[-1]
        if last[-1:] != b"\n" and (not final or last[-1:] != b"\r"):
            # Unterminated, or ending in CR whose LF may be in the next piece;
            # a CR at end of file does end its line.
            lines.pop()
            self._partial.append(last)
            end_of_lines = len(buf) - len(last)
        else:
            end_of_lines = len(buf)

        events: list[SSEEvent] = []
        data = self._data
        pos = 0  # start of the current line in buf
        start = 0  # start of the current (undispatched) event's bytes in buf
        for line in lines:
            pos += len(line)
            content = line.rstrip(_EOL)
            if self._first_line:
                self._first_line = False
                if content.startswith(_BOM):
                    content = content[3:]
            if not content:
                # Blank line: dispatch (spec: "If the line is empty").
                if data:
                    if self._carry:
                        self._carry.append(buf[start:pos])
                        raw = b"".join(self._carry)
                        self._carry.clear()
                    else:
                        raw = buf[start:pos]
                    start = pos
                    events.append(
                        SSEEvent(
                            data[0] if len(data) == 1 else "\n".join(data),
                            self._event or None,
                            self.last_event_id,
                            self._event_retry,
                            raw,
                        )
                    )
                    data.clear()
                    self._event_retry = None
                # The spec resets the event type even when nothing is
                # dispatched; the raw bytes stay pending for the next event.
                self._event = ""
                continue
            if content[0] == 0x3A:  # ':' starts a comment line
                continue
            name, _, value = content.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id":
                if value.find(b"\0") < 0:
                    self.last_event_id = value.decode("utf-8", "replace")
            elif name == b"retry":
                # ASCII digits only; bytes.isdigit() is ASCII-only.
                if value.isdigit():
                    self.retry = self._event_retry = int(value)
            # Any other field name is ignored, per spec.
        if start < end_of_lines:
            self._carry.append(buf[start:end_of_lines])
        return events


def encode_event(data: str, event: str | None = None, id: str | None = None) -> bytes:
    """Encode one SSE event the way OpenAI sends them: ``data: {json}\\n\\n``.

    Emits an ``event:`` line if ``event`` is given, an ``id:`` line if ``id``
    is not None, then one ``data:`` line per line of ``data`` (split at LF,
    CRLF and CR, which SSE cannot carry inside a value; the parser joins them
    back with LF), then a blank line. Raises ValueError if ``event`` or ``id``
    contains a line break, or ``id`` contains NUL (the spec ignores such ids).
    """
    head = b""
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("SSE event type cannot contain a line break")
        head = b"event: " + event.encode("utf-8") + b"\n"
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("SSE id cannot contain a line break or NUL")
        head += b"id: " + id.encode("utf-8") + b"\n"
    if "\n" not in data and "\r" not in data:
        return head + b"data: " + data.encode("utf-8") + b"\n\n"
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "".join(["data: " + line + "\n" for line in lines])
    return head + body.encode("utf-8") + b"\n"
