"""Chat completion <-> chunk stream: assemble chunks, synthesize chunks.

Owns the mapping between one ``chat.completion`` object and the sequence of
``chat.completion.chunk`` objects that streams it (OpenAI API reference:
"The chat completion object", "The chat completion chunk object"). Works on
JSON-decoded dicts only: no SSE framing (see rechat.sse), no I/O. Stdlib
only; must not import aiohttp or any other rechat module (hot path).
"""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["assemble", "synthesize", "assemble_text", "synthesize_text"]

# Message fields with their own merge rules; every other delta field is merged
# generically (strings concatenated, dicts merged, lists extended).
_SPECIAL = frozenset(("role", "content", "tool_calls"))


class _Tool:
    __slots__ = ("id", "type", "payload")

    def __init__(self) -> None:
        self.id: Any = None
        self.type: Any = None
        # Sub-object per payload key (normally just "function"):
        # sub-key -> list of string parts, or a non-string value.
        self.payload: dict[str, dict[str, Any]] = {}

    def merge(self, delta: dict) -> None:
        for key, value in delta.items():
            if key == "index" or value is None:
                continue
            if key == "id" or key == "type":
                # First non-empty value wins: some providers repeat the id or
                # type in every delta, and concatenating them would corrupt it.
                if not getattr(self, key):
                    setattr(self, key, value)
            elif isinstance(value, dict):
                sub = self.payload.get(key)
                if sub is None:
                    sub = self.payload[key] = {}
                for name, part in value.items():
                    if part is None:
                        sub.setdefault(name, None)
                    elif name == "name":
                        # Names arrive whole, in the first delta (OpenAI);
                        # repeats from other providers must not be appended.
                        if not sub.get(name):
                            sub[name] = part
                    elif isinstance(part, str):
                        parts = sub.get(name)
                        if isinstance(parts, list):
                            parts.append(part)
                        else:
                            sub[name] = [part]
                    else:
                        sub[name] = part

    def result(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "type": self.type or "function"}
        for key, sub in self.payload.items():
            out[key] = {
                name: "".join(value) if isinstance(value, list) else value
                for name, value in sub.items()
            }
        return out


class _Choice:
    __slots__ = (
        "role",
        "content",
        "strs",
        "other",
        "tools",
        "tool_by_index",
        "finish_reason",
        "lp_seen",
        "lp_content",
        "lp_refusal",
    )

    def __init__(self) -> None:
        self.role: Any = None
        self.content: list[str] | None = None
        # Other message fields in first-seen order: name -> list of string
        # parts, or a merged non-string value, or None if only nulls arrived.
        self.strs: dict[str, Any] = {}
        self.other: dict[str, Any] = {}
        self.tools: list[_Tool] = []
        self.tool_by_index: dict[Any, _Tool] = {}
        self.finish_reason: Any = None
        self.lp_seen = False
        self.lp_content: list | None = None
        self.lp_refusal: list | None = None

    def merge_delta(self, delta: dict) -> None:
        for key, value in delta.items():
            if key == "content":
                if isinstance(value, str):
                    if self.content is None:
                        self.content = [value]
                    else:
                        self.content.append(value)
            elif key == "role":
                # vLLM, llama.cpp and Ollama repeat the role in every chunk;
                # the first one is the message's role.
                if value and self.role is None:
                    self.role = value
            elif key == "tool_calls":
                if value:
                    self._merge_tools(value)
            elif isinstance(value, str):
                parts = self.strs.get(key)
                if isinstance(parts, list):
                    parts.append(value)
                else:
                    self.strs[key] = [value]
            elif value is None:
                self.strs.setdefault(key, None)
            else:
                self.strs.setdefault(key, None)
                self.other[key] = _merge(self.other.get(key), value)

    def _merge_tools(self, deltas: list) -> None:
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            new_id = delta.get("id")
            if index is None:
                # Some OpenAI-compatible servers omit the index: a new id
                # starts a new tool call, anything else continues the last.
                tool = self.tools[-1] if self.tools else None
                if tool is None or (new_id and tool.id and new_id != tool.id):
                    tool = None
            else:
                tool = self.tool_by_index.get(index)
                if tool is not None and new_id and tool.id and new_id != tool.id:
                    # A different id at a used index (seen from providers that
                    # send every call with index 0) is a new tool call.
                    tool = None
            if tool is None:
                tool = _Tool()
                self.tools.append(tool)
                if index is not None:
                    self.tool_by_index[index] = tool
            tool.merge(delta)

    def merge_logprobs(self, logprobs: dict) -> None:
        self.lp_seen = True
        content = logprobs.get("content")
        if content:
            if self.lp_content is None:
                self.lp_content = list(content)
            else:
                self.lp_content.extend(content)
        elif content is not None and self.lp_content is None:
            self.lp_content = []
        refusal = logprobs.get("refusal")
        if refusal:
            if self.lp_refusal is None:
                self.lp_refusal = list(refusal)
            else:
                self.lp_refusal.extend(refusal)
        elif refusal is not None and self.lp_refusal is None:
            self.lp_refusal = []

    def result(self, index: Any) -> dict:
        message: dict[str, Any] = {
            "role": self.role,
            "content": None if self.content is None else "".join(self.content),
        }
        other = self.other
        for key, value in self.strs.items():
            if isinstance(value, list):
                message[key] = "".join(value)
            elif key in other:
                message[key] = other[key]
            else:
                message[key] = None
        if self.tools:
            message["tool_calls"] = [tool.result() for tool in self.tools]
        logprobs = None
        if self.lp_seen:
            logprobs = {"content": self.lp_content, "refusal": self.lp_refusal}
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }


def _merge(acc: Any, value: Any) -> Any:
    # Rules of the OpenAI SDK's accumulate_delta, minus adding numbers (a
    # repeated number such as audio.expires_at is a value, not an increment).
    if acc is None:
        if isinstance(value, dict):
            return _merge({}, value)
        if isinstance(value, list):
            return list(value)
        return value
    if value is None:
        return acc
    if isinstance(acc, str) and isinstance(value, str):
        return acc + value
    if isinstance(acc, dict) and isinstance(value, dict):
        for key, item in value.items():
            acc[key] = _merge(acc.get(key), item)
        return acc
    if isinstance(acc, list) and isinstance(value, list):
        acc.extend(value)
        return acc
    return value


def _ordered(choices: dict) -> list:
    try:
        return sorted(choices)
    except TypeError:  # a provider sent a non-integer index; keep arrival order
        return list(choices)


_TOP = ("id", "created", "model")
_TOP_OPTIONAL = ("service_tier", "system_fingerprint")


def assemble(chunks: list[dict]) -> dict:
    """Merge ``chat.completion.chunk`` objects into one ``chat.completion``.

    ``chunks`` are JSON-decoded chunk objects in stream order, without the
    ``[DONE]`` sentinel. Follows the OpenAI SDK's stream accumulator
    (openai.lib.streaming.chat, ``accumulate_delta``), made robust to what
    OpenAI-compatible servers send (vLLM, llama.cpp, Ollama): chunks with
    ``choices: []``, missing or null ``delta``, ``role`` in every chunk,
    ``content: null``, tool call deltas without ``index``.

    Returns ``{id, object: "chat.completion", created, model, choices,
    usage?, service_tier?, system_fingerprint?}``: id/created/model are the
    first non-null values (None if never sent); service_tier and
    system_fingerprint are present when some chunk had the key; usage is the
    last non-null ``usage`` and is omitted if none came. Other top-level
    chunk fields (e.g. OpenAI's per-chunk ``obfuscation``) are dropped.

    Choices are ordered by ``index``; each is ``{index, message, logprobs,
    finish_reason}``. ``message`` holds role, content (string deltas
    concatenated; None if no string content delta arrived), then every other
    delta field in first-seen order (strings such as ``refusal``,
    ``reasoning_content`` or ``reasoning`` concatenated; a field that only
    ever came as null is None), then ``tool_calls`` if any tool call delta
    came: merged by index, id/type/function.name from the first delta that
    has them, function.arguments concatenated, no ``index`` key.
    ``finish_reason`` is the last non-null one; ``logprobs`` is
    ``{content, refusal}`` with the token lists concatenated, or None.
    Raises nothing on odd but well-typed input; non-dict chunks raise
    TypeError/AttributeError.
    """
    top: dict[str, Any] = {"id": None, "created": None, "model": None}
    optional: dict[str, Any] = {}
    usage = None
    choices: dict[Any, _Choice] = {}
    for chunk in chunks:
        for key in _TOP:
            if top[key] is None:
                value = chunk.get(key)
                if value is not None:
                    top[key] = value
        for key in _TOP_OPTIONAL:
            if key in chunk and optional.get(key) is None:
                optional[key] = chunk[key]
        chunk_usage = chunk.get("usage")
        if chunk_usage is not None:
            usage = chunk_usage
        for entry in chunk.get("choices") or ():
            index = entry.get("index", 0)
            state = choices.get(index)
            if state is None:
                state = choices[index] = _Choice()
            delta = entry.get("delta")
            if delta:
                state.merge_delta(delta)
            finish_reason = entry.get("finish_reason")
            if finish_reason is not None:
                state.finish_reason = finish_reason
            logprobs = entry.get("logprobs")
            if logprobs:
                state.merge_logprobs(logprobs)

    out: dict[str, Any] = {
        "id": top["id"],
        "object": "chat.completion",
        "created": top["created"],
        "model": top["model"],
        "choices": [choices[index].result(index) for index in _ordered(choices)],
    }
    if usage is not None:
        out["usage"] = usage
    for key in _TOP_OPTIONAL:
        if key in optional:
            out[key] = optional[key]
    return out


# Characters that attach to the one before them: cutting before one would
# split a user-perceived character (combining marks, variation selectors,
# emoji skin-tone modifiers, emoji tag characters); a ZWJ joins both sides.
_ZWJ = "\u200d"


def _attaches(ch: str) -> bool:
    if ch == _ZWJ or "\U0001f3fb" <= ch <= "\U0001f3ff" or "\U000e0020" <= ch <= "\U000e007f":
        return True
    return unicodedata.category(ch) in ("Mn", "Mc", "Me")


def _split(text: str, size: int) -> list[str]:
    """Split ``text`` into pieces of about ``size`` characters.

    Cuts just before a space or newline so that words stay whole and pieces
    look like tokens (" word"); a word longer than ``size`` extends its piece
    up to 4 * size characters, and beyond that is hard-cut, moved back so as
    not to split a combining sequence. ``"".join(result) == text``.
    """
    n = len(text)
    if n <= size:
        return [text] if text else []
    pieces = []
    start = 0
    rfind = text.rfind
    find = text.find
    while n - start > size:
        hi = start + size
        cut = max(rfind(" ", start + 1, hi + 1), rfind("\n", start + 1, hi + 1))
        if cut < 0:
            limit = min(n, start + 4 * size)
            a = find(" ", hi, limit)
            b = find("\n", hi, limit)
            cut = a if b < 0 else b if a < 0 else min(a, b)
            if cut < 0:
                cut = hi
                while cut > start + 1 and (_attaches(text[cut]) or text[cut - 1] == _ZWJ):
                    cut -= 1
                if cut == start + 1 and (_attaches(text[cut]) or text[cut - 1] == _ZWJ):
                    cut = hi  # one giant cluster: give up on keeping it whole
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def synthesize(completion: dict, include_usage: bool = False, piece_chars: int = 24,
               interleave: bool = False) -> list[dict]:
    """Produce a valid ``chat.completion.chunk`` sequence for a completion.

    The inverse of ``assemble``: for any completion whose messages hold
    role, content (str or None), string fields such as ``reasoning_content``
    and ``refusal``, null fields, and ``tool_calls``,
    ``assemble(synthesize(c, include_usage=True))`` gives back the same
    choices and usage. The [DONE] sentinel is not included.

    For each choice in order: a role chunk (``delta: {"role": "assistant",
    "content": ""}``; content is None instead when the message's content is
    None, as OpenAI streams tool calls, and message fields that are null ride
    along, as OpenAI's ``"refusal": null``), then deltas for every other
    string field except content and refusal (reasoning first, as reasoning
    models stream it), then content, then refusal, each in pieces of about
    ``piece_chars`` characters (see _split), then any non-string field whole
    in one delta, then per tool call one delta with index, id, type,
    ``function: {name, arguments: ""}`` followed by the arguments in pieces,
    and finally a finish chunk (``delta: {}``, ``finish_reason``, and the
    choice's ``logprobs`` if it had any). If ``include_usage`` and the
    completion has usage, one last chunk has ``choices: []`` and ``usage``;
    with ``include_usage`` every other chunk carries ``"usage": null``, as
    OpenAI does with ``stream_options.include_usage``.

    Every chunk has id, object ``"chat.completion.chunk"``, created, model,
    service_tier and system_fingerprint when the completion has those keys,
    and choices of one ``{index, delta, logprobs: None, finish_reason:
    None}`` entry. Choices follow one another; with ``interleave`` their
    chunks alternate (one chunk of each choice in turn, as OpenAI streams
    ``n > 1``). Raises ValueError if ``piece_chars < 1`` and TypeError if a
    message's content is neither str nor None.
    """
    if piece_chars < 1:
        raise ValueError("piece_chars must be at least 1")
    head: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for key in _TOP_OPTIONAL:
        if key in completion:
            head[key] = completion[key]

    per_choice: list[list[dict]] = []

    def emit(index: Any, delta: dict, finish_reason: Any = None, logprobs: Any = None) -> None:
        chunk = dict(head)
        chunk["choices"] = [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ]
        if include_usage:
            chunk["usage"] = None
        per_choice[-1].append(chunk)

    for position, choice in enumerate(completion.get("choices") or ()):
        per_choice.append([])
        index = choice.get("index", position)
        message = choice.get("message") or {}
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message content must be str or None, not {type(content).__name__}")

        first: dict[str, Any] = {
            "role": message.get("role") or "assistant",
            "content": None if content is None else "",
        }
        strings: list[str] = []
        whole: list[str] = []
        for key, value in message.items():
            if key in _SPECIAL:
                continue
            if value is None:
                first[key] = None
            elif isinstance(value, str):
                if key != "refusal":
                    strings.append(key)
            else:
                whole.append(key)
        emit(index, first)

        for key in strings:
            for piece in _split(message[key], piece_chars) or [""]:
                emit(index, {key: piece})
        if content:
            for piece in _split(content, piece_chars):
                emit(index, {"content": piece})
        refusal = message.get("refusal")
        if isinstance(refusal, str):
            for piece in _split(refusal, piece_chars) or [""]:
                emit(index, {"refusal": piece})
        for key in whole:
            emit(index, {key: message[key]})

        for tool_index, call in enumerate(message.get("tool_calls") or ()):
            delta_call: dict[str, Any] = {
                "index": tool_index,
                "id": call.get("id"),
                "type": call.get("type", "function"),
            }
            rest: list[tuple[str, str, str]] = []
            for key, value in call.items():
                if key in ("id", "type", "index") or not isinstance(value, dict):
                    continue
                opening = {}
                for name, part in value.items():
                    if isinstance(part, str) and name != "name":
                        opening[name] = ""
                        if part:
                            rest.append((key, name, part))
                    else:
                        opening[name] = part
                delta_call[key] = opening
            emit(index, {"tool_calls": [delta_call]})
            for key, name, part in rest:
                for piece in _split(part, piece_chars):
                    emit(index, {"tool_calls": [{"index": tool_index, key: {name: piece}}]})

        emit(index, {}, choice.get("finish_reason"), choice.get("logprobs"))

    chunks = _interleave(per_choice) if interleave else [c for cs in per_choice for c in cs]
    usage = completion.get("usage")
    if include_usage and usage is not None:
        chunk = dict(head)
        chunk["choices"] = []
        chunk["usage"] = usage
        chunks.append(chunk)
    return chunks


def _interleave(lists: list[list[dict]]) -> list[dict]:
    # One item of each list in turn, until all are used up.
    out: list[dict] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


# ---------------------------------------------------------------------------------------------
# Legacy completions (``/v1/completions``): ``text_completion`` objects, streamed as
# ``text_completion`` chunks whose choices carry pieces of ``text``.

_LOGPROB_LISTS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def assemble_text(chunks: list[dict]) -> dict:
    """Merge streamed ``text_completion`` chunks into one ``text_completion`` object.

    ``chunks`` are JSON-decoded chunks in stream order, without ``[DONE]``. id, created and
    model are the first non-null values; ``system_fingerprint`` is kept when a chunk has it;
    usage is the last non-null ``usage`` (omitted if none came). Choices are ordered by
    ``index``, each ``{text, index, logprobs, finish_reason}``: texts concatenated, the last
    non-null finish_reason, logprobs None or its four lists (tokens, token_logprobs,
    top_logprobs, text_offset) concatenated. Non-dict chunks raise TypeError/AttributeError.
    """
    top: dict[str, Any] = {"id": None, "created": None, "model": None}
    optional: dict[str, Any] = {}
    usage = None
    texts: dict[Any, list[str]] = {}
    finish: dict[Any, Any] = {}
    logprobs: dict[Any, Any] = {}
    for chunk in chunks:
        for key in _TOP:
            if top[key] is None and chunk.get(key) is not None:
                top[key] = chunk[key]
        if "system_fingerprint" in chunk and optional.get("system_fingerprint") is None:
            optional["system_fingerprint"] = chunk["system_fingerprint"]
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for entry in chunk.get("choices") or ():
            index = entry.get("index", 0)
            parts = texts.setdefault(index, [])
            if isinstance(entry.get("text"), str):
                parts.append(entry["text"])
            if entry.get("finish_reason") is not None:
                finish[index] = entry["finish_reason"]
            lp = entry.get("logprobs")
            if isinstance(lp, dict):
                acc = logprobs.get(index)
                if acc is None:
                    logprobs[index] = {k: (list(v) if isinstance(v, list) else v)
                                       for k, v in lp.items()}
                else:
                    for k, v in lp.items():
                        if isinstance(v, list) and isinstance(acc.get(k), list):
                            acc[k].extend(v)
                        elif k not in acc or acc[k] is None:
                            acc[k] = v
    out: dict[str, Any] = {"id": top["id"], "object": "text_completion", "created": top["created"],
                           "model": top["model"]}
    out["choices"] = [{"text": "".join(texts[i]), "index": i, "logprobs": logprobs.get(i),
                       "finish_reason": finish.get(i)} for i in _ordered(texts)]
    if usage is not None:
        out["usage"] = usage
    out.update(optional)
    return out


def synthesize_text(completion: dict, include_usage: bool = False, piece_chars: int = 24) -> list[dict]:
    """Produce a ``text_completion`` chunk sequence for a legacy completion; no ``[DONE]``.

    The inverse of ``assemble_text``: each choice's text in pieces of about ``piece_chars``
    characters (see _split), then one chunk with empty text, its ``finish_reason`` and
    ``logprobs``; the choices' chunks alternate. With ``include_usage``, every chunk has
    ``"usage": null`` and a last chunk with ``choices: []`` carries the usage, as OpenAI
    streams with ``stream_options.include_usage``. Raises ValueError if ``piece_chars < 1``.
    """
    if piece_chars < 1:
        raise ValueError("piece_chars must be at least 1")
    head: dict[str, Any] = {"id": completion.get("id"), "object": "text_completion",
                            "created": completion.get("created"), "model": completion.get("model")}
    if "system_fingerprint" in completion:
        head["system_fingerprint"] = completion["system_fingerprint"]
    per_choice: list[list[dict]] = []

    def chunk(entry: dict) -> dict:
        c = {**head, "choices": [entry]}
        if include_usage:
            c["usage"] = None
        return c

    for position, choice in enumerate(completion.get("choices") or ()):
        index = choice.get("index", position)
        text = choice.get("text")
        pieces = _split(text, piece_chars) if isinstance(text, str) else []
        out = [chunk({"text": p, "index": index, "logprobs": None, "finish_reason": None})
               for p in pieces]
        out.append(chunk({"text": "", "index": index, "logprobs": choice.get("logprobs"),
                          "finish_reason": choice.get("finish_reason")}))
        per_choice.append(out)
    chunks = _interleave(per_choice)
    if include_usage and completion.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return chunks
