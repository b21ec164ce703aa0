"""Nearest recorded request for a miss, and the diff that explains it.

Owns similarity: the only module that imports rapidfuzz. Pure: takes the store's recorded
requests as plain data and returns scores. Must not import aiohttp or the proxy.

A request is compared in its markdown form (front matter lines, then `### role` sections), the
same text a person reads in the session file, so the diff says "temperature changed" or "the
system prompt gained a space" in the terms of the file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

from rapidfuzz import fuzz, process

from rechat import sessionfile as sf


@dataclass(slots=True)
class Nearest:
    """The recorded request most like a missed one: its file, answer line and similarity (0..1)."""

    file: str
    line: int
    similarity: float
    text: str


def request_text(params: dict, messages: list) -> str:
    """Return a request in its markdown form: front matter, then one section per message."""
    try:
        return sf.render_chat(params, messages)
    except ValueError:
        return repr((params, messages))


def nearest(params: dict, messages: list,
            recorded: Iterable[tuple[str, dict, list, int]], shortlist: int = 8) -> Nearest | None:
    """Return the recorded request nearest to (params, messages), or None if there are none.

    `recorded` yields (file, params, messages, line) as `Store.requests` does. Candidates are
    ranked first on a short signature (message count and the last message) and only the best
    `shortlist` are scored on their whole markdown text. A parameter the candidate's front
    matter does not name matches any value, so it is left out of the comparison.
    """
    items = list(recorded)
    if not items:
        return None

    def signature(ms: list) -> str:
        last = ms[-1] if ms else {}
        c = last.get("content") if isinstance(last, dict) else ""
        return f"{len(ms)}\n{c if isinstance(c, str) else c!r}"[:2000]

    top = process.extract(signature(messages), [signature(ms) for _, _, ms, _ in items],
                          scorer=fuzz.ratio, limit=shortlist)
    best: Nearest | None = None
    for _, _, i in top:
        f, p, ms, line = items[i]
        t = request_text(p, ms)
        seen = {k: v for k, v in params.items() if k in p}
        score = fuzz.ratio(request_text(seen, messages), t) / 100.0
        if best is None or score > best.similarity:
            best = Nearest(f, line, score, t)
    return best


def diff(recorded_text: str, request_text_: str, recorded_name: str = "recorded",
         request_name: str = "request") -> list[str]:
    """Return the unified diff lines from a recorded request's text to a missed request's."""
    return list(difflib.unified_diff(recorded_text.splitlines(), request_text_.splitlines(),
                                     recorded_name, request_name, lineterm="", n=2))
