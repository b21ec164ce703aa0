"""Nearest recorded request for a miss, and the diff that explains it.

Owns similarity: the only module that imports rapidfuzz. Pure: takes the store's recorded
requests as plain data and returns scores. Must not import aiohttp or the proxy.

Finding the nearest of many (100,000) recorded requests fast: `NearIndex` keeps a short
signature of each (message count and the last message) and the postings of its words. A
query counts shared words over its rarest words' postings only (bounded work), scores the
best few dozen signatures with rapidfuzz, and only the best `shortlist` of those are compared
on their whole markdown text. A full rapidfuzz scan of 100k bodies takes seconds.

A request is compared in its markdown form (front matter lines, then `### role` sections), the
same text a person reads in the session file, so the diff says "temperature changed" or "the
system prompt gained a space" in the terms of the file.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from rapidfuzz import fuzz, process

from rechat import sessionfile as sf


@dataclass(slots=True)
class Nearest:
    """The recorded request most like a missed one: its file, answer line and similarity (0..1).

    `text` is the recorded request in markdown; `compared` the missed one as it was compared
    with it (only the parameters the recording's front matter names), so that
    ``diff(text, compared)`` shows exactly what kept it from matching.
    """

    file: str
    line: int
    similarity: float
    text: str
    compared: str = ""


_WORD = re.compile(r"\w+")


def signature(messages: list) -> str:
    """Return the short signature of a request: its message count and last message (<= 200 chars)."""
    last = messages[-1] if messages else {}
    c = last.get("content") if isinstance(last, dict) else ""
    text = c if isinstance(c, str) else repr(c)
    return f"{len(messages)}|{text[:120]}{'|' + text[-60:] if len(text) > 120 else ''}"


class NearIndex:
    """Candidates for the nearest recorded request, found in bounded time.

    `add(messages, ref)` indexes one recorded request (`ref` is returned by `candidates`);
    `candidates(messages, limit)` returns up to `limit` refs, best first. Work per query is
    bounded by `budget` postings, whatever the number of requests indexed.
    """

    def __init__(self, budget: int = 20000) -> None:
        self.sigs: list[str] = []
        self.refs: list[Any] = []
        self.postings: dict[str, list[int]] = {}
        self.budget = budget

    def __len__(self) -> int:
        return len(self.refs)

    def add(self, messages: list, ref: Any) -> None:
        """Index a recorded request given by its messages."""
        sig = signature(messages)
        i = len(self.sigs)
        self.sigs.append(sig)
        self.refs.append(ref)
        for w in set(_WORD.findall(sig.lower())):
            self.postings.setdefault(w, []).append(i)

    def candidates(self, messages: list, limit: int = 8, pool: int = 48,
                   alive: Callable[[Any], bool] | None = None) -> list[Any]:
        """Return up to `limit` refs of recorded requests like `messages`, best first.

        `alive(ref)` filters out refs that no longer stand for a recorded request.
        """
        if not self.sigs:
            return []
        sig = signature(messages)
        lists = sorted((self.postings[w] for w in set(_WORD.findall(sig.lower()))
                        if w in self.postings), key=len)
        counts: Counter[int] = Counter()
        spent = 0
        for lst in lists:
            if spent and spent + len(lst) > self.budget:
                break
            counts.update(lst)
            spent += len(lst)
        ok = alive or (lambda ref: True)
        ids = [i for i, _ in counts.most_common(pool * 2) if ok(self.refs[i])][:pool]
        if len(ids) < limit and len(counts) > pool * 2:  # mostly dead refs at the top: dig
            ids = [i for i, _ in counts.most_common() if ok(self.refs[i])][:pool]
        if not ids:  # no shared word: scan the most recent ones (all of them, up to budget)
            ids = [i for i in range(max(0, len(self.sigs) - self.budget), len(self.sigs))
                   if ok(self.refs[i])]
        top = process.extract(sig, [self.sigs[i] for i in ids], scorer=fuzz.ratio, limit=limit)
        return [self.refs[ids[j]] for _, _, j in top]


def request_text(params: dict, messages: list) -> str:
    """Return a request in its markdown form: front matter, then one section per message."""
    try:
        return sf.render_chat(params, messages)
    except ValueError:
        return repr((params, messages))


def nearest(params: dict, messages: list,
            candidates: Iterable[tuple[str, dict, list, int]]) -> Nearest | None:
    """Return the candidate nearest to (params, messages), or None if there are none.

    `candidates` yields (file, params, messages, line) of recorded requests, already narrowed
    (`NearIndex.candidates`); each is compared on its whole markdown text. A parameter the
    candidate's front matter does not name matches any value, so it is left out.
    """
    best: Nearest | None = None
    for f, p, ms, line in candidates:
        t = request_text(p, ms)
        mine = request_text({k: v for k, v in params.items() if k in p}, messages)
        score = fuzz.ratio(mine, t) / 100.0
        if best is None or score > best.similarity:
            best = Nearest(f, line, score, t, mine)
    return best


def diff(recorded_text: str, request_text_: str, recorded_name: str = "recorded",
         request_name: str = "request") -> list[str]:
    """Return the unified diff lines from a recorded request's text to a missed request's."""
    return list(difflib.unified_diff(recorded_text.splitlines(), request_text_.splitlines(),
                                     recorded_name, request_name, lineterm="", n=2))
