"""The request log's two tables behind the `requests` view: shapes (what repeats) and log_rows.

RequestLog is driven directly with real ProxyEvents and a real SQLite file, read back through
its API and with separate sqlite3 connections, as another process would.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

import pytest

from rechat import logdb
from rechat.exchange import Answer, Request, Response
from rechat.logdb import RequestLog
from rechat.proxy import ProxyEvent

HEADERS = [("Content-Type", "application/json"), ("User-Agent", "ua/1"),
           ("Authorization", "Bearer sk-not-logged"), ("X-Stainless-Lang", "python")]
META = {"ms": {"ttfb": 10.0, "total": 250.0}, "completion": {
    "model": "m-2024", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}}


def _body(text: str, **extra) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}], **extra}).encode()


def _answer(name: str, reply: str, index: int = 0) -> Answer:
    return Answer(f"/s/{name}.md", index, 10 + index, "chat",
                  message={"role": "assistant", "content": reply}, meta=META)


def _replay(answer: Answer, text: str, i: int, at: float | None = None, **kw) -> ProxyEvent:
    # A new Request (new bytes, new header strings) each time, as the proxy makes them.
    req = Request("POST", "/v1/chat/completions", "", [(k, v) for k, v in HEADERS],
                  bytes(bytearray(_body(text))))
    return ProxyEvent("replay", req, Response(200, [("Content-Type", "application/json")],
                                              b'{"choices": []}'),
                      answer=answer, file=answer.session, ms=0.5 + i / 1000, position=(0, 1),
                      id=i, started_at=at or time.time(), client="127.0.0.1", **kw)


def _forward(i: int, at: float | None = None, status: int = 200) -> ProxyEvent:
    resp = json.dumps({"model": "m-2024", "choices": [{"message": {
        "role": "assistant", "content": f"fresh {i}"}}], "usage": {"total_tokens": i}}).encode()
    return ProxyEvent("forward", Request("POST", "/v1/chat/completions", "", list(HEADERS),
                                         _body(f"forward me {i}")),
                      Response(status, [("Content-Type", "application/json"),
                                        ("x-request-id", f"r{i}")], resp, ttfb_ms=3.5),
                      ms=7.25, id=i, started_at=at or time.time(), client="10.0.0.2")


def _events(t0: float) -> list[ProxyEvent]:
    """One of each kind of row, replays of one answer repeated, every optional column used."""
    a, b = _answer("a", "Paris."), _answer("b", "Rome.", index=2)
    evs = [_replay(a, "capital of France?", i, t0 + i) for i in range(4)]
    evs.append(_replay(b, "capital of Italy", 4, t0 + 4, similarity=0.9234567))
    rec = _forward(5, t0 + 5)
    rec.kind, rec.file = "record", "/s/new.md"
    evs.append(rec)
    evs.append(_forward(6, t0 + 6, status=500))
    evs.append(ProxyEvent("miss", Request("POST", "/v1/chat/completions", "api-key=SECRET&x=1",
                                          list(HEADERS), _body("capital of Frence?")),
                          detail="The nearest recorded request is /s/a.md:10 (similarity 0.91).",
                          similarity=0.91, nearest_file="/s/a.md", nearest_line=10, ms=1.0,
                          id=7, started_at=t0 + 7))
    evs.append(ProxyEvent("error", Request("POST", "/v1/chat/completions", "", [], b"{not json"),
                          Response(400), detail="The request body is not valid JSON", ms=0.2,
                          id=8, started_at=t0 + 8))
    evs.append(ProxyEvent("forward", Request("GET", "/v1/models", "", list(HEADERS), b""),
                          Response(200, [("Content-Type", "application/json")], b'{"data": []}'),
                          ms=3.0, id=9, started_at=t0 + 9))
    return evs


def _all(path, sql: str, args=()) -> list[dict]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql, args)]
    finally:
        db.close()


def _one(path, sql: str, args=()):
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchone()[0]
    finally:
        db.close()


def _open(path, **kw) -> RequestLog:
    lg = RequestLog(str(path), **kw)
    lg.wants_rows = lambda: False
    lg.open()
    return lg


def _reads(lg: RequestLog, ids: list[int], t0: float) -> dict:
    """Everything the log's API answers about these rows."""
    return {
        "logs": lg.logs(limit=100),
        "page": lg.logs(limit=3, cursor=ids[-2]),
        "session": lg.logs(session="/s/a.md"),
        "text": lg.logs(q="CAPITAL paris"),
        "model": lg.logs(model="m-2024"),
        "kinds": lg.logs(kinds=["miss", "error"]),
        "status": lg.logs(status="5xx"),
        "time": lg.logs(since=t0 + 2, until=t0 + 6),
        "entries": [lg.entry(i) for i in ids],
        "stats": lg.stats(since=t0 - 60, until=t0 + 600),
        "count": lg.count(),
    }


def test_a_log_written_at_schema_2_is_upgraded_in_place_with_its_rows(tmp_path):
    path = tmp_path / "log.sqlite"
    # The database as the previous rechat wrote it: migrations 1 and 2, rows in `requests`.
    db = logdb.connect(str(path))
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for name, fn in logdb.MIGRATIONS[:2]:
        db.execute("BEGIN")
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
        db.execute("COMMIT")
    db.execute("PRAGMA user_version = 2")
    t0 = time.time() - 3600
    ids = [3, 4, 5, 8, 13, 21, 34, 55, 89, 144]  # gaps, as after a prune
    facts: dict = {}
    evs = _events(t0)
    extra = {"exchange": 1, "line": 40}
    for id_, ev in zip(ids, evs):
        row, blobs = logdb.row_from_event(ev, "run-old", extra if ev.kind == "record" else None,
                                          facts)
        db.execute(f"INSERT INTO requests (id, {', '.join(logdb.COLUMNS)}) "
                   f"VALUES ({', '.join('?' * (len(logdb.COLUMNS) + 1))})", (id_, *row))
        for h, data in blobs:
            db.execute("INSERT OR IGNORE INTO bodies VALUES (?, ?, ?)", (h, len(data), data))
    db.close()
    before = _all(path, "SELECT * FROM requests ORDER BY id")
    assert [r["id"] for r in before] == ids and list(before[0]) == ["id", *logdb.COLUMNS]
    # What the API answered before the upgrade: stats read `log_rows` for what needs no
    # shape, so a copy of the old file gets a view of that name over its table.
    old = tmp_path / "old.sqlite"
    shutil.copy(path, old)
    with sqlite3.connect(old) as c:
        c.execute("CREATE VIEW log_rows AS SELECT * FROM requests")
    answered = _reads(RequestLog(str(old)), ids, t0)

    lg = _open(path, max_age_days=0)
    try:
        assert _one(path, "PRAGMA user_version") == len(logdb.MIGRATIONS) == 3
        after = _all(path, "SELECT * FROM requests ORDER BY id")
        assert after == before and list(after[0]) == list(before[0])  # ids, every column
        assert _reads(lg, ids, t0) == answered
        assert answered["count"] == 10 and len(answered["session"][0]) == 5  # 4 replays, the miss
        # the four replays of one answer to one request became one shape
        assert _one(path, "SELECT COUNT(*) FROM shapes") == 7
        assert _one(path, "SELECT COUNT(DISTINCT shape) FROM log_rows WHERE id IN (3, 4, 5, 8)") == 1
        tables = {r["name"]: r["type"] for r in _all(
            path, "SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
        assert tables == {"_migrations": "table", "bodies": "table", "shapes": "table",
                          "log_rows": "table", "log_state": "table", "requests": "view",
                          "log_rows_at": "index", "log_rows_shape": "index",
                          "shapes_session": "index"}
        assert _one(path, "PRAGMA integrity_check") == "ok"
        # New rows go after the old ones, and a replay the old log holds reuses its shape.
        lg.put(_replay(_answer("a", "Paris."), "capital of France?", 99))
        assert lg.wait_idle()
        rows, _ = lg.logs(limit=1)
        assert rows[0]["id"] == 145 and rows[0]["req"] == 99
        assert _one(path, "SELECT COUNT(*) FROM shapes") == 7
        new = _all(path, "SELECT * FROM requests WHERE id = 145")[0]
        assert {k: v for k, v in new.items() if k in logdb.SHAPE_COLUMNS} == {
            k: v for k, v in before[0].items() if k in logdb.SHAPE_COLUMNS}
    finally:
        lg.close()


def test_replays_of_one_answer_share_one_shape_across_restarts(tmp_path):
    path = tmp_path / "log.sqlite"
    got: list[dict] = []
    lg = RequestLog(str(path), max_age_days=0, on_rows=lambda first, items: got.extend(logdb.live_rows(first, items)))
    lg.wants_rows = lambda: True
    lg.open()
    a, b = _answer("a", "Paris."), _answer("b", "Rome.")
    try:
        for i in range(200):
            lg.put(_replay(a, "capital of France?", i))
        for i in range(3):
            lg.put(_replay(b, "capital of Italy?", 200 + i))
        for i in range(5):
            lg.put(_forward(300 + i))
        assert lg.wait_idle()
        assert _one(path, "SELECT COUNT(*) FROM log_rows") == 208 == lg.written
        assert _one(path, "SELECT COUNT(*) FROM shapes") == 2 + 5
        # the live feed got what the API reads back, key for key
        rows, _ = lg.logs(limit=500)
        assert sorted(got, key=lambda r: r["id"]) == sorted(rows, key=lambda r: r["id"])
        assert list(got[0]) == list(logdb.LIST_COLUMNS)
        replays = [r for r in rows if r["session"] == "/s/a.md"]
        assert len(replays) == 200 and {r["prompt"] for r in replays} == {"capital of France?"}
        assert sorted(r["req"] for r in replays) == list(range(200))
        assert {(r["reply"], r["total_tokens"], r["saved_ms"]) for r in replays} == {("Paris.", 7, 250.0)}
    finally:
        lg.close()
    # Another process (or a restart): the same replays find their shape in the file.
    lg = _open(path, max_age_days=0)
    try:
        for i in range(50):
            lg.put(_replay(a, "capital of France?", i))
        lg.put(_replay(a, "capital of France? (new)", 50))
        assert lg.count() == 259
        assert _one(path, "SELECT COUNT(*) FROM shapes") == 8
        assert _one(path, "SELECT COUNT(DISTINCT shape) FROM requests r JOIN log_rows USING (id) "
                          "WHERE r.prompt = 'capital of France?'") == 1
    finally:
        lg.close()


def test_prune_deletes_the_shapes_and_bodies_no_row_uses_any_more(tmp_path):
    path = tmp_path / "log.sqlite"
    lg = _open(path, max_age_days=7)
    other = None
    a, b, c = _answer("a", "Paris."), _answer("b", "Rome."), _answer("c", "Bern.")
    try:
        lg.put(_replay(a, "only old", 1))
        lg.put(_replay(c, "old and new", 2))
        lg.put(_forward(3))
        lg.put(_replay(b, "only new", 4))
        lg.put(_replay(c, "old and new", 5))
        assert lg.wait_idle()
        assert _one(path, "SELECT COUNT(*) FROM shapes") == 4
        assert _one(path, "SELECT COUNT(*) FROM bodies") == 5  # 4 requests, 1 forwarded response
        with sqlite3.connect(path) as db:
            db.execute("UPDATE log_rows SET at = at - 10 * 86400 WHERE req IN (1, 2, 3)")
        assert lg.prune() == 3
        assert [r["req"] for r in lg.logs()[0]] == [5, 4]
        shapes = _all(path, "SELECT prompt, req_body FROM shapes ORDER BY id")
        assert [s["prompt"] for s in shapes] == ["old and new", "only new"]
        bodies = {r["hash"] for r in _all(path, "SELECT hash FROM bodies")}
        assert bodies == {s["req_body"] for s in shapes}  # the old request and response went
        assert _one(path, "SELECT value FROM log_state WHERE key = 'prunes'") == 1
        # The writer forgets what the prune deleted: the same replay again gets its shape back.
        lg.put(_replay(a, "only old", 6))
        row = lg.logs(limit=1)[0][0]
        assert (row["req"], row["prompt"], row["session"], row["reply"]) == (6, "only old", "/s/a.md", "Paris.")
        assert lg.entry(row["id"])["request_body"] == _body("only old")
        # So does another process's writer when this one prunes what it wrote.
        other = _open(path, max_age_days=0)
        other.put(_replay(b, "only new", 7))
        assert other.wait_idle()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE log_rows SET at = at - 10 * 86400")
        assert lg.prune() == 4
        assert _one(path, "SELECT COUNT(*) FROM shapes") == 0
        assert _one(path, "SELECT COUNT(*) FROM bodies") == 0
        other.put(_replay(b, "only new", 8))
        assert other.wait_idle()
        row = other.entry(other.logs(limit=1)[0][0]["id"])
        assert (row["req"], row["prompt"], row["method"], row["reply"]) == (8, "only new", "POST", "Rome.")
        assert row["request_body"] == _body("only new")
    finally:
        lg.close()
        if other is not None:
            other.close()


@pytest.mark.parametrize("kind", ["replay", "forward"])
def test_row_from_event_is_the_shape_and_the_row(kind):
    ev = _replay(_answer("a", "Paris."), "hi", 1) if kind == "replay" else _forward(1)
    shape, row, blobs = logdb.split_event(ev, "run", None, {})
    full, blobs2 = logdb.row_from_event(ev, "run", None, {})
    assert blobs == blobs2
    named = dict(zip(logdb.SHAPE_COLUMNS + logdb.ROW_COLUMNS, shape + row))
    assert full == tuple(named[c] for c in logdb.COLUMNS)


def test_a_repeated_replay_queues_what_split_event_gives(tmp_path):
    # From its second time on, a replay's row is made from the event's varying values only;
    # what is queued must be what the general path gives, for every variation of the event:
    # narrow (the values of _NARROW_COLUMNS) for an exact replay without a detail, wide
    # otherwise.
    a, b = _answer("a", "Paris."), _answer("b", "Rome.", index=2)
    evs = [_replay(a, "capital?", 1), _replay(a, "capital?", 2),
           _replay(a, "capital?", 3), _replay(a, "other", 4), _replay(b, "capital?", 5)]
    evs[1].position = (1, 3)
    evs[2].response = Response(200, [("Content-Type", "text/event-stream")], b"")
    evs[2].detail = "client left"
    evs.append(_replay(a, "capital?", 6, similarity=0.5))  # fuzzy: the general path
    headers = _replay(a, "capital?", 7)
    headers.request = Request("POST", "/v1/chat/completions", "", HEADERS[:1],
                              bytes(bytearray(_body("capital?"))))
    evs.append(headers)
    agent = _replay(a, "capital?", 8)  # as many headers, one allow-listed value changed
    agent.request.headers = [(k, "ua/2" if k == "User-Agent" else v) for k, v in HEADERS]
    evs.append(agent)
    lg = RequestLog(str(tmp_path / "log.sqlite"))
    lg.open()
    try:
        lg.max_delay_s = lg.idle_s = 600  # keep the rows queued
        lg.high_water = 10 ** 6
        for ev in evs:
            lg.put(ev)
        queued = []
        while not lg._q.empty():
            queued.append(lg._q.get_nowait())
        assert len(queued) == len(evs)
        assert len(lg._replays) >= 2  # the fast path had entries to use
        numbers: dict[tuple, int] = {}
        for ev, (key, shape, row, blobs) in zip(evs, queued):
            want_shape, want_row, want_blobs = logdb.split_event(ev, lg.run, None, {})
            narrow = ev.kind == "replay" and not ev.detail and ev.similarity is None
            assert len(row) == len(logdb._NARROW_COLUMNS if narrow else logdb.ROW_COLUMNS)
            if narrow:
                assert row == tuple(want_row[logdb.ROW_COLUMNS.index(c)]
                                    for c in logdb._NARROW_COLUMNS)
                row = logdb._widen(lg.run, "replay", 1.0, row, None, None, None)
            assert (shape, row) == (want_shape, want_row)
            assert set(blobs) <= set(want_blobs) and (blobs or not want_blobs)
            assert numbers.setdefault(shape, key) == key  # one number per shape
        assert len(set(numbers.values())) == len(numbers)
    finally:
        lg._now.set()
        lg.close()


def test_every_column_is_written_as_row_from_event_gives_it_narrow_or_wide(tmp_path):
    # The writer inserts an exact replay's row narrow (run, kind and score in the statement,
    # detail and the response's headers and body NULL) and any other row wide, in runs of the
    # same width: in whatever order they come, each row of `requests` must hold what
    # row_from_event gives, and the ids the live feed is told must be the rows' own.
    t0 = time.time() - 60
    a = _answer("a", "Paris.")
    evs = []
    for i, ev in enumerate(_events(t0)):  # every kind, each between replays of one answer
        evs.append(_replay(a, "capital of France?", 100 + i, t0 + i + 0.5))
        evs.append(ev)
    detailed = _replay(a, "capital of France?", 200, t0 + 20)
    detailed.detail = "client left"  # a replay with a detail: wide
    evs += [detailed, _replay(a, "capital of France?", 201, t0 + 21)]
    # fuzzy replays: scored below 1 (wide), and 1.0 once rounded (narrow, score in the statement)
    evs += [_replay(a, "capital of France?", 202, t0 + 22, similarity=0.9),
            _replay(a, "capital of France?", 203, t0 + 23, similarity=0.99999)]
    evs[3].position = None  # a replay without a position: NULL play and plays, narrow
    path = tmp_path / "log.sqlite"
    got: list[dict] = []
    lg = RequestLog(str(path), max_age_days=0,
                    on_rows=lambda first, items: got.extend(logdb.live_rows(first, items)))
    lg.wants_rows = lambda: True
    lg.open()
    try:
        for ev in evs:
            lg.put(ev)
        assert lg.wait_idle()
        rows = _all(path, "SELECT * FROM requests ORDER BY id")
        assert len(rows) == len(evs)
        for ev, row in zip(evs, rows):
            want, _ = logdb.row_from_event(ev, lg.run, None, {})
            assert tuple(row[c] for c in logdb.COLUMNS) == want, ev.kind
        assert {r["kind"] for r in rows} == set(logdb.KINDS)
        assert _one(path, "SELECT COUNT(*) FROM log_rows WHERE kind = 'replay' AND detail IS NOT NULL") == 1
        listed, _ = lg.logs(limit=100)
        assert sorted(got, key=lambda r: r["id"]) == sorted(listed, key=lambda r: r["id"])
    finally:
        lg.close()


def test_every_row_keeps_its_bodies_when_its_shape_is_already_written(tmp_path):
    # The writer skips the bodies of a narrow row (a replay's: its only body is its shape's
    # request body) once the shape is written; a wide row's response body is its own even
    # when its shape repeats: forwards of one request whose answers differ but for their id.
    path = tmp_path / "log.sqlite"
    lg = _open(path, max_age_days=0)
    a = _answer("a", "Paris.")
    try:
        sent = []
        for i in range(3):
            ev = _forward(1)
            ev.id = i
            ev.response.body = ev.response.body.replace(b'"model"',
                                                        f'"id": "r{i}", "model"'.encode())
            sent.append(ev.response.body)
            lg.put(ev)
            lg.put(_replay(a, "capital of France?", 10 + i))
            assert lg.wait_idle()  # each in a batch of its own, the shapes written before
        rows = sorted(lg.logs(limit=10)[0], key=lambda r: r["id"])
        assert _one(path, "SELECT COUNT(*) FROM shapes") == 2
        forwards = [lg.entry(r["id"]) for r in rows if r["kind"] == "forward"]
        assert [f["response_body"] for f in forwards] == sent
        replays = [lg.entry(r["id"]) for r in rows if r["kind"] == "replay"]
        assert [r["request_body"] for r in replays] == [_body("capital of France?")] * 3
    finally:
        lg.close()
