"""create_app(config): the one place that wires the store, upstream, proxy and watcher.

Owns the aiohttp application: its routes (`/v1/...` to the proxy, `GET /healthz`, an
OpenAI-shaped 404 elsewhere), the order things start and stop in (load the store before the
port opens, so `/healthz` answers only when rechat is ready; flush every recording before the
process ends), and `serve()`, which runs it until SIGINT or SIGTERM. Knows nothing of typer
or rich: the CLI passes callbacks in.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from rechat import __version__
from rechat import dump
from rechat import web as webui
from rechat.errors import SessionFormatError, error_body
from rechat.policy import Mode
from rechat.proxy import Proxy, ProxyConfig, ProxyEvent
from rechat.reload import Watcher
from rechat.store import Store
from rechat.gateway import Gateway, GatewaySettings
from rechat.modelmap import ModelMap
from rechat.routes import GatewayConfig, load_config, parse_routes
from rechat.think import ThinkMode

DEFAULT_UPSTREAM = "https://api.openai.com/v1"


@dataclass
class Config:
    """Every setting of one rechat process (defaults match the CLI's).

    `sessions` are folders (the first receives new recordings); `timeout_s` bounds connecting
    to the upstream and each read from it, in seconds; `port` 0 picks a free port. `ui` mounts
    the web UI and request log (`log_db`, rows older than `log_max_age_days` deleted; with
    `ui_token`, the UI and its API require it). Every exchange is also appended to a lossless
    dump in `dump_dir` (rechat/dump.py); `flows` are dumps loaded as answers at start.
    """

    mode: Mode = Mode.SERVE
    upstream: str | list[str] | None = DEFAULT_UPSTREAM  # one URL, or routes (rechat/routes.py)
    sessions: list[str] = field(default_factory=lambda: ["sessions"])
    host: str = "127.0.0.1"
    port: int = 8910
    timeout_s: float = 600.0
    watch: bool = True
    ui: bool = True
    log_db: str | None = None  # default: <first sessions folder>/.rechat/log.sqlite
    log_max_age_days: float = 7.0
    ui_token: str | None = None
    respond: bool = True  # answer from the sessions at all (the caching proxy's switch)
    store: bool = True  # record at all (the caching proxy's other switch)
    match: str = "default"  # default | exact | content
    repeat: str = "last"  # last | cycle | first
    fuzzy: float | None = None
    diff: bool = False
    latency: float = 0.0  # 0 = as fast as possible, 1 = as recorded
    config_file: str | None = None  # TOML gateway config (routes.load_config)
    balance: str | None = None  # round-robin | least-busy (None: the config file's, or round-robin)
    cooldown_s: float | None = None
    model_map: str | None = None  # JSON: {"name": "name", "/regex/": "template"}
    override_model: str | None = None
    restore_model: bool | None = None
    think: str | None = None  # keep | strip | tags
    no_think: bool | None = None
    dump_dir: str | None = "."  # where flows_<timestamp>.jsonl goes; None writes no dump
    flows: list[str] | None = None  # dumps loaded as answers; [] = every flows_*.jsonl in dump_dir


@dataclass
class Hooks:
    """Callbacks from the core to whoever presents it (the console); all optional."""

    on_event: Callable[[ProxyEvent], None] | None = None
    on_error: Callable[[SessionFormatError], None] | None = None
    on_reload: Callable[[str], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    on_ready: Callable[["Config", Store, str], None] | None = None


STORE = web.AppKey("store", Store)
PROXY = web.AppKey("proxy", Proxy)
CONFIG = web.AppKey("config", Config)
GATEWAY = web.AppKey("gateway", Gateway)


def gateway_settings(config: Config) -> GatewaySettings:
    """Return the gateway settings of `config`: its config file, then command-line values.

    Raises ConfigError for a bad route, config file, model map or think mode.
    """
    g = load_config(config.config_file) if config.config_file else GatewayConfig()
    specs = [config.upstream] if isinstance(config.upstream, str) else list(config.upstream or [])
    routes = g.routes + parse_routes(specs) if config.mode is not Mode.REPLAY else ()
    model_map = g.model_map
    if config.model_map:
        model_map = ModelMap.from_json(config.model_map, override=model_map.override)
    if config.override_model:
        model_map = model_map.with_override(config.override_model)
    return GatewaySettings(
        routes=routes, balance=config.balance or g.balance,
        cooldown_s=g.cooldown_s if config.cooldown_s is None else config.cooldown_s,
        model_map=model_map,
        restore_model=g.restore_model if config.restore_model is None else config.restore_model,
        think=ThinkMode.parse(config.think) if config.think else g.think,
        think_patterns=g.think_patterns,
        no_think=g.no_think if config.no_think is None else config.no_think,
        timeout_s=config.timeout_s, default_port=config.port)


def _upstream_name(gateway: Gateway) -> str | None:
    routes = gateway.routes
    return routes[0].url if len(routes) == 1 else (", ".join(r.name for r in routes) or None)


def create_app(config: Config, hooks: Hooks | None = None) -> web.Application:
    """Return the aiohttp application for `config`. Raises ConfigError for a bad upstream."""
    hooks = hooks or Hooks()
    store = Store(config.sessions, on_error=hooks.on_error, match=config.match,
                  repeat=config.repeat)
    gateway = Gateway(gateway_settings(config))
    proxy = Proxy(ProxyConfig(config.mode, gateway, respond=config.respond, store=config.store,
                              fuzzy=config.fuzzy, diff=config.diff, latency=config.latency), store)
    if hooks.on_event:
        proxy.subscribe(hooks.on_event)

    app = web.Application(client_max_size=1 << 30)
    app[STORE], app[PROXY], app[CONFIG], app[GATEWAY] = store, proxy, config, gateway

    async def lifecycle(app: web.Application):
        await asyncio.to_thread(store.load, hooks.on_progress)
        if config.flows is not None:
            paths = config.flows or dump.find_dumps(config.dump_dir or ".")
            await asyncio.to_thread(dump.load_answers, store.remember, paths)
        writer = (dump.DumpWriter(dump.default_path(config.dump_dir),
                                  upstream=_upstream_name(gateway)).attach(proxy)
                  if config.dump_dir is not None else None)
        await gateway.start()
        watcher = Watcher(store, hooks.on_reload) if config.watch else None
        if watcher is not None:
            await watcher.start()
        yield
        if watcher is not None:
            await watcher.close()
        await store.flush()
        if writer is not None:
            await writer.aclose()
        await gateway.close()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({
            "status": "ok", "version": __version__, "mode": config.mode.value,
            "upstream": _upstream_name(gateway),
            "upstreams": gateway.balancer.snapshot(),
            "sessions": len(store.files), "answers": store.answer_count,
            "broken_sessions": sorted(store.errors),
        })

    async def not_found(req: web.Request) -> web.Response:
        return web.Response(status=404, content_type="application/json", body=error_body(
            f"rechat serves the OpenAI API under /v1; {req.method} {req.path} is not part of it.",
            "invalid_request_error", "not_found"))

    app.cleanup_ctx.append(lifecycle)
    if config.ui:
        webui.setup(app, store, proxy, config)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/v1", proxy.handle)
    app.router.add_route("*", "/v1/{tail:.*}", proxy.handle)
    app.router.add_route("*", "/api/{tail:.*}", proxy.handle)  # Ollama's API
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def serve(config: Config, hooks: Hooks | None = None) -> None:
    """Run rechat until SIGINT or SIGTERM, then stop cleanly with every session flushed."""
    hooks = hooks or Hooks()
    app = create_app(config, hooks)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    port = sockets[0].getsockname()[1] if sockets else config.port
    for extra in app[GATEWAY].ports():  # each local port a route names is listened on too
        if extra != port:
            await web.TCPSite(runner, config.host, extra, reuse_address=True).start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    if hooks.on_ready:
        hooks.on_ready(config, app[STORE], f"http://{host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


__all__ = ["Config", "Hooks", "create_app", "serve", "DEFAULT_UPSTREAM"]
