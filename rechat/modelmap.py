"""Model names: which model a request asks for, which one the upstream serves, and back.

Owns `--model-map` (also RECHAT_MODEL_MAP) and `--override-model`, in the form of the model
rerouter (seed: openai-model-rerouter-README.md, "Model Mapping Examples"):

    {"gpt-3.5-turbo": "llama3-8b",                  exact name -> name
     "/gpt-(.*)turbo/": "llama3-\\\\1-instruct"}      /regex/ -> template with back-references

Rules, in order: an override model wins over everything; then an exact key; then the
`/regex/` keys in the order written, the first whose pattern is *found* in the name
(`re.search`, so anchor with ^ and $ for a whole-name match) turns the whole name into its
template expanded with that match (`\\1`, `\\g<name>`; a group that did not take part gives
""). A `/regex/i` key ignores case. A name nothing matches is served as asked. The map is
applied once, never to its own result.

The client sees the name it asked for in answers (`restore_response_model`, `ModelRestore`).
Both directions have a byte-level fast path (`rewrite_request_bytes`, `ModelRestore.feed_raw`):
the top-level ``"model"`` string is swapped in the JSON bytes as they are, without decoding
and re-encoding the document, whenever the bytes say unambiguously where it is; otherwise the
caller decodes. Pure and stdlib only; imports nothing from rechat but `errors` and
`speedups` (the usual answer's model located in one C pass; without it, the same answer
from Python).

Hot paths test bytes with ``find() >= 0`` rather than ``in``: CPython 3.11's bytes ``in``
first tries its operand as an integer and formats a TypeError it then drops (about 1,000
instructions a test, counted by bench/bench_instructions.py). A known prefix or suffix is
tested by comparing a slice (``data[:len(head)] == head``), not with ``startswith`` or
``endswith``, which parse their arguments with a format string: about 200 instructions
against 1,000. For the same reason "does `raw` hold `x`" is ``raw.partition(x)[1]`` where it
runs per answer (see `rechat.rewrite`).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Mapping

from rechat.errors import ConfigError
# None: the Python beside each caller (the same answers)
from rechat.speedups import events as _fused_events, learn as _fused_learn, locate as _fused_locate
from rechat.speedups import learn_events as _fused_learn_events
from rechat.speedups import swap as _fused_swap

__all__ = ["ModelMap", "restore_response_model", "ModelRestore", "rewrite_request_bytes"]


_PATTERN_KEY = re.compile(r"/(.+)/(i?)", re.DOTALL)
_MEMO = 1024  # names ModelMap.resolve remembers


class ModelMap:
    """A model-name mapping: exact names, then `/regex/` patterns, under an optional override.

    Build with `from_dict` / `from_json` (validated: ConfigError on a bad regex, a bad
    back-reference or a non-string value), or directly from `exact`, `patterns` (a sequence of
    ``(regex, template)`` or ``(compiled, template)``) and `override`. Immutable.
    """

    __slots__ = ("exact", "patterns", "override", "_resolved")

    def __init__(self, exact: Mapping[str, str] | None = None,
                 patterns: tuple[tuple[re.Pattern[str] | str, str], ...] | list = (),
                 override: str | None = None) -> None:
        self.exact: dict[str, str] = dict(exact or {})
        compiled = []
        for pattern, template in patterns:
            rx = pattern if isinstance(pattern, re.Pattern) else _compile(pattern, 0, pattern)
            _check_template(rx, template, f"/{rx.pattern}/")
            compiled.append((rx, template))
        self.patterns: tuple[tuple[re.Pattern[str], str], ...] = tuple(compiled)
        if override is not None and (not isinstance(override, str) or not override):
            raise ConfigError(f"--override-model must be a non-empty model name, got {override!r}")
        self.override = override
        self._resolved: dict[str, str] = {}  # memo of resolve(), bounded by _MEMO

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], override: str | None = None,
                  source: str = "--model-map") -> "ModelMap":
        """Build from the rerouter's JSON object form (keys in order; `/re/` keys are patterns).

        Raises ConfigError naming `source` and the bad key for a non-string value, an empty
        target, an invalid regex or a template referring to a group the regex lacks.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{source} must be a JSON object of model names, got "
                              f"{type(mapping).__name__}")
        exact: dict[str, str] = {}
        patterns: list[tuple[re.Pattern[str], str]] = []
        for key, value in mapping.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source}: the target of {key!r} must be a non-empty model "
                                  f"name, got {value!r}")
            m = _PATTERN_KEY.fullmatch(key) if isinstance(key, str) else None
            if m is not None:
                flags = re.IGNORECASE if m.group(2) else 0
                rx = _compile(m.group(1), flags, f"{source}: {key!r}")
                _check_template(rx, value, f"{source}: {key!r}")
                patterns.append((rx, value))
            else:
                exact[key] = value
        return cls(exact, patterns, override)

    @classmethod
    def from_json(cls, text: str, override: str | None = None,
                  source: str = "--model-map") -> "ModelMap":
        """Build from JSON text (the `--model-map` / RECHAT_MODEL_MAP value); "" is an empty map.

        Raises ConfigError with the JSON error's position for text that is not JSON.
        """
        if not text or not text.strip():
            return cls(override=override)
        try:
            mapping = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{source} is not valid JSON ({e}); expected e.g. "
                              '{"gpt-3.5-turbo": "llama3-8b", "/gpt-(.*)/": "llama3-\\\\1"}') from None
        return cls.from_dict(mapping, override, source)

    def with_override(self, override: str | None) -> "ModelMap":
        """Return a copy whose override is `override` (None: no override)."""
        return ModelMap(self.exact, self.patterns, override)

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns or self.override)

    def __repr__(self) -> str:
        return (f"ModelMap(exact={self.exact!r}, patterns={[(p.pattern, t) for p, t in self.patterns]!r}, "
                f"override={self.override!r})")

    def resolve(self, name: str) -> str:
        """Return the model to serve for the requested `name` (rules in the module docstring).

        Memoized per name (the map is immutable); the memo is emptied past `_MEMO` names.
        """
        hit = self._resolved.get(name)
        if hit is None:
            if len(self._resolved) >= _MEMO:
                self._resolved.clear()
            hit = self._resolved[name] = self._resolve(name)
        return hit

    def _resolve(self, name: str) -> str:
        if self.override is not None:
            return self.override
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        for rx, template in self.patterns:
            m = rx.search(name)
            if m is not None:
                return m.expand(template)
        return name

    def rewrite_request(self, body: Any) -> tuple[Any, str | None, str | None]:
        """Map a request body's ``model``; return ``(body to send, asked, served)``.

        `asked` and `served` are None when the body is not a JSON object with a string
        ``model``; the body is then returned as is. The returned body is `body` itself when the
        name does not change, else a shallow copy; `body` is never mutated.
        """
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return body, None, None
        asked = body["model"]
        served = self.resolve(asked)
        return (body if served == asked else {**body, "model": served}), asked, served

    def aliases(self) -> list[str]:
        """Return the exact names this map answers to, to list in /v1/models (patterns cannot be)."""
        return list(self.exact)


def _compile(body: str, flags: int, where: str) -> re.Pattern[str]:
    try:
        return re.compile(body, flags)
    except re.error as e:
        raise ConfigError(f"{where} is not a valid regular expression: {e}") from None


def _check_template(rx: re.Pattern[str], template: str, where: str) -> None:
    """Expand `template` against a stand-in match with rx's groups, so bad references fail now."""
    names = {index: name for name, index in rx.groupindex.items()}
    stand_in = re.compile("".join(f"(?P<{names[i]}>)" if i in names else "()"
                                  for i in range(1, rx.groups + 1)))
    try:
        stand_in.match("").expand(template)  # type: ignore[union-attr]
    except (re.error, IndexError) as e:
        raise ConfigError(f"{where}: the target {template!r} refers to a group the pattern does "
                          f"not have ({e})") from None


# -- the top-level "model" in JSON bytes -----------------------------------------------------

_KEY = b'"model"'
_RULE_TAIL = (_KEY, b"\\u")  # raw_rule's tail stops
_WS = b" \t\n\r"
# A complete JSON string (unrolled: no backtracking on long strings).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# A \u escape of one of the letters m, o, d, e, l: the key could be spelled with escapes.
_ESCAPED_KEY_CHAR = re.compile(rb"\\u00(?:6[45cdfCDF])")
_ABSENT = (-1, -1)
_NESTING = b"{}[]\\"  # what only a flat prefix lacks, but its opening brace
# The key and a string value without escapes (group 1: the value between its quotes). Inside a
# JSON string a quote is escaped, so the unescaped `"model"` followed by a colon is a key.
_KEY_AND_VALUE = re.compile(rb'"model"[ \t\n\r]*:[ \t\n\r]*"([^"\\]*)"')


def _model_span(raw: bytes) -> tuple[int, int] | None:
    """Locate the top-level ``"model"`` string value in the JSON object bytes `raw`.

    Returns ``(start, end)``, the indexes of its opening and closing quotes, when `raw` has
    exactly one top-level ``"model"`` key spelled plainly and its value is a string without
    escapes; `_ABSENT` when `raw` has no top-level ``"model"`` key (or is no object); None when
    the bytes do not say (a key spelled with ``\\u`` escapes, a repeated key, a non-string or
    escaped value, an object cut short): decode instead. Keys of nested objects and text
    inside strings are never taken for it. Assumes `raw` is valid JSON when it looks like an
    object (a decoder would reject it otherwise). O(len(raw)), all of it in C for the usual
    shapes.
    """
    got = _locate(raw)
    return got if got is None or got is _ABSENT else got[:2]


def _locate(raw: bytes) -> tuple[int, int, int] | None:
    """`_model_span` and where the key starts: ``(start, end, key)``, `key` the index of the
    one ``"model"`` in `raw` when it holds that once, else -1; `_ABSENT` or None as there."""
    if _fused_locate is not None:
        # The usual answer, in one C pass (rechat/_fused.c): the "not slash" case of
        # `_locate_in_python`.
        got = _fused_locate(raw)
        if got is not None:
            return got
    return _locate_in_python(raw)


def _locate_in_python(raw: bytes) -> tuple[int, int, int] | None:
    """`_locate` without the C pass (for callers that have just made it)."""
    slash = raw.find(b"\\") >= 0
    if slash and raw.find(b"\\u") >= 0 and _ESCAPED_KEY_CHAR.search(raw):
        return None
    parts = raw.split(_KEY)
    if len(parts) == 2:
        # The usual body: one "model" (so no repeated key). One split gives where it is and
        # the bytes before it, whose flatness says it is a top-level key.
        before, after = parts
        i = len(before)
        if not slash:
            # No escapes anywhere (the usual answer): the value, in either usual spelling,
            # runs to the next quote. Before the key, only flat members: the opening brace is
            # the one nesting character (one `translate` finds that) and quotes alternate
            # opening and closing strings, so an even count is outside any string.
            s = i + 9 if after[:3] == b': "' else i + 8 if after[:2] == b':"' else 0
            if (s and before[:1] == b"{" and raw[-1:] == b"}"
                    and len(before.translate(None, _NESTING)) == i - 1
                    and before.count(b'"') % 2 == 0):
                e = raw.find(b'"', s + 1)  # s: the opening quote
                if e >= 0:
                    return (s, e, i)
        # Its value found with it in one call.
        m = _KEY_AND_VALUE.match(raw, i)
        if m is not None:
            if not _top_level(raw, i):
                return _ABSENT  # a nested object's key; text in strings never matches
            return (m.start(1) - 1, m.end(1), i) if _looks_object(raw) else None
    found: tuple[int, int, int] | None = None
    n = len(raw)
    i = raw.find(_KEY)
    while i >= 0:
        j = i + 7
        while j < n and raw[j] in _WS:
            j += 1
        if j < n and raw[j] == 0x3A and _top_level(raw, i):  # a key of the top-level object
            if found is not None:
                return None  # a repeated key: the last one wins in a decoder
            j += 1
            while j < n and raw[j] in _WS:
                j += 1
            if j >= n or raw[j] != 0x22:
                return None  # not a string
            k = raw.find(b'"', j + 1)
            if k < 0 or raw.find(b"\\", j + 1, k) >= 0:
                return None  # escaped, or cut short
            found = (j, k, -1)
            i = raw.find(_KEY, k + 1)
        else:
            i = raw.find(_KEY, i + 1)
    if found is None:
        return _ABSENT  # no top-level key: nested ones and text in strings do not count
    return found if _looks_object(raw) else None


def _looks_object(raw: bytes) -> bool:
    # The usual body has no whitespace around it: no copies then.
    return ((raw[:1] == b"{" or raw.lstrip(_WS)[:1] == b"{")
            and (raw[-1:] == b"}" or raw.rstrip(_WS)[-1:] == b"}"))


def _top_level(raw: bytes, i: int) -> bool:
    """True when index `i` of the JSON bytes `raw` is directly inside the top-level object."""
    prefix = raw[:i]
    if ((prefix[:1] == b"{" or prefix.lstrip(_WS)[:1] == b"{")
            and len(prefix.translate(None, _NESTING)) == i - 1):
        # The usual answer chunk: only flat members before it (the opening brace is the one
        # nesting character or backslash in the prefix; one `translate` finds that, where a
        # count and four searches took 1,700 instructions more for a 99-byte prefix).
        # Without escapes, quotes alternate opening and closing strings, so an even count
        # is outside any string.
        return prefix.count(b'"') % 2 == 0
    prefix = _STRING.sub(b"", prefix)
    if prefix.find(b'"') >= 0:
        return False  # i is inside a string
    prefix = prefix.lstrip(_WS)
    return prefix[:1] == b"{" and (prefix.count(b"{") + prefix.count(b"[")
                                   - prefix.count(b"}") - prefix.count(b"]")) == 1


@functools.lru_cache(maxsize=1024)
def _encode(name: str) -> bytes:
    return json.dumps(name, ensure_ascii=False).encode("utf-8")


_ENCODED: dict[str, bytes] = {}  # name -> _encode(name), for ModelRestore


# asked -> (served, then what follows a plain ``"model"`` key in the two usual spellings and
# what replaces the key and it: ``: "asked"``, ``"model": "served"``, ``:"asked"``,
# ``"model":"served"``). A gateway renames a handful of names, each on every request: worked
# out once per name, and keyed by the name alone (a str caches its hash; a tuple key is hashed
# anew each time: 1,000 instructions).
_RENAMES: dict[str, tuple[str, bytes, bytes, bytes, bytes]] = {}


def _remember_renaming(asked: str, served: str) -> tuple[str, bytes, bytes, bytes, bytes]:
    """Work out `_RENAMES`' entry for renaming `asked` to `served`, keep it and return it (the
    caller looks the memo up itself: a call less when the entry is there)."""
    if len(_RENAMES) >= _MEMO:
        _RENAMES.clear()
    a, s = _encode(asked), _encode(served)
    got = _RENAMES[asked] = (served, b": " + a, _KEY + b": " + s, b":" + a, _KEY + b":" + s)
    return got


def rewrite_request_bytes(raw: bytes, asked: str, served: str,
                          decoded: bool = False) -> bytes | None:
    """Return the JSON request body `raw` with its top-level ``"model": asked`` reading `served`.

    Only the value's bytes change (the rest keeps the client's own spelling); None when the
    bytes do not say unambiguously where that value is, or it is not spelled as
    ``json.dumps(asked, ensure_ascii=False)`` would (the caller then re-encodes the decoded
    body). `decoded`: the caller has decoded `raw` into an object whose top-level ``model``
    is `asked` (the gateway has, for `Request.shape`): then a body holding ``"model"`` once
    needs no work on its nesting, which for a long conversation before the key (as SDKs
    send it) costs several times the decoding.
    """
    span = None
    if decoded:
        got = _RENAMES.get(asked)
        if got is None or got[0] != served:
            got = _remember_renaming(asked, served)
        if _fused_swap is not None:
            # The usual body in one C pass (rechat/_fused.c): the case below without a
            # backslash.
            new = _fused_swap(raw, got)
            if new is not None:
                return new
        # One split tells whether the key occurs once and where: fewer calls than a find and
        # a second search (a bytes method call costs about 1,000 instructions).
        parts = raw.split(_KEY)
        if len(parts) == 2 and not (raw.partition(b"\\")[1] and raw.find(b"\\u") >= 0
                                    and _ESCAPED_KEY_CHAR.search(raw)):
            # The decoded body has a top-level "model", and no key is spelled with escapes:
            # its bytes are the one ``"model"`` there is. The two usual spellings,
            # ``"model": "x"`` and ``"model":"x"``, by comparing slices (a string token ends
            # where its encoding does): 3,500 instructions under the regex.
            before, after = parts
            if after[:len(got[1])] == got[1]:
                return before + got[2] + after[len(got[1]):]
            if after[:len(got[3])] == got[3]:
                return before + got[4] + after[len(got[3]):]
            m = _KEY_AND_VALUE.match(raw, len(before))
            if m is None:
                return None  # an escaped value, or not a string
            span = (m.start(1) - 1, m.end(1))
    if span is None:
        span = _model_span(raw)
        if span is None or span is _ABSENT:
            return None
    start, end = span
    if raw[start:end + 1] != _encode(asked):
        return None
    return raw[:start] + _encode(served) + raw[end + 1:]


def restore_response_model(obj: Any, asked: str) -> Any:
    """Return an answer object (JSON body, SSE chunk, NDJSON line) whose ``model`` reads `asked`.

    Only a top-level string ``model`` is changed; anything else (and an object already naming
    `asked`) is returned as the same object. Never mutates `obj`.
    """
    if isinstance(obj, dict) and isinstance(obj.get("model"), str) and obj["model"] != asked:
        return {**obj, "model": asked}
    return obj


class ModelRestore:
    """Object transform (protocol in `rechat.think`) that shows the client the model it asked for.

    Use it when the request's model was rewritten (asked != served); otherwise the upstream's
    own name (e.g. a dated OpenAI snapshot) reaches the client untouched.
    """

    __slots__ = ("asked", "_asked_raw", "_memo", "_events_plan")  # one is made per answer

    def __init__(self, asked: str) -> None:
        self.asked = asked
        # (one is made per answer, for one of a handful of names: each encoded once)
        raw = _ENCODED.get(asked)
        if raw is None:
            if len(_ENCODED) >= _MEMO:
                _ENCODED.clear()
            raw = _ENCODED[asked] = _encode(asked)
        self._asked_raw = raw
        # (bytes up to the end of a model value already located, the same renamed, where the
        # two differ from: the key's index when the bytes hold the key once, else 0): the
        # chunks of one stream start alike, so the next one starting with the same bytes has
        # its model at the same place.
        self._memo: tuple[bytes, bytes, int] | None = None
        self._events_plan: tuple | None = None  # feed_raw_events' plan for the C pass, per memo

    def feed(self, obj: dict) -> list[dict]:
        """Return ``[obj with model = asked]``."""
        return [restore_response_model(obj, self.asked)]

    def passes(self, raw: bytes, whole: bool = False) -> bool:
        """True when the JSON bytes `raw` (one object, or several side by side) hold no
        ``"model"`` key, however spelled: every object in them passes unchanged."""
        return raw.find(_KEY) < 0 and not _ESCAPED_KEY_CHAR.search(raw)

    def feed_raw(self, raw: bytes, whole: bool = False) -> bytes | None:
        """Return the JSON bytes of `feed`'s result for the object encoded as `raw`: `raw`
        itself when unchanged, else `raw` with only the model's value replaced; None when the
        bytes do not say (see `_model_span`): decode and `feed` instead. Stateless, but for
        a streamed chunk (`whole` False) it remembers where the model was, for the next."""
        memo = self._memo
        if memo is not None and raw[:len(memo[0])] == memo[0]:
            n = len(memo[0])
            if (raw.find(_KEY, n) < 0 and (raw.find(b"\\", n) < 0 or raw.find(b"\\u", n) < 0)
                    and raw.rstrip(_WS)[-1:] == b"}"):
                return raw if memo[1] is memo[0] else memo[1] + raw[n:]
        if whole:  # a whole answer: no chunk follows for the memo to serve
            # (`_locate`'s two steps here: a Python call less on every answer.)
            got = _fused_locate(raw) if _fused_locate is not None else None
            if got is None:
                got = _locate_in_python(raw)
                if got is None or got is _ABSENT:
                    return None if got is None else raw
            start, end = got[0], got[1]
            if raw[start:end + 1] == self._asked_raw:
                return raw
            return raw[:start] + self._asked_raw + raw[end + 1:]
        memo = self._learn(raw)
        if memo is None or memo is _ABSENT:
            return None if memo is None else raw
        return raw if memo[1] is memo[0] else memo[1] + raw[len(memo[0]):]

    def _learn(self, raw: bytes) -> tuple[bytes, bytes, int] | tuple[int, int] | None:
        """Locate the model in the streamed chunk `raw` and remember where (`_memo`); return
        the memo, `_ABSENT` when `raw` names no model (nothing is remembered), or None when
        the bytes do not say (see `_locate`)."""
        if _fused_learn is not None:
            # The usual chunk in one C call (rechat/_fused.c): `_fused_locate`'s case, and the
            # memo below made of it.
            memo = _fused_learn(raw, self._asked_raw)
            if memo is not None:
                self._events_plan = None
                self._memo = memo
                return memo
        return self._learn_in_python(raw)

    def _learn_in_python(self, raw: bytes) -> tuple[bytes, bytes, int] | tuple[int, int] | None:
        """`_learn` without the C call (for callers that have just made it)."""
        got = _locate_in_python(raw)
        if got is None or got is _ABSENT:
            return got
        start, end, cut = got
        head = raw[:end + 1]
        if cut < 0:  # (else `raw`, and so `head`, holds the key once, there)
            cut = head.rfind(_KEY, 0, start)
            if cut < 0 or head.count(_KEY) != 1:
                cut = 0
        self._events_plan = None
        memo = self._memo = (head, head if raw[start:end + 1] == self._asked_raw
                             else raw[:start] + self._asked_raw, cut)
        return memo

    def feed_raw_events(self, events: bytes, count: int) -> bytes | None:
        """`feed_raw` over `count` whole SSE events ``data: X\\n\\n`` side by side, in one go:
        the events with every X renamed, when each X starts with the bytes of a chunk already
        renamed (or of the first X, located then) and holds no other ``"model"``; else None
        (take them one by one). A ``data: [DONE]\\n\\n`` after them is passed on as is."""
        memo = self._memo
        if memo is None:
            # Locate the model in the first event (kept for the rest, and the next pieces).
            if _fused_learn_events is not None:
                # The usual first piece in one C call (rechat/_fused.c): `_learn` over the
                # first event, then the C pass below under the plan made of its memo.
                got = _fused_learn_events(events, count, self._asked_raw, _RULE_TAIL)
                if got is not None:
                    out, self._memo, self._events_plan = got
                    return out
            # The events are one line each: the first LF starts the first blank line (one
            # byte is found with a memchr; two by a general search, 1,300 instructions more).
            # (The C learn, were it built, declined above.)
            end = events.find(b"\n")
            if end < 6 or events[end + 1:end + 2] != b"\n":
                return None
            memo = self._learn_in_python(events[6:end])
            if memo is None or memo is _ABSENT:
                return None
        head, new, cut = memo
        if _fused_events is not None:
            # Event by event in C (rechat/_fused.c), under the rule `raw_rule` states; its
            # plan is made once per memo.
            plan = self._events_plan
            if plan is None:
                plan = self._events_plan = ((), b"data: " + head,
                                            None if new is head else b"data: " + new, _RULE_TAIL)
            return _fused_events(events, count, plan)
        if events[-14:] != b"data: [DONE]\n\n":
            return self._renamed(events, count, head, new, cut)
        got = self._renamed(events[:-14], count, head, new, cut)
        return None if got is None else events if new is head else got + events[-14:]

    @staticmethod
    def _renamed(events: bytes, count: int, head: bytes, new: bytes, cut: int) -> bytes | None:
        # feed_raw_events' Python path, for the events before any [DONE].
        old = b"data: " + head
        # Each blank line but the last is "}\n\n" + `old` and the first event starts with it:
        # every event does, and ends its object (`old` has unescaped quotes: it occurs only
        # where an event starts). One key per event: the one in `old`.
        if (events[:len(old)] != old or events[-3:] != b"}\n\n"
                or (count > 1 and events.count(b"}\n\n" + old) != count - 1)
                or events.count(_KEY) != count * head.count(_KEY)
                or (events.find(b"\\") >= 0 and events.find(b"\\u") >= 0)):
            return None
        if new is head:
            return events
        # The key occurs only in the heads, once each when `cut`: so does the part from it.
        # (A split at it and a join: one scan, where replace scans twice, counting first.)
        return (new[cut:].join(events.split(head[cut:])) if cut
                else events.replace(old, b"data: " + new))

    def raw_rule(self) -> tuple[tuple[bytes, ...], bytes, bytes, tuple[bytes, ...], int] | None:
        """The byte rule of `feed_raw` for the chunks that follow one already renamed.

        ``((), head, new_head, (b'"model"', b"\\\\u"), cut)``: the JSON bytes of an object
        that start with `head` (the bytes up to the end of the model value of a chunk renamed
        before), hold neither ``"model"`` nor ``\\u`` after it and end with ``}`` turn into
        `new_head` followed by the rest, as `feed_raw` gives; `new_head` is `head` itself when
        the name is the one asked for. `cut`: where the model's key starts in `head` when
        `head` holds ``"model"`` once (the two heads differ only from there), else 0. None
        until a chunk has been located. Stateless.
        """
        memo = self._memo
        if memo is None:
            return None
        return (), memo[0], memo[1], _RULE_TAIL, memo[2]

    def end(self) -> list[dict]:
        """Return [] (nothing is held)."""
        return []
