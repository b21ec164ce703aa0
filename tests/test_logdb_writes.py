"""When the request log writes: write-behind while the proxy is busy, at once for readers.

RequestLog is driven directly with real ProxyEvents and a real SQLite file; the database is
read with a separate sqlite3 connection, as another process would.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from rechat.exchange import Request, Response
from rechat.logdb import RequestLog, live_rows
from rechat.proxy import ProxyEvent


def _event(i: int) -> ProxyEvent:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    return ProxyEvent("forward", Request("POST", "/v1/chat/completions", body=body),
                      Response(200, [("Content-Type", "application/json")], b'{"ok": true}'),
                      id=i, started_at=time.time())


def _rows_on_disk(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    finally:
        db.close()


def _log(tmp_path, **kw) -> RequestLog:
    lg = RequestLog(str(tmp_path / "log.sqlite"), **kw)
    lg.wants_rows = lambda: False  # nobody watches the live stream
    lg.open()
    return lg


def _busy(lg: RequestLog, n: int, every_s: float) -> None:
    for i in range(n):
        lg.put(_event(i))
        time.sleep(every_s)


def test_rows_wait_while_the_proxy_is_busy_and_are_written_when_it_pauses(tmp_path):
    lg = _log(tmp_path, idle_s=0.3, max_delay_s=30)
    try:
        _busy(lg, 40, 0.02)  # 0.8 s of requests, never 0.3 s apart
        assert _rows_on_disk(lg.path) == 0
        deadline = time.monotonic() + 3
        while _rows_on_disk(lg.path) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rows_on_disk(lg.path) == 40
    finally:
        lg.close()


def test_a_read_sees_every_finished_request_even_while_busy(tmp_path):
    lg = _log(tmp_path, idle_s=10, max_delay_s=30)
    try:
        _busy(lg, 25, 0)
        assert _rows_on_disk(lg.path) == 0
        assert lg.count() == 25  # the read had the queue written first
        rows, _ = lg.logs(limit=100)
        assert len(rows) == 25 and _rows_on_disk(lg.path) == 25
    finally:
        lg.close()


def test_the_oldest_row_waits_at_most_max_delay(tmp_path):
    lg = _log(tmp_path, idle_s=10, max_delay_s=0.5)
    stop = threading.Event()
    t = threading.Thread(target=lambda: [lg.put(_event(0)) or time.sleep(0.02)
                                         for _ in range(200) if not stop.is_set()])
    t.start()
    try:
        time.sleep(1.2)
        assert _rows_on_disk(lg.path) > 0  # written while requests kept coming
    finally:
        stop.set()
        t.join()
        lg.close()


def test_high_water_rows_are_written_without_a_pause(tmp_path):
    lg = _log(tmp_path, idle_s=10, max_delay_s=30, high_water=50)
    try:
        _busy(lg, 60, 0.005)
        deadline = time.monotonic() + 2
        while _rows_on_disk(lg.path) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _rows_on_disk(lg.path) >= 50
    finally:
        lg.close()


def test_a_live_viewer_gets_rows_within_flush_s_and_close_writes_the_rest(tmp_path):
    got: list[dict] = []
    lg = RequestLog(str(tmp_path / "log.sqlite"), on_rows=lambda first, items: got.extend(live_rows(first, items)), idle_s=10,
                    max_delay_s=30, flush_s=0.05)
    lg.wants_rows = lambda: True
    lg.open()
    try:
        _busy(lg, 10, 0.01)
        deadline = time.monotonic() + 2
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r["req"] for r in got] == list(range(10))
        lg.wants_rows = lambda: False
        _busy(lg, 5, 0)
    finally:
        lg.close()
    assert _rows_on_disk(lg.path) == 15


def test_none_and_bytes_bind_as_null_and_blob_with_the_log_loaded():
    # rechat.logdb registers sqlite3 adapters for None and bytes (a faster way to the same
    # binding): every sqlite3 user in the process must still store NULL and the same BLOB.
    import rechat.logdb  # noqa: F401  (the registration happens at import)

    db = sqlite3.connect(":memory:")
    try:
        got = db.execute("SELECT typeof(?), ?, typeof(?), ?, typeof(?), ?",
                         [None, None, b"\x00h\xff", b"\x00h\xff", b"", b""]).fetchone()
        assert got == ("null", None, "blob", b"\x00h\xff", "blob", b"")
        db.execute("CREATE TABLE t (a, b)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(None, b"x"), (b"y", None)])
        assert db.execute("SELECT typeof(a), a, typeof(b), b FROM t ORDER BY rowid").fetchall() \
            == [("null", None, "blob", b"x"), ("blob", b"y", "null", None)]
    finally:
        db.close()
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None
    data = b"abc"
    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)](data) is data
