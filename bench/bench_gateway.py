"""What routing and rewriting cost over plain forwarding, side by side (issue 5's target: <= 5%).

One run starts, each as its own process on 127.0.0.1 (free ports), all stopped at the end:

    bare      bench_proxy.py's minimal aiohttp upstream (fixed chat completion, or 15 SSE events + [DONE])
    plain     `rechat passthrough BARE/v1`: forwarding only
    gateway   `rechat passthrough BARE/v1::gpt-4o-mini BARE2/v1::other --model-map ...
              --think strip`: routing by model among two upstreams, a model renamed (and
              restored in the answer unless `--answer-model served`), the reasoning rewrite
              over JSON and SSE answers

Both rechat processes run lean (`--no-ui --no-dump`) so that only routing and rewriting
differ. Rounds alternate plain and gateway; each phase is a warm-up, then at most
`--requests` requests and `--seconds` seconds, one connection (latency) and 16 (throughput).
Prints req/s, p50 and server CPU per request, the CPU other processes used meanwhile (in
cores: noise on a shared machine), and the ratios gateway/plain (median of per-round values)
against the target.

    .venv/bin/python bench/bench_gateway.py [--quick] [--floor]

`--floor` adds a third process, bench/gateway_floor.py: the gateway's routing as it is, and its
answer rewrite replaced by the least any rewrite must do on the bench's answer (two one-byte
searches and one replace per piece), so that floor / plain says what the 5% target leaves.

Exits 0 whatever the figures (a measurement), 1 when the bench itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_proxy as bp  # noqa: E402

TARGET = 1.05  # gateway p50 and CPU per request at most 5% above plain forwarding


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--floor", action="store_true",
                    help="also run bench/gateway_floor.py: the same routing with the answer "
                         "rewrite replaced by the least it must do (what the target leaves)")
    ap.add_argument("--answer-model", choices=("asked", "served"), default="asked",
                    help="the gateway's answers name the model asked for (rechat's default, "
                         "a rename per answer object) or the one served (--served-model)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests, args.seconds = 1, 600, 2.0
    tmp = tempfile.mkdtemp(prefix="rechat-bench-gw-")
    servers: list[bp.Server] = []
    try:
        ports = {n: bp.free_port() for n in ("bare", "bare2", "plain", "gateway", "floor")}
        for name in ("bare", "bare2"):
            servers.append(bp.Server(name, [bp.PY, os.path.join(os.path.dirname(__file__),
                                                                 "bench_proxy.py"),
                                            "--bare-server", str(ports[name])],
                                     ports[name], tmp).start())
        up, up2 = (f"http://{bp.HOST}:{ports[n]}/v1" for n in ("bare", "bare2"))
        lean = ["--no-ui", "--no-dump", "--quiet", "--sessions", os.path.join(tmp, "s")]
        plain = bp.Server("plain", bp.RECHAT + ["passthrough", up, "--port", str(ports["plain"]),
                                                *lean], ports["plain"], tmp).start()
        def routed(name: str, head: list[str]) -> bp.Server:
            return bp.Server(name, head + [
                "passthrough", f"{up}::gpt-4o-mini,llama3", f"{up2}::other", "--port",
                str(ports[name]), "--model-map", '{"/gpt-4o-.*/": "llama3"}',
                "--restore-model" if args.answer_model == "asked" else "--served-model",
                "--think", "strip", *lean], ports[name], tmp).start()

        gateway = routed("gateway", bp.RECHAT)
        servers += [plain, gateway]
        if args.floor:  # the same routing, the answer rewrite replaced by its least work
            servers.append(routed("floor", [bp.PY, os.path.join(os.path.dirname(__file__),
                                                                "gateway_floor.py")]))
        results: dict[tuple, list] = {}
        for rnd in range(args.rounds):
            for stream in (False, True):
                for conc in (1, 16):
                    for srv in servers[2:]:  # plain, gateway (and floor), in turn
                        body = dict(bp.REQUEST, stream=True) if stream else bp.REQUEST
                        raw = bp.build_request(srv.port, body)
                        asyncio.run(bp.load(srv.port, raw, conc, 200, 2.0))  # warm-up
                        c0, k0 = srv.cpu_ms(), time.process_time()
                        ours0, sys0 = sum(x.cpu_ms() for x in servers), bp.system_busy_ms()
                        ph = asyncio.run(bp.load(srv.port, raw, conc, args.requests, args.seconds))
                        ph.cpu_ms = srv.cpu_ms() - c0
                        ph.client_cpu_ms = (time.process_time() - k0) * 1000
                        ph.other_cpu_ms = (bp.system_busy_ms() - sys0 - ph.client_cpu_ms
                                           - (sum(x.cpu_ms() for x in servers) - ours0))
                        if ph.errors:
                            raise RuntimeError(f"{srv.name}: {ph.errors} failed requests")
                        results.setdefault((srv.name, stream, conc), []).append(ph)
                        print(f"  round {rnd + 1}/{args.rounds} {srv.name:8} stream={stream!s:5} "
                              f"c={conc:<3} {ph.rps:7.0f} req/s  p50 {ph.pct(0.5):.3f} ms  "
                              f"{ph.cpu_us_per_req:5.0f} us CPU/req  other processes "
                              f"{ph.other_busy:.2f} cores", flush=True)
        print("\n| shape | plain req/s | gateway req/s | plain p50 ms | gateway p50 ms | "
              "gateway/plain CPU per request |")
        print("|---|---|---|---|---|---|")
        verdicts = []
        for stream in (False, True):
            for conc in (1, 16):
                p, g = results[("plain", stream, conc)], results[("gateway", stream, conc)]
                cpu = statistics.median(b.cpu_us_per_req / a.cpu_us_per_req for a, b in zip(p, g))
                lat = statistics.median(b.pct(0.5) / a.pct(0.5) for a, b in zip(p, g))
                shape = f"{'stream' if stream else 'json'}, c={conc}"
                print(f"| {shape} | {statistics.median(x.rps for x in p):.0f} | "
                      f"{statistics.median(x.rps for x in g):.0f} | "
                      f"{statistics.median(x.pct(0.5) for x in p):.3f} | "
                      f"{statistics.median(x.pct(0.5) for x in g):.3f} | {cpu:.3f} |")
                verdicts.append((shape, lat if conc == 1 else cpu))
        if args.floor:
            print("\nthe floor (gateway_floor.py: routing as is, the answer rewrite replaced by "
                  "two one-byte searches and one replace per piece) against plain:")
            for stream in (False, True):
                for conc in (1, 16):
                    p, f = results[("plain", stream, conc)], results[("floor", stream, conc)]
                    cpu = statistics.median(b.cpu_us_per_req / a.cpu_us_per_req
                                            for a, b in zip(p, f))
                    lat = statistics.median(b.pct(0.5) / a.pct(0.5) for a, b in zip(p, f))
                    print(f"  floor / plain, {'stream' if stream else 'json'}, c={conc}: "
                          f"p50 {lat:.3f}, CPU per request {cpu:.3f}")
        other = [ph.other_busy for phs in results.values() for ph in phs]
        print(f"\nother processes (noise): median {statistics.median(other):.2f} cores, "
              f"max {max(other):.2f} cores of {os.cpu_count()}")
        print()
        for shape, ratio in verdicts:
            what = "p50 latency" if shape.endswith("c=1") else "CPU per request"
            print(f"gateway / plain {what}, {shape}: {ratio:.3f}  target <= {TARGET}  "
                  f"{'PASS' if ratio <= TARGET else 'FAIL'}")
        return 0
    except Exception as e:  # the bench itself failed
        return bp.report_failure(e, servers)
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
