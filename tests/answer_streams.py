"""Answer streams for the tests of rechat.think and rechat.rewrite: chunks, SSE bodies, and
the ways of feeding them to an SSEStreamRewriter (cut anywhere, an event per piece, a byte at
a time)."""

from __future__ import annotations

import json
import re

from rechat.rewrite import NDJSONStreamRewriter, SSEStreamRewriter
from rechat.sse import SSEParser
from rechat.think import ThinkPatterns, ThinkTransform

P = ThinkPatterns()
OPEN, CLOSE = P.open_pattern, P.close_pattern  # harmony markers

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(delta: dict, finish=None, index=0, **extra) -> dict:
    return {**BASE, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}], **extra}


def sse(objs: list, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n"
                   if not isinstance(o, bytes) else o for o in objs)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chat_stream(contents: list[str], done: bool = True, finish: bool = True) -> bytes:
    objs = [chunk({"role": "assistant", "content": ""})]
    objs += [chunk({"content": c}) for c in contents]
    if finish:
        objs.append(chunk({}, "stop"))
    return sse(objs, done)


def run_sse(data: bytes, cuts: list[int], mode="strip", transforms=None) -> bytes:
    rw = SSEStreamRewriter(transforms if transforms is not None else [ThinkTransform(mode)])
    bounds = [0, *cuts, len(data)]
    out = b"".join(rw.feed(data[a:b]) for a, b in zip(bounds, bounds[1:]))
    return out + rw.close()


def events(data: bytes) -> list[str]:
    p = SSEParser()
    return [e.data for e in p.feed(data) + p.close()]


def content_of(data: bytes) -> str:
    text = ""
    for d in events(data):
        if d != "[DONE]":
            for c in json.loads(d)["choices"]:
                text += (c.get("delta") or {}).get("content") or c.get("text") or ""
    return text


SSE_CONTENTS = [
    ["<thi", "nk>plan", " it</th", "ink>\n", "Hello", " <", "b> world"],
    [OPEN[:5], OPEN[5:] + "reason", "ing" + CLOSE[:9], CLOSE[9:] + "Final", " answer"],
    ["<think>only thinking, never closed"],
    ["ends with a partial tag <th"],
]


def byte_by_byte(data: bytes, transforms) -> bytes:
    """The reference: the general path, a byte at a time, every transform in the chain from
    the start (no transform set aside: `SSEStreamRewriter(defer=False)`)."""
    rw = SSEStreamRewriter(transforms, defer=False)
    return b"".join(rw.feed(data[i:i + 1]) for i in range(len(data))) + rw.close()


def by_events(data: bytes, transforms) -> bytes:
    rw = SSEStreamRewriter(transforms)
    pieces = re.split(b"(?<=\n\n)", data)  # each event in a piece of its own
    return b"".join(rw.feed(p) for p in pieces) + rw.close()


def relayed(pieces: list[bytes], transforms) -> bytes:
    """The rewrite as rechat's relay runs it: each piece goes through an SSEParser first, and
    the rewriter is told when the parser found the piece to be whole events (`whole`)."""
    rw, parser = SSEStreamRewriter(transforms), SSEParser()
    out = []
    for p in pieces:
        if p:
            parser.feed(p)
            out.append(rw.feed(p, parser.whole))
    return b"".join(out) + rw.close()


def ollama_chat(contents: list[str]) -> bytes:
    lines = [{"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": c},
              "done": False} for c in contents]
    lines.append({"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": ""},
                  "done": True, "done_reason": "stop", "eval_count": 3})
    return b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in lines)


def ollama_generate(contents: list[str]) -> bytes:
    lines = [{"model": "qwen3", "created_at": "t", "response": c, "done": False} for c in contents]
    lines.append({"model": "qwen3", "created_at": "t", "response": "", "done": True, "context": [1]})
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def run_nd(data: bytes, cuts: list[int], mode="strip") -> bytes:
    rw = NDJSONStreamRewriter([ThinkTransform(mode)])
    bounds = [0, *cuts, len(data)]
    return b"".join(rw.feed(data[a:b]) for a, b in zip(bounds, bounds[1:])) + rw.close()


def nd_content(data: bytes) -> str:
    out = ""
    for line in data.splitlines():
        obj = json.loads(line)
        out += obj["message"]["content"] if "message" in obj else obj["response"]
    return out
