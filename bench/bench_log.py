"""What the request log costs the proxy: replay requests/s with the log on and off, side by side.

One run starts, each as its own process on 127.0.0.1 (free ports), all stopped at the end:

    bare        the minimal aiohttp upstream of bench_proxy.py (used once, to record)
    off         `rechat replay DIR --no-ui`: no web UI, no request log
    on          `rechat replay DIR --log-db FILE`: the UI and the log (the default)
    on+viewer   as `on`, with a browser-like client reading the live stream (/_rechat/api/events)
    (and the same three for a streamed recording: off_sse, on_sse, on_sse+viewer)

and loads them with bench_proxy.py's keep-alive client, in rounds that alternate the
processes, so that off and on see the same machine. Each phase is a warm-up then at most
`--requests` requests and `--seconds` seconds, with one connection and with 32. It prints
req/s, p50/p99 and server CPU per request, then the ratios on/off (median of per-round
ratios) against the target: the log costs at most 10% of replay requests/s (ratio >= 0.9).
It also checks that the log holds one row per request sent.

    .venv/bin/python bench/bench_log.py            # 3 rounds (~2 min)
    .venv/bin/python bench/bench_log.py --quick    # 1 round, small phases (~30 s)
    .venv/bin/python bench/bench_log.py --pairs 8 --starts 5   # paired (~2 min), see `paired`

The default mode's per-phase figures miss the log's write-behind and move by a third between
runs of one version on a shared VM; the paired mode is the timed figure to trust.

Exits 0 whatever the figures (a measurement), 1 when the bench itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_proxy as bp  # noqa: E402  (the load generator and process helpers)

TARGET = 0.9  # log-on replay req/s >= 0.9 x log-off


class Viewer:
    """A live-feed reader, in its own process as a browser tab is: GET /_rechat/api/events,
    counting `exchange` events (`bench_log.py --viewer PORT`; it prints the count at SIGTERM).
    In a thread of this process it would take the GIL from the load generator, and the bench
    would then measure its own client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events = 0
        self.proc = subprocess.Popen([bp.PY, os.path.abspath(__file__), "--viewer", str(port)],
                                     stdout=subprocess.PIPE, text=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
            self.events = int(out.split()[-1]) if out.split() else 0
        except (subprocess.TimeoutExpired, ValueError):
            self.proc.kill()


def wait_flushed(port: int) -> None:
    """Have the log of the rechat at `port` write what it holds (a read does), and give its
    live stream time to send the rows out. The read is the newest row (`logs?limit=1`): /stats
    would aggregate the whole log, and the paired mode counts what the server does meanwhile
    (about 2.5 us per request of the phases before, for a log of 40,000 rows)."""
    with urllib.request.urlopen(f"http://{bp.HOST}:{port}/_rechat/api/logs?limit=1",
                                timeout=30) as r:
        r.read()
    time.sleep(0.5)


def run_viewer(port: int) -> None:
    """The `--viewer` process: read the live stream until SIGTERM, then print the count."""
    count = 0

    def done(*_: object) -> None:
        print(count, flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, done)
    try:
        with urllib.request.urlopen(f"http://{bp.HOST}:{port}/_rechat/api/events",
                                    timeout=600) as resp:
            for line in resp:
                if line.startswith(b"event: exchange"):
                    count += 1
    except Exception:
        pass
    done()


class _Workspace:
    """One run's temp folder (`tmp`, with `logdir` for the servers' output) and the servers
    and viewers started into it. Leaving the `with` stops them all and removes the folder
    whatever happened; Ctrl-C or a failure inside it is reported and ends the block with
    `status` set (130, or 1 once the servers' logs are shown), else `status` stays None."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rechat-bench-log-")
        self.logdir = os.path.join(self.tmp, "logs")
        os.makedirs(self.logdir)
        self.servers: dict[str, bp.Server] = {}
        self.viewers: dict[str, Viewer] = {}
        self.status: int | None = None

    def __enter__(self) -> "_Workspace":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is KeyboardInterrupt:
            print("bench interrupted", file=sys.stderr)
            self.status = 130
        elif isinstance(exc, Exception):
            self.status = bp.report_failure(exc, self.servers.values())
        for v in self.viewers.values():
            v.stop()
        for s in self.servers.values():
            s.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.status is not None


def _record_fixtures(tmp: str, logdir: str, stream_too: bool) -> dict[bool, str]:
    """Record the fixed answer from a bare upstream through `rechat record`, as JSON and
    (when `stream_too`) streamed: {stream: session folder}."""
    port = bp.free_port()
    bare = bp.Server("bare", [bp.PY, bp.__file__, "--bare-server", str(port)], port,
                     logdir).start()
    try:
        folders = {False: bp.record_fixture(tmp, port, False, logdir)}
        if stream_too:
            folders[True] = bp.record_fixture(tmp, port, True, logdir)
    finally:
        bare.stop()
    return folders


def _start_replays(folders: dict[bool, str], tmp: str, logdir: str, variants: tuple[str, ...],
                   servers: dict[str, "bp.Server"], viewers: dict[str, Viewer], tag: str = ""
                   ) -> list[tuple[str, bool]]:
    """Start one `rechat replay` per variant ("off", "on", "on+viewer") and recording in
    `folders`, into `servers` (and `viewers`); the log-on ones write a new database,
    `tmp`/log-KEY`tag`.sqlite. Returns [(key, stream)], keys "off", "on_sse", ..."""
    # Only the log differs between the processes: other per-request writers (the flow
    # dump, when this rechat has one) are off in all of them.
    help_text = subprocess.run(bp.RECHAT + ["replay", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    common = ["--no-dump"] if "--no-dump" in help_text else []
    keys = []
    for stream, folder in folders.items():
        sfx = "_sse" if stream else ""
        for variant in variants:
            key = variant + sfx
            p = bp.free_port()
            argv = bp.RECHAT + ["replay", folder, "--port", str(p), "--quiet", "--no-watch",
                                *common]
            if variant == "off":
                argv.append("--no-ui")
            else:
                argv += ["--log-db", os.path.join(tmp, f"log-{key}{tag}.sqlite")]
            servers[key] = bp.Server(key, argv, p, logdir).start()
            if variant == "on+viewer":
                viewers[key] = Viewer(p)
            keys.append((key, stream))
    return keys


def _user_sys_ms(srv: "bp.Server") -> tuple[float, float]:
    """User and system CPU time of `srv`'s process, all its threads, in ms (/proc/PID/stat)."""
    with open(f"/proc/{srv.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * 1000 / tick, int(fields[12]) * 1000 / tick


def _heading(title: str, what: str, t_run: float) -> None:
    """Print a run's heading: `title`, the date, Python, cores, `what` was run and how long it
    took since `t_run` (time.monotonic(), s), between blank lines."""
    print()
    print(f"{title}  {datetime.date.today()}  python {platform.python_version()}  "
          f"{os.cpu_count()} cores  {what}  ({time.monotonic() - t_run:.0f} s)")
    print()


def paired(args: argparse.Namespace) -> int:
    """Paired mode (`--pairs N --starts M`): the log's cost as the whole process's CPU per
    request.

    Two things make the phase-by-phase figures of the default mode move by a third between
    runs of one version. A phase's CPU misses the log's write-behind (its writer runs after
    the phase, often during the next one). And each process has its own luck: two starts of
    one server differ in CPU per request by 10-30% on this VM (hash seed, memory layout), more
    than the log costs. So this mode starts the two replay servers (log off, log on) M times
    afresh; each time they answer N pairs of short phases (off, then on; at most --requests,
    default 4000, and --seconds, default 2, each, at --concurrency), and each process's CPU
    time (all threads, /proc) is read after a warm-up and at the end, after the log-on server
    has written every row (a read of the newest row has it flush). Per request, that is everything the
    process did for the requests sent, writer thread and SQLite included. Printed per start
    and as the median over starts: CPU per request off and on, their ratio off/on (the req/s
    a CPU-bound server keeps with the log on), and the median of the per-pair req/s ratios
    on/off; the medians against the target (>= 0.9)."""
    max_req = args.requests or 4000
    max_s = args.seconds or 2.0
    conc = args.concurrency
    t_run = time.monotonic()
    out: dict[bool, list[tuple[dict, dict, dict, float]]] = {}
    with _Workspace() as ws:
        tmp, logdir, servers = ws.tmp, ws.logdir, ws.servers
        folders = _record_fixtures(tmp, logdir, not args.no_stream)
        for m in range(args.starts):
            _start_replays(folders, tmp, logdir, ("off", "on"), servers, {}, f"-{m}")
            for stream in folders:
                sfx = "_sse" if stream else ""
                srv = {"off": servers["off" + sfx], "on": servers["on" + sfx]}
                body = dict(bp.REQUEST, stream=True) if stream else bp.REQUEST
                raw = {k: bp.build_request(s.port, body) for k, s in srv.items()}
                expect = {k: bp.check_answer(s.port, stream) for k, s in srv.items()}
                for k in srv:  # warm: the length of two phases, then the batch written
                    asyncio.run(bp.load(srv[k].port, raw[k], conc, 2 * max_req, 2 * max_s,
                                        expect[k]))
                wait_flushed(srv["on"].port)
                cpu0 = {k: _user_sys_ms(s) for k, s in srv.items()}
                done = {"off": 0, "on": 0}
                ratios = []
                for _ in range(args.pairs):
                    rps = {}
                    for k in ("off", "on"):
                        ph = asyncio.run(bp.load(srv[k].port, raw[k], conc, max_req, max_s,
                                                 expect[k]))
                        if ph.errors:
                            raise RuntimeError(f"{k}{sfx}: {ph.errors} requests failed")
                        done[k] += ph.done
                        rps[k] = ph.rps
                    ratios.append(rps["on"] / rps["off"])
                wait_flushed(srv["on"].port)  # every row written: its cost is in the CPU
                cpu1 = {k: _user_sys_ms(s) for k, s in srv.items()}
                us = {k: (sum(cpu1[k]) - sum(cpu0[k])) * 1000 / done[k] for k in srv}
                sys_us = {k: (cpu1[k][1] - cpu0[k][1]) * 1000 / done[k] for k in srv}
                r = statistics.median(ratios)
                out.setdefault(stream, []).append((us, sys_us, done, r))
                print(f"  start {m + 1}/{args.starts}  {'streamed' if stream else 'JSON':<8} "
                      f"CPU us/req off {us['off']:6.1f}  on {us['on']:6.1f}  off/on "
                      f"{us['off'] / us['on']:.3f}   req/s on/off {r:.3f}", flush=True)
            for s in servers.values():
                s.stop()
            servers.clear()
    if ws.status is not None:
        return ws.status
    med = statistics.median
    _heading("rechat request-log bench, paired",
             f"{args.starts} starts x {args.pairs} pairs at c={conc}", t_run)
    print("| answer | CPU us/req off (system) | on (system) | off / on (range) "
          "| req/s on / off (range) |")
    print("|---|---:|---:|---:|---:|")
    verdicts = []
    for stream, runs in out.items():
        caps = [us["off"] / us["on"] for us, _, _, _ in runs]
        rps = [r for _, _, _, r in runs]
        verdicts += [med(caps) >= TARGET, med(rps) >= TARGET]
        cell = lambda k, i: med(x[i][k] for x in runs)  # noqa: E731
        print(f"| {'streamed' if stream else 'JSON'} | {cell('off', 0):.1f} ({cell('off', 1):.1f}) "
              f"| {cell('on', 0):.1f} ({cell('on', 1):.1f}) | {med(caps):.3f} "
              f"({min(caps):.3f}-{max(caps):.3f}) | {med(rps):.3f} ({min(rps):.3f}-{max(rps):.3f}) |")
    print()
    print(f"verdict: {sum(verdicts)} of {len(verdicts)} targets met (each median >= {TARGET})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, small phases")
    ap.add_argument("--rounds", type=int, help="rounds (default 3)")
    ap.add_argument("--requests", type=int, help="max requests per phase (default 3000)")
    ap.add_argument("--seconds", type=float, help="max seconds per phase (default 5)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-stream", action="store_true", help="skip the streamed scenarios")
    ap.add_argument("--pairs", type=int, metavar="N",
                    help="paired mode: N pairs of short phases, off then on, at --concurrency; "
                         "the whole processes' CPU per request (see `paired`)")
    ap.add_argument("--starts", type=int, default=5, metavar="M",
                    help="paired mode: start the two servers afresh M times (default 5)")
    args = ap.parse_args()
    if args.pairs:
        return paired(args)
    rounds = args.rounds or (1 if args.quick else 3)
    max_req = args.requests or (800 if args.quick else 3000)
    max_s = args.seconds or (2.0 if args.quick else 5.0)
    warm = 100 if args.quick else 300
    shapes = [1, args.concurrency]

    results: dict[tuple[str, int], list[bp.Phase]] = {}
    writer: dict[str, float] = {}  # writer thread CPU us per row
    t_run = time.monotonic()
    with _Workspace() as ws:
        tmp, logdir, servers, viewers = ws.tmp, ws.logdir, ws.servers, ws.viewers
        folders = _record_fixtures(tmp, logdir, not args.no_stream)
        keys = _start_replays(folders, tmp, logdir, ("off", "on", "on+viewer"), servers,
                              viewers)
        expect = {k: bp.check_answer(servers[k].port, s) for k, s in keys}
        sent = {k: 1 for k, _ in keys}  # the check's request
        for r in range(rounds):
            for conc in shapes:
                for key, stream in keys:
                    srv = servers[key]
                    raw = bp.build_request(srv.port, dict(bp.REQUEST, stream=True) if stream
                                           else bp.REQUEST)
                    w = asyncio.run(bp.load(srv.port, raw, conc, warm, max_s, expect[key]))
                    c0 = srv.cpu_ms()
                    ph = asyncio.run(bp.load(srv.port, raw, conc, max_req, max_s, expect[key]))
                    ph.cpu_ms = srv.cpu_ms() - c0
                    sent[key] += w.done + ph.done
                    if ph.errors or w.errors:
                        raise RuntimeError(f"{key} c={conc}: {ph.errors + w.errors} requests failed")
                    results.setdefault((key, conc), []).append(ph)
                    print(f"  round {r + 1}/{rounds}  {key:<15} c={conc:<3} {ph.rps:8.0f} req/s  "
                          f"p50 {ph.pct(0.5):.3f} ms  p99 {ph.pct(0.99):.3f} ms  "
                          f"server {ph.cpu_us_per_req:.0f} us CPU/req", flush=True)
        for key, _ in keys:
            if key.startswith("on"):
                with urllib.request.urlopen(f"http://{bp.HOST}:{servers[key].port}"
                                            "/_rechat/api/info", timeout=10) as resp:
                    lg = json.loads(resp.read())["log"]
                writer[key] = lg.get("writer_cpu_s", 0) * 1e6 / max(1, lg["written"])
        # Every request sent must be in the log once the servers have stopped (flushed).
        for key in viewers:
            # the rows written by now have been sent to it (the rest are written at stop)
            wait_flushed(servers[key].port)
            viewers[key].stop()
        for key in list(servers):
            servers[key].stop()
        rows = {}
        for key, _ in keys:
            if key.startswith("on"):
                db = sqlite3.connect(os.path.join(tmp, f"log-{key}.sqlite"))
                rows[key] = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
                db.close()
    if ws.status is not None:
        return ws.status

    med = statistics.median
    _heading("rechat request-log bench", f"rounds {rounds}", t_run)
    c1, cn = shapes
    print(f"| {'scenario':<16} | {'c=1 req/s':>9} | {'c=1 p50':>7} | {f'c={cn} req/s':>10} | "
          f"{f'c={cn} p99':>8} | {'CPU us/req':>10} |")
    print(f"|{'-' * 18}|{'-' * 11}|{'-' * 9}|{'-' * 12}|{'-' * 10}|{'-' * 12}|")
    for key, _ in keys:
        a, b = results[(key, c1)], results[(key, cn)]
        print(f"| {key:<16} | {med(p.rps for p in a):9.0f} | {med(p.pct(0.5) for p in a):7.3f} | "
              f"{med(p.rps for p in b):10.0f} | {med(p.pct(0.99) for p in b):8.3f} | "
              f"{med(p.cpu_us_per_req for p in b):10.0f} |")
    print()
    verdicts = []
    for key, stream in keys:
        if key.startswith("off"):
            continue
        base = "off_sse" if stream else "off"
        for conc in shapes:
            ratio = med(x.rps / y.rps for x, y in zip(results[(key, conc)], results[(base, conc)]))
            gate = conc == cn and "viewer" not in key
            ok = ratio >= TARGET
            if gate:
                verdicts.append(ok)
            print(f"  {key + ' / ' + base + ' req/s':<34} c={conc:<3} {ratio:6.3f}"
                  + (f"   target >= {TARGET}   {'PASS' if ok else 'FAIL'}" if gate else ""))
        # CPU time per request is steadier than req/s on a busy machine: the same cost, seen
        # as the share of the log-off process's work per request.
        extra = med(x.cpu_us_per_req - y.cpu_us_per_req
                    for x, y in zip(results[(key, cn)], results[(base, cn)]))
        share = extra / med(y.cpu_us_per_req for y in results[(base, cn)])
        print(f"  {key + ' - ' + base + ' CPU per request':<34} c={cn:<3} {extra:+6.1f} us "
              f"({share:+.1%})")
    print()
    for key, n in rows.items():
        print(f"  log {key:<15} {n} rows for {sent[key]} requests sent"
              + ("" if n == sent[key] else "   MISMATCH")
              + f"; writer thread {writer.get(key, 0):.1f} us CPU per row"
              + (f"; the viewer got {viewers[key].events} rows" if key in viewers else ""))
    print(f"verdict: {sum(verdicts)} of {len(verdicts)} targets met")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--viewer"]:
        run_viewer(int(sys.argv[2]))
    sys.exit(main())
