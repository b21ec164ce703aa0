"""Readable forms of three more endpoints: Responses, legacy completions and embeddings.

Owns which sections an exchange of ``POST /v1/responses``, ``POST /v1/completions`` or
``POST /v1/embeddings`` becomes in a session file and how they read back (docs/format.md,
"Responses", "Completions", "Embeddings"), and what a recorded or hand-written answer of these
forms replies: its JSON object, or its SSE events, recorded or synthesised. Works on a small
model of the file (`Turn`, `Section`, `Block`); sessionfile.py writes and reads its markdown.
Pure: no I/O, no markdown, no aiohttp; imports completion, responses, sse and fingerprint.

The rule of every form: a section shows what people read (texts, names, the ids that link
turns); its hidden `rechat:fields` comment holds the rest of its item (ids, statuses,
annotations), so that reading gives the exact item back; the turn's `rechat:response` comment
holds the response object less what the sections show. `skeleton` and `merge` do this for any
JSON value: ``merge(skeleton(value, shown), shown) == value`` whenever `shown` is a part of
`value`, and a hand edit of the shown part wins. What a form cannot show exactly is caught when
recording (`capture` then `matches`), and such an exchange is kept in the generic form.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from rechat import completion as cc
from rechat import responses as rs
from rechat.fingerprint import VOLATILE_FIELDS, digest
from rechat.sse import DONE, encode_event

FORMS = ("responses", "completion", "embedding")
PATHS = {"/v1/responses": "responses", "/v1/completions": "completion",
         "/v1/embeddings": "embedding"}

# Section words of the Responses form that have a meaning of their own; an item of another
# type is a `### TYPE` section holding its JSON.
ROLES = ("user", "assistant", "system", "developer")
_ITEM_WORDS = ("function_call", "function_call_output", "reasoning")
_RESERVED = (*ROLES, *_ITEM_WORDS, "input", "instructions", "item")
# Content part types whose text a block shows: type -> the key holding the text.
TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal",
              "summary_text": "text", "reasoning_text": "text", "text": "text"}
# For the forms whose section words tell the side: word -> "request" | "response".
SIDES = {"completion": {"prompt": "request", "completion": "response"},
         "embedding": {"input": "request", "embeddings": "response"}}

_BARE = re.compile(r"[A-Za-z0-9_./:@+-]+\Z")
_WORD = re.compile(r"[a-z_][a-z0-9_]*\Z")
_ATTR_KEY = re.compile(r"[A-Za-z_][\w.-]*\Z")
_B64_LINE = 76


class FormError(ValueError):
    """A section that does not read as its form says; `line` is 1-based."""

    def __init__(self, line: int, msg: str) -> None:
        super().__init__(msg)
        self.line, self.msg = line, msg


# ---------------------------------------------------------------------------------------------
# The model of a form file


@dataclass(slots=True)
class Block:
    """One block of a section: a `<blockquote>` (`info` None) or a fenced code block.

    `label` is the word of the `#### LABEL` heading above it (None: unlabelled), `words` and
    `attrs` the rest of that heading; `text` the block's exact text; `info` a fence's info
    string (``json``, ``base64``); `line` is 1-based (0 when rendering).
    """

    text: str
    label: str | None = None
    words: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    info: str | None = None
    line: int = 0


@dataclass(slots=True)
class Section:
    """One `### WORD WORDS ATTRS` section: its hidden `fields`, then its blocks."""

    word: str
    words: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    fields: dict | None = None
    blocks: list[Block] = field(default_factory=list)
    line: int = 0


@dataclass(slots=True)
class Turn:
    """One exchange: `## request ATTRS`, its sections, `## response ATTRS`, its sections, and
    the hidden `rechat:response` comment (`meta`)."""

    request: list[Section] = field(default_factory=list)
    response: list[Section] = field(default_factory=list)
    request_attrs: dict = field(default_factory=dict)
    response_attrs: dict = field(default_factory=dict)
    meta: dict | None = None
    line: int = 0
    answered: bool = False  # a `## response` heading was read


def form_of(method: str, path: str) -> str | None:
    """Return the form of an endpoint (``"responses"``, ...), or None for the generic form."""
    return PATHS.get(path) if method == "POST" else None


def title_of(form: str, request: dict) -> str:
    """Return a few words naming a request, for a new session's file name."""
    key = {"responses": "input", "completion": "prompt", "embedding": "input"}[form]
    value = request.get(key)
    if isinstance(value, list) and value:
        first = value[0] if form != "responses" else next(
            (i for i in value if isinstance(i, dict) and i.get("role") == "user"), value[0])
        value = first.get("content") if isinstance(first, dict) else first
        if isinstance(value, list):
            value = next((p.get("text") for p in value if isinstance(p, dict)
                          and isinstance(p.get("text"), str)), "")
    text = value if isinstance(value, str) else ""
    return text if form == "responses" else f"{form} {text}"


# ---------------------------------------------------------------------------------------------
# Skeletons: what a section does not show


class _Same:
    __repr__ = lambda self: "SAME"  # noqa: E731


SAME = _Same()


def _scalar_same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def same(a: Any, b: Any) -> bool:
    """True when two JSON values are equal with their types (1 is not 1.0 nor True)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return _scalar_same(a, b)


def skeleton(value: Any, shown: Any) -> Any:
    """Return what of `value` is not in `shown`, or `SAME` when `shown` holds all of it.

    Dicts lose the keys `shown` holds whole; lists of the same length keep one entry per item
    (``{}`` for an item shown whole), so that ``merge(skeleton(v, s), s) == v``.
    """
    if isinstance(value, dict) and isinstance(shown, dict):
        out = {}
        for k, v in value.items():
            if k not in shown:
                out[k] = v
            else:
                d = skeleton(v, shown[k])
                if d is not SAME:
                    out[k] = d
        return out or SAME
    if isinstance(value, list) and isinstance(shown, list) and len(value) == len(shown):
        ds = [skeleton(v, s) for v, s in zip(value, shown)]
        if all(d is SAME for d in ds):
            return SAME
        return [{} if d is SAME else d for d in ds]
    return SAME if same(value, shown) else value


def merge(skel: Any, shown: Any) -> Any:
    """Return `shown` completed by `skel`: dicts merged key by key, lists item by item.

    Whatever `shown` holds wins, and a shown list keeps its own length (a block deleted by hand
    is gone); keys only in `skel` come first, in their order.
    """
    if isinstance(skel, dict) and isinstance(shown, dict):
        out = dict(skel)
        for k, v in shown.items():
            out[k] = merge(skel[k], v) if k in skel else v
        return out
    if isinstance(skel, list) and isinstance(shown, list):
        return [merge(skel[i], v) if i < len(skel) else v for i, v in enumerate(shown)]
    return shown


def _top_skeleton(obj: dict, shown: dict) -> dict:
    # A response object less what the sections show; a list shown whole stays as [] so the
    # merged object keeps its key order.
    out = {}
    for k, v in obj.items():
        if k not in shown:
            out[k] = v
            continue
        d = skeleton(v, shown[k])
        if d is not SAME:
            out[k] = d
        elif isinstance(v, list):
            out[k] = []
    return out


# ---------------------------------------------------------------------------------------------
# Blocks


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _value_block(value: Any, label: str | None = None, attrs: dict | None = None) -> Block:
    # A string is a <blockquote>; any other JSON value a ```json block.
    if isinstance(value, str):
        return Block(value, label, [], dict(attrs or {}))
    return Block(_dumps(value), label, [], dict(attrs or {}), info="json")


def block_value(b: Block) -> Any:
    """Return a block's value: the text of a `<blockquote>`, the value of a ```json block."""
    if b.info is None:
        return b.text
    if b.info == "json":
        try:
            return json.loads(b.text)
        except ValueError as e:
            raise FormError(b.line, f"a ```json block does not hold JSON: {e}") from None
    raise FormError(b.line, f"a ```{b.info} block cannot be read here (expected a <blockquote> "
                            "or a ```json block)")


def _one_block(sec: Section) -> Block | None:
    if not sec.blocks:
        return None
    if len(sec.blocks) > 1 or sec.blocks[0].label is not None:
        b = sec.blocks[1] if len(sec.blocks) > 1 else sec.blocks[0]
        raise FormError(b.line, f"### {sec.word} takes one unlabelled block")
    return sec.blocks[0]


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) and not (isinstance(v, float) and v != v)


# ---------------------------------------------------------------------------------------------
# Responses: items <-> sections


def _part(part: Any, side: str, first: bool) -> tuple[Block, Any]:
    """Return the block showing one content part, and the part as that block reads back."""
    if isinstance(part, dict):
        t = part.get("type")
        key = TEXT_PARTS.get(t) if isinstance(t, str) else None
        if key and isinstance(part.get(key), str):
            label = None if side == "response" and t == "output_text" and first else t
            return Block(part[key], label), {"type": t, key: part[key]}
        if t == "input_image" and isinstance(part.get("image_url"), str):
            attrs = {k: v for k, v in part.items() if k not in ("type", "image_url")
                     and _ATTR_KEY.match(k) and _scalar(v) and not (isinstance(v, str) and "\n" in v)}
            return (Block(part["image_url"], "input_image", [], attrs),
                    {"type": t, "image_url": part["image_url"], **attrs})
    return Block(_dumps(part), "part", info="json"), part


def _message_section(item: dict, side: str) -> tuple[Section, dict]:
    shown: dict = {"role": item["role"]}
    blocks: list[Block] = []
    content = item.get("content")
    if isinstance(content, str):
        blocks.append(Block(content, "content" if side == "response" else None))
        shown["content"] = content
    elif isinstance(content, list) and content:
        parts = []
        for i, p in enumerate(content):
            b, v = _part(p, side, i == 0)
            blocks.append(b)
            parts.append(v)
        shown["content"] = parts
    return Section(item["role"], blocks=blocks), shown


def item_section(item: Any, side: str) -> Section:
    """Return the section of one input (`side` "request") or output ("response") item.

    A message is `### ROLE` with its content (a string, or one block per part: `#### TYPE`
    for text parts, the first `output_text` of an answer unlabelled); a function call
    `### function_call NAME call_id=ID` with its arguments; a function call's output
    `### function_call_output call_id=ID`; reasoning `### reasoning` with `#### summary_text` and
    `#### reasoning_text` blocks; an item of any other type `### TYPE` with the rest of the item
    as a ```json block, and anything else `### item` with the whole item. The section's
    `fields` hold what it does not show.
    """
    t = item.get("type") if isinstance(item, dict) else None
    shown: Any
    if (isinstance(item, dict) and item.get("role") in ROLES
            and item.get("type", "message") == "message"):
        sec, shown = _message_section(item, side)
    elif (t == "function_call" and isinstance(item.get("name"), str)
          and _BARE.match(item["name"])):
        attrs = {"call_id": item["call_id"]} if isinstance(item.get("call_id"), str) else {}
        shown = {"type": t, "name": item["name"], **attrs}
        sec = Section(t, [item["name"]], attrs)
        if "arguments" in item:
            sec.blocks.append(_value_block(item["arguments"]))
            shown["arguments"] = item["arguments"]
    elif t == "function_call_output":
        attrs = {"call_id": item["call_id"]} if isinstance(item.get("call_id"), str) else {}
        shown = {"type": t, **attrs}
        sec = Section(t, [], attrs)
        if "output" in item:
            sec.blocks.append(_value_block(item["output"]))
            shown["output"] = item["output"]
    elif t == "reasoning":
        shown = {"type": t}
        sec = Section(t)
        for key, ptype in (("summary", "summary_text"), ("content", "reasoning_text")):
            parts = item.get(key)
            if (isinstance(parts, list) and parts and all(
                    isinstance(p, dict) and p.get("type") == ptype and isinstance(p.get("text"), str)
                    for p in parts)):
                sec.blocks += [Block(p["text"], ptype) for p in parts]
                shown[key] = [{"type": ptype, "text": p["text"]} for p in parts]
    elif isinstance(t, str) and _WORD.match(t) and t not in _RESERVED:
        rest = {k: v for k, v in item.items() if k != "type"}
        sec = Section(t, blocks=[Block(_dumps(rest), info="json")] if rest else [])
        shown = item
    else:
        sec, shown = Section("item", blocks=[Block(_dumps(item), info="json")]), item
    rest = skeleton(item, shown)
    if rest is not SAME:
        sec.fields = rest
    return sec


def _read_parts(sec: Section, side: str) -> tuple[Any, list | None]:
    content: Any = SAME
    parts: list | None = None
    for b in sec.blocks:
        # Unlabelled: the content string of an input message, an output_text part of an answer.
        label = b.label or ("output_text" if side == "response" else "content")
        if label == "content":
            if content is not SAME:
                raise FormError(b.line, f"a second content block in ### {sec.word}; label "
                                        "each part with #### TYPE")
            content = block_value(b)
        elif label in TEXT_PARTS:
            parts = parts if parts is not None else []
            parts.append({"type": label, TEXT_PARTS[label]: block_value(b), **b.attrs})
        elif label == "input_image":
            parts = parts if parts is not None else []
            parts.append({"type": label, "image_url": block_value(b), **b.attrs})
        elif label == "part":
            parts = parts if parts is not None else []
            try:
                parts.append(json.loads(b.text))
            except ValueError as e:
                raise FormError(b.line, f"#### part must hold JSON: {e}") from None
        else:
            raise FormError(b.line, f"unknown block #### {label} in ### {sec.word} (expected "
                                    f"content, part, input_image or one of {', '.join(TEXT_PARTS)})")
        if content is not SAME and parts is not None:
            raise FormError(sec.line, f"### {sec.word} has both a content block and part blocks")
    return content, parts


def read_item(sec: Section, side: str) -> Any:
    """Return the item a section holds (the inverse of `item_section`)."""
    w = sec.word
    if w in ROLES:
        shown: Any = {"role": w, **sec.attrs}
        content, parts = _read_parts(sec, side)
        if parts is not None:
            shown["content"] = parts
        elif content is not SAME:
            shown["content"] = content
    elif w == "function_call":
        if not sec.words:
            raise FormError(sec.line, "### function_call needs the function name: "
                                      "### function_call NAME call_id=ID")
        shown = {"type": w, "name": sec.words[0], **sec.attrs}
        b = _one_block(sec)
        if b is not None:
            shown["arguments"] = block_value(b)
    elif w == "function_call_output":
        shown = {"type": w, **sec.attrs}
        b = _one_block(sec)
        if b is not None:
            shown["output"] = block_value(b)
    elif w == "reasoning":
        shown = {"type": w, **sec.attrs}
        for b in sec.blocks:
            label = b.label or "summary_text"
            key = {"summary_text": "summary", "reasoning_text": "content"}.get(label)
            if key is None:
                raise FormError(b.line, f"unknown block #### {label} in ### reasoning "
                                        "(expected summary_text or reasoning_text)")
            shown.setdefault(key, []).append({"type": label, "text": block_value(b)})
    elif w == "item":
        b = _one_block(sec)
        if b is None:
            raise FormError(sec.line, "### item needs a ```json block holding the item")
        shown = block_value(b)
    else:
        b = _one_block(sec)
        value = block_value(b) if b is not None else {}
        if not isinstance(value, dict):
            raise FormError(b.line if b else sec.line, f"### {w} holds a JSON object")
        shown = {"type": w, **value, **sec.attrs}
    if sec.fields is not None:
        if not isinstance(shown, dict):
            raise FormError(sec.line, "rechat:fields on an item that is not an object")
        return merge(sec.fields, shown)
    return shown


# ---------------------------------------------------------------------------------------------
# Capture: an exchange into a turn (recording)


@dataclass(slots=True)
class Capture:
    """What recording one exchange of a form gives: the front matter's `params`, the `turn`,
    and what it must read back as: `request` (without volatile fields) and `answer` (the
    response object; for a stream, assembled from its events)."""

    params: dict
    turn: Turn
    request: dict
    answer: Any


def _values_sections(word: str, value: Any) -> list[Section]:
    # `### input` / `### prompt`: a string, one section per string of a list, or JSON.
    if isinstance(value, str):
        return [Section(word, blocks=[Block(value)])]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [Section(word, [], {"index": i}, blocks=[Block(v)]) for i, v in enumerate(value)]
    return [Section(word, blocks=[Block(_dumps(value), info="json")])]


def _read_values(secs: list[Section]) -> Any:
    if any("index" in s.attrs for s in secs):
        out = []
        for i, s in enumerate(secs):
            if s.attrs.get("index") != i:
                raise FormError(s.line, f"### {s.word} index={s.attrs.get('index')!r} should be "
                                        f"index={i} (the sections of a list are numbered from 0)")
            b = _one_block(s)
            if b is None or b.info is not None:
                raise FormError(s.line, f"### {s.word} index={i} needs a <blockquote> block")
            out.append(b.text)
        return out
    if len(secs) > 1:
        raise FormError(secs[1].line, f"a second ### {secs[0].word}; number the sections of a "
                                      f"list with index=0, index=1, ...")
    b = _one_block(secs[0])
    if b is None:
        raise FormError(secs[0].line, f"### {secs[0].word} has no block")
    return block_value(b)


def _events(sse: list[str]) -> list[dict]:
    return [json.loads(e) for e in sse if e != "[DONE]"]


def capture(form: str, request: Any, response: Any, events: list[str] | None,
            meta: dict, event_ms: list[float] | None = None) -> Capture | None:
    """Return how an exchange of `form` is written, or None when it has no faithful form.

    `request` is the request's JSON body, `response` the response's JSON body (None when it
    was streamed), `events` the SSE events' data in order (None when not streamed), `meta` the
    hidden response data so far (at, status, ms, headers, request...); the turn's meta adds
    ``stream`` and the response object less what the sections show (``response``, or
    ``completion`` for a legacy completion), or the events (``sse``).
    """
    if not isinstance(request, dict) or "rechat" in request:
        return None
    clean = {k: v for k, v in request.items() if k not in VOLATILE_FIELDS}
    meta = dict(meta)
    try:
        answer = (response if events is None else
                  rs.assemble(_events(events)) if form == "responses" else
                  cc.assemble_text(_events(events)) if form == "completion" else None)
    except (ValueError, TypeError, AttributeError, KeyError):
        return None
    if not isinstance(answer, dict):
        return None
    turn = Turn()
    if form == "responses":
        params = {k: v for k, v in clean.items()
                  if k not in ("input", "instructions", "previous_response_id")}
        if "previous_response_id" in clean:
            if not _scalar(clean["previous_response_id"]) and clean["previous_response_id"] is not None:
                return None
            turn.request_attrs["previous_response_id"] = clean["previous_response_id"]
        if "instructions" in clean:
            turn.request.append(Section("instructions", blocks=[_value_block(clean["instructions"])]))
        if "input" in clean:
            inp = clean["input"]
            turn.request += ([item_section(i, "request") for i in inp]
                             if isinstance(inp, list) and inp else
                             [Section("input", blocks=[_value_block(inp)])])
        output = answer.get("output")
        if not isinstance(output, list):
            return None
        items = output
        turn.response = [item_section(i, "response") for i in items]
        shown: dict = {"output": items}
        if isinstance(answer.get("id"), str):
            turn.response_attrs["id"] = answer["id"]
            shown["id"] = answer["id"]
        key = "response"
    elif form == "completion":
        params = {k: v for k, v in clean.items() if k != "prompt"}
        if "prompt" in clean:
            turn.request = _values_sections("prompt", clean["prompt"])
        choices = answer.get("choices")
        if not (isinstance(choices, list) and choices and all(
                isinstance(c, dict) and "text" in c for c in choices)):
            return None
        many = len(choices) > 1
        vis = []
        for c in choices:
            attrs = {"index": c["index"]} if many and type(c.get("index")) is int else {}
            turn.response.append(Section("completion", [], attrs, blocks=[_value_block(c["text"])]))
            vis.append({"text": c["text"], **attrs})
        shown = {"choices": vis}
        key = "completion"
    else:
        if events is not None:
            return None
        params = {k: v for k, v in clean.items() if k != "input"}
        if "input" in clean:
            turn.request = _values_sections("input", clean["input"])
        data = answer.get("data")
        if not (isinstance(data, list) and data and all(
                isinstance(d, dict) and "embedding" in d for d in data)):
            return None
        values = [d["embedding"] for d in data]
        enc = encode_vectors(values)
        if enc is not None:
            attrs, text = enc
            block = Block(text, info="base64")
        else:
            attrs, block = {}, Block(_dumps(values), info="json")
        turn.response.append(Section("embeddings", [], attrs, blocks=[block]))
        shown = {"data": [{"object": "embedding", "index": i, "embedding": v}
                          for i, v in enumerate(values)]}
        key = "response"
    meta["stream"] = events is not None
    if events is None:
        meta[key] = _top_skeleton(answer, shown)
    else:
        meta["sse"] = list(events)
        if event_ms:
            meta["sse_ms"] = [round(t, 1) for t in event_ms]
    turn.meta = meta
    return Capture(params, turn, clean, answer)


# ---------------------------------------------------------------------------------------------
# Read: a turn into a request and an answer


def read_turn(form: str, params: dict, turn: Turn) -> tuple[dict, Any] | None:
    """Return (request, answer) of one turn, or None when the turn has no answer yet.

    `request` is the JSON request without volatile fields (the front matter's `params` and the
    turn's sections); `answer` the response object as the file shows it: edits win over the
    recording, and what a hand-written answer leaves out is filled in by `reply_object`. For
    embeddings the answer is an `Embeddings`. Raises FormError.
    """
    meta = turn.meta or {}
    answered = turn.answered or bool(turn.response) or turn.meta is not None
    request = dict(params)
    sse = meta.get("sse") if answered else None
    if sse is not None and not (isinstance(sse, list) and all(isinstance(e, str) for e in sse)):
        raise FormError(turn.line, "rechat:response `sse` must be a list of strings")
    try:
        recorded = (None if sse is None else
                    rs.assemble(_events(sse)) if form == "responses" else
                    cc.assemble_text(_events(sse)) if form == "completion" else None)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise FormError(turn.line, f"rechat:response `sse` events do not assemble: {e}") from None
    if form == "responses":
        if "previous_response_id" in turn.request_attrs:
            request["previous_response_id"] = turn.request_attrs["previous_response_id"]
        items = []
        for sec in turn.request:
            if sec.word == "instructions":
                b = _one_block(sec)
                if b is None:
                    raise FormError(sec.line, "### instructions has no block")
                request["instructions"] = block_value(b)
            elif sec.word == "input":
                b = _one_block(sec)
                if b is None:
                    raise FormError(sec.line, "### input has no block")
                request["input"] = block_value(b)
            else:
                items.append(read_item(sec, "request"))
        if items:
            if "input" in request:
                raise FormError(turn.request[0].line, "a turn has both ### input and input items")
            request["input"] = items
        if not answered:
            return None
        base = recorded if recorded is not None else meta.get("response", {})
        if not isinstance(base, dict):
            raise FormError(turn.line, "rechat:response `response` must be an object")
        shown: dict = {"output": [read_item(s, "response") for s in turn.response]}
        answer = merge(base, shown)
        if "id" in turn.response_attrs:
            answer = {"id": turn.response_attrs["id"],
                      **{k: v for k, v in answer.items() if k != "id"}}
        return request, answer
    key = "prompt" if form == "completion" else "input"
    if turn.request:
        request[key] = _read_values(turn.request)
    if not answered:
        return None
    if form == "completion":
        base = recorded if recorded is not None else meta.get("completion", {})
        if not isinstance(base, dict):
            raise FormError(turn.line, "rechat:response `completion` must be an object")
        choices = []
        for sec in turn.response:
            b = _one_block(sec)
            choices.append({"text": block_value(b) if b is not None else "", **sec.attrs})
        return request, merge(base, {"choices": choices}) if choices else base
    base = meta.get("response", {})
    if not isinstance(base, dict):
        raise FormError(turn.line, "rechat:response `response` must be an object")
    vectors: Vectors | list | None = None
    if len(turn.response) > 1:
        raise FormError(turn.response[1].line, "a second ### embeddings in one turn")
    for sec in turn.response:
        b = _one_block(sec)
        if b is None:
            raise FormError(sec.line, "### embeddings has no block")
        if b.info == "base64":
            vectors = Vectors.read(sec.attrs, b.text, sec.line)
        else:
            value = block_value(b)
            if not isinstance(value, list):
                raise FormError(b.line, "### embeddings holds a ```base64 block or a ```json list")
            vectors = value
    return request, Embeddings(base, vectors)


def matches(form: str, request: dict, answer: Any, cap: Capture) -> bool:
    """True when what a turn read back as (`request`, `answer`) is what `cap` recorded."""
    if not same(request, cap.request):
        return False
    if form == "embedding":
        return isinstance(answer, Embeddings) and same(answer.object(), cap.answer)
    return same(answer, cap.answer)


# ---------------------------------------------------------------------------------------------
# Embeddings: vectors kept exactly and compactly


def encode_vectors(values: list) -> tuple[dict, str] | None:
    """Return (heading attrs, base64 text) for a list of embedding vectors, or None.

    Float vectors (every number a JSON float) are packed as little-endian float32 when every
    value survives float32 exactly, else float64; base64 vectors (``encoding_format:
    base64``) are kept as their bytes. All vectors must have the same length. The text is the
    concatenated bytes in base64, 76 characters a line. None: no compact exact form.
    """
    if not values:
        return None
    if all(isinstance(v, str) for v in values):
        raws = []
        for v in values:
            try:
                raw = base64.b64decode(v, validate=True)
            except (ValueError, binascii.Error):
                return None
            if base64.b64encode(raw).decode("ascii") != v:
                return None
            raws.append(raw)
        n = len(raws[0])
        if n == 0 or n % 4 or any(len(r) != n for r in raws):
            return None
        attrs = {"count": len(values), "dims": n // 4, "dtype": "float32", "format": "base64"}
        return attrs, _b64_text(b"".join(raws))
    if not all(type(v) is list for v in values):
        return None
    dims = len(values[0])
    if dims == 0 or any(len(v) != dims for v in values):
        return None
    flat = [x for v in values for x in v]
    if not all(type(x) is float for x in flat):
        return None
    packed = array("f", flat)
    dtype = "float32"
    if packed.tolist() != flat:
        packed, dtype = array("d", flat), "float64"
    if sys.byteorder == "big":
        packed.byteswap()
    attrs = {"count": len(values), "dims": dims, "dtype": dtype, "format": "float"}
    return attrs, _b64_text(packed.tobytes())


def _b64_text(raw: bytes) -> str:
    b64 = base64.b64encode(raw).decode("ascii")
    return "\n".join(b64[i:i + _B64_LINE] for i in range(0, len(b64), _B64_LINE))


_SIZES = {"float32": 4, "float64": 8}


class Vectors:
    """Embedding vectors held as base64 text, decoded on first use.

    `count` vectors of `dims` numbers of `dtype` (float32 or float64), replied as JSON numbers
    (`format` "float") or as base64 strings of their bytes ("base64").
    """

    __slots__ = ("count", "dims", "dtype", "format", "_text", "_raw")

    def __init__(self, count: int, dims: int, dtype: str, format: str, text: str) -> None:
        self.count, self.dims, self.dtype, self.format = count, dims, dtype, format
        self._text: str | None = text
        self._raw: bytes | None = None

    @classmethod
    def read(cls, attrs: dict, text: str, line: int) -> "Vectors":
        """Check a `### embeddings` heading and the size of its block; decode nothing yet."""
        count, dims = attrs.get("count"), attrs.get("dims")
        dtype, fmt = attrs.get("dtype", "float32"), attrs.get("format", "float")
        if type(count) is not int or type(dims) is not int or count < 1 or dims < 1:
            raise FormError(line, "### embeddings needs count=N dims=D (positive integers)")
        if dtype not in _SIZES or fmt not in ("float", "base64") or (
                fmt == "base64" and dtype != "float32"):
            raise FormError(line, "### embeddings: dtype is float32 or float64, format float or "
                                  "base64 (base64 vectors are float32)")
        size = count * dims * _SIZES[dtype]
        chars = len(text) - text.count("\n")
        if chars != 4 * ((size + 2) // 3):
            raise FormError(line + 2, f"the ```base64 block holds {chars} base64 characters; "
                                      f"{count} vectors of {dims} {dtype} need {4 * ((size + 2) // 3)}")
        return cls(count, dims, dtype, fmt, text)

    def raw(self) -> bytes:
        """The vectors' bytes, little-endian, one after the other. Raises ValueError."""
        if self._raw is None:
            raw = binascii.a2b_base64(self._text or "")
            if len(raw) != self.count * self.dims * _SIZES[self.dtype]:
                raise ValueError("embedding vectors block does not decode to its size")
            self._raw, self._text = raw, None
        return self._raw

    def values(self) -> list:
        """The vectors as the JSON answer holds them: lists of floats, or base64 strings."""
        raw = self.raw()
        n = self.dims * _SIZES[self.dtype]
        if self.format == "base64":
            return [base64.b64encode(raw[i:i + n]).decode("ascii") for i in range(0, len(raw), n)]
        a = array("f" if self.dtype == "float32" else "d")
        a.frombytes(raw)
        if sys.byteorder == "big":
            a.byteswap()
        flat = a.tolist()
        return [flat[i:i + self.dims] for i in range(0, len(flat), self.dims)]


@dataclass(slots=True)
class Embeddings:
    """An embeddings answer: the response object less its vectors (`base`), and the vectors."""

    base: dict
    vectors: Vectors | list | None

    def object(self) -> dict:
        """Return the response object with its vectors, as it was recorded."""
        if self.vectors is None:
            return copy.deepcopy(self.base)
        values = self.vectors.values() if isinstance(self.vectors, Vectors) else self.vectors
        shown = {"data": [{"object": "embedding", "index": i, "embedding": v}
                          for i, v in enumerate(values)]}
        return merge(self.base, shown)


# ---------------------------------------------------------------------------------------------
# Replies


def _usage(form: str) -> dict:
    if form == "responses":
        return {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 0}
    if form == "completion":
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {"prompt_tokens": 0, "total_tokens": 0}


def _item_defaults(item: Any, seed: str, n: int) -> Any:
    if not isinstance(item, dict):
        return item
    t = item.get("type") or ("message" if "role" in item else None)
    prefix = {"message": "msg", "function_call": "fc", "reasoning": "rs"}.get(t)
    if prefix is None:
        return item
    base: dict = {"id": f"{prefix}_rechat_{seed}_{n}", "type": t}
    if t == "message":
        base.update(status="completed", role="assistant")
        content = item.get("content")
        if isinstance(content, str):
            item = {**item, "content": [{"type": "output_text", "annotations": [], "text": content}]}
        elif isinstance(content, list):
            item = {**item, "content": [
                {"annotations": [], **p} if isinstance(p, dict) and p.get("type") == "output_text"
                else p for p in content]}
        else:
            base["content"] = []
    elif t == "function_call":
        base.update(status="completed", call_id=f"call_rechat_{seed}_{n}", arguments="")
    else:
        base["summary"] = []
    return {**base, **item}


def recorded(meta: dict) -> bool:
    """True when a turn's meta holds a recorded response (not an answer written by hand)."""
    return any(k in meta for k in ("response", "completion", "sse"))


def reply_object(form: str, answer: Any, meta: dict, request: dict, seed: str) -> dict:
    """Return the JSON object to reply with: the answer, completed when written by hand.

    A recorded answer is returned as it is. One written by hand (no recorded response in
    `meta`) gets what the API always sends and the file leaves out: ids made from `seed` (stable
    for one answer of one file), the creation time, `request`'s model, ``status: completed`` or
    ``finish_reason: stop``, and zero usage.
    """
    if form == "embedding":
        obj = answer.object() if isinstance(answer, Embeddings) else dict(answer)
        if not recorded(meta):
            obj = {"object": "list", "data": obj.pop("data", []), "model": request.get("model"),
                   "usage": _usage(form), **obj}
            obj["data"] = [{"object": "embedding", "index": i, **d} if isinstance(d, dict) else d
                           for i, d in enumerate(obj["data"])]
        return obj
    obj = dict(answer)
    if recorded(meta):
        return obj
    if form == "responses":
        base = {"id": f"resp_rechat_{seed}", "object": "response", "created_at": int(time.time()),
                "status": "completed", "error": None, "incomplete_details": None,
                "instructions": request.get("instructions"), "model": request.get("model") or "rechat",
                "output": [], "parallel_tool_calls": True,
                "previous_response_id": request.get("previous_response_id"),
                "tool_choice": request.get("tool_choice", "auto"),
                "tools": request.get("tools", []), "usage": _usage(form)}
        obj = {**base, **obj}
        obj["output"] = [_item_defaults(it, seed, n) for n, it in enumerate(obj["output"] or [])]
        return obj
    if form != "completion":
        return obj
    base = {"id": f"cmpl-rechat-{seed}", "object": "text_completion", "created": int(time.time()),
            "model": request.get("model") or "rechat", "choices": [], "usage": _usage(form)}
    obj = {**base, **obj}
    obj["choices"] = [{"text": "", "index": i, "logprobs": None, "finish_reason": "stop", **c}
                      if isinstance(c, dict) else c for i, c in enumerate(obj["choices"] or [])]
    return obj


def seed_of(session: str, index: int) -> str:
    """Return the stable seed of made-up ids for answer `index` of file `session`."""
    return digest(f"{session}#{index}")[:24]


def unedited(form: str, answer: Any, meta: dict) -> bool:
    """True when a streamed recording's events still say what the file shows."""
    sse = meta.get("sse")
    if not isinstance(sse, list) or form == "embedding":
        return False
    try:
        events = _events(sse)
        recorded = rs.assemble(events) if form == "responses" else cc.assemble_text(events)
    except (ValueError, TypeError, AttributeError, KeyError):
        return False
    return recorded is not None and same(recorded, answer)


def json_body(form: str, answer: Any, meta: dict, request: dict, seed: str) -> bytes:
    """Return the JSON reply body of an answer."""
    return json.dumps(reply_object(form, answer, meta, request, seed), ensure_ascii=False).encode()


def events(form: str, answer: Any, meta: dict, request: dict, seed: str,
           include_usage: bool = False) -> tuple[list[bytes], list[float] | None]:
    """Return the SSE reply of an answer: (encoded events, their recorded times in ms or None).

    A streamed recording whose answer was not edited replays its recorded events (with their
    times); otherwise the events are synthesised: Responses events with ``event: TYPE`` lines
    and ``sequence_number`` (no ``[DONE]``, as OpenAI), legacy completion chunks then
    ``data: [DONE]``. Raises ValueError for embeddings, which do not stream.
    """
    if form == "embedding":
        raise ValueError("embeddings do not stream")
    if unedited(form, answer, meta):
        out = []
        for e in meta["sse"]:
            name = None
            if form == "responses":
                try:
                    t = json.loads(e).get("type")
                except (ValueError, AttributeError):
                    t = None
                name = t if isinstance(t, str) and "\n" not in t and "\r" not in t else None
            out.append(encode_event(e, name))
        ms = meta.get("sse_ms")
        return out, ms if isinstance(ms, list) and len(ms) == len(out) else None
    obj = reply_object(form, answer, meta, request, seed)
    if form == "responses":
        return [encode_event(json.dumps(e, ensure_ascii=False), e["type"])
                for e in rs.synthesize(obj)], None
    chunks = cc.synthesize_text(obj, include_usage=include_usage)
    return [encode_event(json.dumps(c, ensure_ascii=False)) for c in chunks] + [DONE], None


def recorded_body(form: str, answer: Any, meta: dict, request: dict, seed: str) -> bytes:
    """Return the body as recorded (edits applied): SSE bytes for a stream, else JSON."""
    if meta.get("stream") is True and form != "embedding":
        include = (meta.get("request") or {}).get("stream_options") if isinstance(
            meta.get("request"), dict) else None
        evs, _ = events(form, answer, meta, request, seed,
                        isinstance(include, dict) and include.get("include_usage") is True)
        return b"".join(evs)
    return json_body(form, answer, meta, request, seed)
