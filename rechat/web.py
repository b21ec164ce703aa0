"""The web UI and its JSON API, under the reserved prefix `/_rechat/` (and `/` for the page).

Owns the request log's presentation: it subscribes to the proxy's events and never feeds
anything back into the proxy path. Must not be imported by the core (proxy, store).
"""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application, store, proxy, config) -> None:
    """Mount the UI routes on `app` and subscribe to `proxy`'s events (nothing mounted yet)."""
