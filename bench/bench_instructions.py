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

    .venv/bin/python bench/bench_instructions.py [--workload NAME ...] [--number 200]

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
                          capture_output=True, text=True, timeout=1800)
    m = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"valgrind run of {name} failed:\n{proc.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", action="append", choices=WORKLOADS,
                    help="which (repeatable; default: all)")
    ap.add_argument("--number", type=int, default=200,
                    help="iterations of the short run (the long one runs 6 times as many)")
    ap.add_argument("--run", nargs=2, help=argparse.SUPPRESS)  # internal: the counted run
    args = ap.parse_args()
    if args.run:
        run_workload(args.run[0], int(args.run[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
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
