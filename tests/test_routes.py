"""Tests for rechat.routes: route syntax, the TOML config, balancing, failover and API keys."""

from __future__ import annotations

import collections
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rechat.errors import ConfigError
from rechat.modelmap import ModelMap
from rechat.routes import (
    Balancer, GatewayConfig, Route, auth_headers, check_keys, is_failure, load_config,
    merge_models, parse_config, parse_route, parse_routes,
)
from rechat.think import ThinkMode, ThinkPatterns

# -- route syntax ---------------------------------------------------------------------------

# (text, url, local_port, models, key_env)
ACCEPTED = [
    ("https://api.openai.com/v1", "https://api.openai.com/v1", None, (), None),
    ("https://api.openai.com/v1/", "https://api.openai.com/v1", None, (), None),
    ("https://api.openai.com/v1:8910:gpt-5", "https://api.openai.com/v1", 8910, ("gpt-5",), None),
    ("http://h:8000/v1", "http://h:8000/v1", None, (), None),
    ("http://h:8000/v1:8910", "http://h:8000/v1", 8910, (), None),
    ("http://h:8000/v1:8910:", "http://h:8000/v1", 8910, (), None),
    ("http://h:8000/v1:8910:llama3", "http://h:8000/v1", 8910, ("llama3",), None),
    ("http://h:8000/v1::llama3", "http://h:8000/v1", None, ("llama3",), None),
    ("http://h:8000/v1:", "http://h:8000/v1", None, (), None),
    # Model names keep their own colons, slashes and at-signs.
    ("http://h:11434/v1:8910:llama3:8b", "http://h:11434/v1", 8910, ("llama3:8b",), None),
    ("http://h/v1::llama3:8b-instruct-q4_0", "http://h/v1", None, ("llama3:8b-instruct-q4_0",), None),
    ("http://h/v1:8911:meta-llama/Llama-3.1-8B-Instruct", "http://h/v1", 8911, ("meta-llama/Llama-3.1-8B-Instruct",), None),
    ("https://h/v1::claude-3-5-sonnet@20240620", "https://h/v1", None, ("claude-3-5-sonnet@20240620",), None),
    ("http://h:8000/v1:8910:a, b ,llama3:8b", "http://h:8000/v1", 8910, ("a", "b", "llama3:8b"), None),
    ("http://h:8000/v1:8910:a,a", "http://h:8000/v1", 8910, ("a",), None),
    # No path: the first :digits after the host is the upstream's own port.
    ("http://127.0.0.1:4010", "http://127.0.0.1:4010", None, (), None),
    ("http://h:8000:8910", "http://h:8000", 8910, (), None),
    ("http://h:8000:8910:llama3", "http://h:8000", 8910, ("llama3",), None),
    ("http://h::llama3", "http://h", None, ("llama3",), None),
    ("http://h:8000::llama3:8b", "http://h:8000", None, ("llama3:8b",), None),
    ("http://h::claude@2024", "http://h", None, ("claude@2024",), None),
    # IPv6 in brackets.
    ("http://[::1]:8000/v1:8910:llama3", "http://[::1]:8000/v1", 8910, ("llama3",), None),
    ("http://[::1]::m", "http://[::1]", None, ("m",), None),
    ("http://[2001:db8::2]/v1", "http://[2001:db8::2]/v1", None, (), None),
    # Scheme case, surrounding space, the key variable.
    ("  HTTPS://api.openai.com/v1  ", "https://api.openai.com/v1", None, (), None),
    ("OPENAI_API_KEY@https://api.openai.com/v1:8910:gpt-5", "https://api.openai.com/v1", 8910, ("gpt-5",), "OPENAI_API_KEY"),
    ("_K2@http://h/v1", "http://h/v1", None, (), "_K2"),
]


@pytest.mark.parametrize("text,url,port,models,key", ACCEPTED)
def test_parse_route_accepted(text, url, port, models, key):
    r = parse_route(text)
    assert (r.url, r.local_port, r.models, r.api_key_env) == (url, port, models, key)
    assert r.weight == 1 and r.api_key_header == "Authorization"
    # The name is the canonical command-line form, and it parses back to the same route.
    again = parse_route(r.spec())
    assert (again.url, again.local_port, again.models) == (r.url, r.local_port, r.models)


# (text, words the message must contain)
REJECTED = [
    ("", ["empty"]),
    ("api.openai.com/v1", ["http:// or https://", "accepted forms"]),
    ("ftp://h/v1", ["http:// or https://"]),
    ("http://h:8910:llama3", ["'llama3' is not a local port", "http://h:8910::llama3",
                              "upstream's own", "http://h/v1:8910:llama3"]),
    ("http://h/v1:llama3", ["'llama3' is not a local port", "http://h/v1::llama3"]),
    ("http://h/v1:llama3:8b", ["http://h/v1::llama3:8b"]),
    ("http://h/v1:99999", ["1 to 65535"]),
    ("http://h/v1:0:m", ["1 to 65535"]),
    ("http://h/v1:８９１０", ["not a local port"]),  # non-ASCII digits
    ("http://h/v1:8910:a,,b", ["non-empty"]),
    ("http://::1/v1", ["brackets"]),
    ("http://h/v1?api-version=1", ["query or fragment"]),
    ("http://h/v1#x", ["query or fragment"]),
    ("http://", ["no host"]),
    ("http://h v1", ["unexpected"]),
]


@pytest.mark.parametrize("text,words", REJECTED)
def test_parse_route_rejected(text, words):
    with pytest.raises(ConfigError) as e:
        parse_route(text)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("text", [
    "http://user:sk-SECRET@h/v1",
    "http://user:sk-SECRET@h:8000/v1:8910:m",
    "http://sk-SECRET@h/v1",
    "sk-SECRET@https://h/v1",
    "sk-SECRET-with-dash@http://h/v1:8910:m",
])
def test_keys_in_routes_are_refused_and_never_echoed(text):
    with pytest.raises(ConfigError) as e:
        parse_route(text)
    assert "SECRET" not in str(e.value)
    assert "environment variable" in str(e.value)


def test_parse_routes_makes_names_unique():
    rs = parse_routes(["http://h/v1::m", "http://h/v1::m", "http://g/v1", "http://h/v1::m"])
    assert [r.name for r in rs] == ["http://h/v1::m", "http://h/v1::m#2", "http://g/v1", "http://h/v1::m#3"]


hosts = st.sampled_from(["h", "127.0.0.1", "[::1]", "api.openai.com", "[2001:db8::1]"])
names = st.text(st.sampled_from("abc:/@.-_8"), min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and "," not in s)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["http", "https"]), hosts, st.none() | st.integers(1, 65535),
       st.sampled_from(["", "/v1", "/openai/v1", "/a-b/c_d"]), st.none() | st.integers(1, 65535),
       st.lists(names, max_size=3, unique=True))
def test_property_spec_round_trips(scheme, host, port, path, local_port, models):
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
    r = Route(url, local_port, tuple(models))
    again = parse_route(r.spec())
    assert (again.url, again.local_port, again.models) == (url, local_port, tuple(models))


# -- config file ----------------------------------------------------------------------------

EXAMPLE = r'''
balance = "least-busy"
cooldown_s = 5
override_model = "qwen3"
restore_model = false
no_think = true

[think]
mode = "tags"
open_tag = "<reasoning>"
close_tag = "</reasoning>"

[model_map]
"gpt-3.5-turbo" = "llama3-8b"
"/gpt-(.*)turbo/" = 'llama3-\1-instruct'

[[upstream]]
url = "https://api.openai.com/v1"
models = ["gpt-5", "gpt-5-mini"]
api_key_env = "OPENAI_API_KEY"
name = "openai"

[[upstream]]
route = "http://127.0.0.1:8000/v1:8911:llama3:8b"
weight = 3
timeout_s = 120

[[upstream]]
url = "https://example.openai.azure.com/openai/v1"
port = 8911
models = "llama3:8b"
api_key_env = "AZURE_KEY"
api_key_header = "api-key"
'''


def test_load_config_example(tmp_path):
    path = tmp_path / "rechat.toml"
    path.write_text(EXAMPLE)
    cfg = load_config(path)
    assert cfg.balance == "least-busy" and cfg.cooldown_s == 5.0
    assert cfg.restore_model is False and cfg.no_think is True
    assert cfg.think is ThinkMode.TAGS
    assert cfg.think_patterns == ThinkPatterns(open_tag="<reasoning>", close_tag="</reasoning>")
    assert cfg.model_map.override == "qwen3"
    assert cfg.model_map.with_override(None).resolve("gpt-4-turbo") == "llama3-4--instruct"
    assert cfg.source == str(path)
    openai, local, azure = cfg.routes
    assert openai == Route("https://api.openai.com/v1", None, ("gpt-5", "gpt-5-mini"),
                           "OPENAI_API_KEY", name="openai")
    assert (local.url, local.local_port, local.models, local.weight, local.timeout_s) == (
        "http://127.0.0.1:8000/v1", 8911, ("llama3:8b",), 3, 120.0)
    assert local.name == "http://127.0.0.1:8000/v1:8911:llama3:8b"
    assert (azure.local_port, azure.models, azure.api_key_header) == (8911, ("llama3:8b",), "api-key")
    b = Balancer.from_config(cfg)
    assert b.ports() == [8910, 8911]
    assert b.models() == ["gpt-5", "gpt-5-mini", "llama3:8b"]


def test_command_line_options_merge_over_the_file():
    cfg = parse_config({"think": "strip", "model_map": {"a": "b"}, "upstream": ["http://a/v1::m"]})
    merged = dataclasses.replace(cfg, think=ThinkMode.parse("tags"),
                                 model_map=cfg.model_map.with_override("forced"),
                                 routes=cfg.routes + parse_routes(["http://b/v1::n"]))
    assert isinstance(merged, GatewayConfig)
    assert merged.think is ThinkMode.TAGS and merged.model_map.resolve("a") == "forced"
    assert [r.url for r in merged.routes] == ["http://a/v1", "http://b/v1"]
    assert cfg.think is ThinkMode.STRIP  # the file's config is unchanged


def test_config_defaults_and_string_forms():
    cfg = parse_config({"upstream": ["http://a/v1::m", "http://a/v1::m"], "think": "strip"})
    assert cfg.think is ThinkMode.STRIP and cfg.balance == "round-robin" and cfg.cooldown_s == 30.0
    assert [r.name for r in cfg.routes] == ["http://a/v1::m", "http://a/v1::m#2"]
    assert cfg.restore_model is True and not cfg.model_map
    empty = parse_config({})
    assert empty.routes == () and empty.think is ThinkMode.KEEP


@pytest.mark.parametrize("data,words", [
    ({"balanse": "least-busy"}, ["unknown key 'balanse'", "valid keys: upstream, balance"]),
    ({"balance": "random"}, ["round-robin, least-busy"]),
    ({"cooldown_s": -1}, ["cooldown_s"]),
    ({"cooldown_s": "5"}, ["cooldown_s"]),
    ({"think": "hide"}, ["keep, strip, tags"]),
    ({"think": {"mode": "tags", "open": "x"}}, ["[think]: unknown key 'open'"]),
    ({"no_think": "yes"}, ["no_think must be true or false"]),
    ({"override_model": 3}, ["override_model"]),
    ({"model_map": {"/(x/": "y"}}, ["[model_map]", "regular expression"]),
    ({"upstream": {"url": "http://h"}}, ["expected an array"]),
    ({"upstream": [{"port": 1}]}, ["upstream #1", "exactly one of url"]),
    ({"upstream": [{"url": "http://h", "route": "http://h"}]}, ["exactly one of url"]),
    ({"upstream": [{"url": "http://h/v1:8910:m"}]}, ["carries a route suffix"]),
    ({"upstream": [{"url": "http://h", "prot": 1}]}, ["unknown key 'prot'"]),
    ({"upstream": [{"url": "http://h", "port": 70000}]}, ["1 to 65535"]),
    ({"upstream": [{"url": "http://h", "port": True}]}, ["1 to 65535"]),
    ({"upstream": [{"url": "http://h", "weight": 0}]}, ["weight"]),
    ({"upstream": [{"url": "http://h", "timeout_s": 0}]}, ["timeout_s"]),
    ({"upstream": [{"url": "http://h", "models": [""]}]}, ["non-empty"]),
    ({"upstream": [{"url": "http://h", "api_key_header": "bad header"}]}, ["not a valid header name"]),
    ({"upstream": [{"url": "http://h"}, {"url": "http://h", "api_key_env": "sk-SECRET"}]},
     ["upstream #2", "NAME of an environment variable"]),
    ({"upstream": [3]}, ["table or a route string"]),
])
def test_config_errors(data, words):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "rechat.toml")
    for w in words:
        assert w in str(e.value)
    assert "SECRET" not in str(e.value)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("balance = \n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_config(bad)


# -- balancing ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def R(url: str, port=None, models=(), weight=1, name="") -> Route:
    return Route(url, port, tuple(models), weight=weight, name=name)


def test_routing_by_model_and_port():
    a, b = R("http://a/v1", models=["gpt-5"]), R("http://b/v1", models=["llama3", "gpt-5"])
    wild = R("http://w/v1")
    other = R("http://o/v1", port=8911, models=["llama3"])
    bal = Balancer([a, b, wild, other], default_port=8910)
    assert set(bal.pool("gpt-5")) == {a, b}
    assert bal.pool("llama3") == [b]
    assert bal.pool("llama3", 8911) == [other]
    assert bal.pool("mistral") == [wild]  # nobody lists it: the any-model routes
    assert bal.pool("mistral", 8911) == []  # no any-model route on 8911
    assert bal.candidates("mistral", 8911) == []
    assert bal.pool(None) == [wild]
    assert bal.pool(None, 8911) == [other]  # no model, no wildcard: every route on the port
    assert bal.pool("gpt-5", 9999) == []
    assert bal.ports() == [8910, 8911]
    assert bal.models() == ["gpt-5", "llama3"] and bal.models(8911) == ["llama3"]
    assert Balancer([], default_port=8910).ports() == [8910]


def test_round_robin_counts_are_even():
    rs = [R(f"http://u{i}/v1", models=["m"]) for i in range(3)]
    bal = Balancer(rs)
    firsts = [bal.candidates("m")[0].name for _ in range(300)]
    assert collections.Counter(firsts) == {r.name: 100 for r in rs}
    assert firsts[:6] == [rs[0].name, rs[1].name, rs[2].name] * 2
    # Each answer lists every route once: the failover order.
    assert sorted(r.name for r in bal.candidates("m")) == sorted(r.name for r in rs)


def test_weighted_round_robin_is_smooth():
    a, b = R("http://a/v1", models=["m"], weight=3), R("http://b/v1", models=["m"], weight=1)
    bal = Balancer([a, b])
    firsts = [bal.candidates("m")[0] for _ in range(400)]
    assert collections.Counter(firsts) == {a: 300, b: 100}
    assert firsts[:4].count(b) == 1  # spread out, not a a a b in bursts of weight


def test_the_same_set_of_routes_shares_one_rotation():
    # Two models served by the same upstreams: load stays even whatever the mix of models.
    a, b = R("http://a/v1", models=["m", "n"]), R("http://b/v1", models=["m", "n"])
    c = R("http://c/v1", models=["o"])
    bal = Balancer([a, b, c])
    assert [bal.candidates(x)[0] for x in "mnmmno"] == [a, b, a, b, a, c]


def test_least_busy_picks_fewest_in_flight_and_rotates_ties():
    a, b, c = (R(f"http://{x}/v1", models=["m"]) for x in "abc")
    bal = Balancer([a, b, c], balance="least-busy")
    assert [bal.candidates("m")[0] for _ in range(3)] == [a, b, c]  # all idle: rotation
    bal.started(a)
    bal.started(a)
    bal.started(b)
    assert bal.candidates("m") == [c, b, a]
    assert bal.in_flight(a) == 2
    bal.finished(a, 200)
    bal.finished(a, 200)
    bal.finished(b, 200)
    assert bal.in_flight(a) == 0
    bal.finished(a, 200)  # an extra finish never goes negative
    assert bal.in_flight(a) == 0
    # Weights scale capacity: 2 in flight on weight 4 is less busy than 1 on weight 1.
    big, small = R("http://big/v1", models=["m"], weight=4), R("http://small/v1", models=["m"])
    bal2 = Balancer([big, small], balance="least-busy")
    bal2.started(big)
    bal2.started(big)
    bal2.started(small)
    assert bal2.candidates("m")[0] == big


def test_least_busy_counts_under_load():
    rs = [R(f"http://u{i}/v1", models=["m"]) for i in range(3)]
    bal = Balancer(rs, balance="least-busy")
    slow = rs[0]
    for _ in range(30):  # the slow upstream never finishes; the others finish at once
        r = bal.candidates("m")[0]
        bal.started(r)
        if r != slow:
            bal.finished(r, 200)
    assert [s["requests"] for s in bal.snapshot()] == [1, 15, 14]  # slow: one, then avoided
    assert bal.in_flight(slow) == 1


@pytest.mark.parametrize("status,fails", [(None, True), (500, True), (502, True), (503, True),
                                          (200, False), (404, False), (429, False), (400, False)])
def test_is_failure(status, fails):
    assert is_failure(status) is fails


def test_failure_cools_down_then_recovers():
    clock = Clock()
    a, b = R("http://a/v1", models=["m"]), R("http://b/v1", models=["m"])
    bal = Balancer([a, b], cooldown_s=10, clock=clock)
    bal.started(a)
    assert bal.finished(a, None) is True  # connection refused
    assert bal.cooling(a) == 10.0
    for _ in range(5):
        assert bal.candidates("m") == [b, a]  # a sits out, but stays last resort
    clock.t += 9.9
    assert bal.candidates("m")[0] == b
    clock.t += 0.1
    assert {bal.candidates("m")[0] for _ in range(2)} == {a, b}  # back in rotation
    snap = bal.snapshot()[0]
    assert snap["failures"] == 1 and snap["cooling_s"] == 0.0 and snap["requests"] == 1


def test_5xx_cools_4xx_does_not_and_success_clears():
    clock = Clock()
    a, b = R("http://a/v1", models=["m"]), R("http://b/v1", models=["m"])
    bal = Balancer([a, b], cooldown_s=30, clock=clock)
    assert bal.finished(a, 429) is False and bal.cooling(a) == 0
    assert bal.finished(a, 503) is True and bal.cooling(a) == 30
    assert bal.finished(a, 200) is False and bal.cooling(a) == 0  # tried as last resort: it works
    assert bal.finished(b, 200, failed=True) is True  # e.g. a stream that broke off
    assert bal.finished(b, 500, failed=False) is False and bal.cooling(b) == 0


def test_all_cooling_are_tried_soonest_first():
    clock = Clock()
    a, b, c = (R(f"http://{x}/v1", models=["m"]) for x in "abc")
    bal = Balancer([a, b, c], cooldown_s=10, clock=clock)
    bal.finished(b, 500)
    clock.t += 1
    bal.finished(a, 500)
    clock.t += 1
    bal.finished(c, None)
    assert bal.candidates("m") == [b, a, c]


def test_cooldown_zero_never_takes_an_upstream_out():
    a, b = R("http://a/v1", models=["m"]), R("http://b/v1", models=["m"])
    bal = Balancer([a, b], cooldown_s=0)
    assert bal.finished(a, 500) is False
    assert [bal.candidates("m")[0] for _ in range(2)] == [a, b]


def forward(bal: Balancer, model: str, answers: dict[str, list], streamed_on_fail=False):
    """The lead's failover loop in miniature: try candidates until one answers or streamed."""
    tried = []
    for route in bal.candidates(model):
        bal.started(route)
        status = answers[route.name].pop(0)
        bal.finished(route, status)
        tried.append((route.name, status))
        if not is_failure(status) or streamed_on_fail:
            break
    return tried


def test_failover_goes_to_the_next_upstream_and_counts():
    clock = Clock()
    a, b, c = (R(f"http://{x}/v1", models=["m"], name=x) for x in "abc")
    bal = Balancer([a, b, c], cooldown_s=60, clock=clock)
    answers = {"a": [None] + [200] * 50, "b": [200] * 50, "c": [502] + [200] * 50}
    assert forward(bal, "m", answers) == [("a", None), ("b", 200)]  # refused: next one
    assert forward(bal, "m", answers) == [("b", 200)]  # a sits out; b and c rotate
    assert forward(bal, "m", answers) == [("c", 502), ("b", 200)]  # 5xx: next one
    # a and c cool down: b takes everything until they are back; they are never tried first.
    assert [forward(bal, "m", answers) for _ in range(6)] == [[("b", 200)]] * 6
    clock.t += 60
    served = collections.Counter(forward(bal, "m", answers)[0][0] for _ in range(30))
    assert served == {"a": 10, "b": 10, "c": 10}
    # Once bytes reached the client, no second upstream is tried.
    bal2 = Balancer([a, b], cooldown_s=60, clock=clock)
    assert forward(bal2, "m", {"a": [500], "b": [200]}, streamed_on_fail=True) == [("a", 500)]


def test_balancer_rejects_bad_settings():
    with pytest.raises(ConfigError, match="round-robin, least-busy"):
        Balancer([], balance="fastest")
    a = R("http://a/v1", name="x")
    with pytest.raises(ConfigError, match="used twice: x"):
        Balancer([a, R("http://b/v1", name="x")])


# -- keys -----------------------------------------------------------------------------------

CLIENT = [("Content-Type", "application/json"), ("authorization", "Bearer sk-client"),
          ("X-Api-Key", "client-x"), ("OpenAI-Organization", "org")]


def test_key_from_environment_replaces_the_clients():
    r = parse_route("OPENAI_API_KEY@https://api.openai.com/v1")
    out = auth_headers(r, CLIENT, {"OPENAI_API_KEY": "sk-route"})
    assert out == [("Content-Type", "application/json"), ("OpenAI-Organization", "org"),
                   ("Authorization", "Bearer sk-route")]


def test_azure_style_header_gets_the_bare_key():
    r = Route("https://x.openai.azure.com/openai/v1", api_key_env="AZ", api_key_header="api-key")
    out = auth_headers(r, CLIENT + [("Api-Key", "client-az")], {"AZ": "az-route"})
    assert out == [("Content-Type", "application/json"), ("OpenAI-Organization", "org"),
                   ("api-key", "az-route")]  # every client key header is gone


def test_without_key_env_the_clients_headers_pass_through():
    r = parse_route("http://127.0.0.1:8000/v1")
    out = auth_headers(r, CLIENT, {"OPENAI_API_KEY": "sk-route"})
    assert out == CLIENT and out is not CLIENT


def test_missing_key_names_the_variable_not_a_value(monkeypatch):
    r = parse_route("MISSING_KEY@https://h/v1")
    with pytest.raises(ConfigError, match="MISSING_KEY"):
        auth_headers(r, CLIENT, {})
    with pytest.raises(ConfigError, match="MISSING_KEY"):
        auth_headers(r, CLIENT, {"MISSING_KEY": ""})
    monkeypatch.setenv("MISSING_KEY", "from-os-environ")
    assert auth_headers(r, [])[-1] == ("Authorization", "Bearer from-os-environ")


def test_check_keys_lists_every_missing_variable():
    routes = parse_routes(["A_KEY@http://a/v1", "B_KEY@http://b/v1", "http://c/v1", "A_KEY@http://d/v1"])
    with pytest.raises(ConfigError) as e:
        check_keys(routes, {"B_KEY": "VALUE-B"})
    assert "A_KEY" in str(e.value) and "B_KEY" not in str(e.value) and "VALUE" not in str(e.value)
    with pytest.raises(ConfigError, match="A_KEY, B_KEY are not set"):
        check_keys(routes, {})
    check_keys(routes, {"A_KEY": "1", "B_KEY": "2"})


# -- model lists ----------------------------------------------------------------------------


def test_merge_models_is_a_union_plus_aliases():
    up1 = {"object": "list", "data": [{"id": "gpt-5", "object": "model", "created": 1, "owned_by": "openai"}]}
    up2 = {"object": "list", "data": [{"id": "llama3", "object": "model", "created": 2, "owned_by": "vllm"},
                                      {"id": "gpt-5", "object": "model", "created": 9, "owned_by": "dup"}]}
    aliases = ModelMap.from_json('{"gpt-3.5-turbo": "llama3"}').aliases()
    out = merge_models([up1, up2, {"error": "down"}, None, {"data": [3, {"id": 4}]}],
                       ["llama3", *aliases])
    assert out == {"object": "list", "data": [
        {"id": "gpt-5", "object": "model", "created": 1, "owned_by": "openai"},
        {"id": "llama3", "object": "model", "created": 2, "owned_by": "vllm"},
        {"id": "gpt-3.5-turbo", "object": "model", "created": 0, "owned_by": "rechat"}]}
