"""A measuring device for bench_gateway.py (`--floor`): rechat with its answer rewrite replaced
by the least any rewrite must do for the bench's gateway, to tell what the 5% target leaves.

Run as `python bench/gateway_floor.py ARGS...`, it is `rechat ARGS...` with routing, the model
map and the request rename as they are, and the answer transforms (the think rewrite and the
model renamed back) replaced by a lower bound of their work on the bench's answer: per piece of
a stream, and once for a JSON body, a look for ``<`` and for a backslash (one memchr each:
without either, no marker and no escaped one can be there), then the upstream's model name
replaced by the one asked for with one `bytes.replace` of a fixed spelling. It is not
correct in general (no state across pieces, no framing, no first-chunk rule, a hard-coded
name); it answers the bench's requests exactly as rechat does, so the client's checks pass.
"""

from __future__ import annotations

import runpy
import sys

SERVED = b'"model": "gpt-4o-mini-2024-07-18"'  # as bench_proxy's bare server spells it
ASKED = b'"model": "gpt-4o-mini"'


def floor_rewrite(data: bytes) -> bytes:
    """The least work on one piece: two one-byte searches and one replace."""
    if data.find(b"<") >= 0 or data.find(b"\\") >= 0:  # (find: cheaper than `in` on bytes)
        return data  # (a real rewrite would go the slow way here; never in the bench)
    return data.replace(SERVED, ASKED)


class FloorStream:
    """Stands for `SSEStreamRewriter`: `floor_rewrite` per piece, nothing held."""

    def feed(self, data: bytes, whole: int = 0) -> bytes:
        return floor_rewrite(data)

    def close(self) -> bytes:
        return b""


def install() -> None:
    """Put the floor in place of rechat's answer rewrite (the proxy's names for it)."""
    from rechat import gateway, proxy

    gateway.Gateway.transforms = lambda self, asked, served, choices=1: [None]
    proxy.stream_rewriter = lambda content_type, transforms: FloorStream()
    proxy.rewrite_json = lambda body, transforms: floor_rewrite(body)


if __name__ == "__main__":
    install()
    sys.argv = ["rechat"] + sys.argv[1:]
    runpy.run_module("rechat", run_name="__main__")
