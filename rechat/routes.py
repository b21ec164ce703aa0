"""Routes: which upstream answers which model on which local port, and how load is shared.

Owns the route syntax of the seed (rechat-README.md, "Routing and Load Balancing"):
``<endpoint>:[local_port]:[model_name]``, the TOML gateway config, balancing (round robin,
least busy), failover cool-downs, and the per-upstream API key rule. Pure: no network, no
aiohttp; imports `errors`, `modelmap` and `think` from rechat, and yarl to check URLs.

Route text, precisely (`parse_route`):

    [KEY_ENV@]http(s)://HOST[:PORT][/PATH][:[LOCAL_PORT][:[MODEL[,MODEL...]]]]

- The endpoint URL is read first, by URL grammar: HOST is a name, an IPv4 address or an IPv6
  address in brackets; the first ``:digits`` right after HOST is always the URL's own port;
  PATH runs from the first ``/`` to the first ``:``. So ``http://h:8000`` is an upstream on
  port 8000, not a local port, and ``http://h:8910:llama3`` is an error ("llama3" is not a
  port); write ``http://h::llama3`` or ``http://h/v1::llama3`` for a model with no local port.
- What follows the URL is the suffix: ``:LOCAL_PORT``, ``:LOCAL_PORT:MODELS`` or ``::MODELS``.
  LOCAL_PORT is 1-65535 (empty: the main ``--port``). MODELS is everything after the second
  colon, colons and slashes included (Ollama's ``llama3:8b``, ``meta-llama/Llama-3-8B``),
  split at commas; empty means any model.
- ``KEY_ENV@`` in front names the environment variable holding this upstream's API key.
- Credentials, queries and fragments in the URL are refused: they would end up in logs and
  session files.

Routing (`Balancer.candidates`): a request on local port P for model M goes to the routes on P
that list M; if none lists it, to the routes on P that list no model; else nowhere (empty
list). Routes sharing a model share its load.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from yarl import URL

from rechat.errors import ConfigError
from rechat.modelmap import ModelMap
from rechat.think import ThinkMode, ThinkPatterns

__all__ = [
    "Route", "parse_route", "parse_routes", "GatewayConfig", "load_config", "parse_config",
    "Balancer", "BALANCE_MODES", "is_failure", "auth_headers", "check_keys", "merge_models",
]

FORMS = ("accepted forms: URL, URL:LOCAL_PORT, URL:LOCAL_PORT:MODEL, URL::MODEL "
         "(MODEL may be a comma-separated list), each optionally prefixed by KEY_ENV@; "
         "e.g. https://api.openai.com/v1:8910:gpt-5 or OPENAI_API_KEY@https://api.openai.com/v1")

BALANCE_MODES = ("round-robin", "least-busy")
DEFAULT_COOLDOWN_S = 30.0

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_SCHEME = re.compile(r"(https?)://", re.IGNORECASE)
# HOST (bracketed IPv6 or a name without delimiters), then the URL's own :PORT, then /PATH up to
# the first colon. Whatever is left is the route suffix.
_URL_HEAD = re.compile(r"(?P<host>\[[^\]/]*\]|[^:/?#\[\]@\s]+)(?P<port>:[0-9]+)?(?P<path>/[^:?#]*)?")


@dataclass(frozen=True, slots=True)
class Route:
    """One upstream and what it serves.

    `url` is the upstream base URL (``/v1/X`` goes to ``url/X``), without a trailing slash.
    `local_port` is the port rechat listens on for it (None: the main ``--port``). `models`
    are the model names it serves (empty: any model). `api_key_env` names the environment
    variable with its API key (None: the client's Authorization passes through), sent in
    `api_key_header` (``Authorization: Bearer KEY``, or the bare key in any other header, e.g.
    Azure's ``api-key``). `weight` (>= 1) is its share of the load among routes serving the
    same model. `timeout_s` overrides ``--timeout`` for it. `name` identifies it in logs and
    health output, unique within a config.
    """

    url: str
    local_port: int | None = None
    models: tuple[str, ...] = ()
    api_key_env: str | None = None
    api_key_header: str = "Authorization"
    weight: int = 1
    timeout_s: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.spec())

    def serves(self, model: str | None) -> bool:
        """True when this route lists `model`, or lists no model (it then serves any)."""
        return not self.models or model in self.models

    def spec(self) -> str:
        """Return the route in the command-line form (without the key variable).

        A URL without a path gets a ``/`` before a local port (``http://h/:8910``), since
        ``http://h:8910`` would read as the upstream's own port.
        """
        text = self.url
        if self.local_port is not None:
            m = _SCHEME.match(text)
            head = _URL_HEAD.match(text, m.end()) if m else None
            if head is not None and not head.group("path"):
                text += "/"
        if self.local_port is not None or self.models:
            text += f":{self.local_port or ''}"
        if self.models:
            text += ":" + ",".join(self.models)
        return text


def parse_route(text: str) -> Route:
    """Parse one command-line route (grammar in the module docstring).

    Raises ConfigError naming the part at fault and listing the accepted forms. A message never
    repeats what stands before an ``@`` (it may be a key typed by mistake).
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"empty upstream route; {FORMS}")
    s = text.strip()
    key_env = None
    scheme_at = _SCHEME.search(s)
    if scheme_at is not None and scheme_at.start() > 0 and s[scheme_at.start() - 1] == "@":
        prefix = s[:scheme_at.start() - 1]
        if "/" not in prefix:  # else the scheme is part of something else, e.g. a model name
            if not _ENV_NAME.fullmatch(prefix):
                raise ConfigError(
                    "the text before '@' in an upstream route must be the NAME of an environment "
                    "variable holding the API key (letters, digits, _), never the key itself; "
                    "e.g. OPENAI_API_KEY@https://api.openai.com/v1")
            key_env, s = prefix, s[scheme_at.start():]
    m = _SCHEME.match(s)
    if m is None:
        raise ConfigError(f"upstream route {_safe(text)!r} must start with http:// or https://; {FORMS}")
    scheme, rest = m.group(1).lower(), s[m.end():]
    head = _URL_HEAD.match(rest)
    if head is None:
        hint = (" (write IPv6 addresses in brackets: http://[::1]:8000/v1)"
                if rest.startswith(":") else "")
        raise ConfigError(f"upstream route {_safe(text)!r} has no host{hint}; {FORMS}")
    suffix = rest[head.end():]
    port_field = suffix[1:].partition(":")[0] if suffix.startswith(":") else ""
    if suffix.startswith("@") or "@" in port_field:  # http://user@h, http://user:pw@h
        raise ConfigError("credentials in an upstream URL are not supported: they would be "
                          "written to logs and sessions. Put the key in an environment variable "
                          "and name it: KEY_ENV@https://host/v1")
    if suffix[:1] in ("?", "#"):
        raise ConfigError(f"upstream route {_safe(text)!r}: a base URL cannot carry a query "
                          f"or fragment; {FORMS}")
    url = _check_url(f"{scheme}://{head.group('host')}{head.group('port') or ''}"
                     f"{(head.group('path') or '').rstrip('/')}", text)
    local_port: int | None = None
    models: tuple[str, ...] = ()
    if suffix:
        if suffix[0] != ":":
            raise ConfigError(f"upstream route {_safe(text)!r}: unexpected {suffix!r} after the "
                              f"URL; {FORMS}")
        port_text, has_models, models_text = suffix[1:].partition(":")
        if port_text:
            if not port_text.isascii() or not port_text.isdigit():
                note = ""
                if head.group("port") and not head.group("path"):
                    note = (f" (the first :PORT after the host is the upstream's own, here "
                            f"{url}; for a local port give the URL a path or a port, e.g. "
                            f"{scheme}://{head.group('host')}/v1{head.group('port')}:{port_text})")
                raise ConfigError(
                    f"upstream route {_safe(text)!r}: {port_text!r} is not a local port number. "
                    f"To name a model without a local port, leave the port empty: "
                    f"{url}::{port_text}{':' + models_text if has_models else ''}{note}")
            local_port = _port(int(port_text), text)
        if models_text:
            models = _models(models_text.split(","), text)
    return Route(url, local_port, models, key_env)


def parse_routes(texts: Iterable[str]) -> tuple[Route, ...]:
    """Parse several command-line routes; a name used twice gets ``#2``, ``#3``... appended."""
    return _unique_names(parse_route(t) for t in texts)


def _safe(text: str) -> str:
    """Return `text` with anything before an ``@`` blanked (it may hold a secret)."""
    if "@" not in text:
        return text
    scheme = _SCHEME.search(text)
    at = text.find("@")
    if scheme is not None and at < scheme.start():
        return "…@" + text[scheme.start():]
    if scheme is not None:
        rest = text[scheme.end():]
        return text[:scheme.end()] + "…@" + rest[rest.find("@") + 1:]
    return "…@" + text[at + 1:]


def _check_url(url: str, text: str) -> str:
    try:
        u = URL(url)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"upstream route {_safe(text)!r}: {url!r} is not a valid URL ({e})") from None
    if not u.host:
        raise ConfigError(f"upstream route {_safe(text)!r}: {url!r} has no host")
    return url


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{_safe(str(where))}: local port must be a number from 1 to 65535, "
                          f"got {value!r}")
    return value


def _models(items: Iterable[Any], where: str) -> tuple[str, ...]:
    out = []
    for item in items:
        name = item.strip() if isinstance(item, str) else item
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{_safe(str(where))}: model names must be non-empty strings, "
                              f"got {item!r}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _unique_names(routes: Iterable[Route]) -> tuple[Route, ...]:
    seen: dict[str, int] = {}
    out = []
    for r in routes:
        n = seen.get(r.name, 0) + 1
        seen[r.name] = n
        if n > 1:
            r = Route(r.url, r.local_port, r.models, r.api_key_env, r.api_key_header, r.weight,
                      r.timeout_s, f"{r.name}#{n}")
        out.append(r)
    return tuple(out)


# -- config file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """Routing, model names and reasoning rewrite, as read from a config file.

    `routes` in order; `balance` one of BALANCE_MODES; `cooldown_s` how long (seconds) a
    failed upstream stays out of rotation; `model_map` includes the override model;
    `restore_model` makes answers show the model the client asked for; `think` and
    `think_patterns` drive the reasoning rewrite; `no_think` appends /no_think to requests.
    `source` is the file it came from. Merge command-line options over it with
    `dataclasses.replace`.
    """

    routes: tuple[Route, ...] = ()
    balance: str = "round-robin"
    cooldown_s: float = DEFAULT_COOLDOWN_S
    model_map: ModelMap = field(default_factory=ModelMap)
    restore_model: bool = True
    think: ThinkMode = ThinkMode.KEEP
    think_patterns: ThinkPatterns = ThinkPatterns()
    no_think: bool = False
    source: str = ""


_TOP_KEYS = ("upstream", "balance", "cooldown_s", "model_map", "override_model",
             "restore_model", "think", "no_think")
_UPSTREAM_KEYS = ("url", "route", "port", "models", "api_key_env", "api_key_header", "weight",
                  "timeout_s", "name")
_THINK_KEYS = ("mode", "open_pattern", "close_pattern", "open_tag", "close_tag")


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read a TOML gateway config. Schema (every key optional; unknown keys are errors)::

        balance = "round-robin"        # or "least-busy"
        cooldown_s = 30                # seconds a failed upstream sits out (0: never)
        override_model = "llama3"      # serve every request with this model
        restore_model = true           # answers name the model the client asked for
        think = "strip"                # keep | strip | tags; or a table:
        no_think = false               # append /no_think to the last user message

        [think]                        # instead of think = "...": mode plus patterns
        mode = "tags"
        open_pattern = "<|channel|>analysis<|message|>"
        close_pattern = "<|end|><|start|>assistant<|channel|>final<|message|>"
        open_tag = "<think>"
        close_tag = "</think>"

        [model_map]                    # as --model-map
        "gpt-3.5-turbo" = "llama3-8b"
        "/gpt-(.*)turbo/" = 'llama3-\\1-instruct'

        [[upstream]]                   # one table per upstream, in order
        url = "https://api.openai.com/v1"
        port = 8910                    # local port (default: the main --port)
        models = ["gpt-5", "gpt-5-mini"]   # or one string; absent: any model
        api_key_env = "OPENAI_API_KEY"
        api_key_header = "Authorization"   # "api-key" for Azure: the bare key is sent
        weight = 2
        timeout_s = 120
        name = "openai"

        [[upstream]]
        route = "http://127.0.0.1:8000/v1:8910:llama3"   # the command-line form

    ``upstream`` may also be an array of route strings. Raises ConfigError naming the file
    (and the upstream's position) for unreadable files, TOML errors and bad values.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return parse_config(data, str(p))


def parse_config(data: Mapping[str, Any], source: str = "config") -> GatewayConfig:
    """Validate a decoded config mapping (schema in `load_config`) into a GatewayConfig."""
    _no_unknown(data, _TOP_KEYS, source)
    routes = _unique_names(_upstream(item, i, source)
                           for i, item in enumerate(_as_list(data.get("upstream", []), source)))
    balance = data.get("balance", "round-robin")
    if balance not in BALANCE_MODES:
        raise ConfigError(f"{source}: balance = {balance!r}; valid: {', '.join(BALANCE_MODES)}")
    cooldown = data.get("cooldown_s", DEFAULT_COOLDOWN_S)
    if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or cooldown < 0:
        raise ConfigError(f"{source}: cooldown_s must be a number of seconds >= 0, got {cooldown!r}")
    override = data.get("override_model")
    if override is not None and not isinstance(override, str):
        raise ConfigError(f"{source}: override_model must be a string, got {override!r}")
    model_map = ModelMap.from_dict(data.get("model_map", {}), override or None,
                                   f"{source}: [model_map]")
    think, patterns = data.get("think", "keep"), ThinkPatterns()
    if isinstance(think, dict):
        _no_unknown(think, _THINK_KEYS, f"{source}: [think]")
        patterns = ThinkPatterns.from_dict({k: v for k, v in think.items() if k != "mode"})
        think = think.get("mode", "keep")
    return GatewayConfig(
        routes=routes, balance=balance, cooldown_s=float(cooldown), model_map=model_map,
        restore_model=_bool(data, "restore_model", True, source),
        think=ThinkMode.parse(think), think_patterns=patterns,
        no_think=_bool(data, "no_think", False, source), source=source)


def _upstream(item: Any, i: int, source: str) -> Route:
    where = f"{source}: upstream #{i + 1}"
    if isinstance(item, str):
        return parse_route(item)
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a table or a route string, got {item!r}")
    _no_unknown(item, _UPSTREAM_KEYS, where)
    if ("url" in item) == ("route" in item):
        raise ConfigError(f"{where} needs exactly one of url = \"https://...\" or route = "
                          f"\"URL:PORT:MODEL\"")
    if "route" in item:
        base = parse_route(item["route"])
    else:
        url = item["url"]
        if not isinstance(url, str):
            raise ConfigError(f"{where}: url must be a string")
        base = parse_route(url)
        if base.local_port is not None or base.models:
            raise ConfigError(f"{where}: url = {_safe(url)!r} carries a route suffix; use "
                              f"route = ... or the port and models keys")
    port = _port(item["port"], where) if "port" in item else base.local_port
    models = base.models
    if "models" in item:
        raw = item["models"]
        models = _models([raw] if isinstance(raw, str) else _as_list(raw, where), where)
    key_env = item.get("api_key_env", base.api_key_env)
    if key_env is not None and (not isinstance(key_env, str) or not _ENV_NAME.fullmatch(key_env)):
        raise ConfigError(f"{where}: api_key_env must be the NAME of an environment variable "
                          f"(letters, digits, _), never the key itself")
    header = item.get("api_key_header", "Authorization")
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
        raise ConfigError(f"{where}: api_key_header {header!r} is not a valid header name")
    weight = item.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ConfigError(f"{where}: weight must be a whole number >= 1, got {weight!r}")
    timeout = item.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise ConfigError(f"{where}: timeout_s must be a number of seconds > 0, got {timeout!r}")
    name = item.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    return Route(base.url, port, models, key_env, header, weight,
                 None if timeout is None else float(timeout), name)


def _no_unknown(d: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(valid)}")


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected an array, got {value!r}")
    return value


def _bool(d: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    return value


# -- balancing -------------------------------------------------------------------------------


def is_failure(status: int | None) -> bool:
    """True for an answer that takes an upstream out of rotation: none at all, or a 5xx.

    None stands for no HTTP answer (connection refused or reset, DNS, timeout). The rule is
    issue 5's ("refuses connections or answers 5xx"); 4xx, 429 included, is the client's.
    """
    return status is None or status >= 500


@dataclass(slots=True)
class _Health:
    in_flight: int = 0
    cool_until: float = 0.0  # clock() value; <= now means in rotation
    failures: int = 0  # consecutive failures
    requests: int = 0  # started, ever


class Balancer:
    """Choose upstreams for requests: routing by model and port, balancing, cool-downs.

    `balance` is "round-robin" (smooth weighted round robin, as nginx: with equal weights a
    plain rotation) or "least-busy" (fewest in-flight requests per unit of weight; ties by the
    rotation). `cooldown_s` (seconds, 0 disables) is how long an upstream sits out after a
    failure (`is_failure`). `default_port` is the port of routes with no local port. `clock`
    returns seconds (monotonic); tests inject their own. Not thread-safe: use it from one
    event loop. Raises ConfigError for an unknown mode or two routes with the same name.
    """

    def __init__(self, routes: Sequence[Route], *, balance: str = "round-robin",
                 cooldown_s: float = DEFAULT_COOLDOWN_S, default_port: int = 8910,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if balance not in BALANCE_MODES:
            raise ConfigError(f"unknown balance mode {balance!r}; valid: {', '.join(BALANCE_MODES)}")
        names = [r.name for r in routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"upstream names must be unique; used twice: {', '.join(dupes)}")
        self.routes = tuple(routes)
        self.balance = balance
        self.cooldown_s = float(cooldown_s)
        self.default_port = default_port
        self.clock = clock
        self._health = {r.name: _Health() for r in self.routes}
        # (model, port) -> (its pool, the pool's route names); routes never change.
        self._pools: dict[tuple[str | None, int | None], tuple[tuple[Route, ...], tuple[str, ...]]] = {}
        self._current: dict[tuple[str, ...], dict[str, float]] = {}  # pool -> SWRR weights

    @classmethod
    def from_config(cls, config: GatewayConfig, default_port: int = 8910,
                    clock: Callable[[], float] = time.monotonic) -> "Balancer":
        """Build from a GatewayConfig's routes, balance mode and cool-down."""
        return cls(config.routes, balance=config.balance, cooldown_s=config.cooldown_s,
                   default_port=default_port, clock=clock)

    def port_of(self, route: Route) -> int:
        """Return the local port `route` is served on."""
        return self.default_port if route.local_port is None else route.local_port

    def ports(self) -> list[int]:
        """Return the local ports to listen on, ascending (the default port when no route)."""
        return sorted({self.port_of(r) for r in self.routes} or {self.default_port})

    def pool(self, model: str | None, port: int | None = None) -> list[Route]:
        """Return the routes that may serve `model` on `port` (default port when None), in order.

        Routes listing the model, else routes listing no model. A request without a model
        (None) goes to the routes listing no model, else to every route on the port.
        """
        return list(self._pool(model, port)[0])

    def _pool(self, model: str | None, port: int | None) -> tuple[tuple[Route, ...], tuple[str, ...]]:
        """`pool` as a tuple with its route names, kept per (model, port) (at most 1024)."""
        hit = self._pools.get((model, port))
        if hit is None:
            if len(self._pools) >= 1024:
                self._pools.clear()
            routes = tuple(self._find_pool(model, port))
            hit = self._pools[(model, port)] = (routes, tuple(r.name for r in routes))
        return hit

    def _find_pool(self, model: str | None, port: int | None) -> list[Route]:
        port = self.default_port if port is None else port
        here = [r for r in self.routes if self.port_of(r) == port]
        if model is not None:
            named = [r for r in here if model in r.models]
            if named:
                return named
        wild = [r for r in here if not r.models]
        return wild if wild or model is not None else here

    def candidates(self, model: str | None, port: int | None = None) -> list[Route]:
        """Return the routes to try for one request, best first; advances the rotation.

        Routes in rotation come first, in balancing order; routes in cool-down follow, the one
        whose cool-down ends soonest first (when every upstream failed recently, trying one
        beats refusing the request). Empty when no route serves `model` on `port`.
        """
        pool, key = self._pool(model, port)
        if not pool:
            return []
        now = self.clock()
        if len(pool) == 1 and self._health[key[0]].cool_until <= now:
            return [pool[0]]  # one healthy route: nothing to balance
        healthy = [r for r in pool if self._health[r.name].cool_until <= now]
        cooling = sorted((r for r in pool if self._health[r.name].cool_until > now),
                         key=lambda r: self._health[r.name].cool_until)
        if self.balance == "least-busy" and healthy:
            load = {r.name: self._health[r.name].in_flight / r.weight for r in healthy}
            low = min(load.values())
            # Rotate among the least loaded only, so busy routes do not skew the rotation.
            order = self._rotate(key, [r for r in healthy if load[r.name] == low])
            order += sorted((r for r in healthy if load[r.name] != low), key=lambda r: load[r.name])
        else:
            order = self._rotate(key, healthy)
        return order + cooling

    def _rotate(self, key: tuple[str, ...], healthy: list[Route]) -> list[Route]:
        """Smooth weighted round robin (nginx): pick the highest current weight, then the rest."""
        if len(healthy) <= 1:
            return list(healthy)
        current = self._current.setdefault(key, {})
        total = 0
        for r in healthy:
            current[r.name] = current.get(r.name, 0) + r.weight
            total += r.weight
        best = max(healthy, key=lambda r: current[r.name])  # first of equals wins
        current[best.name] -= total
        rest = sorted((r for r in healthy if r is not best), key=lambda r: -current[r.name])
        return [best, *rest]

    def started(self, route: Route) -> None:
        """Count a request sent to `route` as in flight."""
        h = self._health[route.name]
        h.in_flight += 1
        h.requests += 1

    def finished(self, route: Route, status: int | None, *, failed: bool | None = None) -> bool:
        """Count a request to `route` as done; return True if this put it in cool-down.

        `status` is the upstream's HTTP status, None when it gave none (refused, reset,
        timeout). `failed` overrides `is_failure(status)` (e.g. True for a stream that broke
        off after a 200). A failure starts a cool-down of `cooldown_s`; a success ends one.
        """
        h = self._health[route.name]
        h.in_flight = max(0, h.in_flight - 1)
        if failed is None:
            failed = is_failure(status)
        if not failed:
            h.failures = 0
            h.cool_until = 0.0
            return False
        h.failures += 1
        if self.cooldown_s <= 0:
            return False
        h.cool_until = self.clock() + self.cooldown_s
        return True

    def in_flight(self, route: Route) -> int:
        """Return the number of requests to `route` started and not finished."""
        return self._health[route.name].in_flight

    def cooling(self, route: Route) -> float:
        """Return the seconds left in `route`'s cool-down (0.0 when it is in rotation)."""
        return max(0.0, self._health[route.name].cool_until - self.clock())

    def models(self, port: int | None = None) -> list[str]:
        """Return the model names the routes list (on `port`, or on every port), sorted."""
        return sorted({m for r in self.routes
                       if port is None or self.port_of(r) == port for m in r.models})

    def snapshot(self) -> list[dict[str, Any]]:
        """Return each route's state for health pages: JSON-ready dicts, in route order."""
        return [{"name": r.name, "url": r.url, "port": self.port_of(r), "models": list(r.models),
                 "weight": r.weight, "in_flight": h.in_flight, "requests": h.requests,
                 "failures": h.failures, "cooling_s": round(self.cooling(r), 3)}
                for r in self.routes for h in (self._health[r.name],)]


# -- keys and model lists --------------------------------------------------------------------

_CLIENT_KEY_HEADERS = ("authorization", "api-key", "x-api-key")


def auth_headers(route: Route, headers: Sequence[tuple[str, str]],
                 environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Return the headers to send to `route`: its own key, or the client's passed through.

    `headers` are ``(name, value)`` pairs as the client sent them. When the route names a key
    variable, the client's Authorization, api-key and x-api-key headers (meant for rechat or
    another upstream) are dropped and ``Authorization: Bearer KEY`` (or `api_key_header`:
    KEY) is added; otherwise `headers` come back unchanged. `environ` defaults to os.environ.
    Raises ConfigError naming the variable (never its value) when it is unset or empty.
    """
    if route.api_key_env is None:
        return list(headers)
    env = os.environ if environ is None else environ
    key = env.get(route.api_key_env, "")
    if not key:
        raise ConfigError(f"upstream {route.name}: environment variable {route.api_key_env} "
                          f"(its API key) is not set")
    drop = {*_CLIENT_KEY_HEADERS, route.api_key_header.lower()}
    out = [(k, v) for k, v in headers if k.lower() not in drop]
    bearer = route.api_key_header.lower() == "authorization"
    out.append((route.api_key_header, f"Bearer {key}" if bearer else key))
    return out


def check_keys(routes: Iterable[Route], environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError listing every key variable the routes name that is unset or empty.

    Call at start-up so a missing key fails then, not at the first request.
    """
    env = os.environ if environ is None else environ
    missing = sorted({r.api_key_env for r in routes if r.api_key_env and not env.get(r.api_key_env)})
    if missing:
        many = len(missing) > 1
        raise ConfigError(f"the upstream API key variable{'s' if many else ''} "
                          f"{', '.join(missing)} {'are' if many else 'is'} not set in the "
                          f"environment")


def merge_models(answers: Iterable[Any], extra: Iterable[str] = (),
                 owned_by: str = "rechat") -> dict[str, Any]:
    """Return one /v1/models body: the union of upstream answers, then `extra` names.

    `answers` are decoded /v1/models bodies (``{"object": "list", "data": [{"id": ...}]}``);
    anything else among them is skipped. A model listed twice keeps its first entry. `extra`
    (configured route models, model-map aliases) adds ``{"id", "object": "model",
    "created": 0, "owned_by"}`` entries for names not yet listed. Shape: OpenAI API reference,
    "List models".
    """
    data: list[dict[str, Any]] = []
    seen: set[str] = set()
    for body in answers:
        items = body.get("data") if isinstance(body, dict) else None
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"] not in seen:
                seen.add(item["id"])
                data.append(item)
    for name in extra:
        if name not in seen:
            seen.add(name)
            data.append({"id": name, "object": "model", "created": 0, "owned_by": owned_by})
    return {"object": "list", "data": data}
