"""Instructions per request of rechat's own hot-path work, counted by valgrind: a figure that
does not move with the machine's load, for comparing two versions of the code.

Timings on a shared VM swing by a third between runs; the number of instructions executed
does not (two runs agree within about 0.2%). It is not time: it leaves out system calls and
cache misses, so it says which version does less work, not by how much the server speeds up.
Each workload runs in process, without sockets, under
`valgrind --tool=cachegrind --cache-sim=no`, once with `--number` iterations and once with
six times as many; the difference, divided by the difference in iterations, is the cost of
one iteration without the interpreter's start-up.

    gateway-json          the gateway's work for one JSON answer: Gateway.outbound,
                          candidates, headers, transforms, rewrite_json (as bench_gateway.py's
                          gateway: two routes, a renamed model, --think strip)
    gateway-stream        the same for the 16-event SSE answer fed an event at a time
    gateway-stream-whole  the same answer in one piece
    sse-parse             SSEParser over that answer, an event at a time

`--servers` counts whole servers instead, as bench_gateway.py runs them: the bare upstream on
127.0.0.1, then `rechat passthrough` plain and as the gateway (two routes, a renamed model
restored in answers, --think strip), each under valgrind, answering `--server-requests` and
then five times as many requests over one connection; the difference per request is the
server's instructions for one request, everything included (HTTP, the relay, the rewrite).
It prints plain, gateway and their ratio for the JSON answer and the stream: issue 5's ratio
without the machine's noise (but counting instructions, not time). Takes a few minutes. The
stream's count moves by a few percent between runs: the proxy reads the upstream's 17 writes
in pieces of several events, cut wherever the timing falls. Two stream shapes cut the same way
every run count the stream alone: `--event-gap-ms 5`, its events 5 ms apart, as a model's
tokens come (each event a piece of its own), and `--one-write`, the whole stream in one write,
as a cache or a replaying rechat sends it (one piece).

`--log` counts what the request log costs a replay, as bench_log.py runs it: `rechat replay`
of a recorded answer with `--no-ui` (no log) and with `--log-db FILE` (the UI and the log),
JSON and stream. Each server first answers `--server-requests` x 3 requests and is given 6 s
(the log's longest wait, `max_delay_s`, is 5 s), so that both runs have the log open, its
statements prepared and a batch written before the counted requests; then as `--servers`.
The count takes in the writer thread and SQLite; it leaves out what the hand-overs of the
GIL between the two threads cost in time. Issue 4's ratio without the machine's noise.

    .venv/bin/python bench/bench_instructions.py [--workload NAME ...] [--number 200]
    .venv/bin/python bench/bench_instructions.py --servers [--server-requests 100]
    .venv/bin/python bench/bench_instructions.py --servers --event-gap-ms 5
    .venv/bin/python bench/bench_instructions.py --servers --one-write
    .venv/bin/python bench/bench_instructions.py --log [--server-requests 100]

Every counted process runs with PYTHONHASHSEED=0 (the count then repeats to about 0.1%).
Needs valgrind (Debian: `apt-get install valgrind`). Exits 0, or 1 when valgrind is missing
or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Every counted process hashes strings with one seed: with random seeds, dicts and sets lay
# out differently from run to run, and two runs of one server differed by up to 3%.
_FIXED_HASH = {**os.environ, "PYTHONHASHSEED": "0"}

WORKLOADS = ("gateway-json", "gateway-stream", "gateway-stream-whole", "sse-parse")


def run_workload(name: str, n: int) -> None:
    """Run `name` `n` times in this process (the part valgrind counts)."""
    import bench_gateway_inproc as gi
    import bench_proxy as bp
    from rechat.sse import SSEParser

    if name == "sse-parse":
        for _ in range(n):
            p = SSEParser()
            for ev in bp.SSE_EVENTS:
                p.feed(ev)
            p.close()
        return
    gw = gi.gateway(True)
    stream = name != "gateway-json"
    body = json.dumps(dict(bp.REQUEST, stream=True) if stream else bp.REQUEST).encode()
    pieces = gi.WHOLE if name == "gateway-stream-whole" else bp.SSE_EVENTS
    for _ in range(n):
        gi.one(gw, body, stream, pieces)


def count(name: str, n: int) -> int:
    """Instructions valgrind counts for a whole run of `name` `n` times."""
    proc = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                           "--cachegrind-out-file=/dev/null", sys.executable,
                           os.path.abspath(__file__), "--run", name, str(n)],
                          capture_output=True, text=True, timeout=1800, env=_FIXED_HASH)
    m = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"valgrind run of {name} failed:\n{proc.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def server_count(argv: list[str], stream: bool, n: int, tmp: str, warm: int = 1,
                 settle_s: float = 0.0) -> int:
    """Instructions valgrind counts for a rechat server (`argv` after ``-m rechat``) that
    starts, answers `warm` requests of bench_proxy.REQUEST, idles `settle_s` s, answers `n`
    more over one connection and stops."""
    import asyncio
    import signal
    import time
    import bench_proxy as bp

    port = bp.free_port()
    proc = subprocess.Popen(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                             "--cachegrind-out-file=/dev/null", bp.PY, "-m", "rechat", *argv,
                             "--port", str(port), "--no-dump", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp,
                            env=_FIXED_HASH)
    raw = bp.build_request(port, dict(bp.REQUEST, stream=stream))
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                asyncio.run(bp.load(port, raw, 1, 1, 60, timeout_s=60))
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rechat {' '.join(argv)} did not start under valgrind")
                time.sleep(0.5)
        if warm > 1:
            asyncio.run(bp.load(port, raw, 1, warm - 1, 600, timeout_s=60))
        time.sleep(settle_s)
        ph = asyncio.run(bp.load(port, raw, 1, n, 600, timeout_s=60))
        if ph.done != n or ph.errors:
            raise RuntimeError(f"{ph.done} of {n} requests answered, {ph.errors} errors")
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = re.search(r"I\s+refs:\s+([\d,]+)", err)
    if m is None:
        raise RuntimeError(f"valgrind printed no count:\n{err[-2000:]}")
    return int(m.group(1).replace(",", ""))


def _bare_upstream(tmp: str, gap_ms: float = 0.0, one_write: bool = False):
    """Start bench_proxy.py's bare upstream on a free 127.0.0.1 port, pausing `gap_ms` ms after
    each event of a stream (or writing it whole, `one_write`); return (server, port)."""
    import bench_proxy as bp

    port = bp.free_port()
    return bp.Server("bare", [bp.PY, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "bench_proxy.py"), "--bare-server", str(port),
                              "--event-gap-ms", str(gap_ms),
                              *(["--one-write"] if one_write else [])],
                     port, tmp).start(), port


def per_request(argv: list[str], stream: bool, n: int, tmp: str, **warm) -> float:
    """k instructions per request of the server `argv`: the difference between `n` and `6 n`
    counted requests (`server_count`, with `warm`), over the `5 n` requests between."""
    short = server_count(argv, stream, n, tmp, **warm)
    long = server_count(argv, stream, 6 * n, tmp, **warm)
    return (long - short) / (5 * n) / 1000


def servers(n: int, gap_ms: float = 0.0, one_write: bool = False) -> int:
    """The `--servers` run (module docstring); with `gap_ms`, the stream only, its events
    `gap_ms` ms apart; with `one_write`, the stream only, in one write."""
    import tempfile
    import bench_proxy as bp

    tmp = tempfile.mkdtemp(prefix="rechat-bench-ir-")
    bare, bare_port = _bare_upstream(tmp, gap_ms, one_write)
    up = f"http://{bp.HOST}:{bare_port}/v1"
    common = ["--no-ui", "--sessions", os.path.join(tmp, "s")]
    configs = {"plain": ["passthrough", up, *common],
               "gateway": ["passthrough", f"{up}::gpt-4o-mini,llama3", f"{up}::other",
                           "--model-map", '{"/gpt-4o-.*/": "llama3"}', "--restore-model",
                           "--think", "strip", *common]}
    try:
        for stream in (True,) if gap_ms or one_write else (False, True):
            per = {}
            for name, argv in configs.items():
                per[name] = per_request(argv, stream, n, tmp)
                print(f"{name:<8} {'stream' if stream else 'json':<7} {per[name]:8.1f} k "
                      "instructions per request (the whole server)", flush=True)
            print(f"gateway / plain, {'stream' if stream else 'json'}: "
                  f"{per['gateway'] / per['plain']:.3f}", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        bare.stop()
    return 0


def log_servers(n: int) -> int:
    """The `--log` run (module docstring)."""
    import tempfile
    import bench_proxy as bp

    tmp = tempfile.mkdtemp(prefix="rechat-bench-ir-")
    bare, bare_port = _bare_upstream(tmp)
    try:
        folders = {s: bp.record_fixture(tmp, bare_port, s, tmp) for s in (False, True)}
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        bare.stop()
    try:
        for stream, folder in folders.items():
            per = {}
            for name, extra in (("off", ["--no-ui"]),
                                ("on", ["--log-db", os.path.join(tmp, "log.sqlite")])):
                argv = ["replay", folder, "--no-watch", *extra]
                per[name] = per_request(argv, stream, n, tmp, warm=3 * n, settle_s=6)
                print(f"log {name:<4} {'stream' if stream else 'json':<7} {per[name]:8.1f} k "
                      "instructions per replayed request (the whole server)", flush=True)
            print(f"log on / off, {'stream' if stream else 'json'}: "
                  f"{per['on'] / per['off']:.3f} (the log: {per['on'] - per['off']:.1f} k)",
                  flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", action="append", choices=WORKLOADS,
                    help="which (repeatable; default: all)")
    ap.add_argument("--number", type=int, default=200,
                    help="iterations of the short run (the long one runs 6 times as many)")
    ap.add_argument("--servers", action="store_true",
                    help="count whole servers, plain and gateway (module docstring)")
    ap.add_argument("--log", action="store_true",
                    help="count replay servers, log off and on (module docstring)")
    ap.add_argument("--server-requests", type=int, default=100,
                    help="requests of the short server run (the long one answers 6 times as many)")
    ap.add_argument("--event-gap-ms", type=float, default=0.0,
                    help="with --servers: count the stream only, its events this many ms apart "
                         "(each a piece of its own, as a model's tokens come)")
    ap.add_argument("--one-write", action="store_true",
                    help="with --servers: count the stream only, the upstream writing it whole "
                         "(one piece)")
    ap.add_argument("--run", nargs=2, help=argparse.SUPPRESS)  # internal: the counted run
    args = ap.parse_args()
    if args.run:
        run_workload(args.run[0], int(args.run[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    if args.servers:
        return servers(args.server_requests, args.event_gap_ms, args.one_write)
    if args.log:
        return log_servers(args.server_requests)
    n = args.number
    for name in args.workload or WORKLOADS:
        try:
            short, long = count(name, n), count(name, 6 * n)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(e, file=sys.stderr)
            return 1
        print(f"{name:<22} {(long - short) / (5 * n) / 1000:8.1f} k instructions per request",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
