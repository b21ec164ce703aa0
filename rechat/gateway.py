"""The gateway: the upstreams of one rechat process, and what changes on the way to them.

Owns, for the proxy, everything between "this request must be forwarded" and the bytes sent:
the routes and their `Upstream`s on one shared aiohttp client session, the balancer (which
upstream, failover cool-downs), the model map (what model name goes upstream), `--no-think`,
and the transforms applied to answers on their way to the client (the reasoning rewrite and
the model name the client asked for). Sessions keep the upstream's raw answer: transforms run
on the way out, on forwarded and replayed answers alike, so changing them needs no
re-recording (issue 5). Must not import the proxy, the store or the web layer.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rechat import http1
from rechat.exchange import Request
from rechat.modelmap import ModelMap, ModelRestore, rewrite_request_bytes
from rechat.rewrite import (Aside, NDJSONStreamRewriter, SSEStreamRewriter, make_aside,
                            stream_rewriter)
from rechat.routes import Balancer, Route, auth_headers, check_keys, merge_models
from rechat.think import ThinkMode, ThinkPatterns, ThinkTransform, no_think
from rechat.upstream import Upstream


@dataclass
class GatewaySettings:
    """What the gateway does. Defaults are a plain transparent proxy to `routes`.

    `routes` may be empty (replay mode: nothing to forward to). `timeout_s` is the default
    upstream timeout (seconds) for routes without their own. `default_port` is the main
    `--port`.
    """

    routes: tuple[Route, ...] = ()
    balance: str = "round-robin"
    cooldown_s: float = 30.0
    model_map: ModelMap = field(default_factory=ModelMap)
    restore_model: bool = True
    think: ThinkMode = ThinkMode.KEEP
    think_patterns: ThinkPatterns = field(default_factory=ThinkPatterns)
    no_think: bool = False
    timeout_s: float = 600.0
    default_port: int = 8910


@dataclass(slots=True)
class Outbound:
    """A request as it goes upstream: its body bytes, and the model asked for and served."""

    body: bytes
    asked: str | None
    served: str | None


class Gateway:
    """Routes, balancing, model names and answer transforms for one rechat process.

    Call `start()` before use and `close()` after. Raises ConfigError (at construction) for
    duplicate route names or a missing API key variable.
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = s = settings
        check_keys(s.routes)
        self.balancer = Balancer(s.routes, balance=s.balance, cooldown_s=s.cooldown_s,
                                 default_port=s.default_port)
        self.upstreams = {r.name: Upstream(r.url, r.timeout_s or s.timeout_s) for r in s.routes}
        self.session: aiohttp.ClientSession | None = None
        self.fast: http1.Client | None = None
        # Asked on every request; the settings do not change after construction.
        self.local_ports: frozenset[int] = frozenset(
            r.local_port for r in s.routes if r.local_port is not None)
        self._is_gateway = len(s.routes) > 1 or any(r.models for r in s.routes) or bool(
            s.model_map.exact or s.model_map.patterns or s.model_map.override)
        self._rewrites = bool(s.think is not ThinkMode.KEEP or s.no_think or s.model_map.exact
                              or s.model_map.patterns or s.model_map.override)
        # choices -> the think rewrite as a stream rewriter's `aside` (see stream_rewriter)
        self._asides: dict[int, Aside] = {}
        # What transforms() and stream_rewriter() make, read once (the settings do not change).
        self._thinks = s.think is not ThinkMode.KEEP
        self._restores = s.restore_model

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.settings.routes

    @property
    def is_gateway(self) -> bool:
        """True when rechat does more than forward to one upstream (several routes or names)."""
        return self._is_gateway

    @property
    def rewrites(self) -> bool:
        """True when requests or answers may change on the way (model map, think, no-think)."""
        return self._rewrites

    def ports(self) -> list[int]:
        """Return the local ports routes name explicitly (besides the main `--port`)."""
        return sorted(self.local_ports)

    def port_for(self, local_port: int | None) -> int | None:
        """Return the routing port of a request that arrived on `local_port` (None: the main one)."""
        return local_port if local_port in self.local_ports else None

    async def start(self) -> None:
        """Open the one client session every upstream shares."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar())
        if os.environ.get("RECHAT_UPSTREAM_CLIENT", "").lower() != "aiohttp":
            self.fast = http1.Client()  # plain-http upstreams (RECHAT_UPSTREAM_CLIENT=aiohttp: off)
        for up in self.upstreams.values():
            up.session = self.session
            up.fast = self.fast

    async def close(self) -> None:
        """Close the client session."""
        if self.fast is not None:
            await self.fast.close()
            self.fast = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- requests ----------------------------------------------------------------------------

    def outbound(self, req: Request) -> Outbound:
        """Return what to send upstream for `req`: the model map and `--no-think` applied.

        The request as the client sent it stays the key of its recording, so changing these
        options causes no misses. Without `--no-think` the model is read from `req.shape`
        (kept per body, so a body seen before is not decoded again). When only the model name
        changes, only its bytes do (`modelmap.rewrite_request_bytes`); otherwise the body is
        re-encoded as ``json.dumps(..., ensure_ascii=False)``.
        """
        s = self.settings
        if not s.no_think:
            # Only the model can change: `req.shape` has it (without decoding a body seen before).
            asked = req.shape.model
            if asked is None:
                return Outbound(req.body, None, None)
            served = s.model_map.resolve(asked)
            if served == asked:
                return Outbound(req.body, asked, served)
            raw = rewrite_request_bytes(req.body, asked, served, True)  # decoded (positional: faster)
            if raw is None:
                raw = json.dumps({**req.json, "model": served}, ensure_ascii=False).encode()
            return Outbound(raw, asked, served)
        body = req.json
        if not isinstance(body, dict):
            return Outbound(req.body, None, None)
        mapped, asked, served = s.model_map.rewrite_request(body)
        new = no_think(mapped)
        if new is body:
            return Outbound(req.body, asked, served)
        if new is mapped and asked is not None and served is not None:
            raw = rewrite_request_bytes(req.body, asked, served, decoded=True)
            if raw is not None:
                return Outbound(raw, asked, served)
        return Outbound(json.dumps(new, ensure_ascii=False).encode(), asked, served)

    def candidates(self, model: str | None, port: int | None) -> list[tuple[Route, Upstream]]:
        """Return the (route, upstream) pairs to try for a request, best first."""
        routes = self.balancer.candidates(model, port)
        if len(routes) == 1:  # the usual pool (a comprehension is a function call)
            return [(routes[0], self.upstreams[routes[0].name])]
        return [(r, self.upstreams[r.name]) for r in routes]

    def headers(self, route: Route, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Return the headers to send to `route` (its own API key, or the client's)."""
        return auth_headers(route, headers)

    # -- answers -----------------------------------------------------------------------------

    def transforms(self, asked: str | None, served: str | None, choices: int = 1) -> list:
        """Return the object transforms for an answer to a request for `asked` served by `served`
        with `choices` choices (the request's ``n``, `Shape.choices`).

        Empty in the default configuration, so answers pass byte for byte.
        """
        out: list = []
        s = self.settings
        if self._thinks:
            out.append(ThinkTransform(s.think, s.think_patterns, choices))
        if self._restores and asked and served and asked != served:
            out.append(ModelRestore(asked))
        return out

    def stream_rewriter(self, content_type: str, asked: str | None, served: str | None,
                        choices: int = 1) -> SSEStreamRewriter | NDJSONStreamRewriter | None:
        """Return the rewriter for a streamed answer of `content_type` (`transforms`' chain), or
        None when the answer is not a stream (`rechat.rewrite.stream_rewriter`) or nothing
        would change it.

        The think rewrite goes in as the rewriter's `aside`, made only when a piece of the
        stream holds one of its markers' first bytes: most streams never make one (a
        `ThinkTransform` made and set aside per stream cost about 6,000 instructions).
        """
        rest = ([ModelRestore(asked)] if self._restores and asked and served and asked != served
                else [])
        if not self._thinks:
            return stream_rewriter(content_type, rest) if rest else None
        aside = self._asides.get(choices)
        if aside is None:
            s = self.settings
            if len(self._asides) >= 16:  # (`n` is the client's: bounded)
                self._asides.clear()
            make = functools.partial(ThinkTransform, s.think, s.think_patterns, choices)
            # (a fresh transform has deferral stops: the mode is not keep)
            aside = self._asides[choices] = make_aside(make)
        return stream_rewriter(content_type, rest, aside)

    async def models(self, headers: list[tuple[str, str]], path: str) -> dict[str, Any]:
        """Return the union of every upstream's model list plus configured names and aliases.

        `path` is the listing's path (``/v1/models`` or Ollama's ``/api/tags``). Upstreams that
        fail or time out are left out.
        """
        async def one(route: Route, up: Upstream) -> Any:
            try:
                async with up.request("GET", path, "", self.headers(route, headers), b"") as r:
                    if r.status == 200:
                        return await r.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return None
            return None

        bodies = await asyncio.gather(*(one(r, self.upstreams[r.name]) for r in self.routes))
        extra = self.balancer.models() + self.settings.model_map.aliases()
        if path.startswith("/api/"):
            return _merge_tags(bodies, extra)
        return merge_models(bodies, extra)


def _merge_tags(bodies: list[Any], extra: list[str]) -> dict[str, Any]:
    # Ollama's /api/tags: {"models": [{"name", "model", ...}]}.
    out, seen = [], set()
    for b in bodies:
        for m in (b.get("models") if isinstance(b, dict) else None) or []:
            if isinstance(m, dict) and m.get("name") not in seen:
                seen.add(m.get("name"))
                out.append(m)
    for name in extra:
        if name not in seen:
            seen.add(name)
            out.append({"name": name, "model": name, "modified_at": "1970-01-01T00:00:00Z",
                        "size": 0, "digest": "", "details": {}})
    return {"models": out}
