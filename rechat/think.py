"""Reasoning rewrite: strip `<think>` blocks, or turn harmony channel markers into `<think>` tags.

Owns the `--think keep|strip|tags` rule and `--no-think`. The rewrite happens on the way to
the client; sessions keep the upstream's raw answer. Pure and stdlib only: must not import
aiohttp, nor any rechat module but `errors`.

Layers, each usable alone:

- `ThinkRewriter`: text in pieces -> text in pieces. It holds back only the longest suffix that
  could still become a marker, so no text is delayed by more than (longest marker - 1)
  characters, and a marker split across pieces at any point is found.
- `ThinkTransform`: decoded answer objects -> answer objects, one `ThinkRewriter` per choice
  index, with the byte-level shortcuts of the object-transform protocol (`rechat.rewrite`,
  which applies it to JSON bodies, SSE streams and NDJSON streams). Touches only `content` /
  `text` / `response`; `reasoning_content`, `reasoning` and Ollama's `thinking` are never
  touched.

Default patterns are the OSS relay's (seed: openai-oss-relay-README.md, `ReplacementConfig`).

Hot paths test bytes with ``find() >= 0`` rather than ``in``: CPython 3.11's bytes ``in``
first tries its operand as an integer and formats a TypeError it then drops (about 1,000
instructions a test, counted by bench/bench_instructions.py).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from rechat.errors import ConfigError

__all__ = [
    "ThinkMode", "ThinkPatterns", "ThinkRewriter", "rewrite_text", "ThinkTransform", "no_think",
    "NO_THINK",
]

NO_THINK = "/no_think"
"""The soft switch Qwen3-style models read in a user message (seed: openai-model-rerouter)."""


class ThinkMode(str, Enum):
    """What `--think` does to answers.

    keep: nothing. strip: remove `<think>...</think>` blocks (and harmony analysis blocks,
    open_pattern...close_pattern) with their content, and the whitespace after a block that
    opens the answer. tags: replace open_pattern with open_tag and close_pattern with close_tag.
    """

    KEEP = "keep"
    STRIP = "strip"
    TAGS = "tags"

    @classmethod
    def parse(cls, name: "str | ThinkMode") -> "ThinkMode":
        """Return the mode called `name`; raise ConfigError listing the valid names otherwise."""
        if name.__class__ is cls:
            return name
        if isinstance(name, ThinkMode):
            return name
        try:
            return cls(str(name).lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown --think mode {name!r}; valid modes: {valid}") from None


@dataclass(frozen=True, slots=True)
class ThinkPatterns:
    """The markers the rewrite looks for.

    Defaults are the OSS relay's harmony markers (seed: openai-oss-relay-README.md). Raises
    ConfigError for an empty or non-string marker.
    """

    open_pattern: str = "<|channel|>analysis<|message|>"
    close_pattern: str = "<|end|><|start|>assistant<|channel|>final<|message|>"
    open_tag: str = "<think>"
    close_tag: str = "</think>"

    def __post_init__(self) -> None:
        for name in ("open_pattern", "close_pattern", "open_tag", "close_tag"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"think pattern {name} must be a non-empty string, got {value!r}")
        if self.open_pattern == self.close_pattern or self.open_tag == self.close_tag:
            raise ConfigError("think open and close markers must differ")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThinkPatterns":
        """Build from a mapping with any of the four field names; unknown keys are a ConfigError."""
        valid = ("open_pattern", "close_pattern", "open_tag", "close_tag")
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown think pattern {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**d)


# -- text ------------------------------------------------------------------------------------


class _State:
    """One state of the marker machine: the markers it looks for and what each one does."""

    __slots__ = ("emits", "rules", "regex", "firsts", "maxlen")

    def __init__(self, emits: bool, rules: dict[str, tuple[str, int, bool]]) -> None:
        self.emits = emits  # text outside markers goes to the output (else it is dropped)
        self.rules = rules  # marker -> (replacement, next state, closes a stripped block)
        # Longest first: at one position the longest marker wins (leftmost-longest).
        markers = sorted(rules, key=len, reverse=True)
        self.regex = re.compile("|".join(re.escape(m) for m in markers))
        self.firsts = frozenset(m[0] for m in markers)
        self.maxlen = len(markers[0])


@functools.lru_cache(maxsize=64)
def _machine(mode: ThinkMode, p: ThinkPatterns) -> tuple[_State, ...]:
    """Build the (immutable, shared) states for `mode`: state 0 is outside any block."""
    if mode is ThinkMode.TAGS:
        return (_State(True, {p.open_pattern: (p.open_tag, 0, False),
                              p.close_pattern: (p.close_tag, 0, False)}),)
    if mode is ThinkMode.STRIP:
        outside: dict[str, tuple[str, int, bool]] = {p.open_tag: ("", 1, False)}
        states = [_State(False, {p.close_tag: ("", 0, True)})]
        if p.open_pattern != p.open_tag:
            outside[p.open_pattern] = ("", 2, False)
            states.append(_State(False, {p.close_pattern: ("", 0, True)}))
        return (_State(True, outside), *states)
    return ()


_SETUPS: dict[int, tuple[ThinkPatterns, dict]] = {}


def _setup(mode: ThinkMode, p: ThinkPatterns) -> tuple[tuple[_State, ...], int, tuple[bytes, ...]]:
    """``(states, max_hold, first bytes)`` for `mode` and `p`: `_machine`, the longest hold
    and `_first_bytes`, worked out once per pattern object (rewriters are made per answer, and
    a frozen dataclass hashes all its fields each time it is a key)."""
    got = _SETUPS.get(id(p))
    if got is None or got[0] is not p:
        if len(_SETUPS) >= 64:
            _SETUPS.clear()
        got = _SETUPS[id(p)] = (p, {})
    by_mode = got[1]
    key = mode._value_  # a str: an Enum member hashes in Python (1,000 instructions)
    setup = by_mode.get(key)
    if setup is None:
        states = _machine(mode, p)
        setup = by_mode[key] = (states, max((s.maxlen for s in states), default=1) - 1,
                                _first_bytes(mode, p))
    return setup


# (mode, patterns, _setup(mode, patterns)[2]) of the last ThinkTransform made (see its __init__).
_LAST_FIRSTS: tuple[Any, Any, tuple[bytes, ...]] = (None, None, ())


def _remember_firsts(mode: ThinkMode, p: ThinkPatterns) -> tuple[bytes, ...]:
    """Return `_setup(mode, p)`'s first bytes and keep them as `_LAST_FIRSTS`."""
    global _LAST_FIRSTS
    firsts = _setup(mode, p)[2]
    _LAST_FIRSTS = (mode, p, firsts)
    return firsts


class ThinkRewriter:
    """Rewrite one text that arrives in pieces: ``feed(piece) -> str``, then ``flush() -> str``.

    The concatenated output equals `rewrite_text` of the concatenated input, however the input
    is split. Each `feed` returns everything that can no longer be part of a marker; `pending`
    (at most `max_hold` characters, a suffix of the input) is what is held back. `flush` ends
    the text and returns what was held; the rewriter then starts afresh.

    Matching is leftmost-longest over the markers of the current state. In strip mode, text
    inside a block is dropped (an unterminated block runs to the end of the text), and
    whitespace right after a block is dropped while nothing but whitespace was emitted before
    it. A close marker without its open marker is left as is: the text before it is gone.
    """

    __slots__ = ("mode", "patterns", "_states", "_state", "_buf", "_at_start", "_skip_ws",
                 "max_hold")

    def __init__(self, mode: "ThinkMode | str" = ThinkMode.STRIP,
                 patterns: ThinkPatterns = ThinkPatterns()) -> None:
        self.mode = ThinkMode.parse(mode)
        self.patterns = patterns
        self._states, self.max_hold, _ = _setup(self.mode, patterns)
        self._reset()

    def _reset(self) -> None:
        self._state = 0
        self._buf = ""
        self._at_start = True  # nothing but whitespace emitted yet
        self._skip_ws = False

    @property
    def pending(self) -> str:
        """The input held back: a suffix of it that may still start a marker."""
        return self._buf

    def feed(self, text: str) -> str:
        """Take the next piece; return the output that no later piece can change."""
        if not self._states:
            return text
        if not text:
            return ""
        st = self._states[self._state]
        if not self._buf and st.emits and not self._at_start and not any(c in text for c in st.firsts):
            return text  # the common case: plain answer text, no marker can start in it
        return self._run(self._buf + text, final=False)

    def flush(self) -> str:
        """End the text; return what was held back (rewritten) and reset."""
        if not self._states:
            return ""
        out = self._run(self._buf, final=True) if self._buf else ""
        self._reset()
        return out

    def _run(self, buf: str, final: bool) -> str:
        out: list[str] = []
        pos, n = 0, len(buf)
        while True:
            st = self._states[self._state]
            hold = n if final else self._hold_start(buf, pos, st)
            m = st.regex.search(buf, pos)
            if m is None or m.start() >= hold:
                self._emit(st, buf[pos:hold], out)
                self._buf = buf[hold:]
                return "".join(out)
            # A match before `hold` is final: every marker at that position either matched or
            # failed on bytes already here (else `hold` would be at or before it).
            self._emit(st, buf[pos:m.start()], out)
            replacement, self._state, closes = st.rules[m.group()]
            if replacement:
                self._emit(st, replacement, out)
            if closes and self._at_start:
                self._skip_ws = True
            pos = m.end()

    @staticmethod
    def _hold_start(buf: str, pos: int, st: _State) -> int:
        """Return the first index >= pos from which buf could still become a marker, else len."""
        n = len(buf)
        for i in range(max(pos, n - st.maxlen + 1), n):
            if buf[i] in st.firsts:
                tail = buf[i:]
                for marker in st.rules:
                    if len(marker) > len(tail) and marker.startswith(tail):
                        return i
        return n

    def _emit(self, st: _State, text: str, out: list[str]) -> None:
        if not text or not st.emits:
            return
        if self._at_start:
            if self._skip_ws:
                text = text.lstrip()
            if text.strip():
                self._at_start = False
                self._skip_ws = False
        if text:
            out.append(text)


def rewrite_text(text: str, mode: "ThinkMode | str" = ThinkMode.STRIP,
                 patterns: ThinkPatterns = ThinkPatterns()) -> str:
    """Rewrite a whole text at once (the reference `ThinkRewriter` output is measured against)."""
    rw = ThinkRewriter(mode, patterns)
    return rw.feed(text) + rw.flush()


# -- answer objects --------------------------------------------------------------------------


class ThinkTransform:
    """Apply the think rewrite to the objects of one answer, whole or streamed.

    Shapes handled (anything else is returned unchanged, as the same object):

    - OpenAI chat: ``choices[i].message.content`` (a whole answer, rewritten at once) and
      ``choices[i].delta.content`` (a chunk, fed to choice i's rewriter);
    - OpenAI legacy completions: ``choices[i].text``;
    - Ollama: ``message.content`` (/api/chat) and ``response`` (/api/generate), streamed or not.

    A choice ends at a non-null ``finish_reason`` (Ollama: ``done: true``). Its held-back text
    then goes into that object when its own text is non-empty; otherwise into a new object
    emitted just before it (a copy of its envelope with only that text), because clients may
    stop reading at the finish chunk. `end()` emits what is still held for choices that never
    finished (a stream cut short or sent without finish_reason).

    `choices` is how many choices the answer is to have (the request's ``n``). Streamed objects
    are decoded, never passed at byte level, until a rewriter exists for that many choice
    indexes: a choice first seen in an object passed at byte level would have no rewriter, and
    whether its text has started would be lost (so whitespace after a later leading block
    would be dropped). An answer with more choices than `choices` says is still rewritten, but
    a choice that first shows up while the others are idle has that problem.
    """

    # Slots, and a mode taken as it is when it is one already: one is made per answer, and
    # these take making one from 9,700 instructions to 7,100 (valgrind, with the call).
    __slots__ = ("mode", "patterns", "choices", "_rw", "_kind", "_template", "_template_raw",
                 "_firsts")

    def __init__(self, mode: "ThinkMode | str", patterns: ThinkPatterns = ThinkPatterns(),
                 choices: int = 1) -> None:
        self.mode = mode if mode.__class__ is ThinkMode else ThinkMode.parse(mode)
        self.patterns = patterns
        self.choices = choices if choices > 1 else 1
        self._rw: dict[int, ThinkRewriter] = {}
        self._kind: dict[int, str] = {}  # choice index -> "delta" | "text" | "ollama-chat" | ...
        self._template: dict | None = None  # the last object seen, for `end()`
        self._template_raw: bytes | None = None  # or its bytes, when it was not decoded
        # What `passes` looks for. A gateway makes every transform with one mode and one
        # pattern object: the last pair's answer is kept, which spares the call to _setup.
        last = _LAST_FIRSTS
        if last[0] is self.mode and last[1] is patterns:
            self._firsts = last[2]
        else:
            self._firsts = _remember_firsts(self.mode, patterns)

    @property
    def active(self) -> bool:
        """False in keep mode, where every object passes unchanged."""
        return self.mode is not ThinkMode.KEEP

    def deferral_stops(self) -> tuple[tuple[bytes, ...], bool] | None:
        """While nothing has been fed: ``(firsts, True)``, the encoded first characters of the
        markers, and that a ``\\u`` escape (which could spell one) counts too: without them a
        stream's bytes hold no object this transform would change; else None.

        Until an object holding one of them comes, every object passes unchanged, and feeding
        them all later, in order, leaves the state feeding them now would have (no marker can
        start in their text, so only whether each choice's text has started changes). A
        stream rewriter may therefore set a fresh transform aside and feed it the stream so
        far only once a piece holds one (`rechat.rewrite.SSEStreamRewriter`). None in keep
        mode, which changes nothing anyway.
        """
        if (self.mode is ThinkMode.KEEP or self._rw or self._template is not None
                or self._template_raw is not None):
            return None
        return self._firsts, True

    def passes(self, raw: bytes, whole: bool = False) -> bool:
        """True when the object encoded as `raw` (its JSON bytes) would pass unchanged.

        A byte-level check that spares decoding: no marker can start in `raw` (no marker's
        first character, no ``\\u`` escape that could hide one) and, for a streamed object
        (`whole` False), a rewriter exists for each of the `choices` choices and every rewriter
        is idle: outside any block, past the start of its text, holding nothing.
        Conservative: False only means "decode and see".
        """
        if self.mode is ThinkMode.KEEP:
            return True
        # A one-byte search first: several times faster than one for ``\u``. `partition`
        # rather than `find`: it does not parse its arguments (1,000 instructions a call).
        if raw.partition(b"\\")[1] and raw.find(b"\\u") >= 0:
            return False
        for c in self._firsts:
            if raw.partition(c)[1]:
                return False
        if whole:
            return True
        if len(self._rw) < self.choices:  # a choice not seen yet must get its rewriter
            return False
        for rw in self._rw.values():
            if rw._buf or rw._state or rw._at_start:
                return False
        return True

    def raw_rule(self) -> tuple[tuple[bytes, ...], bytes, bytes, tuple[bytes, ...], int] | None:
        """The byte rule `passes` applies to streamed objects while the state stays as it is.

        ``(stops, b"", b"", (), 0)``: an object whose JSON bytes hold none of `stops` passes
        unchanged and leaves the state as it was; None while some rewriter is not idle (or
        fewer than `choices` exist yet). Stays valid until the next `feed` or `end`.
        """
        if self.mode is ThinkMode.KEEP:
            return (), b"", b"", (), 0
        if len(self._rw) < self.choices:
            return None
        for rw in self._rw.values():
            if rw._buf or rw._state or rw._at_start:
                return None
        return (b"\\u", *self._firsts), b"", b"", (), 0

    def feed_raw(self, raw: bytes, whole: bool = False) -> bytes | None:
        """Return `raw` when the object encoded as `raw` passes unchanged (`passes`, or
        `_starts_text`), else None: decode it and `feed` it."""
        if self.passes(raw, whole) or (not whole and self._starts_text(raw)):
            return raw
        return None

    def _starts_text(self, raw: bytes) -> bool:
        """Take the first chunks of a one-choice stream at byte level; True when taken.

        A stream's first chunks are where the rewriter for choice 0 is made and where its text
        starts: `passes` cannot let them through, as the rewriter must learn whether its text
        has started (whitespace after a leading block is dropped). When `raw` is a chunk whose
        only text is the ``delta.content`` of choice 0, unfinished, with no escape (so its
        string is its bytes) and no marker's first character, feeding that text changes
        nothing but the start-of-text flag, which its bytes tell. So the chunk passes as it
        is, the rewriter is made (or marked started), and no JSON is decoded. Feeding the
        same chunk again afterwards (`rechat.rewrite` decodes when a later transform cannot decide)
        changes nothing more. Only with `choices` 1: with several, which choice a chunk
        belongs to needs its ``index`` read, and the decoder does that.
        """
        if self.mode is ThinkMode.KEEP or self.choices != 1 or raw.find(b"\\") >= 0:
            return False
        rw = self._rw.get(0)
        if len(self._rw) != (rw is not None) or (rw is not None and (
                rw._buf or rw._state or rw._skip_ws)):
            return False
        for c in self._firsts:
            if raw.find(c) >= 0:
                return False
        m = _CHUNK0.search(raw)
        if m is not None and raw.count(b'"choices"') == 1:
            # The usual spelling, in one C call: one choice, index 0, a flat delta, unfinished.
            members = m.group(1)
            n = members.count(b'"content"')
            if n == 0:
                return self._started(raw, "")
            if n == 1:
                v = _CONTENT.search(members)
                if v is not None:
                    value = v.group(1)
                    if value == b"null":
                        return self._started(raw, "")
                    try:
                        return self._started(raw, value[1:-1].decode("utf-8"))
                    except UnicodeDecodeError:
                        return False
        # Each key once (a repeated key: the decoder keeps the last), and "content" a direct
        # member of "delta" (no brace between them: without escapes, none is inside a string).
        for key in (b'"choices"', b'"index"', b'"delta"', b'"content"', b'"finish_reason"'):
            if raw.count(key) != 1:
                return False
        i, d = raw.find(b'"content"'), raw.find(b'"delta"')
        between = raw[d + 7:i]
        o = between.find(b"{")
        if (o < 0 or between[:o].strip(b" \t\r\n") != b":" or between[o + 1:].find(b"{") >= 0
                or between.find(b"}") >= 0 or between.find(b"[") >= 0 or between.find(b"]") >= 0):
            return False
        value = _raw_value(raw, i + 9)
        index = _raw_value(raw, raw.find(b'"index"') + 7)
        f = raw.find(b'"finish_reason"')
        if index != b"0" or f < 0 or _raw_value(raw, f + 15) != b"null" or value is None:
            return False
        if value[:1] == b'"' and value[-1:] == b'"':
            try:
                text = value[1:-1].decode("utf-8")
            except UnicodeDecodeError:
                return False
        elif value == b"null":
            text = ""
        else:
            return False
        return self._started(raw, text)

    def _started(self, raw: bytes, text: str) -> bool:
        # `_starts_text` took the chunk `raw`, whose choice 0 says `text`: what feeding it does.
        rw = self._rewriter(0)
        self._kind[0] = "delta"
        if text.strip():
            rw._at_start = False
        self._template, self._template_raw = None, raw
        return True

    def _rewriter(self, index: int) -> ThinkRewriter:
        rw = self._rw.get(index)
        if rw is None:
            rw = self._rw[index] = ThinkRewriter(self.mode, self.patterns)
        return rw

    def feed(self, obj: dict) -> list[dict]:
        """Return the objects to emit for `obj` (the object-transform protocol: rechat.rewrite)."""
        if not self.active or not isinstance(obj, dict):
            return [obj]
        self._template, self._template_raw = obj, None
        choices = obj.get("choices")
        if isinstance(choices, list):
            return self._feed_choices(obj, choices)
        done = obj.get("done") is True
        msg = obj.get("message")
        if isinstance(msg, dict) and isinstance(msg.get("content"), str):
            return self._feed_field(obj, 0, "ollama-chat", msg["content"], done,
                                    lambda t: {**obj, "message": {**msg, "content": t}})
        if isinstance(obj.get("response"), str):
            return self._feed_field(obj, 0, "ollama-generate", obj["response"], done,
                                    lambda t: {**obj, "response": t})
        return [obj]

    def _feed_choices(self, obj: dict, choices: list) -> list[dict]:
        before: list[dict] = []
        new_choices: list[Any] = []
        changed = False
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict):
                new_choices.append(choice)
                continue
            index = choice.get("index", pos)
            index = index if isinstance(index, int) else pos
            finished = choice.get("finish_reason") is not None
            msg, delta = choice.get("message"), choice.get("delta")
            new = choice
            if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                text = rewrite_text(msg["content"], self.mode, self.patterns)
                if text != msg["content"]:
                    new = {**choice, "message": {**msg, "content": text}}
            elif isinstance(delta, dict):
                self._kind[index] = "delta"
                new, extra = self._step(index, choice, delta.get("content"), finished,
                                        lambda t: {**choice, "delta": {**delta, "content": t}})
                before += extra
            elif isinstance(choice.get("text"), str) or ("text" in choice and finished):
                self._kind[index] = "text"
                new, extra = self._step(index, choice, choice.get("text"), finished,
                                        lambda t: {**choice, "text": t})
                before += extra
            changed |= new is not choice
            new_choices.append(new)
        out = {**obj, "choices": new_choices} if changed else obj
        return before + [out]

    def _step(self, index: int, choice: dict, text: Any, finished: bool, put) -> tuple[dict, list[dict]]:
        """Feed one choice's text; return (the choice to emit, new objects to emit before it)."""
        rw = self._rewriter(index)
        if isinstance(text, str) and text:
            out = rw.feed(text)
            if finished:
                out += rw.flush()
            return (choice if out == text else put(out)), []
        if finished:
            rest = rw.flush()
            if rest:
                return choice, [self._synthetic(index, rest)]
        return choice, []

    def _feed_field(self, obj: dict, index: int, kind: str, text: str, done: bool,
                    put) -> list[dict]:
        self._kind[index] = kind
        new, before = self._step(index, obj, text, done, put)
        return before + [new]

    def _synthetic(self, index: int, text: str) -> dict:
        """A new object carrying only `text` for choice `index`, in the envelope last seen."""
        if self._template is None and self._template_raw is not None:
            self._template = json.loads(self._template_raw)
        tpl = self._template or {}
        kind = self._kind.get(index, "delta")
        if kind == "ollama-chat":
            msg = tpl.get("message") if isinstance(tpl.get("message"), dict) else {}
            head = {k: v for k, v in tpl.items() if k in ("model", "created_at")}
            return {**head, "message": {"role": msg.get("role", "assistant"), "content": text},
                    "done": False}
        if kind == "ollama-generate":
            head = {k: v for k, v in tpl.items() if k in ("model", "created_at")}
            return {**head, "response": text, "done": False}
        head = {k: v for k, v in tpl.items() if k not in ("choices", "usage")}
        if kind == "text":
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": index, "delta": {"content": text}, "logprobs": None,
                      "finish_reason": None}
        return {**head, "choices": [choice]}

    def end(self) -> list[dict]:
        """Return objects carrying what is still held for choices that never finished."""
        out = []
        for index, rw in sorted(self._rw.items()):
            rest = rw.flush()
            if rest:
                out.append(self._synthetic(index, rest))
        return out


# The first chunks of a stream as OpenAI (and vLLM, SGLang) spell them, whatever the spacing:
# "choices" holding one object of exactly index 0, a delta without nested values, maybe
# logprobs null, and finish_reason null; group 1: the delta's members. Used only on bytes
# without a backslash: every quote then delimits a string, so text cannot pass for structure.
_CHUNK0 = re.compile(rb'"choices"\s*:\s*\[\s*\{\s*"index"\s*:\s*0\s*,\s*"delta"\s*:\s*'
                     rb'\{([^{}\[\]]*)\}\s*,(?:\s*"logprobs"\s*:\s*null\s*,)?\s*'
                     rb'"finish_reason"\s*:\s*null\s*\}\s*\]')
# The value of the "content" member among a delta's members (a string or null).
_CONTENT = re.compile(rb'"content"\s*:\s*("[^"]*"|null)')


def _raw_value(raw: bytes, j: int) -> bytes | None:
    """The bytes of the scalar JSON value after the key that ends at index `j` of `raw` (a
    string with its quotes, a number, true, false, null), for bytes without escapes; None when
    no colon follows the key or the value is an object or array."""
    n = len(raw)
    while j < n and raw[j] in b" \t\r\n":
        j += 1
    if j >= n or raw[j] != 0x3A:
        return None
    j += 1
    while j < n and raw[j] in b" \t\r\n":
        j += 1
    if raw[j:j + 1] == b'"':
        k = raw.find(b'"', j + 1)
        return raw[j:k + 1] if k > 0 else None
    k = j
    while k < n and raw[k] not in b",}] \t\r\n":
        k += 1
    return raw[j:k] if k > j and raw[j] not in b"{[" else None


@functools.lru_cache(maxsize=64)
def _first_bytes(mode: ThinkMode, p: ThinkPatterns) -> tuple[bytes, ...]:
    """The UTF-8 encodings of the characters any marker of `mode` can start with."""
    return tuple(c.encode() for c in {c for st in _machine(mode, p) for c in st.firsts})


# -- requests --------------------------------------------------------------------------------


def no_think(body: dict, marker: str = NO_THINK) -> dict:
    """Return `body` with `marker` appended to its last user message (`--no-think`).

    Handles chat bodies (OpenAI and Ollama ``messages``; string content, or the last text part
    of a list content, else a new text part) and prompt bodies (a string ``prompt``: Ollama
    /api/generate, legacy completions). A space separates the marker from the text unless
    the text is empty or ends in whitespace; text already ending in the marker is left as is.
    Returns `body` itself when there is nothing to change; never mutates it.
    """
    if not isinstance(body, dict):
        return body
    messages = body.get("messages")
    if isinstance(messages, list):
        for i in range(len(messages) - 1, -1, -1):
            msg = messages[i]
            if isinstance(msg, dict) and msg.get("role") == "user":
                new = _append_to_message(msg, marker)
                if new is msg:
                    return body
                return {**body, "messages": [*messages[:i], new, *messages[i + 1:]]}
        return body
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        new_prompt = _append(prompt, marker)
        return body if new_prompt == prompt else {**body, "prompt": new_prompt}
    return body


def _append(text: str, marker: str) -> str:
    if text.rstrip().endswith(marker):
        return text
    return text + (marker if not text or text[-1].isspace() else " " + marker)


def _append_to_message(msg: dict, marker: str) -> dict:
    content = msg.get("content")
    if isinstance(content, str):
        new = _append(content, marker)
        return msg if new == content else {**msg, "content": new}
    if isinstance(content, list):
        for j in range(len(content) - 1, -1, -1):
            part = content[j]
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                new = _append(part["text"], marker)
                if new == part["text"]:
                    return msg
                return {**msg, "content": [*content[:j], {**part, "text": new}, *content[j + 1:]]}
        return {**msg, "content": [*content, {"type": "text", "text": marker}]}
    if content is None:
        return {**msg, "content": marker}
    return msg


