"""The gateway's own work per request, in process: what bench_gateway.py measures end to end,
without the network, the servers or the machine's other load.

For the bench's exchange (bench_proxy.REQUEST; the fixed completion, or its 15 SSE events and
[DONE], either each event a network piece as the bare server writes them, or all of them in
one piece, as the proxy mostly reads them from a local upstream), times in CPU
microseconds, best of `--repeat`: `Gateway.outbound` + `candidates` + `headers` +
`transforms`, then `rewrite_json` or an `SSEStreamRewriter` over the pieces, told of each
piece what the relay's SSE parser found (`SSEParser.whole`), as the relay tells it. Configuration
as bench_gateway.py's gateway: two routes, `{"/gpt-4o-.*/": "llama3"}`, `--think strip`, the
answer naming the model asked for (or, second line, the one served).

    .venv/bin/python bench/bench_gateway_inproc.py [--repeat 7] [--number 2000]

Compare with the plain server's CPU per request that bench_gateway.py prints (the 5% target
is a fraction of that). Exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_proxy as bp  # noqa: E402

from rechat.exchange import Request  # noqa: E402
from rechat.gateway import Gateway, GatewaySettings  # noqa: E402
from rechat.modelmap import ModelMap  # noqa: E402
from rechat.routes import parse_routes  # noqa: E402
from rechat.rewrite import rewrite_json, stream_rewriter  # noqa: E402
from rechat.sse import SSEParser  # noqa: E402
from rechat.think import ThinkMode  # noqa: E402


def gateway(restore: bool) -> Gateway:
    routes = parse_routes(["http://127.0.0.1:1/v1::gpt-4o-mini,llama3",
                           "http://127.0.0.1:2/v1::other"])
    return Gateway(GatewaySettings(routes=routes, restore_model=restore, think=ThinkMode.STRIP,
                                   model_map=ModelMap.from_json('{"/gpt-4o-.*/": "llama3"}')))


WHOLE = [b"".join(bp.SSE_EVENTS)]


def framed(pieces: list[bytes]) -> list[int]:
    """What the relay's SSEParser tells the rewriter of each piece (`SSEParser.whole`): the
    parsing is forwarding's own work, plain or not, so it is done once, outside the timing."""
    parser = SSEParser()
    out = []
    for p in pieces:
        parser.feed(p)
        out.append(parser.whole)
    return out


_FRAMED: dict[int, list[int]] = {}


def one(gw: Gateway, body: bytes, stream: bool, pieces: list[bytes] = bp.SSE_EVENTS) -> None:
    req = Request("POST", "/v1/chat/completions", "", [("Content-Type", "application/json")], body)
    out = gw.outbound(req)
    route, _ = gw.candidates(out.served, None)[0]
    gw.headers(route, req.headers)
    transforms = gw.transforms(out.asked, out.served)
    if stream:
        wholes = _FRAMED.get(id(pieces))
        if wholes is None:
            wholes = _FRAMED[id(pieces)] = framed(pieces)
        rw = stream_rewriter("text/event-stream", transforms)
        for ev, whole in zip(pieces, wholes):
            rw.feed(ev, whole)
        rw.close()
    else:
        rewrite_json(bp.COMPLETION_BYTES, transforms)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--number", type=int, default=2000)
    args = ap.parse_args()
    for restore in (True, False):
        gw = gateway(restore)
        for stream, pieces, label in ((False, [], "json"),
                                      (True, bp.SSE_EVENTS, "stream, a piece per event"),
                                      (True, WHOLE, "stream, in one piece")):
            body = json.dumps(dict(bp.REQUEST, stream=True) if stream else bp.REQUEST).encode()
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.thread_time()
                for _ in range(args.number):
                    one(gw, body, stream, pieces)
                best = min(best, (time.thread_time() - t0) / args.number * 1e6)
            print(f"answer names the model {'asked' if restore else 'served'}, "
                  f"{label}: {best:6.1f} us CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
