"""Responses API: a response object <-> its stream of semantic events.

Owns the mapping between one ``response`` object (``POST /v1/responses``) and the sequence of
server-sent events that streams it (OpenAI API reference, "Responses" > "Streaming events"):
``response.created``, ``response.in_progress``, per output item ``response.output_item.added``,
its content events (``response.content_part.added``, ``response.output_text.delta`` ...
``response.output_text.done``, ``response.content_part.done``; function call arguments;
reasoning summaries), ``response.output_item.done``, and ``response.completed``. Every event
carries a monotonic ``sequence_number`` from 0. Works on JSON-decoded dicts only: no SSE
framing (see rechat.sse), no I/O. Stdlib only; imports no other rechat module but completion
(for its text splitter).
"""

from __future__ import annotations

import copy
from typing import Any

from rechat.completion import _split

__all__ = ["assemble", "synthesize", "FINAL_EVENTS"]

# The events that end a stream and carry the final response object.
FINAL_EVENTS = {"response.completed": "completed", "response.incomplete": "incomplete",
                "response.failed": "failed"}


def assemble(events: list[dict]) -> dict | None:
    """Return the final response object of a stream of Responses events, or None.

    The response is the one carried by the last ``response.completed`` (or
    ``response.incomplete`` / ``response.failed``) event. When that response has no ``output``
    (some compatible servers leave it out), the items of the ``response.output_item.done``
    events are used, in ``output_index`` order, as the OpenAI SDK does. Returns None when no
    such event came (a stream that broke off).
    """
    final = None
    done: dict[Any, Any] = {}
    for e in events:
        if not isinstance(e, dict):
            continue
        t = e.get("type")
        if t in FINAL_EVENTS and isinstance(e.get("response"), dict):
            final = e["response"]
        elif t == "response.output_item.done" and "item" in e:
            done[e.get("output_index", len(done))] = e["item"]
    if final is None:
        return None
    final = copy.deepcopy(final)
    if final.get("output") is None:
        try:
            order = sorted(done)
        except TypeError:
            order = list(done)
        final["output"] = [copy.deepcopy(done[i]) for i in order]
    return final


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _started(item: dict) -> dict:
    # The item as `response.output_item.added` announces it: in progress, its texts empty.
    out = dict(item)
    t = item.get("type")
    if "status" in out or t in ("message", "function_call"):
        out["status"] = "in_progress"
    if t == "message":
        out["content"] = []
    elif t == "function_call":
        out["arguments"] = ""
    elif t == "reasoning":
        out["summary"] = []
        if isinstance(item.get("content"), list):
            out["content"] = []
    return out


def synthesize(response: dict, piece_chars: int = 24) -> list[dict]:
    """Produce the event sequence that streams `response`, with ``sequence_number`` 0, 1, ...

    The inverse of ``assemble``: ``assemble(synthesize(r)) == r``. The stream opens with
    ``response.created`` and ``response.in_progress`` (the response in progress, with no output
    and no usage), then for each output item: ``response.output_item.added`` (the item in
    progress, texts empty), its content, ``response.output_item.done`` (the item whole); and
    ends with ``response.completed`` (``response.incomplete`` or ``response.failed`` when that
    is the response's status) carrying `response` itself.

    Content per item type: a message streams each ``output_text`` part as
    ``content_part.added``, ``output_text.delta`` events of about `piece_chars` characters,
    ``output_text.done``, ``content_part.done`` (a ``refusal`` part likewise with
    ``refusal.delta``/``refusal.done``; other parts only added and done); a function call its
    ``arguments`` as ``function_call_arguments.delta`` events then ``.done``; a reasoning item
    each summary part as ``reasoning_summary_part.added``, ``reasoning_summary_text.delta``
    events, ``.done``, ``reasoning_summary_part.done``, and each ``reasoning_text`` content part
    as ``reasoning_text.delta`` events then ``.done``. Items of other types are only added and
    done. Raises ValueError if ``piece_chars < 1``.
    """
    if piece_chars < 1:
        raise ValueError("piece_chars must be at least 1")
    events: list[dict] = []

    def emit(type_: str, **fields: Any) -> None:
        events.append({"type": type_, "sequence_number": len(events), **fields})

    pending = dict(response)
    pending["status"] = "in_progress"
    pending["output"] = []
    if "usage" in pending:
        pending["usage"] = None
    for key in ("completed_at", "incomplete_details", "error"):
        if pending.get(key) is not None:
            pending[key] = None
    emit("response.created", response=pending)
    emit("response.in_progress", response=copy.deepcopy(pending))

    for oi, item in enumerate(_list(response.get("output"))):
        if not isinstance(item, dict):
            emit("response.output_item.added", output_index=oi, item=item)
            emit("response.output_item.done", output_index=oi, item=item)
            continue
        emit("response.output_item.added", output_index=oi, item=_started(item))
        iid = item.get("id")
        t = item.get("type")
        if t == "message":
            for ci, part in enumerate(_list(item.get("content"))):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype == "output_text" and isinstance(part.get("text"), str):
                    start = {"type": "output_text", "annotations": [], "text": ""}
                    if "logprobs" in part:
                        start["logprobs"] = []
                    emit("response.content_part.added", item_id=iid, output_index=oi,
                         content_index=ci, part=start)
                    for piece in _split(part["text"], piece_chars):
                        emit("response.output_text.delta", item_id=iid, output_index=oi,
                             content_index=ci, delta=piece, logprobs=[])
                    emit("response.output_text.done", item_id=iid, output_index=oi,
                         content_index=ci, text=part["text"], logprobs=[])
                elif ptype == "refusal" and isinstance(part.get("refusal"), str):
                    emit("response.content_part.added", item_id=iid, output_index=oi,
                         content_index=ci, part={"type": "refusal", "refusal": ""})
                    for piece in _split(part["refusal"], piece_chars):
                        emit("response.refusal.delta", item_id=iid, output_index=oi,
                             content_index=ci, delta=piece)
                    emit("response.refusal.done", item_id=iid, output_index=oi,
                         content_index=ci, refusal=part["refusal"])
                else:
                    emit("response.content_part.added", item_id=iid, output_index=oi,
                         content_index=ci, part=part)
                emit("response.content_part.done", item_id=iid, output_index=oi,
                     content_index=ci, part=part)
        elif t == "function_call" and isinstance(item.get("arguments"), str):
            for piece in _split(item["arguments"], piece_chars):
                emit("response.function_call_arguments.delta", item_id=iid, output_index=oi,
                     delta=piece)
            emit("response.function_call_arguments.done", item_id=iid, output_index=oi,
                 arguments=item["arguments"])
        elif t == "reasoning":
            for si, part in enumerate(_list(item.get("summary"))):
                if not (isinstance(part, dict) and isinstance(part.get("text"), str)):
                    continue
                emit("response.reasoning_summary_part.added", item_id=iid, output_index=oi,
                     summary_index=si, part={"type": part.get("type", "summary_text"), "text": ""})
                for piece in _split(part["text"], piece_chars):
                    emit("response.reasoning_summary_text.delta", item_id=iid, output_index=oi,
                         summary_index=si, delta=piece)
                emit("response.reasoning_summary_text.done", item_id=iid, output_index=oi,
                     summary_index=si, text=part["text"])
                emit("response.reasoning_summary_part.done", item_id=iid, output_index=oi,
                     summary_index=si, part=part)
            for ci, part in enumerate(_list(item.get("content"))):
                if not (isinstance(part, dict) and isinstance(part.get("text"), str)):
                    continue
                for piece in _split(part["text"], piece_chars):
                    emit("response.reasoning_text.delta", item_id=iid, output_index=oi,
                         content_index=ci, delta=piece)
                emit("response.reasoning_text.done", item_id=iid, output_index=oi,
                     content_index=ci, text=part["text"])
        emit("response.output_item.done", output_index=oi, item=item)

    status = response.get("status")
    final = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(
        status if isinstance(status, str) else "", "response.completed")
    emit(final, response=response)
    return events
