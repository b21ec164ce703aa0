"""Nearest recorded request for a miss, among 100,000 recorded requests.

Side by side in one process: rechat's `Store.nearest` (word postings, then rapidfuzz on a
few dozen signatures, then the whole text of the best 8) against the reference, a naive
rapidfuzz scan over every recorded request's whole markdown text. Target: <= 50 ms.

    .venv/bin/python bench/bench_nearest.py [--n 100000] [--queries 40]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time

from rapidfuzz import fuzz, process

from rechat.exchange import Exchange, Request, Response
from rechat.matching import request_text
from rechat.store import Store


def sentence(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choices(words, k=rng.randint(6, 40))).capitalize() + "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--naive", type=int, default=3, help="queries for the naive reference scan")
    args = ap.parse_args()
    rng = random.Random(7)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(20000)]
    system = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
    store = Store(["/nonexistent-bench-sessions"])
    t0 = time.perf_counter()
    asks = []
    for i in range(args.n):
        msgs = [system, {"role": "user", "content": sentence(rng, words)}]
        body = {"model": rng.choice(["gpt-4o-mini", "gpt-4o", "llama3"]), "temperature": 0.2,
                "messages": msgs}
        answer = {"id": f"c{i}", "object": "chat.completion", "created": 0, "model": body["model"],
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                               "finish_reason": "stop"}]}
        req = Request("POST", "/v1/chat/completions", body=json.dumps(body).encode())
        store.remember(Exchange(req, Response(200, [], json.dumps(answer).encode())), "bench", i)
        asks.append(body)
    load_s = time.perf_counter() - t0

    def perturbed(body: dict) -> Request:
        b = json.loads(json.dumps(body))
        text = b["messages"][-1]["content"]
        k = rng.randrange(len(text))
        b["messages"][-1]["content"] = text[:k] + rng.choice(string.ascii_lowercase) + text[k + 1:]
        return Request("POST", "/v1/chat/completions", body=json.dumps(b).encode())

    t0 = time.perf_counter()
    store.nearest(perturbed(asks[0]))  # builds the index on the first miss
    build_ms = (time.perf_counter() - t0) * 1000
    times, found = [], 0
    for _ in range(args.queries):
        target = rng.randrange(args.n)
        req = perturbed(asks[target])
        t0 = time.perf_counter()
        near = store.nearest(req)
        times.append((time.perf_counter() - t0) * 1000)
        found += near is not None and near.similarity > 0.9 and near.text == request_text(
            {k: v for k, v in asks[target].items() if k != "messages"}, asks[target]["messages"])

    texts = [request_text({k: v for k, v in b.items() if k != "messages"}, b["messages"]) for b in asks]
    naive = []
    for _ in range(args.naive):
        b = asks[rng.randrange(args.n)]
        q = request_text({k: v for k, v in b.items() if k != "messages"}, b["messages"]) + "x"
        t0 = time.perf_counter()
        process.extractOne(q, texts, scorer=fuzz.ratio)
        naive.append((time.perf_counter() - t0) * 1000)

    times.sort()
    p50, p99 = statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"recorded requests: {args.n:,} (indexed in memory in {load_s:.1f} s; "
          f"nearest index built on first miss in {build_ms:.0f} ms)")
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(f"{'rechat Store.nearest':28}{p50:>10.1f}{p99:>10.1f}{max(times):>10.1f}")
    print(f"{'naive rapidfuzz full scan':28}{statistics.median(naive):>10.1f}{max(naive):>10.1f}"
          f"{max(naive):>10.1f}")
    print(f"speed-up at p50: {statistics.median(naive) / p50:.0f}x · found the perturbed "
          f"request: {found}/{args.queries}")
    print(f"target p99 <= 50 ms: {'PASS' if p99 <= 50 else 'FAIL'}")


if __name__ == "__main__":
    main()
