"""Exchanges into answers, and answers into replies.

Owns the translation between the wire and the session: what of a recorded chat completion
goes into the markdown (the assistant message, and the other choices when ``n > 1``) and what
into the hidden response comment (id, usage, SSE events, timings), and how a stored answer
becomes an HTTP reply again: the recorded SSE events, a synthesised `chat.completion.chunk`
stream, or an assembled `chat.completion` (OpenAI API reference, "The chat completion object"
and "The chat completion chunk object"); Ollama's /api/chat answers are mapped by ollama.py
and replied here in Ollama's shapes. Answers of the readable endpoint forms (Responses,
legacy completions, embeddings; see forms.py) are `FormAnswer`s, replied by `generic_reply`.
Pure: no aiohttp, no I/O.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from rechat import completion as cc
from rechat import forms
from rechat import ollama
from rechat.exchange import Answer, Exchange, Request
from rechat.fingerprint import VOLATILE_FIELDS, digest, normalize_message, redact_headers
from rechat.sse import DONE, encode_event

# Response headers worth replaying for a generic answer; the rest describe the original
# connection (date, server, length) or the upstream's internals.
_DROP_HEADERS = frozenset({
    "date", "server", "content-length", "transfer-encoding", "connection", "keep-alive",
    "content-encoding", "set-cookie", "alt-svc", "cf-ray", "cf-cache-status", "strict-transport-security",
    "x-envoy-upstream-service-time", "via",
})


@dataclass(slots=True)
class Reply:
    """An HTTP reply rechat builds itself: `body` whole, or `events` (SSE bytes) in order.

    `event_ms` holds the recorded arrival time (ms since the request) of each event when the
    events are the recorded ones, so that `--latency` can replay their timing.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    events: list[bytes] | None = None
    event_ms: list[float] | None = None  # recorded arrival times of `events`, when replayed as-is


def now_iso() -> str:
    """Return the current time as ISO 8601 with milliseconds and the UTC offset."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _base_meta(ex: Exchange) -> dict:
    r = ex.response
    meta: dict = {"at": now_iso(), "status": r.status}
    if ex.upstream:
        meta["upstream"] = ex.upstream
    meta["ms"] = {"ttfb": round(r.ttfb_ms, 1), "total": round(r.total_ms, 1)}
    body = ex.request.json
    if isinstance(body, dict):
        volatile = {k: body[k] for k in body if k in VOLATILE_FIELDS}
        if volatile:
            meta["request"] = volatile
    return meta


def chat_answer(ex: Exchange) -> tuple[dict, dict] | None:
    """Return (assistant message, hidden meta) for a successful chat exchange, or None.

    None when the response is not a chat completion rechat can read (then the exchange is
    recorded in the generic form, so it is still on disk). Streamed responses keep their SSE
    events' data in order (`sse`) and arrival times in ms (`sse_ms`); non-streamed ones keep
    the completion without the messages (`completion`), whose null fields stay in stubs. With
    ``n > 1``, the other choices' messages are in the meta as ``choices`` (the session shows
    them as `### assistant choice=N` sections, not in the comment). An Ollama /api/chat answer
    keeps its raw body (`body`) or NDJSON lines (`ndjson`) instead (ollama.capture).
    """
    r = ex.response
    meta = _base_meta(ex)
    if ollama.is_ollama_chat(ex.request.path):
        got = ollama.capture(r)
        if got is None:
            return None
        shown, extra = got
        meta.update(extra)
        return shown, meta
    if r.events is not None:
        try:
            chunks = [json.loads(e) for e in r.events if e != "[DONE]"]
            full = cc.assemble(chunks)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        meta["stream"] = True
        meta["sse"] = r.events
        if r.event_ms:
            meta["sse_ms"] = [round(t, 1) for t in r.event_ms]
    else:
        full = r.json
        if not isinstance(full, dict):
            return None
        meta["stream"] = False
        meta["completion"] = full = copy.deepcopy(full)
    choices = full.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    # Choices after the first (n > 1) are shown too, when they are all readable messages.
    others = [c.get("message") if isinstance(c, dict) else None for c in choices[1:]]
    shown_choices = all(isinstance(m, dict) and m.get("role", "assistant") == "assistant"
                        for m in others)
    if r.events is None:
        # Keep only what the markdown does not show (null fields) in the hidden completion.
        for c in choices[:len(choices) if shown_choices else 1]:
            c["message"] = {k: v for k, v in c["message"].items()
                            if k not in normalize_message(c["message"])}
    if others and shown_choices:
        meta["choices"] = [{**normalize_message(m), "role": "assistant"} for m in others]
    shown = normalize_message(message)
    shown.setdefault("role", "assistant")
    return shown, meta


def generic_meta(ex: Exchange) -> dict:
    """Return the hidden meta of a generic exchange: status, replayable headers, timings."""
    meta = _base_meta(ex)
    meta["headers"] = [[k, v] for k, v in redact_headers(ex.response.headers)
                       if k.lower() not in _DROP_HEADERS]
    return meta


# ---------------------------------------------------------------------------------------------
# Replies


def completion_for(answer: Answer, req: Request) -> dict:
    """Return the `chat.completion` a chat answer stands for, with the session's message.

    The message always comes from the session file, so a hand-edited answer is what is served;
    so do the other choices of an ``n > 1`` answer (``meta["choices"]``). id, created, usage
    and the rest come from the recording, or are made up for a hand-written answer (id
    `chatcmpl-rechat-...`, zero usage).
    """
    meta = answer.meta
    if meta.get("sse"):
        base = cc.assemble([json.loads(e) for e in meta["sse"] if e != "[DONE]"])
    elif isinstance(meta.get("completion"), dict):
        base = copy.deepcopy(meta["completion"])
    else:
        body = req.json if isinstance(req.json, dict) else {}
        base = {
            "id": "chatcmpl-rechat-" + digest(f"{answer.session}#{answer.index}")[:24],
            "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or "rechat",
            "choices": [{"index": 0, "message": {}, "logprobs": None, "finish_reason": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
    choices = base.setdefault("choices", [])
    if not choices:
        choices.append({"index": 0, "logprobs": None, "finish_reason": None})
    others = meta.get("choices") if isinstance(meta.get("choices"), list) else []
    for n, msg in enumerate([answer.message or {}, *others]):
        if n == len(choices):  # a choice written by hand
            choices.append({"index": n, "logprobs": None, "finish_reason": None})
        c = choices[n]
        if not isinstance(c, dict) or not isinstance(msg, dict):
            continue
        stub = c.get("message") if isinstance(c.get("message"), dict) else {}
        if meta.get("sse"):
            stub = {k: v for k, v in stub.items() if v is None}
        c["message"] = {"role": "assistant", "content": None, **stub, **msg}
        finish = c.get("finish_reason")
        if msg.get("tool_calls"):
            if finish in (None, "stop"):
                finish = "tool_calls"
        elif finish in (None, "tool_calls"):
            finish = "stop"
        c["finish_reason"] = finish
    return base


def _unedited_stream(answer: Answer) -> bool:
    # A streamed recording replays as recorded unless someone edited the answer in the file.
    try:
        full = cc.assemble([json.loads(e) for e in answer.meta["sse"] if e != "[DONE]"])
        recorded = [c["message"] for c in full["choices"]]
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    others = answer.meta.get("choices")
    shown = [answer.message or {}, *(others if isinstance(others, list) else [])]
    if not isinstance(others, list):
        recorded = recorded[:1]
    return [normalize_message(m) for m in recorded] == [normalize_message(m) for m in shown]


def chat_reply(answer: Answer, req: Request) -> Reply:
    """Return the reply to `req` from a chat answer, streamed if `req` asks for it."""
    if ollama.is_ollama_chat(req.path):
        return ollama_reply(answer, req)
    if not req.wants_stream:
        body = json.dumps(completion_for(answer, req), ensure_ascii=False).encode()
        return Reply(200, [("Content-Type", "application/json")], body)
    headers = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]
    if answer.meta.get("sse") and _unedited_stream(answer):
        return Reply(200, headers, events=[encode_event(e) for e in answer.meta["sse"]],
                     event_ms=answer.meta.get("sse_ms"))
    opts = req.json.get("stream_options") if isinstance(req.json, dict) else None
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    chunks = cc.synthesize(completion_for(answer, req), include_usage=include_usage,
                           interleave=True)
    events = [encode_event(json.dumps(c, ensure_ascii=False)) for c in chunks]
    events.append(DONE)
    return Reply(200, headers, events=events)


def ollama_reply(answer: Answer, req: Request) -> Reply:
    """Return the reply to an Ollama /api/chat request `req` from a chat answer.

    Streamed (NDJSON, ``application/x-ndjson``) unless the body says ``stream: false``. An
    unedited recording replies with its bytes as recorded when `req` streams as the recording
    did; otherwise the reply is made from the file's message (ollama.response_object,
    ollama.stream_objects), so an edited answer is served edited.
    """
    stream = req.wants_stream
    meta = answer.meta
    if stream:
        headers = [("Content-Type", "application/x-ndjson")]
    else:
        headers = [("Content-Type", "application/json; charset=utf-8")]
    raw = ollama.recorded_bytes(meta)
    if raw is not None and raw[0] == stream and ollama.unedited(answer.message, meta):
        if stream:
            return Reply(200, headers, events=list(raw[1]))  # type: ignore[arg-type]
        return Reply(200, headers, raw[1])  # type: ignore[arg-type]
    if not stream:
        return Reply(200, headers, ollama.dumps(ollama.response_object(answer.message, meta, req.json)))
    return Reply(200, headers, events=[ollama.dumps(o) + b"\n" for o in
                                       ollama.stream_objects(answer.message, meta, req.json)])


class FormAnswer(Answer):
    """An answer of a readable endpoint form (forms.py): Responses, legacy completions, embeddings.

    `kind` is the form ("responses", "completion", "embedding"); `request` is the recorded
    request (JSON, without the volatile fields) and `data` the answer as the session shows it
    (`forms.read_turn`). `body` is what was recorded (edits applied), made on first use.
    """

    def __init__(self, *args, request: dict | None = None, data=None, **kw) -> None:
        super().__init__(*args, **kw)
        self.request = request or {}
        self.data = data

    @property  # type: ignore[override]
    def body(self) -> bytes:
        body = self.__dict__.get("_body")
        if not body:
            body = self.__dict__["_body"] = forms.recorded_body(
                self.kind, self.data, self.meta, self.request, self.seed)
        return body

    @body.setter
    def body(self, value: bytes) -> None:
        self.__dict__["_body"] = value

    @property
    def seed(self) -> str:
        """The seed of the ids made up for a hand-written answer (stable per file and answer)."""
        return forms.seed_of(self.session, self.index)


def generic_reply(answer: Answer, req: Request | None = None) -> Reply:
    """Return the reply of a generic answer, or of an answer of a readable form.

    A generic answer replies as recorded: status, replayable headers, exact body. A
    `FormAnswer` replies with its JSON object, or with SSE events when `req` asks to stream
    (without `req`: as it was recorded): the recorded events if the answer was recorded
    streamed and not edited since, else events synthesised from the file (forms.events).
    """
    if not isinstance(answer, FormAnswer):
        return Reply(answer.status or 200, list(answer.headers), answer.body)
    form = answer.kind
    body = req.json if req is not None and isinstance(req.json, dict) else None
    stream = req.wants_stream if req is not None else answer.meta.get("stream") is True
    request = body if body is not None else answer.request
    headers = [(k, v) for k, v in answer.headers if k.lower() != "content-type"]
    if not stream or form == "embedding":
        return Reply(answer.status or 200, [("Content-Type", "application/json"), *headers],
                     forms.json_body(form, answer.data, answer.meta, request, answer.seed))
    opts = (body if body is not None else answer.meta.get("request") or {}).get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    events, event_ms = forms.events(form, answer.data, answer.meta, request, answer.seed,
                                    include_usage)
    return Reply(answer.status or 200, [("Content-Type", "text/event-stream; charset=utf-8"),
                                        ("Cache-Control", "no-cache"), *headers],
                 events=events, event_ms=event_ms)
