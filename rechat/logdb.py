"""The request log: one SQLite row per request rechat handles, written off the event loop.

Owns the log's schema, its writer thread, retention and the read queries behind the web API.
Stdlib only (`sqlite3`, `threading`, `queue`, `hashlib`); it reads `ProxyEvent`s by their
fields (duck typing) and must not import aiohttp, the proxy, the store or the web layer.

Schema. `MIGRATIONS` is an ordered list of named functions, as in simonw/llm's
`migrations.py`: each runs once, in order, in its own transaction, and is recorded in the
`_migrations` table; `PRAGMA user_version` holds how many ran (the schema version). A database
written by a newer rechat (a higher version than this one knows) is refused with `LogError`.

    log_rows  one row per request, what varies from one request to the next: the process
              and request ids, when (at), kind, status, score, which answer was played
              (play, plays), how long it took (ms, ttfb_ms), sizes, the client address,
              detail, redacted response headers, the response body's hash; and its shape
    shapes    what repeats: the request (method, path, clean query, model asked, stream,
              prompt preview, allow-listed headers, the body's hash), the answer (session
              file, exchange, line, served model, reply preview, tokens, saved_ms) and the
              match. Every replay of one answer to one request has the same shape, so a
              thousand replays are a thousand narrow rows and one shape. Ids grow; a writer
              looks a shape up by content (in its session) before adding it
    requests  a VIEW joining the two back: the 36 columns of the table it replaced
              (migration m003), same names, same meanings; the read queries use it (but
              counts that need no column of shapes, which read log_rows); read-only
    bodies    request and response bodies by content (BLAKE2b-128): a body sent a thousand
              times is kept once; at most `BODY_LIMIT` bytes of each
    log_state how many prunes ran, so that every writer learns when shapes and bodies it
              wrote may have been deleted

A replay's response is not kept: the session file holds it, and the web API rebuilds it from
the session (so it shows the answer as the file holds it now).

Writing. `put(event)` turns a finished event into a shape and a row (tuples; what depends
only on the replayed answer or on the request body is computed once per answer or body),
numbers the shape (one number per distinct shape, from a dict) and appends the three to a
queue: a few microseconds on the event loop, and the event is freed at once. A writer thread
inserts, in one transaction, the shapes it has not written yet (by number), then the queued
rows, with multi-row INSERT statements (sqlite3 hands the GIL over around every statement:
one statement per row would be one forced switch of the event loop per row), and hands the
rows to `on_rows` (the web UI's live stream). Bodies are deduplicated by hash. A repeated
replay costs the writer a narrow row only (about a third of the 36-column row it replaced),
inserted with 11 parameters (`_NARROW_COLUMNS`: its run, kind and score are in the
statement).
`put` queues a replay's row narrow already, and the writer adds each row's values and shape
id to one flat parameter list per statement: no per-row tuple is built, sliced or flattened
on either side, and a narrow row of a shape already written skips the bodies (the writer's
share of a replayed row, 256 to a batch: 23.1k instructions before these three and the score
in the statement, 18.4k after).

When it writes (write-behind, as loggers that must not slow the code they watch do): while
someone watches the live stream, `flush_s` after the first row of a batch. Otherwise rows
wait while the proxy is busy, and are written once no request has ended for `idle_s`, or the
oldest waiting row is `max_delay_s` old, or `high_water` rows wait, or a reader asks (every
read method first has what is queued written, so a query never misses a finished request).
On a machine whose cores the proxy and its client already fill, an SQLite insert costs the
proxy about twice its own CPU time (bench/bench_log.py, docs/performance.md); a burst of
requests (a test suite, a benchmark of a workflow) then pays nothing for the log until it
pauses, and sustained load pays for it every `high_water` rows. If the disk falls behind by
more than `max_pending` rows, new rows are dropped and counted (`dropped`), so the proxy never
waits for the log.

Retention. Rows older than `max_age_days` are deleted when the log opens and then hourly,
with the shapes no row refers to any more and then the bodies no shape or row refers to;
when anything was deleted the database is vacuumed. `max_age_days <= 0` keeps rows forever.

Secrets. No request header is stored unless it is on `REQUEST_HEADERS` (none of which can
carry a credential); response headers go through `fingerprint.redact_headers`; query strings
through `clean_query`. Bodies are stored as sent (an API key never travels in a body).
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import queue
import re
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable

from rechat.fingerprint import clean_query, is_secret_header, redact_headers

log = logging.getLogger("rechat")

BODY_LIMIT = 1 << 20  # bytes of each body kept in `bodies`
PREVIEW = 200  # characters of the prompt and reply previews
KINDS = ("replay", "record", "forward", "miss", "error")
# Request headers worth keeping: they say which client sent the request, never who.
REQUEST_HEADERS = frozenset({
    "content-type", "content-length", "accept", "accept-encoding", "user-agent",
    "openai-beta", "openai-organization", "openai-project", "x-stainless-lang",
    "x-stainless-package-version", "x-stainless-os", "x-stainless-arch", "x-stainless-runtime",
    "x-stainless-runtime-version", "x-stainless-retry-count", "x-stainless-async",
    "x-stainless-read-timeout", "x-stainless-timeout",
})
PRUNE_EVERY_S = 3600.0


class LogError(Exception):
    """The log database cannot be used (unreadable, or written by a newer rechat)."""


# ---------------------------------------------------------------------------------------------
# Schema

MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = []


def migration(fn: Callable[[sqlite3.Connection], None]):
    """Register `fn` as the next migration, under its function name (never rename one)."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_requests(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,      -- grows; retention deletes the oldest rows only
            run TEXT NOT NULL,           -- the rechat process (start time and pid)
            req INTEGER NOT NULL,        -- the request's id inside that process
            at REAL NOT NULL,            -- arrival, epoch s
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            query TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,          -- replay | record | forward | miss | error
            status INTEGER,
            model TEXT,                  -- the model the request asked for
            served_model TEXT,           -- the model the response names
            stream INTEGER NOT NULL DEFAULT 0,
            match TEXT NOT NULL DEFAULT 'none',  -- exact | fuzzy | nearest | none
            score REAL,                  -- 1 when exact; else similarity of the nearest recording
            play INTEGER,                -- replay: which of the recorded answers (1-based)
            plays INTEGER,               -- replay: how many answers the request has
            ms REAL,                     -- arrival to the end of the reply
            ttfb_ms REAL,                -- to the first byte (upstream's, when forwarded)
            req_bytes INTEGER,
            resp_bytes INTEGER,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            saved_ms REAL,               -- replay: the upstream time the recording took
            session TEXT,                -- the session file (absolute path)
            exchange INTEGER,            -- 0-based answer index in that file
            line INTEGER,                -- 1-based line of that answer
            client TEXT,
            detail TEXT,
            prompt TEXT,                 -- preview of the last request message
            reply TEXT,                  -- preview of the answer
            req_headers TEXT,            -- "Name: value" lines, allow-listed
            resp_headers TEXT,           -- "Name: value" lines, redacted; NULL for a replay
            req_body BLOB,               -- bodies.hash of the request body
            resp_body BLOB               -- bodies.hash of the response body; NULL for a replay
        )""")
    db.execute("""
        CREATE TABLE bodies (
            hash BLOB PRIMARY KEY,       -- BLAKE2b-128 of the whole body
            size INTEGER NOT NULL,       -- its length; more than length(data) when truncated
            data BLOB NOT NULL
        ) WITHOUT ROWID""")


@migration
def m002_indexes(db: sqlite3.Connection) -> None:
    # Two indexes only: each one costs every insert. Filters on kind or model walk the
    # newest rows first and stop at a page; time ranges and sessions are the selective ones.
    db.execute("CREATE INDEX requests_at ON requests(at)")
    db.execute("CREATE INDEX requests_session ON requests(session, id)")


@migration
def m003_shapes(db: sqlite3.Connection) -> None:
    # A row of `requests` was 36 columns, and for a replay (the common case: the same request
    # answered from the same recorded answer again and again) half of them repeat: the request
    # (method, path, query, models, stream, prompt, headers, body), the answer (session,
    # exchange, line, reply, tokens, saved_ms) and how it matched. Those are stored once per
    # distinct combination in `shapes`; a row of `log_rows` holds what varies per request and
    # the id of its shape. The view `requests` joins them back under the old names, so every
    # query (ours and the user's) reads as before.
    #
    # A shape's key is an INTEGER id given in insertion order, not a hash of its content:
    # the table and the index on `log_rows(shape)` then grow at their right edge (a new shape
    # touches the last pages), and a row refers to its shape in 1-3 bytes. Keyed by a hash,
    # every new shape (every forwarded or recorded request) lands on a random page of a table
    # of ~500-byte rows: 25-55 us per insert instead of ~9 measured here (and a unique index
    # on a hash next to the id costs 2-10 us more per new shape). So a writer that meets a
    # shape for the first time looks it up by content among the shapes of its session (the
    # index below), and inserts it only when it is not there: a restarted or second rechat
    # reuses the shapes of the replays it repeats. Shapes without a session (forwarded
    # requests, errors) are not looked up: another process stores its own copy of those.
    db.execute("""
        CREATE TABLE shapes (
            id INTEGER PRIMARY KEY,      -- grows; see above
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            query TEXT NOT NULL DEFAULT '',
            model TEXT,
            served_model TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            match TEXT NOT NULL DEFAULT 'none',
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            saved_ms REAL,
            session TEXT,
            exchange INTEGER,
            line INTEGER,
            prompt TEXT,
            reply TEXT,
            req_headers TEXT,
            req_body BLOB                -- bodies.hash of the request body
        )""")
    db.execute("""
        CREATE TABLE log_rows (
            id INTEGER PRIMARY KEY,      -- grows; the API's cursors
            run TEXT NOT NULL,
            req INTEGER NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            status INTEGER,
            score REAL,
            play INTEGER,
            plays INTEGER,
            ms REAL,
            ttfb_ms REAL,
            req_bytes INTEGER,
            resp_bytes INTEGER,
            client TEXT,
            detail TEXT,
            resp_headers TEXT,
            resp_body BLOB,              -- bodies.hash of the response body
            shape INTEGER NOT NULL REFERENCES shapes(id)
        )""")
    # Prunes so far: a writer that finds the number changed forgets which shapes and bodies it
    # has written (another process may have deleted them).
    db.execute("CREATE TABLE log_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO log_state VALUES ('prunes', 0)")
    # The rows written so far, ids kept; one shape per distinct combination, in order of
    # first use.
    shape_cols = ("method", "path", "query", "model", "served_model", "stream", "match",
                  "prompt_tokens", "completion_tokens", "total_tokens", "saved_ms", "session",
                  "exchange", "line", "prompt", "reply", "req_headers", "req_body")
    row_cols = ("id", "run", "req", "at", "kind", "status", "score", "play", "plays", "ms",
                "ttfb_ms", "req_bytes", "resp_bytes", "client", "detail", "resp_headers",
                "resp_body")
    ids: dict[tuple, int] = {}
    insert_shape = (f"INSERT INTO shapes (id, {', '.join(shape_cols)}) "
                    f"VALUES ({', '.join('?' * (len(shape_cols) + 1))})")
    insert_row = (f"INSERT INTO log_rows ({', '.join(row_cols)}, shape) "
                  f"VALUES ({', '.join('?' * (len(row_cols) + 1))})")
    cur = db.execute(f"SELECT {', '.join(shape_cols)}, {', '.join(row_cols)} FROM requests "
                     f"ORDER BY id")
    n = len(shape_cols)
    while True:
        chunk = cur.fetchmany(5000)
        if not chunk:
            break
        shapes, rows = [], []
        for r in chunk:
            r = tuple(r)
            shape = r[:n]
            sid = ids.get(shape)
            if sid is None:
                sid = ids[shape] = len(ids) + 1
                shapes.append((sid, *shape))
            rows.append((*r[n:], sid))
        db.executemany(insert_shape, shapes)
        db.executemany(insert_row, rows)
    db.execute("DROP TABLE requests")  # and its indexes
    view_cols = ("id", "run", "req", "at", "method", "path", "query", "kind", "status", "model",
                 "served_model", "stream", "match", "score", "play", "plays", "ms", "ttfb_ms",
                 "req_bytes", "resp_bytes", "prompt_tokens", "completion_tokens",
                 "total_tokens", "saved_ms", "session", "exchange", "line", "client", "detail",
                 "prompt", "reply", "req_headers", "resp_headers", "req_body", "resp_body")
    # A LEFT JOIN: a row whose shape went missing still shows. SQLite drops the join from a
    # plain query that reads no column of `shapes` (not from an aggregate: COUNT(*) still
    # looks every shape up), and makes it an inner join when the query filters on one.
    db.execute("CREATE VIEW requests AS SELECT " + ", ".join(
        f"{'s' if c in shape_cols else 'r'}.{c} AS {c}" for c in view_cols)
        + " FROM log_rows AS r LEFT JOIN shapes AS s ON s.id = r.shape")
    # Three indexes; each one on log_rows costs every insert, the one on shapes a new shape
    # with a session only (a partial index: a forwarded request's shape, which has none,
    # skips it): time ranges; the join from a shape to its rows (the session filter,
    # retention's search for shapes no row uses any more); a session's shapes (the session
    # filter, and the writer's search for a shape, narrowed by the request body). Filters on
    # kind or model walk the newest rows and stop at a page.
    db.execute("CREATE INDEX log_rows_at ON log_rows(at)")
    db.execute("CREATE INDEX log_rows_shape ON log_rows(shape)")
    db.execute("CREATE INDEX shapes_session ON shapes(session, req_body) "
               "WHERE session IS NOT NULL")


# The columns of the view `requests` (all but `id`), as `row_from_event` returns them.
COLUMNS = ("run", "req", "at", "method", "path", "query", "kind", "status", "model",
           "served_model", "stream", "match", "score", "play", "plays", "ms", "ttfb_ms",
           "req_bytes", "resp_bytes", "prompt_tokens", "completion_tokens", "total_tokens",
           "saved_ms", "session", "exchange", "line", "client", "detail", "prompt", "reply",
           "req_headers", "resp_headers", "req_body", "resp_body")
# What a row of `shapes` holds (but its id) and what a row of `log_rows` holds (but its id
# and, last, its shape's id): together `COLUMNS`.
SHAPE_COLUMNS = ("method", "path", "query", "model", "served_model", "stream", "match",
                 "prompt_tokens", "completion_tokens", "total_tokens", "saved_ms", "session",
                 "exchange", "line", "prompt", "reply", "req_headers", "req_body")
ROW_COLUMNS = ("run", "req", "at", "kind", "status", "score", "play", "plays", "ms", "ttfb_ms",
               "req_bytes", "resp_bytes", "client", "detail", "resp_headers", "resp_body")
assert sorted(SHAPE_COLUMNS + ROW_COLUMNS) == sorted(COLUMNS)
LIST_COLUMNS = ("id",) + tuple(c for c in COLUMNS if c not in (
    "req_headers", "resp_headers", "req_body", "resp_body"))
# What each half of a row gives `LIST_COLUMNS` (all of it but the headers and bodies, last).
LIVE_SHAPE_COLUMNS = SHAPE_COLUMNS[:-2]
LIVE_ROW_COLUMNS = ROW_COLUMNS[:-2]
assert SHAPE_COLUMNS[-2:] == ("req_headers", "req_body")
assert ROW_COLUMNS[-2:] == ("resp_headers", "resp_body")
assert sorted(("id",) + LIVE_SHAPE_COLUMNS + LIVE_ROW_COLUMNS) == sorted(LIST_COLUMNS)


def _values(width: int, literals: str = "") -> str:
    """One row of a multi-row INSERT: `literals` (SQL, with a trailing comma) then `width`
    parameters."""
    return "(" + literals + ", ".join("?" * width) + ")"


_INSERT_SHAPES = (f"INSERT INTO shapes ({', '.join(SHAPE_COLUMNS)}) VALUES ",
                  _values(len(SHAPE_COLUMNS)))
_INSERT_ROWS = (f"INSERT INTO log_rows ({', '.join(ROW_COLUMNS)}, shape) VALUES ",
                _values(len(ROW_COLUMNS) + 1))
# An exact replay's row, narrow: `run`, `kind` and `score` (1.0) are written into the
# statement (RequestLog makes it), and `detail`, `resp_headers` and `resp_body` left NULL (a
# replay has none). Each parameter sqlite3 binds costs about 500 instructions, a NULL one about
# 1,000 more (see `_bind_none_and_bytes_directly`): the narrow row is about 30% cheaper to
# insert (the score in the statement: 400 instructions less per row, measured on batches of
# 256; a fuzzy replay's row, scored, is wide). `put` queues such a row narrow, as the values
# of `_NARROW_COLUMNS` (`_narrow_row`, `_narrowed`), so that neither it nor the writer builds
# and slices the 16 values of `ROW_COLUMNS`; the live feed is given it widened back
# (`_widen`). Queue and writer tell the two apart by length.
_NARROW_COLUMNS = ROW_COLUMNS[1:3] + ROW_COLUMNS[4:5] + ROW_COLUMNS[6:13]
assert ROW_COLUMNS[3:6:2] == ("kind", "score")
assert ROW_COLUMNS[13:] == ("detail", "resp_headers", "resp_body")
_NARROW_OF = operator.itemgetter(*(ROW_COLUMNS.index(c) for c in _NARROW_COLUMNS))
_NARROW_LEN = len(_NARROW_COLUMNS)
_NARROW_WIDTH = _NARROW_LEN + 1  # and the shape's id
assert _NARROW_LEN != len(ROW_COLUMNS)
_NO_DETAIL = (None, None, None)  # a row's detail, resp_headers and resp_body, when narrow
# A shape by content (`IS`: NULL is NULL), session and request body first (the index; only
# shapes with a session are looked up, and `session = ?` lets SQLite use the partial index).
_FIND_ORDER = ("session", "req_body") + tuple(c for c in SHAPE_COLUMNS
                                              if c not in ("session", "req_body"))
_FIND_AT = tuple(SHAPE_COLUMNS.index(c) for c in _FIND_ORDER)
_FIND_SHAPE = ("SELECT id FROM shapes WHERE session = ? AND "
               + " AND ".join(f"{c} IS ?" for c in _FIND_ORDER[1:]) + " LIMIT 1")
_SESSION_AT = SHAPE_COLUMNS.index("session")
_KIND_AT = ROW_COLUMNS.index("kind")
_SCORE_AT = ROW_COLUMNS.index("score")
_INSERT_BODIES = ("INSERT OR IGNORE INTO bodies (hash, size, data) VALUES ", _values(3))
_CHUNKS = (256, 32, 4, 1)  # rows per statement; few distinct statements, all cached


def _insert_many(db: sqlite3.Connection, insert: tuple[str, str], width: int,
                 params: list) -> int:
    """Insert rows of `width` values, given one after the other in `params` (a flat list),
    with multi-row INSERT statements; return the rowid of the last one.

    `insert` is (the statement up to VALUES, one row's values as `_values` gives them).
    sqlite3 releases the GIL around every statement step and takes it back after: with
    `executemany` that is one hand-over per row, and each costs the event loop thread a
    forced switch. A statement of 256 rows is one hand-over for all of them.
    """
    head, values = insert
    i, n = 0, len(params) // width
    last = 0
    for size in _CHUNKS:
        if n - i < size:
            continue
        sql = head + ", ".join([values] * size)
        while n - i >= size:
            last = db.execute(sql, params[i * width:(i + size) * width]).lastrowid
            i += size
    return last


def migrate(db: sqlite3.Connection) -> list[str]:
    """Run the migrations `db` has not had yet, in order; return their names.

    Raises LogError when `db` was written by a newer rechat (more migrations than we know).
    """
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
    version = db.execute("PRAGMA user_version").fetchone()[0]
    known = {name for name, _ in MIGRATIONS}
    if version > len(MIGRATIONS) or done - known:
        raise LogError(f"the request log was written by a newer rechat (schema version "
                       f"{version}; this rechat knows {len(MIGRATIONS)})")
    ran = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        db.execute("BEGIN")
        try:
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        ran.append(name)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    return ran


def _bind_none_and_bytes_directly() -> None:
    """Spare sqlite3 its adaptation protocol for None and bytes parameters.

    CPython 3.11's sqlite3 binds int, float and str as they are, but sends None and bytes
    through `microprotocols_adapt`: it asks the PrepareProtocol type for `__adapt__`, and the
    type's getattr formats an AttributeError that is then dropped: about 3,000 instructions
    more than an int takes. A replay's row had six such (its NULLs), and they were 40% of the
    cost of its insert (bench/bench_instructions.py --log). An adapter registered for the
    exact type is found first, and takes about 1,000. These two return their argument
    unchanged (`{}.get(None)` is None, `bytes(b)` is b), so every sqlite3 user in the process
    binds exactly what it bound before. Neither type is one whose adapting switches sqlite3's
    fast path off (int, float, str, bytearray).
    """
    sqlite3.register_adapter(type(None), {}.get)
    sqlite3.register_adapter(bytes, bytes)


_bind_none_and_bytes_directly()


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """Open the log database at `path` (WAL mode, autocommit). Raises sqlite3.Error."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    db.execute("PRAGMA busy_timeout = 10000")
    if readonly:
        db.execute("PRAGMA query_only = 1")
    else:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
    return db


# ---------------------------------------------------------------------------------------------
# Events into rows
#
# This runs once per request, on the event loop: every microsecond here is one the proxy does
# not get. So a shape and a row are tuples, what only depends on the replayed answer is
# computed once per answer (`_AnswerFacts`) and what only depends on the request body once
# per body (its hash too: `_request_hash`), and a replay's response is not stored (the session
# holds it; the web API rebuilds it).

# Where each of COLUMNS is in (shape, row): 0 or 1, and the index there.
_FROM = tuple((0, SHAPE_COLUMNS.index(c)) if c in SHAPE_COLUMNS else (1, ROW_COLUMNS.index(c))
              for c in COLUMNS)
# Where each of LIST_COLUMNS but id is in shape + row (the live feed's dicts).
_LIST_AT = tuple(SHAPE_COLUMNS.index(c) if c in SHAPE_COLUMNS
                 else len(SHAPE_COLUMNS) + ROW_COLUMNS.index(c) for c in LIST_COLUMNS[1:])
assert not any(is_secret_header(h) for h in REQUEST_HEADERS)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") if isinstance(p, dict) and isinstance(p.get("text"), str)
                        else f"[{p.get('type', '?')}]" if isinstance(p, dict) else ""
                        for p in content)
    return ""


def _preview(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    text = _text_of(message.get("content"))
    if not text and message.get("tool_calls"):
        calls = message["tool_calls"]
        text = " ".join(f"→ {(tc.get('function') or {}).get('name')}("
                        f"{(tc.get('function') or {}).get('arguments', '')})"
                        for tc in calls if isinstance(tc, dict))
    if len(text) > PREVIEW * 2:
        text = text[:PREVIEW * 2]
    text = " ".join(text.split())
    return text[:PREVIEW] if text else None


def _usage_of(obj: Any) -> dict | None:
    u = obj.get("usage") if isinstance(obj, dict) else None
    return u if isinstance(u, dict) else None


def _sse_facts(events: list[str]) -> tuple[str | None, dict | None]:
    """(model, usage) from a stream's SSE data strings, reading only its first and last events."""
    model = usage = None
    for e in events[:2]:
        if e.startswith("{"):
            try:
                model = json.loads(e).get("model")
            except (ValueError, AttributeError):
                pass
            if model:
                break
    for e in reversed(events[-3:]):
        if '"usage"' in e and e.startswith("{"):
            try:
                usage = _usage_of(json.loads(e))
            except ValueError:
                usage = None
            if usage:
                break
    return (model if isinstance(model, str) else None), usage


def _stream_reply(events: list[str]) -> str | None:
    parts: list[str] = []
    n = 0
    for e in events:
        if not e.startswith("{"):
            continue
        try:
            d = json.loads(e)["choices"][0]["delta"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        c = d.get("content") if isinstance(d, dict) else None
        if isinstance(c, str):
            parts.append(c)
            n += len(c)
            if n > PREVIEW:
                break
    return _preview({"content": "".join(parts)})


def _tokens(usage: dict | None) -> tuple[int | None, int | None, int | None]:
    if not usage:
        return None, None, None
    p, c, t = usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
    if t is None and "input_tokens" in usage:  # the Responses API's names
        p, c, t = usage.get("input_tokens"), usage.get("output_tokens"), usage.get("total_tokens")
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) else None for v in (p, c, t))


def header_text(headers: Iterable[tuple[str, str]], allow: frozenset | None = None) -> str:
    """Return headers as ``Name: value`` lines: those in `allow` (lower-case names), or all
    but the secret ones (`fingerprint.redact_headers`) when `allow` is None."""
    if allow is None:
        return "\n".join(f"{k}: {v}" for k, v in redact_headers(headers))
    return "\n".join(f"{k}: {v}" for k, v in headers if k.lower() in allow)


def parse_header_text(text: str | None) -> list[list[str]]:
    """Return ``[[name, value], ...]`` from `header_text`'s lines."""
    return [line.split(": ", 1) for line in (text or "").split("\n") if ": " in line]


class _AnswerFacts:
    """What a row takes from a replayed answer; computed once per answer object."""

    __slots__ = ("answer", "served_model", "tokens", "saved_ms", "reply", "sse_bytes")

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        meta = answer.meta or {}
        usage = None
        self.served_model = None
        self.sse_bytes = None
        if answer.kind == "chat":
            comp = meta.get("completion")
            if isinstance(comp, dict):
                usage = _usage_of(comp)
                m = comp.get("model")
                self.served_model = m if isinstance(m, str) else None
            elif isinstance(meta.get("sse"), list):
                self.served_model, usage = _sse_facts(meta["sse"])
                # Exact for a stream replayed as recorded (`data: X\n\n` per event).
                self.sse_bytes = sum(len(e.encode()) + 8 for e in meta["sse"])
            self.reply = _preview(answer.message)
        else:
            j = _json_small(answer.body)
            usage = _usage_of(j)
            m = j.get("model") if isinstance(j, dict) else None
            self.served_model = m if isinstance(m, str) else None
            self.reply = None
        self.tokens = _tokens(usage)
        ms = meta.get("ms")
        t = ms.get("total") if isinstance(ms, dict) else None
        self.saved_ms = float(t) if isinstance(t, (int, float)) else None


def row_from_event(ev: Any, run: str, extra: dict | None = None,
                   facts: dict | None = None) -> tuple[tuple, tuple[tuple[bytes, bytes], ...]]:
    """Return (row, blobs) for a finished `ProxyEvent`.

    `row` holds the values of `COLUMNS` in order (a row of the view `requests` but its id);
    `blobs` lists the (hash, body) pairs its `req_body` and `resp_body` columns refer to (a
    replay's response is not kept). `extra` may give `exchange` and `line` of a recorded
    exchange (read from the store when the event happened); `facts` is a cache of per-answer
    facts the caller keeps between calls. Never raises for odd content.
    """
    parts = split_event(ev, run, extra, facts)
    return tuple(parts[p][i] for p, i in _FROM), parts[2]


def split_event(ev: Any, run: str, extra: dict | None = None, facts: dict | None = None
                ) -> tuple[tuple, tuple, tuple[tuple[bytes, bytes], ...]]:
    """Return (shape, row, blobs) for a finished `ProxyEvent`: the values of `SHAPE_COLUMNS`
    and of `ROW_COLUMNS`, and the bodies they refer to (see `row_from_event`)."""
    req = ev.request
    resp = ev.response
    kind = ev.kind
    req_hash = _request_hash(req.body) if req.body else None
    model, stream, prompt = _request_facts(req, req_hash)
    ms = _ms3(ev.ms)
    status = resp.status if resp is not None else (404 if kind == "miss" else None)
    req_headers = _request_headers(req.headers)
    resp_headers = None
    served = reply = saved = session = exchange = line = score = play = plays = None
    resp_bytes = ttfb = None
    tokens: tuple = (None, None, None)
    match = "none"
    resp_body = resp.body if resp is not None else b""
    keep_response = True
    answer = ev.answer
    if kind == "replay" and answer is not None:
        f = None
        if facts is not None:
            f = facts.get(id(answer))
            if f is not None and f.answer is not answer:
                f = None
        if f is None:
            f = _AnswerFacts(answer)
            if facts is not None:
                if len(facts) > 20000:
                    facts.clear()
                facts[id(answer)] = f
        served, tokens, saved, reply = f.served_model, f.tokens, f.saved_ms, f.reply
        resp_bytes = len(resp_body) if resp_body else f.sse_bytes
        similarity = getattr(ev, "similarity", None)
        if similarity is not None:  # a fuzzy replay: the nearest answer, served on a miss
            match, score = "fuzzy", round(similarity, 4)
        else:
            match, score = "exact", 1.0
        ttfb = ms
        session, exchange, line = answer.session, answer.index, answer.line
        if ev.position:
            play, plays = ev.position[0] + 1, ev.position[1]
        keep_response = False  # the session holds it; the web API rebuilds it
    elif resp is not None and kind in ("record", "forward"):
        resp_bytes = len(resp_body)
        ttfb = _ms3(resp.ttfb_ms) if resp.ttfb_ms else None
        resp_headers = header_text(resp.headers)
        if ev.file:
            session = ev.file
            if extra:
                exchange, line = extra.get("exchange"), extra.get("line")
        if resp.events is not None:
            served, usage = _sse_facts(resp.events)
            tokens = _tokens(usage)
            reply = _stream_reply(resp.events)
        else:
            j = _json_small(resp_body)
            if isinstance(j, dict):
                tokens = _tokens(_usage_of(j))
                served = j.get("model") if isinstance(j.get("model"), str) else None
                try:
                    reply = _preview(j["choices"][0]["message"])
                except (KeyError, IndexError, TypeError):
                    pass
    else:
        ttfb = ms
        if resp is not None:
            resp_bytes = len(resp_body)
            resp_headers = header_text(resp.headers)
        if kind == "miss" and ev.nearest_file:
            match, score = "nearest", float(ev.similarity or 0)
            session, line = ev.nearest_file, ev.nearest_line
    if kind != "replay" and getattr(ev, "similarity", None) is not None:
        match, score = "nearest", round(ev.similarity, 4)  # a miss (forwarded or not), compared
    blobs = []
    resp_hash = None
    if req_hash is not None:
        blobs.append((req_hash, req.body))
    if keep_response and resp_body:
        resp_hash = _hash(resp_body)
        blobs.append((resp_hash, resp_body))
    shape = (req.method, req.path, clean_query(req.query) if req.query else "", model, served,
             stream, match, *tokens, saved, session, exchange, line, prompt, reply, req_headers,
             req_hash)
    row = _row(run, ev, kind, status, score, play, plays, ms, ttfb, resp_bytes, resp_headers,
               resp_hash)
    # Tuples of atomic values only: the garbage collector stops tracking them, so rows waiting
    # in the queue (write-behind) add nothing to its collections.
    return shape, row, tuple(blobs)


def _ms3(ms: float) -> float:
    """`ms` (>= 0) to the microsecond: what `round(ms, 3)` gives but in the rare case of a
    value a hair from a half (where the two may differ in the last digit), for half of its cost
    (round with digits formats the float as text and reads it back: 3,000 instructions)."""
    return int(ms * 1000.0 + 0.5) / 1000.0


def _row(run: str, ev: Any, kind: str, status: int | None, score: float | None,
         play: int | None, plays: int | None, ms: float, ttfb: float | None,
         resp_bytes: int | None, resp_headers: str | None, resp_hash: bytes | None) -> tuple:
    """The values of `ROW_COLUMNS` for the event `ev`: those given, and those read from it."""
    return _widen(run, kind, score, _narrow_row(ev, status, play, plays, ms, ttfb, resp_bytes),
                  ev.detail or None, resp_headers, resp_hash)


def _narrow_row(ev: Any, status: int | None, play: int | None, plays: int | None, ms: float,
                ttfb: float | None, resp_bytes: int | None) -> tuple:
    """The values of `_NARROW_COLUMNS` for the event `ev`: those given, and those read from
    it."""
    return (ev.id, ev.started_at or time.time(), status, play, plays, ms, ttfb,
            len(ev.request.body), resp_bytes, ev.client or None)


def _widen(run: str, kind: str, score: float | None, narrow: tuple, detail: str | None,
           resp_headers: str | None, resp_hash: bytes | None) -> tuple:
    """The values of `ROW_COLUMNS`: a narrow row's (`_NARROW_COLUMNS`) and the others."""
    return (run, *narrow[:2], kind, narrow[2], score, *narrow[3:], detail, resp_headers,
            resp_hash)


def _narrowed(row: tuple) -> tuple:
    """`row` (the values of `ROW_COLUMNS`) as `put` queues it: an exact replay's (score 1.0)
    without a detail (and so without response headers and body) narrow, as the values of
    `_NARROW_COLUMNS`; any other as it is."""
    if row[_KIND_AT] == "replay" and row[_SCORE_AT] == 1.0 and row[-3:] == _NO_DETAIL:
        return _NARROW_OF(row)
    return row


def live_rows(first_id: int, items: list[tuple]) -> list[dict]:
    """The rows `RequestLog.on_rows` is given, as dicts of `LIST_COLUMNS` (as `logs` returns
    them): `items` is a list of ``(key, shape, row)``, row i with id ``first_id + i``."""
    names, at = LIST_COLUMNS[1:], _LIST_AT
    out = []
    for i, (_, shape, row) in enumerate(items):
        values = shape + row
        d = {"id": first_id + i}
        d.update(zip(names, [values[j] for j in at]))
        out.append(d)
    return out


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


_hash_cache: dict[bytes, bytes] = {}
_hash_cache_bytes = 0
_HASH_CACHE_BYTES = 8 << 20


def _request_hash(body: bytes) -> bytes:
    """`_hash(body)`, once per distinct body: a repeated request's body is found by Python's
    own hash of it (about 4 times cheaper than BLAKE2b) and an equality test. The cache holds
    at most 8 MiB of bodies."""
    global _hash_cache_bytes
    h = _hash_cache.get(body)
    if h is None:
        h = _hash(body)
        n = len(body)
        if n <= _HASH_CACHE_BYTES >> 4:
            if _hash_cache_bytes + n > _HASH_CACHE_BYTES or len(_hash_cache) >= 4096:
                _hash_cache.clear()
                _hash_cache_bytes = 0
            _hash_cache[body] = h
            _hash_cache_bytes += n
    return h


_request_cache: dict[tuple[bytes, str], tuple] = {}


def _request_facts(req: Any, body_hash: bytes | None) -> tuple[str | None, int, str | None]:
    """(model asked, stream asked, prompt preview) of a request; the same body gives the
    same facts, so they are computed once per distinct body."""
    key = (body_hash, req.path)  # the path too: Ollama's chat and generate stream by default
    facts = _request_cache.get(key) if body_hash is not None else None
    if facts is not None:
        return facts
    shape = req.shape  # the model and stream as the proxy reads them (exchange.Shape)
    model, stream, prompt = shape.model, int(shape.stream), None
    body = req.json
    if type(body) is dict:
        msgs = body.get("messages")
        if isinstance(msgs, list) and msgs:
            prompt = _preview(msgs[-1])
        elif isinstance(body.get("input"), str):
            prompt = _preview({"content": body["input"]})
        elif isinstance(body.get("prompt"), str):
            prompt = _preview({"content": body["prompt"]})
    facts = (model, stream, prompt)
    if body_hash is not None:
        if len(_request_cache) > 4096:
            _request_cache.clear()
        _request_cache[key] = facts
    return facts


_header_cache: dict[tuple, str] = {}


def _request_headers(headers: list[tuple[str, str]]) -> str:
    # A client sends the same headers again and again: filter each distinct list once.
    key = tuple(headers)
    text = _header_cache.get(key)
    if text is None:
        if len(_header_cache) > 512:
            _header_cache.clear()
        text = _header_cache[key] = "\n".join(
            f"{k}: {v}" for k, v in headers if k.lower() in REQUEST_HEADERS)
    return text


def _json_small(data: bytes) -> Any:
    if not data or len(data) > 1 << 20 or data[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# The log


_STOP = object()


class RequestLog:
    """The request log at `path`: `open()`, then `put(event)` from the event loop, `close()`.

    `on_rows(first_id, items)` is called on the writer thread with each batch of inserted rows
    when `wants_rows()` is true; it must not block. `items` is a list of ``(key, shape, row)``:
    the values of `SHAPE_COLUMNS` and `ROW_COLUMNS` (tuples), and `key` an int naming that
    shape for the life of this RequestLog (the same shape, the same key; never reused); row i
    has the id ``first_id + i``. `live_rows` turns them into dicts of `LIST_COLUMNS`, as `logs`
    returns them; a live stream may instead encode each shape once (by its key) and only the
    row's own values per row. While `wants_rows()` is
    true the writer waits `flush_s` (s) after the first event of a batch, so rows reach the
    live stream at most about `flush_s` after their request ended; otherwise it waits as the
    module docstring says (`idle_s`, `max_delay_s` in s; `high_water` rows; `max_delay_s` 0
    writes every `flush_s`). Reads (`logs`, `entry`, `stats`, `count`) first have what is
    queued written, and block: call them through `asyncio.to_thread`.
    """

    def __init__(self, path: str, max_age_days: float = 7.0,
                 on_rows: Callable[[int, list[tuple]], None] | None = None,
                 max_pending: int = 20000, batch: int = 2000, flush_s: float = 0.1,
                 idle_s: float = 0.25, max_delay_s: float = 5.0,
                 high_water: int = 5000) -> None:
        self.path = os.path.abspath(path)
        self.max_age_days = max_age_days
        self.on_rows = on_rows
        self.max_pending = max_pending
        self.batch = batch
        self.flush_s = flush_s
        self.idle_s = idle_s
        self.max_delay_s = max_delay_s
        self.high_water = high_water
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        run_sql = "'" + self.run.replace("'", "''") + "'"  # the run as an SQL literal
        self._insert_narrow = (
            f"INSERT INTO log_rows (run, kind, score, {', '.join(_NARROW_COLUMNS)}, shape) "
            f"VALUES ", _values(_NARROW_WIDTH, f"{run_sql}, 'replay', 1.0, "))
        self.dropped = 0
        self.written = 0
        self.writer_cpu_s = 0.0  # CPU time the writer thread spent writing
        self.pruned = 0
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._queued = 0  # events put (event loop side)
        self._handled = 0  # events written or given up (writer side)
        self._facts: dict = {}  # per-answer facts (see _AnswerFacts); event loop side
        self._replays: dict[tuple, tuple] = {}  # a replay's shape by answer and request
        # Event loop side: each distinct shape seen (its SHAPE_COLUMNS values) -> a number of
        # our own, which stands for it in the queue.
        self._shapes: dict[tuple, int] = {}
        self._next_shape = 1
        # Writer side: what this process has written and not seen pruned since.
        self._shape_ids: dict[int, int] = {}  # our number of a shape -> shapes.id
        self._known: dict[bytes, None] = {}  # body hashes already in `bodies`
        self._prunes: int | None = None  # log_state's prunes when the two were last checked
        self._last_put = 0.0  # time.monotonic() of the last put (event loop side)
        self._now = threading.Event()  # write what is queued without waiting (readers, close)
        self.wants_rows: Callable[[], bool] = lambda: True

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create or upgrade the database, prune old rows, start the writer thread.

        Blocking (call it off the event loop). Raises LogError or OSError.
        """
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        try:
            db = connect(self.path)
            migrate(db)
        except sqlite3.Error as e:
            raise LogError(f"cannot open the request log {self.path}: {e}") from None
        self._db = db
        self.prune()
        self._thread = threading.Thread(target=self._run, name="rechat-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the writer thread and close the database. Blocking."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._q.put(_STOP)
            self._now.set()
            self._thread.join(timeout)
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def put(self, event: Any, extra: dict | None = None) -> None:
        """Turn a finished event into a row and queue it for writing.

        Called on the event loop; never blocks (a few microseconds), drops the row past
        `max_pending`. The row is made here, not on the writer thread, so that the event (its
        parsed JSON, its response) is freed at once: held in a queue for a batch, thousands
        of them would outlive the young GC generation and make every collection dearer.
        """
        if self._closed or self._thread is None:
            return
        if self._q.qsize() >= self.max_pending:
            self.dropped += 1
            return
        try:
            fast = self._replay_row(event) if event.kind == "replay" else None
            if fast is not None:
                key, shape, row, blobs = fast
            else:
                shape, row, blobs = split_event(event, self.run, extra, self._facts)
                # A replay repeats its shape: the writer learns a shape once, by our number.
                shapes = self._shapes
                key = shapes.get(shape)
                if key is None:
                    if len(shapes) >= 20000:
                        shapes.clear()
                    key = shapes[shape] = self._next_shape
                    self._next_shape += 1
                if event.kind == "replay":
                    self._remember_replay(event, key, shape, blobs)
                    row = _narrowed(row)
        except Exception:
            log.exception("cannot log %s %s", getattr(event.request, "method", "?"),
                          getattr(event.request, "path", "?"))
            return
        self._queued += 1
        self._last_put = time.monotonic()
        self._q.put((key, shape, row, blobs))

    # The same request replayed from the same answer has the same shape: the second time on,
    # only the row's varying values are read from the event (what `split_event` gives, from a
    # fifth of the work). Keyed by what the shape depends on: the answer and the request. The
    # headers are compared rather than hashed: they are new strings in every request, and
    # hashing them cost twice what comparing them does (about 6,000 instructions for the 15
    # headers of the openai client).

    @staticmethod
    def _replay_key(ev: Any) -> tuple | None:
        if ev.answer is None or getattr(ev, "similarity", None) is not None:
            return None  # fuzzy replays score each time
        req = ev.request
        return (id(ev.answer), req.method, req.path, req.query, req.body)

    def _remember_replay(self, ev: Any, key: int, shape: tuple, blobs: tuple) -> None:
        ck = self._replay_key(ev)
        f = self._facts.get(id(ev.answer))
        if ck is None or f is None or f.answer is not ev.answer:
            return
        if len(self._replays) >= 4096:
            self._replays.clear()
        self._replays[ck] = (ev.answer, key, shape, blobs, f.sse_bytes, ev.request.headers)

    def _replay_row(self, ev: Any) -> tuple | None:
        ck = self._replay_key(ev)
        got = self._replays.get(ck) if ck is not None else None
        if (got is None or got[0] is not ev.answer or got[5] != ev.request.headers
                or ev.detail):  # (a replay with a detail is rare: the general path makes it)
            return None
        _, key, shape, blobs, sse_bytes, _ = got
        resp = ev.response
        body = resp.body if resp is not None else b""
        ms = _ms3(ev.ms)
        pos = ev.position
        row = _narrow_row(ev, resp.status if resp is not None else None,
                          pos[0] + 1 if pos else None, pos[1] if pos else None, ms, ms,
                          len(body) if body else sse_bytes)  # score 1.0: exact
        return key, shape, row, blobs

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Have every event queued so far written now, and block until it is (or `timeout`
        s pass: then return False). Readers, tests and benchmarks call it."""
        target = self._queued
        if self._handled >= target:
            return True
        if self._thread is None or not self._thread.is_alive():
            return False
        self._now.set()
        deadline = time.monotonic() + timeout
        while self._handled < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        next_prune = time.monotonic() + PRUNE_EVERY_S
        stop = False
        while not stop:
            try:
                item = self._q.get(timeout=max(0.05, min(60.0, next_prune - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= next_prune:
                    self._safe(self.prune)
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                continue
            if item is not _STOP:
                self._gather()
            self._now.clear()  # before draining: a reader asking from now on is served next
            items: list = []
            while True:  # everything queued, in transactions of at most `batch` rows
                if item is _STOP:
                    stop = True  # still write what was queued after the marker
                else:
                    items.append(item)
                if len(items) >= self.batch:
                    self._commit(items)
                    items = []
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            if items:
                self._commit(items)

    def _gather(self) -> None:
        # Let a batch gather (see the module docstring): one transaction per batch rather than
        # per request, and while nobody watches, none at all until the proxy pauses.
        start = time.monotonic()
        while not self._now.is_set():
            now = time.monotonic()
            if self.wants_rows() or not self.max_delay_s:
                if now - start >= self.flush_s:
                    return
            elif (now - self._last_put >= self.idle_s or now - start >= self.max_delay_s
                    or self._q.qsize() >= self.high_water):
                return
            self._now.wait(self.flush_s if self.flush_s > 0 else 0.01)

    def _commit(self, items: list) -> None:
        t0 = time.thread_time()
        self._safe(lambda: self._write(items))
        self.writer_cpu_s += time.thread_time() - t0
        self._handled += len(items)

    def _safe(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.exception("the request log could not be written")

    def _write(self, items: list) -> None:
        if not items or self._db is None:
            return
        db = self._db
        # One writer at a time (BEGIN IMMEDIATE), so a statement's new ids are consecutive.
        db.execute("BEGIN IMMEDIATE")
        try:
            prunes = db.execute("SELECT value FROM log_state WHERE key = 'prunes'").fetchone()[0]
            ids, known = self._shape_ids, self._known
            if prunes != self._prunes or len(ids) > 50000 or len(known) > 50000:
                ids.clear()  # a prune (ours or another process's) may have deleted them
                known.clear()
                self._prunes = prunes
            new, blobs = [], []
            for key, shape, row, bl in items:
                if key not in ids:
                    ids[key] = 0
                    # A recording is new (a new answer: its line), so its shape is too.
                    look = shape[_SESSION_AT] is not None and (
                        len(row) == _NARROW_LEN or row[_KIND_AT] != "record")
                    new.append((key, shape, look))
                elif len(row) == _NARROW_LEN:
                    # A narrow row has no response body, and its request body is its shape's:
                    # handled with the row that brought the shape (since `known` was cleared).
                    continue
                for h, data in bl:
                    if h not in known:  # the same bodies come back again and again: keep one
                        known[h] = None
                        blobs.append((h, len(data), data[:BODY_LIMIT]))
            if new:
                fresh = []
                for key, shape, look in new:  # once per shape and process
                    found = None
                    if look:
                        found = db.execute(_FIND_SHAPE, [shape[i] for i in _FIND_AT]).fetchone()
                    if found is not None:
                        ids[key] = found[0]
                    else:
                        fresh.append((key, shape))
                if fresh:
                    first = _insert_many(db, _INSERT_SHAPES, len(SHAPE_COLUMNS), [
                        v for _, shape in fresh for v in shape]) - len(fresh) + 1
                    for i, (key, _) in enumerate(fresh):
                        ids[key] = first + i
            # The rows' values and shape ids, one flat list per run of rows of one width (the
            # statement's parameters as they are, in order: the ids are consecutive).
            runs: list[tuple[tuple[str, str], int, list]] = []
            params: list = []
            width = 0
            for key, _, row, _ in items:
                if len(row) != width:
                    width = len(row)
                    params = []
                    runs.append((self._insert_narrow if width == _NARROW_LEN else _INSERT_ROWS,
                                 width + 1, params))
                params += row
                params.append(ids[key])
            last = 0
            for insert, width, params in runs:
                last = _insert_many(db, insert, width, params)
            first = last - len(items) + 1
            if blobs:
                _insert_many(db, _INSERT_BODIES, 3, [v for b in blobs for v in b])
            db.execute("COMMIT")
        except BaseException:
            self._shape_ids.clear()  # they may name shapes and bodies the rollback took back
            self._known.clear()
            db.execute("ROLLBACK")
            raise
        self.written += len(items)
        if self.on_rows is not None and self.wants_rows():
            run = self.run
            self.on_rows(first, [(key, shape, _widen(run, "replay", 1.0, row, None, None, None)
                                  if len(row) == _NARROW_LEN else row)
                                 for key, shape, row, _ in items])

    def prune(self) -> int:
        """Delete rows older than `max_age_days`, then the shapes and bodies no row uses any
        more, and vacuum if any row went; return how many rows went."""
        if self.max_age_days <= 0 or self._db is None:
            return 0
        cutoff = time.time() - self.max_age_days * 86400
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute("DELETE FROM log_rows WHERE at < ?", (cutoff,)).rowcount
            if n:
                db.execute("DELETE FROM shapes WHERE id NOT IN (SELECT shape FROM log_rows)")
                db.execute("DELETE FROM bodies WHERE hash NOT IN (SELECT req_body FROM shapes "
                           "WHERE req_body IS NOT NULL UNION SELECT resp_body FROM log_rows "
                           "WHERE resp_body IS NOT NULL)")
                # Every writer (this one, another process's) forgets what it wrote: see _write.
                db.execute("UPDATE log_state SET value = value + 1 WHERE key = 'prunes'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if n:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.pruned += n
        return n

    # -- reads (blocking) ------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        self.wait_idle(2.0)  # a query sees every request that ended before it
        db = connect(self.path, readonly=True)
        db.row_factory = sqlite3.Row
        return db

    def logs(self, q: str | None = None, model: str | None = None,
             kinds: list[str] | None = None, status: str | None = None,
             since: float | None = None, until: float | None = None,
             session: str | None = None, cursor: int | None = None,
             limit: int = 100) -> tuple[list[dict], int | None]:
        """Return (rows, next cursor): newest first, `limit` rows with `id < cursor`.

        `q` matches (case-insensitively, every word) the path, models, session, client,
        detail and the prompt/reply previews; `model` the requested or served model; `kinds`
        any of `KINDS`; `status` a code (`404`), a class (`4xx`) or `error` (>= 400);
        `since`/`until` epoch s. The next cursor is None on the last page.
        """
        where, args = _filters(q, model, kinds, status, since, until, session)
        if cursor is not None:
            where.append("id < ?")
            args.append(cursor)
        sql = (f"SELECT {', '.join(LIST_COLUMNS)} FROM requests"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + " ORDER BY id DESC LIMIT ?")
        db = self._reader()
        try:
            rows = [dict(r) for r in db.execute(sql, [*args, limit + 1])]
        finally:
            db.close()
        nxt = rows[limit - 1]["id"] if len(rows) > limit else None
        return rows[:limit], nxt

    def entry(self, id: int) -> dict | None:
        """Return one row with its headers (decoded) and bodies, or None."""
        db = self._reader()
        try:
            r = db.execute("SELECT * FROM requests WHERE id = ?", (id,)).fetchone()
            if r is None:
                return None
            row = dict(r)
            for k, name in (("req_body", "request"), ("resp_body", "response")):
                b = None
                if row[k] is not None:
                    b = db.execute("SELECT size, data FROM bodies WHERE hash = ?",
                                   (row[k],)).fetchone()
                row[name + "_body"] = b["data"] if b is not None else None
                row[name + "_truncated"] = b is not None and b["size"] > len(b["data"])
                del row[k]
        finally:
            db.close()
        for k in ("req_headers", "resp_headers"):
            row[k] = parse_header_text(row[k]) if row[k] is not None else None
        return row

    def stats(self, since: float | None = None, until: float | None = None) -> dict:
        """Return totals, hit rate, time and tokens saved, by model, by kind and a timeline.

        Hit rate is replays over requests that looked for an answer or were forwarded
        (replay + record + forward + miss; errors left out). Time saved is the recorded
        upstream time of every replayed answer, in ms; tokens saved their total tokens.
        The timeline covers `since` (or the first row) to `until` (or now) in at most about 60
        buckets of a round size (1 min, 5 min, 15 min, 1 h, 3 h, 6 h, 1 day, 1 week), empty
        buckets included.
        """
        where, args = _filters(None, None, None, None, since, until, None)
        w = f" WHERE {' AND '.join(where)}" if where else ""
        # What needs no column of `shapes` reads `log_rows` itself: the view's rows are
        # log_rows' rows, and SQLite keeps the view's join in an aggregate even when it is
        # not needed (a lookup per row).
        agg = ("COUNT(*) AS requests, "
               "SUM(kind = 'replay') AS hits, "
               "SUM(kind IN ('record', 'forward', 'miss')) AS misses, "
               "SUM(kind = 'error') AS errors, "
               "AVG(ms) AS avg_ms, "
               "COALESCE(SUM(CASE WHEN kind = 'replay' THEN saved_ms END), 0) AS time_saved_ms, "
               "COALESCE(SUM(CASE WHEN kind = 'replay' THEN total_tokens END), 0) AS tokens_saved, "
               "COALESCE(SUM(total_tokens), 0) AS tokens, "
               "COALESCE(SUM(req_bytes), 0) AS bytes_in, COALESCE(SUM(resp_bytes), 0) AS bytes_out, "
               "MIN(at) AS first, MAX(at) AS last")
        db = self._reader()
        try:
            totals = dict(db.execute(f"SELECT {agg} FROM requests{w}", args).fetchone())
            by_kind = {k: 0 for k in KINDS}
            kinds = []
            for r in db.execute(f"SELECT kind, COUNT(*) AS requests, AVG(ms) AS avg_ms, "
                                f"AVG(ttfb_ms) AS avg_ttfb_ms, MAX(ms) AS max_ms, "
                                f"COALESCE(SUM(resp_bytes), 0) AS bytes_out FROM log_rows{w} "
                                f"GROUP BY kind ORDER BY requests DESC", args):
                by_kind[r["kind"]] = r["requests"]
                kinds.append(dict(r))
            by_model = [dict(r) for r in db.execute(
                f"SELECT COALESCE(model, '') AS model, {agg} FROM requests{w} "
                f"GROUP BY COALESCE(model, '') ORDER BY requests DESC LIMIT 50", args)]
            first = totals["first"]
            hi = until if until is not None else time.time()
            lo = since if since is not None else (
                None if first is None else min(first, hi - 3600))  # at least the last hour
            bucket = _bucket(hi - lo if lo is not None else 0)
            timeline: dict[int, dict] = {}
            if lo is not None:
                start = int(lo // bucket) * bucket
                for t in range(start, int(max(hi, lo + 1)), bucket):
                    timeline[t] = {"t": t, **{k: 0 for k in KINDS}}
            for r in db.execute(f"SELECT CAST(at / {bucket} AS INTEGER) * {bucket} AS t, kind, "
                                f"COUNT(*) AS n FROM log_rows{w} GROUP BY t, kind", args):
                timeline.setdefault(r["t"], {"t": r["t"], **{k: 0 for k in KINDS}})[r["kind"]] = r["n"]
        finally:
            db.close()
        for d in [totals, *by_model]:
            looked = (d["hits"] or 0) + (d["misses"] or 0)
            d["hits"], d["misses"], d["errors"] = d["hits"] or 0, d["misses"] or 0, d["errors"] or 0
            d["hit_rate"] = (d["hits"] / looked) if looked else None
            for k in ("first", "last"):
                d.pop(k, None)
        totals["by_kind"] = by_kind
        return {"totals": totals, "by_model": by_model, "by_kind": kinds,
                "timeline": {"bucket_s": bucket, "points": [timeline[t] for t in sorted(timeline)]}}

    def count(self) -> int:
        """Return how many rows the log holds."""
        db = self._reader()
        try:
            return db.execute("SELECT COUNT(*) FROM log_rows").fetchone()[0]  # see stats
        finally:
            db.close()


_BUCKETS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)


def _bucket(span_s: float) -> int:
    for b in _BUCKETS:
        if span_s / b <= 60:
            return b
    return 30 * 86400


def _filters(q, model, kinds, status, since, until, session) -> tuple[list[str], list]:
    where: list[str] = []
    args: list = []
    for word in (q or "").split():
        like = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in (
            "path", "model", "served_model", "session", "client", "detail", "prompt",
            "reply", "kind")) + ")")
        args += [like] * 9
    if model:
        where.append("(model = ? OR served_model = ?)")
        args += [model, model]
    if kinds:
        where.append(f"kind IN ({', '.join('?' * len(kinds))})")
        args += kinds
    if status:
        s = status.lower()
        if s == "error":
            where.append("status >= 400")
        elif re.fullmatch(r"[1-5]xx", s):
            where.append("status BETWEEN ? AND ?")
            args += [int(s[0]) * 100, int(s[0]) * 100 + 99]
        else:
            where.append("status = ?")
            args.append(int(s))
    if since is not None:
        where.append("at >= ?")
        args.append(since)
    if until is not None:
        where.append("at < ?")
        args.append(until)
    if session:
        where.append("session = ?")
        args.append(session)
    return where, args


__all__ = ["RequestLog", "LogError", "MIGRATIONS", "migrate", "connect", "row_from_event",
           "split_event", "KINDS", "COLUMNS", "SHAPE_COLUMNS", "ROW_COLUMNS", "LIST_COLUMNS",
           "LIVE_SHAPE_COLUMNS", "LIVE_ROW_COLUMNS", "live_rows", "REQUEST_HEADERS"]
