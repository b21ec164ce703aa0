"""rechat's optional C helpers: the one place that imports `rechat._fused` (rechat/_fused.c).

Hot-path byte tests of the gateway's answer rewrite are in C: `event`, the SSE stream
rewriter's fused path for one event (`rechat.rewrite.SSEStreamRewriter.feed`), `touches`,
whether a piece concerns the transform it has set aside (the same), `events`,
the same over several events in one piece (`SSEStreamRewriter._bulk`), `locate`, the
model's place in an answer of the usual shape (`rechat.modelmap._locate`), `learn`, the
same kept for a stream's next chunks (`rechat.modelmap.ModelRestore._learn`), `learn_events`,
`learn` and `events` over a stream's first piece (`ModelRestore.feed_raw_events`), and `swap`, a
request's model renamed in its bytes (`rechat.modelmap.rewrite_request_bytes`).
Each gives what the Python next to its caller gives (where one of them declines a corner
case the other takes, the caller's slower path gives the same bytes), and the callers fall
back to that Python when the name here is None: the extension was not built (setup.py marks it
optional, so an install without a C compiler goes on), or ``RECHAT_NO_EXTENSIONS`` is set
to a non-empty value (as aiohttp's ``AIOHTTP_NO_EXTENSIONS``), which the tests use to run
both. `BUILT` says whether the extension is importable at all.
"""

from __future__ import annotations

import os
from typing import Any, Callable

__all__ = ["BUILT", "event", "events", "learn", "learn_events", "locate", "swap", "touches"]

event: Callable[..., Any] | None = None
events: Callable[..., Any] | None = None
locate: Callable[[bytes], Any] | None = None
swap: Callable[..., Any] | None = None
learn: Callable[..., Any] | None = None
learn_events: Callable[..., Any] | None = None
touches: Callable[..., Any] | None = None
try:
    from rechat import _fused
except ImportError:  # pragma: no cover - no C compiler where rechat was installed
    BUILT = False
else:
    BUILT = True
    if not os.environ.get("RECHAT_NO_EXTENSIONS"):
        event, events, locate, swap = _fused.event, _fused.events, _fused.locate, _fused.swap
        learn, learn_events, touches = _fused.learn, _fused.learn_events, _fused.touches
