"""The store: the sessions folders, their in-memory index, and atomic recording.

Owns which answer a request gets (exact lookup, play order) and where a new exchange is
written (appended to the conversation it continues, or a new file). Must not import aiohttp,
the proxy or anything above it; file watching lives in reload.py and calls `reload_file`.

Index. A chat answer is the assistant message at index i of a session; it answers the request
made of the session's params and messages[:i]. Its key is a hash chain over those messages
(h0 = path, h[k+1] = hash(h[k], canonical(message k))), so a request's key costs one pass over
its messages and the lookup is a dict access. Under one key, answers are grouped by the
session's params; a group matches when each of its params equals the request's (a parameter
missing from the front matter matches any value), the most specific group wins, and inside a
group answers play in recorded order, then the last repeats. Generic answers, and answers of
the readable forms (Responses, legacy completions, embeddings: forms.py), are keyed by
`fingerprint.fingerprint` of the whole request; a multipart request whose large parts are blob
files is keyed by the parts' hashes without reading the blobs.

Recording picks the form: chat sessions for chat completions, a readable form for the three
endpoints forms.py knows (a Responses request with `previous_response_id` X is appended to the
file holding response X when its params are the file's), the generic form for everything
else and for any exchange a form cannot hold exactly (checked by reading the text back).

Invariant: a file on disk is always whole (sessionfile.write_atomic); a file that fails to
parse keeps its last good version in the index and is listed in `errors`.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from rechat import answers, forms, ollama
from rechat import sessionfile as sf
from rechat.errors import ConfigError, SessionFormatError
from rechat.exchange import CHAT_PATH, Answer, Exchange, Request
from rechat.matching import NearIndex, Nearest, nearest
from rechat.fingerprint import (VOLATILE_FIELDS, canonical, clean_query, digest, fingerprint,
                                normalize_message, request_params)


def multipart_fingerprint(method: str, path: str, query: str,
                          parts: list[tuple[bytes, str]]) -> str:
    """Return `fingerprint.fingerprint` of a multipart request from its parts' (headers, sha256
    hex) pairs, without the parts' bytes (a test holds the two equal)."""
    key = digest(canonical([[h.decode("latin-1"), sha] for h, sha in parts]))
    return digest(f"{method.upper()} {path}?{clean_query(query)}\n{key}")


MATCH_MODES = ("default", "exact", "content")
REPEAT_MODES = ("last", "cycle", "first")


def chain(path: str, messages: Iterable) -> list[str]:
    """Return the hash chain of a message list: element k keys the request of messages[:k].

    Shape: ``len(messages) + 1`` hex digests; element 0 depends on `path` alone.
    """
    h = digest(path)
    out = [h]
    for m in messages:
        h = digest(h + "\n" + canonical(normalize_message(m)))
        out.append(h)
    return out


def key_messages(path: str, messages: list) -> list:
    """Return a chat session's messages as clients send them, the form answers are keyed by.

    The chat form itself, but for Ollama's /api/chat, whose messages are mapped back to
    Ollama's shape (ollama.from_chat), so that a request matches whatever way its file wrote
    them (tool call arguments spaced or not, `#### thinking` or `#### reasoning_content`).
    """
    return ollama.request_messages(messages) if ollama.is_ollama_chat(path) else messages


def shown_messages(path: str, messages: list) -> list:
    """Return a chat request's messages in the chat form a session file shows them in."""
    return ollama.chat_messages(messages) if ollama.is_ollama_chat(path) else messages


def params_key(params: dict) -> str:
    """Return the digest identifying a params dict (its canonical JSON)."""
    return digest(canonical(params))


@dataclass(slots=True)
class Group:
    """The answers recorded for one request under one set of params (the front matter)."""

    params: dict
    canon: dict[str, str]
    answers: list[Answer] = field(default_factory=list)


@dataclass(slots=True)
class Hit:
    """A lookup result: the answer to serve, and its place among the group's answers."""

    answer: Answer
    position: int
    count: int


@dataclass(slots=True)
class _File:
    session: sf.Session
    text: str
    keys: list[str] = field(default_factory=list)  # index keys this file contributed to
    tips: list[str] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)


def _epoch(meta: dict) -> float:
    # `at` is the ISO 8601 time the exchange was recorded; hand-written answers have none.
    at = meta.get("at")
    if isinstance(at, str):
        try:
            return datetime.fromisoformat(at).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def slug(text: str, limit: int = 48) -> str:
    """Return a file-name slug of `text`: ASCII letters, digits and dashes, at most `limit`."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    t = re.sub(r"[^a-z0-9]+", "-", t).strip("-")
    return t[:limit].rstrip("-") or "session"


def _first_user_text(messages: list) -> str:
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                for p in c:
                    if isinstance(p, dict) and isinstance(p.get("text"), str):
                        return p["text"]
    return ""


class Store:
    """The sessions folders and their index.

    `dirs` are the folders loaded (recursively, `*.md`, skipping dot-files and dot-folders);
    new sessions are written to `dirs[0]`. `on_error(err)` is called with each
    `SessionFormatError` met while loading or reloading. `match` is one of `MATCH_MODES`,
    `repeat` one of `REPEAT_MODES` (docs/usage.md, "Matching"); others raise ConfigError.
    """

    def __init__(self, dirs: list[str], on_error: Callable[[SessionFormatError], None] | None = None,
                 match: str = "default", repeat: str = "last"):
        if not dirs:
            raise ValueError("the store needs at least one sessions folder")
        if match not in MATCH_MODES:
            raise ConfigError(f"unknown match mode {match!r}; valid: {', '.join(MATCH_MODES)}")
        if repeat not in REPEAT_MODES:
            raise ConfigError(f"unknown repeat mode {repeat!r}; valid: {', '.join(REPEAT_MODES)}")
        self.match, self.repeat = match, repeat
        self.dirs = [os.path.abspath(d) for d in dirs]
        self.on_error = on_error or (lambda e: None)
        self.files: dict[str, _File] = {}
        self.errors: dict[str, SessionFormatError] = {}
        self.chat: dict[str, dict[str, Group]] = {}
        self.generic: dict[str, list[Answer]] = {}
        self.tips: dict[str, str] = {}
        self.plays: dict[str, int] = {}
        self._writing: dict[str, asyncio.Lock] = {}
        self._queued: dict[str, int] = {}  # writes scheduled and not finished, per file
        # Nearest-match indexes per path, kept up to date as answers are indexed. A ref names
        # the _File it came from; refs of a file since reloaded or removed are skipped.
        self._near: dict[str, NearIndex] = {}
        self._near_dead: dict[str, int] = {}  # refs of reloaded/removed files, per path
        self._pending: set[asyncio.Task] = set()
        self._names: dict[str, int] = {}  # file-name base -> how many used this run
        self._keys: OrderedDict[tuple[str, bytes], tuple[str, dict[str, str]]] = OrderedDict()
        self.response_ids: dict[str, str] = {}  # Responses API response id -> its session file
        self._blobs: dict[str, dict[str, bytes]] = {}  # file -> blobs to write before it

    # -- loading ---------------------------------------------------------------------------

    def session_files(self) -> list[str]:
        """Return every session file under the folders, sorted by path."""
        out = []
        for d in self.dirs:
            for root, subdirs, names in os.walk(d):
                subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
                out += [os.path.join(root, n) for n in names
                        if n.endswith(".md") and not n.startswith(".")]
        return sorted(out)

    def load(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Load every session file; return how many loaded. `progress(done, total)` is called."""
        files = self.session_files()
        for i, f in enumerate(files, 1):
            self.reload_file(f)
            if progress:
                progress(i, len(files))
        return len(self.files)

    def reload_file(self, file: str) -> bool:
        """Re-read `file` (created, edited or deleted) and re-index it; True if the index changed.

        A file that no longer parses keeps its last good version and is reported to `on_error`.
        """
        file = os.path.abspath(file)
        if self._queued.get(file):
            return False  # our own write is on its way; the disk is about to hold it
        try:
            with open(file, encoding="utf-8", newline="") as f:
                text = f.read()
        except FileNotFoundError:
            self.errors.pop(file, None)
            if file in self.files:
                self._unindex(file)
                del self.files[file]
                return True
            return False
        except (OSError, UnicodeDecodeError) as e:
            self._error(SessionFormatError(file, 0, f"cannot read: {e}"))
            return False
        old = self.files.get(file)
        if old is not None and old.text == text:
            return False
        try:
            session = sf.parse(text, file)
        except SessionFormatError as e:
            self._error(e)
            return False
        self.errors.pop(file, None)
        if old is not None:
            self._unindex(file)
        self.files[file] = _File(session, text)
        self._index(file)
        return True

    def _error(self, e: SessionFormatError) -> None:
        self.errors[e.path] = e
        self.on_error(e)

    def _index(self, file: str) -> None:
        entry = self.files[file]
        s = entry.session
        if s.kind == "generic":
            for i, ex in enumerate(s.exchanges):
                headers = [tuple(h) for h in ex.meta.get("headers", [])
                           if isinstance(h, list) and len(h) == 2]
                ans: Answer
                if ex.form is not None:
                    fp = fingerprint(s.method, s.path, s.query, b"", ex.request)
                    ans = answers.FormAnswer(
                        session=file, index=i, line=ex.line, kind=ex.form, meta=ex.meta,
                        status=ex.status, recorded_at=_epoch(ex.meta), headers=headers,
                        request=ex.request, data=ex.answer)
                    rid = ex.answer.get("id") if isinstance(ex.answer, dict) else None
                    if ex.form == "responses" and isinstance(rid, str):
                        self.response_ids[rid] = file
                        entry.response_ids.append(rid)
                else:
                    fp = (multipart_fingerprint(s.method, s.path, s.query, ex.parts)
                          if ex.parts is not None else
                          fingerprint(s.method, s.path, s.query, ex.request_body,
                                      _json_or_none(ex.request_body)))
                    ans = Answer(session=file, index=i, line=ex.line, kind="generic", meta=ex.meta,
                                 status=ex.status, body=ex.body, recorded_at=_epoch(ex.meta),
                                 headers=headers)
                _insert(self.generic.setdefault(fp, []), ans)
                entry.keys.append(fp)
            return
        hashes = chain(s.path, key_messages(s.path, s.messages))
        params = {k: v for k, v in s.params.items() if k not in VOLATILE_FIELDS and v is not None}
        pk = params_key(params)
        canon = {k: canonical(v) for k, v in params.items()}
        n = 0
        for i, m in enumerate(s.messages):
            if m.get("role") != "assistant" or i == 0:
                continue
            meta = s.responses.get(i, {})
            ans = Answer(session=file, index=n, line=s.lines[i], kind="chat", message=m, meta=meta,
                         recorded_at=_epoch(meta))
            self._near_index(s.path).add(s.messages[:i], (file, s.lines[i], params, s.messages,
                                                          i, entry))
            n += 1
            groups = self.chat.setdefault(hashes[i], {})
            g = groups.get(pk)
            if g is None:
                g = groups[pk] = Group(params, canon)
            _insert(g.answers, ans)
            entry.keys.append(hashes[i])
        if s.messages and s.messages[-1].get("role") == "assistant":
            tip = pk + hashes[-1]
            self.tips[tip] = file
            entry.tips.append(tip)

    def _unindex(self, file: str) -> None:
        entry = self.files[file]
        if entry.session.kind == "chat":
            path = entry.session.path
            self._near_dead[path] = self._near_dead.get(path, 0) + len(set(entry.keys))
            near = self._near.get(path)
            if near is not None and self._near_dead[path] * 2 > len(near) + 64:
                self._rebuild_near(path, without=file)
        for k in set(entry.keys):
            if entry.session.kind == "generic":
                lst = [a for a in self.generic.get(k, []) if a.session != file]
                if lst:
                    self.generic[k] = lst
                else:
                    self.generic.pop(k, None)
                continue
            groups = self.chat.get(k, {})
            for pk in list(groups):
                groups[pk].answers = [a for a in groups[pk].answers if a.session != file]
                if not groups[pk].answers:
                    del groups[pk]
            if not groups:
                self.chat.pop(k, None)
        for t in entry.tips:
            if self.tips.get(t) == file:
                del self.tips[t]
        for rid in entry.response_ids:
            if self.response_ids.get(rid) == file:
                del self.response_ids[rid]
        entry.keys, entry.tips, entry.response_ids = [], [], []

    # -- lookup ----------------------------------------------------------------------------

    def lookup(self, req: Request, play: bool = True) -> Hit | None:
        """Return the answer for `req`, or None on a miss.

        With `play`, the group's play count advances: answers are served in recorded order,
        then, by `repeat`, the last one repeats ("last"), the order starts over ("cycle") or the
        first one repeats ("first").
        """
        gid, answers = self._candidates(req)
        if not answers:
            return None
        n = self.plays.get(gid, 0)
        if play:
            self.plays[gid] = n + 1
        if n < len(answers):
            pos = n
        else:
            pos = {"last": len(answers) - 1, "cycle": n % len(answers), "first": 0}[self.repeat]
        return Hit(answers[pos], pos, len(answers))

    def _candidates(self, req: Request) -> tuple[str, list[Answer]]:
        if req.is_chat:
            gid, found = self._chat_candidates(req)
            if found:
                return gid, found
        # Everything else, and chat requests kept in the generic form (store.record's fallback).
        fp = fingerprint(req.method, req.path, req.query, req.body, req.json)
        return fp, self.generic.get(fp, [])

    def _request_key(self, req: Request) -> tuple[str, dict[str, str]]:
        """Return a chat request's index key and its params' canonical JSON, by parameter name.

        Both depend on the path and body bytes alone, so they are kept in a bounded LRU keyed
        by them: a benchmark or test replaying the same requests hashes each body once.
        """
        ck = (req.path, req.body)
        got = self._keys.get(ck)
        if got is not None:
            self._keys.move_to_end(ck)
            return got
        body = req.json
        got = (chain(req.path, body["messages"])[-1],
               {k: canonical(v) for k, v in request_params(body).items()})
        self._keys[ck] = got
        if len(self._keys) > 4096:
            self._keys.popitem(last=False)
        return got

    def _chat_candidates(self, req: Request) -> tuple[str, list[Answer]]:
        key, rc = self._request_key(req)
        groups = self.chat.get(key)
        if not groups:
            return "", []
        if self.match == "content":
            # Only the messages count: every group's answers, in recorded order.
            merged = sorted((a for g in groups.values() for a in g.answers), key=_order)
            return key, merged
        if self.match == "exact":
            return self._exact(key, groups, req.json)
        best: tuple[str, Group] | None = None
        for pk, g in groups.items():
            ok = True
            for k, v in g.canon.items():
                if rc.get(k) != v:
                    ok = False
                    break
            if ok and (best is None or len(g.canon) > len(best[1].canon)):
                best = (pk, g)
        return (key + best[0], best[1].answers) if best else ("", [])

    def _exact(self, key: str, groups: dict[str, Group], body: dict) -> tuple[str, list[Answer]]:
        # Every body field counts: the params equal the front matter's exactly, and the volatile
        # fields equal those the answer was recorded with.
        pk = params_key(request_params(body))
        g = groups.get(pk)
        if g is None:
            return "", []
        volatile = {k: body[k] for k in body if k in VOLATILE_FIELDS}
        vk = canonical(volatile)
        answers = [a for a in g.answers if canonical(a.meta.get("request", {})) == vk]
        return key + pk + digest(vk), answers

    def remember(self, exchange: Exchange, source: str, index: int = 0) -> bool:
        """Index `exchange` as an answer in memory only (from a dump); True if it was usable.

        `source` names where it came from (shown as the answer's session), `index` its position
        there. Failed exchanges (non-2xx) are not answers and return False.
        """
        req, resp = exchange.request, exchange.response
        if not 200 <= resp.status < 300:
            return False
        if req.is_chat:
            got = answers.chat_answer(exchange)
            if got is not None:
                message, meta = got
                body = req.json
                params = request_params(body)
                pk = params_key(params)
                groups = self.chat.setdefault(chain(req.path, body["messages"])[-1], {})
                g = groups.get(pk) or groups.setdefault(
                    pk, Group(params, {k: canonical(v) for k, v in params.items()}))
                _insert(g.answers, Answer(session=source, index=index, line=0, kind="chat",
                                          message=message, meta=meta, recorded_at=exchange.recorded_at))
                shown = shown_messages(req.path, body["messages"])
                self._near_index(req.path).add(shown, (
                    source, 0, params, shown, len(shown), None))
                return True
        meta = answers.generic_meta(exchange)
        fp = fingerprint(req.method, req.path, req.query, req.body, req.json)
        cap = self._capture(exchange, meta)
        headers = [tuple(h) for h in meta["headers"]]
        if cap is not None:
            form, c = cap
            data = forms.Embeddings(c.answer, None) if form == "embedding" else c.answer
            _insert(self.generic.setdefault(fp, []), answers.FormAnswer(
                session=source, index=index, line=0, kind=form, meta=c.turn.meta or meta,
                status=resp.status, headers=headers, recorded_at=exchange.recorded_at,
                request=c.request, data=data))
            return True
        _insert(self.generic.setdefault(fp, []), Answer(
            session=source, index=index, line=0, kind="generic", meta=meta, status=resp.status,
            headers=headers, body=resp.body, recorded_at=exchange.recorded_at))
        return True

    def answer_at(self, file: str, line: int) -> Answer | None:
        """Return the chat answer whose heading is at `line` of session `file`, or None."""
        entry = self.files.get(file)
        if entry is None or line not in entry.session.lines:
            return None
        s = entry.session
        i = s.lines.index(line)
        for g in self.chat.get(chain(s.path, key_messages(s.path, s.messages[:i]))[-1],
                               {}).values():
            for a in g.answers:
                if a.session == file and a.line == line:
                    return a
        return None

    def _near_index(self, path: str) -> NearIndex:
        near = self._near.get(path)
        if near is None:
            near = self._near[path] = NearIndex()
        return near

    def _rebuild_near(self, path: str, without: str) -> None:
        # Drop the dead refs once they are the majority: re-add the live ones.
        old, new = self._near[path], NearIndex()
        for ref in old.refs:
            f, _line, _p, ms, i, entry = ref
            if f != without and self._alive(ref):
                new.add(ms[:i], ref)
        self._near[path] = new
        self._near_dead[path] = 0

    def nearest(self, req: Request) -> Nearest | None:
        """Return the recorded chat request nearest to `req` (a chat request), or None.

        Bounded work per call whatever the number of answers (see matching.NearIndex).
        """
        near = self._near.get(req.path)
        if near is None:
            return None
        body = req.json
        messages = shown_messages(req.path, body["messages"])
        refs = near.candidates(messages, alive=self._alive)
        return nearest(request_params(body), messages,
                       [(f, p, ms[:i], line) for f, line, p, ms, i, _ in refs])

    def _alive(self, ref: tuple) -> bool:
        entry = ref[5]
        return entry is None or self.files.get(ref[0]) is entry

    def requests(self, path: str) -> Iterable[tuple[str, dict, list, int]]:
        """Yield (file, params, messages, line) for every chat request answered under `path`.

        `messages` are the messages of the request; `line` is the 1-based line of its answer.
        """
        for file, entry in self.files.items():
            s = entry.session
            if s.kind != "chat" or s.path != path:
                continue
            for i, m in enumerate(s.messages):
                if i and m.get("role") == "assistant":
                    yield file, s.params, s.messages[:i], s.lines[i]

    # -- recording -------------------------------------------------------------------------

    def record(self, exchange: Exchange, answer: dict | None = None, meta: dict | None = None) -> str:
        """Index `exchange` now and write it to disk in the background; return the file.

        For a chat request, `answer` is the assistant message and `meta` the hidden response
        metadata: the exchange is appended to the session whose last message it continues
        (same params), or starts a new file. Any other exchange gets a generic file of its own.
        Await `flush()` to wait for the disk.
        """
        req = exchange.request
        if req.is_chat and answer is not None:
            file = self._record_chat(req, answer, meta or {})
            if file is not None:
                return file
            meta = answers.generic_meta(exchange)
        if meta is None:
            meta = answers.generic_meta(exchange)
        cap = self._capture(exchange, meta)
        if cap is not None:
            file = self._record_form(exchange, *cap)
            if file is not None:
                return file
        return self._record_generic(exchange, meta)

    def _capture(self, exchange: Exchange, meta: dict) -> tuple[str, forms.Capture] | None:
        # The readable form of a 2xx exchange of a form's endpoint, or None.
        req, resp = exchange.request, exchange.response
        form = forms.form_of(req.method, req.path)
        if form is None or not isinstance(req.json, dict) or not 200 <= resp.status < 300:
            return None
        body = None if resp.events is not None else resp.json
        if resp.events is None and not isinstance(body, dict):
            return None
        cap = forms.capture(form, req.json, body, resp.events, meta, resp.event_ms)
        return (form, cap) if cap is not None else None

    def _record_form(self, exchange: Exchange, form: str, cap: forms.Capture) -> str | None:
        # Returns None when the text does not read back as the exchange (the caller then
        # records it in the generic form).
        req = exchange.request
        prev = cap.request.get("previous_response_id") if form == "responses" else None
        target = self.response_ids.get(prev) if isinstance(prev, str) else None
        if target is not None and target in self.files and not (
                self._queued.get(target) or self._disk_holds(target)):
            self.reload_file(target)  # edited since we read it: take their version first
            target = self.response_ids.get(prev)
        if target is not None and (
                target not in self.files or target in self.errors
                or self.files[target].session.form != form
                or canonical(self.files[target].session.params) != canonical(cap.params)
                or not (self._queued.get(target) or self._disk_holds(target))):
            target = None
        try:
            if target is not None:
                old = self.files[target].text
                if "\r\n" in old and old.count("\r\n") == old.count("\n"):
                    old = old.replace("\r\n", "\n")
                text = old.rstrip("\n") + "\n" + "\n".join(sf.render_turns([cap.turn])) + "\n"
            else:
                target = self._new_name(forms.title_of(form, cap.request))
                query = clean_query(req.query)
                endpoint = f"{req.method} {req.path}" + (f"?{query}" if query else "")
                text = sf.render_form(form, endpoint, cap.params, [cap.turn])
            got = sf.parse(text, target)
        except (ValueError, SessionFormatError):
            return None
        if not got.exchanges:
            return None
        last = got.exchanges[-1]
        if not forms.matches(form, last.request, last.answer, cap):
            return None
        self._commit(target, text, got)
        return target

    def _record_chat(self, req: Request, answer: dict, meta: dict) -> str | None:
        # Returns None when the conversation has no faithful markdown form (an unknown role,
        # say): the caller records the exchange in the generic form instead.
        body = req.json
        params = request_params(body)
        pk = params_key(params)
        hashes = chain(req.path, body["messages"])
        messages = shown_messages(req.path, body["messages"])
        target = self._tip(pk, hashes, messages)
        if target is not None and not self._queued.get(target) and not self._disk_holds(target):
            # Someone edited the file since we read it: take their version into account first.
            self.reload_file(target)
            target = self._tip(pk, hashes, messages)
        if target is not None and (target in self.errors or not (
                self._queued.get(target) or self._disk_holds(target))):
            target = None  # being edited (broken or unsaved by us): never write over it
        try:
            if target is not None:
                entry = self.files[target]
                old = entry.text
                if "\r\n" in old and old.count("\r\n") == old.count("\n"):
                    old = old.replace("\r\n", "\n")  # reads the same; appending LF keeps it one style
                new = list(messages[len(entry.session.messages):]) + [answer]
                expected = entry.session.messages + new
                text = old.rstrip("\n") + "\n" + "\n".join(
                    sf.render_messages(new, {len(new) - 1: meta}, 0)) + "\n"
            else:
                target = self._new_name(_first_user_text(messages))
                expected = list(messages) + [answer]
                endpoint = None if req.path == CHAT_PATH else f"{req.method} {req.path}"
                text = sf.render_chat(params, expected, {len(messages): meta}, endpoint)
            got = sf.parse(text, target)
        except (ValueError, SessionFormatError):
            return None
        if [normalize_message(m) for m in got.messages] != [normalize_message(m) for m in expected]:
            return None
        if ollama.is_ollama_chat(req.path) and (
                [canonical(normalize_message(m)) for m in key_messages(req.path, got.messages)]
                != [canonical(normalize_message(m))
                    for m in [*body["messages"], ollama.from_chat(answer)]]):
            return None  # the mapping lost something: keep the exchange exactly, generically
        shown = got.responses.get(len(got.messages) - 1, {}).get("choices")
        if [normalize_message(m) for m in shown or []] != [
                normalize_message(m) for m in meta.get("choices") or []]:
            return None
        self._commit(target, text, got)
        return target

    def _tip(self, pk: str, hashes: list[str], messages: list) -> str | None:
        # The file whose last message is the latest assistant message of `messages`.
        for p in range(len(messages) - 1, 0, -1):
            if isinstance(messages[p], dict) and messages[p].get("role") == "assistant":
                target = self.tips.get(pk + hashes[p + 1])
                if target is not None and target in self.files:
                    return target
        return None

    def _disk_holds(self, file: str) -> bool:
        entry = self.files.get(file)
        try:
            with open(file, encoding="utf-8", newline="") as f:
                return entry is not None and f.read() == entry.text
        except (OSError, UnicodeDecodeError):
            return False

    def _record_generic(self, exchange: Exchange, meta: dict) -> str:
        req = exchange.request
        query = clean_query(req.query)
        endpoint = f"{req.method} {req.path}" + (f"?{query}" if query else "")
        ex = sf.GenericExchange(request_body=req.body, status=exchange.response.status,
                                body=exchange.response.body, meta=meta)
        target = self._new_name(f"{req.method} {req.path.removeprefix('/v1/')}")
        blobs: dict[str, bytes] = {}
        text = sf.render_generic(endpoint, [ex], blobs)
        if blobs:
            self._blobs[target] = blobs
        self._commit(target, text)
        return target

    def _commit(self, file: str, text: str, session: sf.Session | None = None) -> None:
        session = session or sf.parse(text, file)
        if file in self.files:
            self._unindex(file)
        self.files[file] = _File(session, text)
        self._index(file)
        self._queued[file] = self._queued.get(file, 0) + 1
        task = asyncio.get_running_loop().create_task(self._write(file, text))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, file: str, text: str) -> None:
        try:
            async with self._writing.setdefault(file, asyncio.Lock()):
                entry = self.files.get(file)
                if entry is not None and entry.text != text:
                    return  # a newer version of this file is queued behind us; it wins
                blobs = self._blobs.pop(file, None)
                if blobs:  # before the session, so that it never names a missing blob
                    folder = os.path.dirname(file)
                    for sha, data in blobs.items():
                        # One writer per blob: the same upload recorded twice is written once.
                        async with self._writing.setdefault("blob:" + sha, asyncio.Lock()):
                            await asyncio.to_thread(sf.write_blob, folder, sha, data)
                await asyncio.to_thread(sf.write_atomic, file, text)
        finally:
            n = self._queued.get(file, 1) - 1
            if n:
                self._queued[file] = n
            else:
                self._queued.pop(file, None)

    def is_own_write(self, file: str) -> bool:
        """True when `file` is being written by the store or holds what it last wrote or read.

        A watcher skips such events, so the store's own writes never trigger a reload.
        """
        file = os.path.abspath(file)
        return bool(self._queued.get(file)) or self._disk_holds(file)

    async def flush(self) -> None:
        """Wait until every recorded exchange is on disk."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _new_name(self, title: str) -> str:
        now = datetime.now(timezone.utc).astimezone()
        base = f"{now:%Y-%m-%d_%H-%M-%S}_{slug(title)}"
        folder = self.dirs[0]
        n = self._names.get(base, 0)  # the last suffix used for this base, this run
        name = base if n == 0 else f"{base}_{n + 1}"
        while os.path.exists(os.path.join(folder, name + ".md")):
            n += 1
            name = f"{base}_{n + 1}"
        self._names[base] = n + 1
        return os.path.join(folder, name + ".md")

    # -- summary ---------------------------------------------------------------------------

    @property
    def answer_count(self) -> int:
        """How many answers the index holds (chat and generic)."""
        return (sum(len(g.answers) for gs in self.chat.values() for g in gs.values())
                + sum(len(a) for a in self.generic.values()))


def _natural(name: str) -> list:
    # `x_10.md` sorts after `x_2.md`: recordings in the same second keep their order.
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _order(a: Answer) -> tuple:
    return (a.recorded_at, _natural(a.session), a.index)


def _insert(answers: list[Answer], ans: Answer) -> None:
    # O(log n) comparisons; recording appends in order, so this is usually the end.
    if not answers or _order(answers[-1]) <= _order(ans):
        answers.append(ans)
    else:
        bisect.insort(answers, ans, key=_order)


def _json_or_none(body: bytes):
    if not body:
        return None
    import json
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


__all__ = ["Store", "Hit", "Group", "chain", "slug", "MATCH_MODES", "REPEAT_MODES"]
