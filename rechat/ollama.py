"""Ollama's `POST /api/chat` in rechat's chat form: messages, recorded answers, replies.

Owns the mapping between Ollama's /api/chat shapes (Ollama API doc,
https://github.com/ollama/ollama/blob/main/docs/api.md, "Generate a chat completion") and the
chat form of session files (docs/format.md, "Ollama chats"), which is the OpenAI message
shape: `thinking` <-> `reasoning_content`, `images` <-> `image_url` content parts after a
`text` part, `tool_name` <-> `name`, tool calls with an `arguments` object <-> tool calls with
`arguments` JSON text. What does not fit is kept whole in the message's `ollama` field, so
`from_chat(to_chat(m))` is `m` (null fields aside) for any message. Also what of an Ollama
answer goes to the hidden response comment (the raw JSON body, or the NDJSON lines of a
stream) and how an answer becomes an Ollama reply again: the recorded bytes when the file's
message is unedited, else a JSON object or NDJSON lines made from the file.
Pure: no aiohttp, no I/O; imports nothing from rechat but `exchange` and `fingerprint`.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

from rechat.exchange import OLLAMA_CHAT_PATH, Response
from rechat.fingerprint import canonical, normalize_message

# Message fields of Ollama's that have a chat-form counterpart.
_MAPPED = ("role", "content", "images", "thinking", "tool_calls", "tool_name")
# Chat-form fields the inverse mapping reads as something else: an Ollama field of one of
# these names is kept in `ollama` so that it comes back under its own name.
_TAKEN = ("reasoning_content", "name", "ollama")
RAW = "ollama"  # the chat-form field that keeps what does not fit, as Ollama sent it

_STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
          "eval_count", "eval_duration")


def is_ollama_chat(path: str) -> bool:
    """True for the path of Ollama's chat endpoint (``/api/chat``)."""
    return path == OLLAMA_CHAT_PATH


# ---------------------------------------------------------------------------------------------
# Messages


def _tool_call_fits(tc: Any) -> bool:
    # {"function": {"name": str, "arguments": {...}}} with an optional string "id".
    if not isinstance(tc, dict) or set(tc) - {"function", "id"}:
        return False
    fn = tc.get("function")
    return (isinstance(fn, dict) and set(fn) == {"name", "arguments"}
            and isinstance(fn["name"], str) and fn["name"] != "" and not any(c.isspace() for c in fn["name"])
            and isinstance(fn["arguments"], dict) and isinstance(tc.get("id", ""), str))


def to_chat(message: Any) -> Any:
    """Return an Ollama chat message in rechat's chat form (an OpenAI-shaped message).

    `message` is ``{"role", "content", "images"?: [base64], "thinking"?: str, "tool_calls"?:
    [{"function": {"name", "arguments": {object}}}], "tool_name"?: str, ...}``. `thinking`
    becomes `reasoning_content`; `images` (with string `content`) become a content list: a
    `text` part, then one `image_url` part per image whose `url` is the base64 as sent;
    tool calls become ``{"id"?, "type": "function", "function": {"name", "arguments":
    JSON text}}``; `tool_name` becomes `name`. Fields it cannot map exactly, and fields named
    like a chat-form field of another meaning, go whole into the `ollama` field; null fields
    are dropped (null is absent). A non-dict is returned as it is. Never raises.
    """
    if not isinstance(message, dict):
        return message
    m = {k: v for k, v in message.items() if v is not None}
    out: dict = {}
    raw: dict = {}
    if "role" in m:
        out["role"] = m["role"]
    content, images = m.get("content"), m.get("images")
    if "content" in m and not isinstance(content, str):
        raw["content"] = content
    if "images" in m:
        if (isinstance(content, str) and isinstance(images, list) and images
                and all(isinstance(i, str) and not i.startswith("data:") for i in images)):
            out["content"] = [{"type": "text", "text": content}] + [
                {"type": "image_url", "image_url": {"url": i}} for i in images]
        else:
            raw["images"] = images
    if isinstance(content, str) and "content" not in out:
        out["content"] = content
    if "thinking" in m:
        if isinstance(m["thinking"], str):
            out["reasoning_content"] = m["thinking"]
        else:
            raw["thinking"] = m["thinking"]
    if "tool_calls" in m:
        tcs = m["tool_calls"]
        if isinstance(tcs, list) and all(_tool_call_fits(tc) for tc in tcs):
            out["tool_calls"] = [
                {**({"id": tc["id"]} if "id" in tc else {}), "type": "function",
                 "function": {"name": tc["function"]["name"],
                              "arguments": json.dumps(tc["function"]["arguments"],
                                                      ensure_ascii=False)}}
                for tc in tcs]
        else:
            raw["tool_calls"] = tcs
    if "tool_name" in m:
        if isinstance(m["tool_name"], str):
            out["name"] = m["tool_name"]
        else:
            raw["tool_name"] = m["tool_name"]
    for k, v in m.items():
        if k in _MAPPED:
            continue
        if k in _TAKEN:
            raw[k] = v
        else:
            out[k] = v
    if raw:
        out[RAW] = raw
    return out


def _image(url: str) -> str:
    # Ollama wants the bare base64; a data URL written by hand loses its prefix.
    if url.startswith("data:") and ";base64," in url:
        return url.split(";base64,", 1)[1]
    return url


def _parts(content: list) -> tuple[str, list[str]] | None:
    # text parts (joined) then image_url parts -> (content, images), or None if it is not that.
    texts: list[str] = []
    images: list[str] = []
    for p in content:
        if not isinstance(p, dict):
            return None
        if p.get("type") == "text" and isinstance(p.get("text"), str) and not images:
            texts.append(p["text"])
        elif (p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)
              and isinstance(p["image_url"].get("url"), str)):
            images.append(_image(p["image_url"]["url"]))
        else:
            return None
    if not texts:
        return None
    return "".join(texts), images


def from_chat(message: Any) -> Any:
    """Return a chat-form message as the Ollama message it stands for: `to_chat`'s inverse.

    ``from_chat(to_chat(m))`` equals `m` without its null fields. Also reads what people write
    by hand: `reasoning_content` (or `thinking`) as `thinking`; a content list of text parts
    then `image_url` parts (a data URL loses its ``data:...;base64,`` prefix) as `content` and
    `images`; tool calls whose `arguments` is a JSON object's text get the object (other text
    stays a string), and lose ``type: function``; `name` as `tool_name`. The `ollama` field's
    entries are restored as they are. A non-dict is returned as it is. Never raises.
    """
    if not isinstance(message, dict):
        return message
    out: dict = {}
    for k, v in message.items():
        if v is None or k == RAW:
            continue
        if k == "content" and isinstance(v, list):
            got = _parts(v)
            if got is None:
                out["content"] = v
            else:
                out["content"] = got[0]
                if got[1]:
                    out["images"] = got[1]
        elif k == "reasoning_content":
            out["thinking"] = v
        elif k == "name":
            out["tool_name"] = v
        elif k == "tool_calls" and isinstance(v, list):
            out["tool_calls"] = [_tool_call_from_chat(tc) for tc in v]
        else:
            out[k] = v
    raw = message.get(RAW)
    if isinstance(raw, dict):
        out.update(raw)
    return out


def _tool_call_from_chat(tc: Any) -> Any:
    if not isinstance(tc, dict) or not isinstance(tc.get("function"), dict):
        return tc
    fn = dict(tc["function"])
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            fn["arguments"] = parsed
    out = {k: v for k, v in tc.items() if k not in ("type", "function") and v is not None}
    if tc.get("type") not in (None, "function"):
        out["type"] = tc["type"]
    out["function"] = fn
    return out


def chat_messages(messages: list) -> list:
    """Return Ollama `messages` in the chat form (`to_chat` of each)."""
    return [to_chat(m) for m in messages]


def request_messages(messages: list) -> list:
    """Return chat-form `messages` as the Ollama messages they stand for (`from_chat` of each)."""
    return [from_chat(m) for m in messages]


def same_message(a: Any, b: Any) -> bool:
    """True when two Ollama messages are the same (null fields absent, canonical JSON)."""
    return canonical(normalize_message(a)) == canonical(normalize_message(b))


# ---------------------------------------------------------------------------------------------
# Recording


def _lines(text: str) -> list[dict] | None:
    objs = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        objs.append(obj)
    return objs or None


def assemble(objs: list[dict]) -> dict | None:
    """Return the whole assistant message of a stream's objects (NDJSON lines), or None.

    Concatenates `content` and `thinking`, joins `tool_calls` and `images` lists; other message
    fields keep their last value. None when a line has no `message` object (an error line).
    """
    msg: dict = {}
    for obj in objs:
        m = obj.get("message")
        if not isinstance(m, dict):
            return None
        for k, v in m.items():
            if k in ("content", "thinking") and isinstance(v, str) and isinstance(msg.get(k, ""), str):
                msg[k] = msg.get(k, "") + v
            elif k in ("tool_calls", "images") and isinstance(v, list) and isinstance(msg.get(k, []), list):
                msg[k] = msg.get(k, []) + v
            elif v is not None or k not in msg:
                msg[k] = v
    return msg


def capture(response: Response) -> tuple[dict, dict] | None:
    """Return (the assistant message in chat form, meta entries) of an /api/chat response.

    A stream (``application/x-ndjson``, or any body that is not one JSON object) keeps its lines in ``ndjson`` (strings, without the LF ending each;
    ``ndjson_eol: false`` when the last one had none) and gives ``stream: true``; a whole
    answer keeps its body text in ``body`` and gives ``stream: false``. None when the body is
    not UTF-8, not a chat answer (``{"message": {...}, "done": ...}``), or an error.
    """
    try:
        text = response.body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ctype = (response.header("content-type") or "").lower()
    whole = None
    if "ndjson" not in ctype:
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None
    if isinstance(whole, dict):
        if not isinstance(whole.get("message"), dict) or "error" in whole:
            return None
        return to_chat({"role": "assistant", **whole["message"]}), {"stream": False, "body": text}
    objs = _lines(text)
    if objs is None or any("error" in o for o in objs):
        return None
    msg = assemble(objs)
    if msg is None:
        return None
    lines = text.split("\n")
    meta: dict = {"stream": True}
    if lines[-1] == "":
        lines.pop()
    else:
        meta["ndjson_eol"] = False
    meta["ndjson"] = lines
    return to_chat({"role": "assistant", **msg}), meta


# ---------------------------------------------------------------------------------------------
# Replies


def recorded_message(meta: dict) -> dict | None:
    """Return the Ollama message an answer's meta recorded (its `body` or `ndjson`), or None."""
    try:
        if isinstance(meta.get("body"), str):
            m = json.loads(meta["body"]).get("message")
            return {"role": "assistant", **m} if isinstance(m, dict) else None
        if isinstance(meta.get("ndjson"), list):
            objs = _lines("\n".join(meta["ndjson"]))
            msg = assemble(objs) if objs else None
            return {"role": "assistant", **msg} if msg is not None else None
    except (ValueError, TypeError, AttributeError):
        return None
    return None


def unedited(message: dict | None, meta: dict) -> bool:
    """True when the file's `message` (chat form) is the one recorded in `meta`."""
    rec = recorded_message(meta)
    return rec is not None and same_message(from_chat(message or {}), rec)


def recorded_bytes(meta: dict) -> tuple[bool, bytes | list[bytes]] | None:
    """Return (streamed, the body or the NDJSON lines as recorded) from an answer's meta."""
    if isinstance(meta.get("body"), str):
        return False, meta["body"].encode("utf-8")
    lines = meta.get("ndjson")
    if isinstance(lines, list) and all(isinstance(x, str) for x in lines) and lines:
        out = [(x + "\n").encode("utf-8") for x in lines]
        if meta.get("ndjson_eol") is False:
            out[-1] = out[-1][:-1]
        return True, out
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _final(meta: dict, body: dict) -> dict:
    # The recorded final object (the whole answer, or the stream's `done` line), or a made-up one.
    try:
        if isinstance(meta.get("body"), str):
            obj = json.loads(meta["body"])
            if isinstance(obj, dict):
                return obj
        if isinstance(meta.get("ndjson"), list):
            objs = _lines("\n".join(meta["ndjson"])) or []
            done = [o for o in objs if o.get("done") is True]
            if done or objs:
                return copy.deepcopy((done or objs)[-1])
    except (ValueError, TypeError):
        pass
    return {"model": body.get("model") or "rechat", "created_at": _now(),
            "message": {"role": "assistant", "content": ""}, "done": True,
            "done_reason": "stop", **{k: 0 for k in _STATS}}


def response_object(message: dict | None, meta: dict, request_body: Any) -> dict:
    """Return the non-streamed /api/chat answer for a chat answer: ``{"model", "created_at",
    "message", "done": true, "done_reason", "total_duration", ...}``.

    The message is the file's (`message`, chat form, edits included); the rest comes from the
    recording (its body, or the `done` line of its stream), or is made up for a hand-written
    answer (now, the request's model, zero durations and counts).
    """
    body = request_body if isinstance(request_body, dict) else {}
    obj = _final(meta, body)
    obj["message"] = {"role": "assistant", **from_chat(message or {})}
    obj["done"] = True
    obj.setdefault("done_reason", "stop")
    return obj


def stream_objects(message: dict | None, meta: dict, request_body: Any) -> list[dict]:
    """Return the NDJSON objects of a streamed /api/chat answer made from a chat answer.

    One object for the thinking, one for the content, one for the tool calls (each present
    only when the message has it; ``done: false``), then the recorded final object with an
    empty message and ``done: true`` (see `response_object` for where its fields come from).
    """
    body = request_body if isinstance(request_body, dict) else {}
    final = _final(meta, body)
    head = {k: final[k] for k in ("model", "created_at") if k in final}
    msg = from_chat(message or {})
    msg.pop("role", None)
    out = []
    if "thinking" in msg:
        out.append({**head, "message": {"role": "assistant", "content": "",
                                        "thinking": msg.pop("thinking")}, "done": False})
    tool_calls = msg.pop("tool_calls", None)
    content = msg.pop("content", "")
    if content != "" or msg or not tool_calls:
        out.append({**head, "message": {"role": "assistant", "content": content, **msg},
                    "done": False})
    if tool_calls:
        out.append({**head, "message": {"role": "assistant", "content": "",
                                        "tool_calls": tool_calls}, "done": False})
    final["message"] = {"role": "assistant", "content": ""}
    final["done"] = True
    final.setdefault("done_reason", "stop")
    out.append(final)
    return out


def dumps(obj: Any) -> bytes:
    """Return `obj` as compact JSON bytes, as Ollama writes it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


__all__ = ["to_chat", "from_chat", "chat_messages", "request_messages", "capture", "assemble",
           "recorded_message", "recorded_bytes", "unedited", "response_object", "stream_objects",
           "dumps", "is_ollama_chat", "same_message"]
