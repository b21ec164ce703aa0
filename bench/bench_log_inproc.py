"""The request log's own cost per row, in process: what bench_log.py measures end to end,
without the network, the servers or the machine's other load.

For each scenario and round: a fresh database (rechat.logdb's schema), `RequestLog.put()` of
`--rows` finished ProxyEvents as the proxy makes them (new Request objects, new header
strings and body bytes each time; made in advance, and frozen out of the garbage collector's
sight), timed: the event loop's share; then the writer's `_write()` of what was queued, in
batches of `RequestLog.batch` rows as the writer thread does, timed: the writer thread's
share. CPU time of this thread (time.thread_time), best of `--repeat` rounds, in µs per row;
the database's size after a checkpoint, in bytes per row.

    replay, 1 answer          the same request answered from the same answer, again and again
    replay, 50 answers        50 such requests in turn
    replay, each answer once  every request and answer different (a test suite's first run)
    same, again (restart)     the same, written a second time by a new RequestLog on the
                              same file (the next run; size: what the second run added)
    forward, all distinct     forwarded requests, each with its own request and response body

`--against FILE` loads another version of rechat/logdb.py (for instance
`git show 3d29081:rechat/logdb.py > /tmp/logdb_old.py`) and runs it round by round with this
checkout's, in the same process, so that both see the same machine; the figures read
`other -> this`.

    .venv/bin/python bench/bench_log_inproc.py [--rows 20000] [--repeat 5] [--against FILE] [--only WORD]

Exits 0.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rechat import logdb  # noqa: E402
from rechat.exchange import Answer, Request, Response  # noqa: E402
from rechat.proxy import ProxyEvent  # noqa: E402

HEADERS = [("Host", "127.0.0.1:8080"), ("Accept-Encoding", "gzip, deflate"),
           ("Connection", "keep-alive"), ("Accept", "application/json"),
           ("Content-Type", "application/json"), ("User-Agent", "OpenAI/Python 1.54.0"),
           ("X-Stainless-Lang", "python"), ("X-Stainless-Package-Version", "1.54.0"),
           ("X-Stainless-OS", "Linux"), ("X-Stainless-Arch", "x64"),
           ("X-Stainless-Runtime", "CPython"), ("X-Stainless-Runtime-Version", "3.12.3"),
           ("Authorization", "Bearer sk-test-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
           ("X-Stainless-Async", "false"), ("Content-Length", "120")]
META = {"ms": {"ttfb": 300.0, "total": 812.5}, "completion": {
    "id": "chatcmpl-1", "model": "gpt-4o-mini-2024-07-18",
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}}


def _fresh(s: str) -> str:  # a new str object, as a parser makes one per request
    return s.encode().decode()


def _request(body: bytes) -> Request:
    return Request("POST", _fresh("/v1/chat/completions"), "",
                   [(_fresh(k), _fresh(v)) for k, v in HEADERS], bytes(bytearray(body)))


def _body(i: int) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": f"Question number {i}: what is the capital of France?"}]}).encode()


def replays(n: int, answers: int) -> list[ProxyEvent]:
    made = []
    for j in range(answers):
        a = Answer(f"/home/u/sessions/question-number-{j}.md", 0, 12, "chat",
                   message={"role": "assistant", "content": f"Paris, answer {j}."}, meta=META)
        reply = json.dumps({"id": "x", "model": "gpt-4o-mini-2024-07-18", "choices": [
            {"message": {"role": "assistant", "content": f"Paris, answer {j}."}}]}).encode()
        made.append((a, _body(j), reply))
    out = []
    for i in range(n):
        a, body, reply = made[i % answers]
        out.append(ProxyEvent("replay", _request(body),
                              Response(200, [("Content-Type", "application/json")], reply),
                              answer=a, file=a.session, ms=0.412, position=(0, 1), id=i,
                              started_at=time.time(), client="127.0.0.1"))
    return out


def forwards(n: int) -> list[ProxyEvent]:
    out = []
    for i in range(n):
        resp = json.dumps({"id": f"chatcmpl-{i}", "model": "gpt-4o-mini-2024-07-18", "choices": [
            {"message": {"role": "assistant", "content": f"Paris ({i})."}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}).encode()
        out.append(ProxyEvent("forward", _request(_body(100000 + i)),
                              Response(200, [("Content-Type", "application/json"),
                                             ("x-request-id", f"r{i}")], resp, ttfb_ms=310.0),
                              ms=320.5, id=i, started_at=time.time(), client="127.0.0.1"))
    return out


def run(mod, events: list, path: str) -> tuple[float, float, int]:
    """(put µs, writer µs per row, bytes the file grew by) for `events` into the log at `path`."""
    size0 = os.path.getsize(path) if os.path.exists(path) else 0
    lg = mod.RequestLog(path, max_age_days=0)
    db = mod.connect(path)
    mod.migrate(db)
    lg._db = db
    lg._thread = threading.current_thread()  # put() asks only that a writer exists
    # The events made in advance are not the garbage collector's to walk (in the proxy each
    # is freed when put() returns); what put() itself allocates is.
    gc.collect()
    gc.freeze()
    t0 = time.thread_time()
    for e in events:
        lg.put(e)
    put_s = time.thread_time() - t0
    gc.unfreeze()
    items = []
    while True:
        try:
            items.append(lg._q.get_nowait())
        except queue.Empty:
            break
    assert len(items) == len(events)
    t0 = time.thread_time()
    for i in range(0, len(items), lg.batch):
        lg._write(items[i:i + lg.batch])
    write_s = time.thread_time() - t0
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    n = len(events)
    return put_s / n * 1e6, write_s / n * 1e6, (os.path.getsize(path) - size0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--against", metavar="FILE", help="another rechat/logdb.py to compare with")
    ap.add_argument("--only", metavar="WORD", help="the scenarios whose name has WORD")
    args = ap.parse_args()
    n = args.rows
    mods = []
    if args.against:
        spec = importlib.util.spec_from_file_location("other_logdb", args.against)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        mods.append(("other", other))
    mods.append(("this", logdb))
    scenarios = [
        ("replay, 1 answer", lambda: replays(n, 1), 1),
        ("replay, 50 answers", lambda: replays(n, 50), 1),
        ("replay, each answer once", lambda: replays(n, n), 1),
        ("same, again (restart)", lambda: replays(n, n), 2),
        ("forward, all distinct", lambda: forwards(n), 1),
    ]
    print(f"{n} rows per round, best of {args.repeat}; put and writer in CPU µs per row, "
          f"database in bytes per row" + ("; other -> this" if args.against else ""))
    for name, make, times in scenarios:
        if args.only and args.only not in name:
            continue
        got: dict[str, list] = {label: [] for label, _ in mods}
        for r in range(args.repeat):
            order = mods if r % 2 == 0 else mods[::-1]
            for label, mod in order:
                d = tempfile.mkdtemp(prefix="rechat-log-")
                try:
                    path = os.path.join(d, "log.sqlite")
                    for _ in range(times):
                        res = run(mod, make(), path)
                    got[label].append(res)
                finally:
                    shutil.rmtree(d)
        cols = []
        for k, unit, fmt in ((0, "us", "{:.2f}"), (1, "us", "{:.2f}"), (2, "B", "{:.0f}")):
            best = [fmt.format(min(x[k] for x in got[label])) for label, _ in mods]
            cols.append(" -> ".join(best) + " " + unit)
        print(f"{name:26s} put {cols[0]:18s} writer {cols[1]:18s} db {cols[2]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
