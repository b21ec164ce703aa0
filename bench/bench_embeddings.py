"""Embeddings sessions: size on disk and load time, against the JSON the API sends.

The scenario: a RAG ingestion of 100,000 text chunks with text-embedding-3-small at
`dimensions=256`, sent in batches of 100 inputs, so 1,000 requests and 100,000 vectors of
256 float32 numbers (102 MB of numbers). It is measured three ways:

- **JSON** (the reference): the 1,000 response bodies as OpenAI sends them, numbers in float
  (`encoding_format: float`, 17 significant digits a number) and in base64 (what the openai
  Python client asks for); loading is `json.loads` of every body (plus decoding the base64).
- **one session**: the 1,000 exchanges in one session file of the embedding form, read with
  `sessionfile.read` and indexed with `Store.load`; then one reply is built (the first replay
  decodes that exchange's vectors only) and then all of them.
- **1,000 sessions**: one file per request, as `rechat record` writes them; `Store.load`.
- **generic form**: the same 1,000 exchanges as rechat wrote them before the embedding form
  (the JSON bodies fenced as they are), `Store.load`.

Run: ``.venv/bin/python bench/bench_embeddings.py [--vectors 100000] [--dims 256]
[--batch 100] [--format float|base64]``. Prints a table; numbers are wall-clock seconds,
best of 3 for loads.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import tempfile
import time
from array import array

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rechat import answers, forms  # noqa: E402
from rechat import sessionfile as sf  # noqa: E402
from rechat.exchange import Request  # noqa: E402
from rechat.store import Store  # noqa: E402

POOL = 2000  # distinct vectors, reused: keeps generation fast, changes nothing measured


def best(fn, n: int = 3) -> tuple[float, object]:
    out, times = None, []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--format", choices=("float", "base64"), default="float")
    a = ap.parse_args()
    rng = random.Random(7)
    n_req = a.vectors // a.batch
    print(f"{a.vectors:,} vectors of {a.dims} float32 in {n_req:,} requests of {a.batch} inputs; "
          f"answers in {a.format}")

    pool = [array("f", [rng.gauss(0, 0.05) for _ in range(a.dims)]).tolist() for _ in range(POOL)]
    pool_json = [json.dumps(v) for v in pool]
    pool_b64 = [base64.b64encode(array("f", v).tobytes()).decode() for v in pool]
    words = "the of and to in is was for on that with as by at from it an be this are".split()

    def text(i: int) -> str:
        r = random.Random(i)
        return " ".join(r.choice(words) for _ in range(30)) + f" #{i}"

    def body(k: int, fmt: str) -> bytes:
        items = []
        for j in range(a.batch):
            p = (k * a.batch + j) % POOL
            emb = pool_json[p] if fmt == "float" else json.dumps(pool_b64[p])
            items.append(f'{{"object": "embedding", "index": {j}, "embedding": {emb}}}')
        return ('{"object": "list", "data": [' + ", ".join(items) + '], "model": '
                '"text-embedding-3-small", "usage": {"prompt_tokens": 3000, "total_tokens": 3000}}'
                ).encode()

    t0 = time.perf_counter()
    requests = [{"model": "text-embedding-3-small", "dimensions": a.dims, "encoding_format": a.format,
                 "input": [text(k * a.batch + j) for j in range(a.batch)]} for k in range(n_req)]
    bodies = {fmt: [body(k, fmt) for k in range(n_req)] for fmt in ("float", "base64")}
    print(f"(generated in {time.perf_counter() - t0:.1f} s)\n")

    rows: list[tuple[str, int, float, str]] = []
    for fmt in ("float", "base64"):
        size = sum(len(b) for b in bodies[fmt])

        def load(fmt=fmt):
            out = [json.loads(b) for b in bodies[fmt]]
            if fmt == "base64":
                for o in out:
                    for d in o["data"]:
                        d["embedding"] = base64.b64decode(d["embedding"])
            return out
        t, _ = best(load)
        rows.append((f"JSON bodies, {fmt} (reference)", size, t, "json.loads of every body"))

    with tempfile.TemporaryDirectory() as tmp:
        one, many, generic = (os.path.join(tmp, d) for d in ("one", "many", "generic"))
        for d in (one, many, generic):
            os.makedirs(d)
        t = time.perf_counter()
        caps = [forms.capture("embedding", rq, json.loads(bodies[a.format][k]), None,
                              {"at": "2025-03-14T09:26:53.589+00:00", "status": 200})
                for k, rq in enumerate(requests)]
        assert all(c is not None for c in caps)
        endpoint = "POST /v1/embeddings"
        sf.write_atomic(os.path.join(one, "all.md"),
                        sf.render_form("embedding", endpoint, caps[0].params, [c.turn for c in caps]))
        for k, c in enumerate(caps):
            sf.write_atomic(os.path.join(many, f"{k:05}.md"),
                            sf.render_form("embedding", endpoint, c.params, [c.turn]))
            sf.write_atomic(os.path.join(generic, f"{k:05}.md"), sf.render_generic(endpoint, [
                sf.GenericExchange(json.dumps(requests[k]).encode(), 200, bodies[a.format][k],
                                   {"at": "2025-03-14T09:26:53.589+00:00", "status": 200})]))
        print(f"(sessions written in {time.perf_counter() - t:.1f} s)")

        t_read, s = best(lambda: sf.read(os.path.join(one, "all.md")))

        def store_of(d: str) -> Store:
            st = Store([d])
            st.load()
            assert not st.errors and st.answer_count == n_req, st.errors
            return st
        t_one, store = best(lambda: store_of(one))
        rows.append(("one session file", folder_size(one), t_one,
                     f"Store.load (sessionfile.read alone: {t_read:.2f} s)"))

        req = Request("POST", "/v1/embeddings", body=json.dumps(requests[-1]).encode())
        t = time.perf_counter()
        hit = store.lookup(req)
        reply = answers.generic_reply(hit.answer, req)
        t_first = time.perf_counter() - t
        assert json.loads(reply.body) == json.loads(bodies[a.format][-1])  # exact

        def decode_all():
            for ex in s.exchanges:
                ex.answer.vectors.values()
        t_all, _ = best(decode_all, 1)
        t_many, _ = best(lambda: store_of(many))
        rows.append(("1,000 session files (as recorded)" if n_req == 1000 else
                     f"{n_req:,} session files", folder_size(many), t_many, "Store.load"))
        t_gen, _ = best(lambda: store_of(generic))
        rows.append(("generic form (before), one file each", folder_size(generic), t_gen,
                     "Store.load"))

    print(f"\n{'':42} {'on disk':>10} {'load':>9}")
    for name, size, t, note in rows:
        print(f"{name:42} {size / 1e6:8.1f} MB {t:8.2f} s   {note}")
    print(f"\nfirst replay of one request (lookup, decode its {a.batch} vectors, JSON reply): "
          f"{t_first * 1000:.1f} ms")
    print(f"decoding every vector of the one-file session, once: {t_all:.2f} s")


if __name__ == "__main__":
    main()
