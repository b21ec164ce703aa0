"""Table-driven tests of the pure rules: record modes and request identity."""

from __future__ import annotations

import pytest

from rechat.errors import ConfigError
from rechat.fingerprint import (body_key, canonical, fingerprint, is_secret_header, messages_key,
                                redact_headers, request_params)
from rechat.policy import Action, Mode, decide, looks_up, records


@pytest.mark.parametrize("mode, hit, action, recorded", [
    (Mode.SERVE, True, Action.REPLAY, True),
    (Mode.SERVE, False, Action.FORWARD, True),
    (Mode.RECORD, True, Action.FORWARD, True),
    (Mode.RECORD, False, Action.FORWARD, True),
    (Mode.REPLAY, True, Action.REPLAY, False),
    (Mode.REPLAY, False, Action.MISS, False),
    (Mode.PASSTHROUGH, True, Action.FORWARD, False),
    (Mode.PASSTHROUGH, False, Action.FORWARD, False),
])
def test_record_mode_table(mode, hit, action, recorded):
    assert decide(mode, hit) is action
    assert records(mode) is recorded


def test_only_modes_where_a_hit_matters_look_up():
    assert [m for m in Mode if looks_up(m)] == [Mode.SERVE, Mode.REPLAY]


def test_unknown_mode_lists_the_valid_ones():
    assert Mode.parse("Replay") is Mode.REPLAY
    with pytest.raises(ConfigError, match="serve, record, replay, passthrough"):
        Mode.parse("replya")


@pytest.mark.parametrize("a, b, same", [
    ({"model": "m", "temperature": 1}, {"temperature": 1.0, "model": "m"}, True),
    ({"model": "m", "stream": True, "stream_options": {"include_usage": True}}, {"model": "m"}, True),
    ({"model": "m", "user": "alice"}, {"model": "m", "user": "bob"}, True),
    ({"model": "m", "temperature": 0.5}, {"model": "m", "temperature": 0.50001}, False),
    ({"model": "m", "n": 1}, {"model": "m"}, False),
    ({"model": "m", "x": {"b": 1, "a": [1, 2]}}, {"x": {"a": [1, 2], "b": 1}, "model": "m"}, True),
    ({"model": "m", "x": [1, 2]}, {"model": "m", "x": [2, 1]}, False),
])
def test_body_identity(a, b, same):
    assert (body_key(a) == body_key(b)) is same


@pytest.mark.parametrize("a, b, same", [
    ([{"role": "assistant", "content": "x", "refusal": None, "annotations": []}],
     [{"role": "assistant", "content": "x"}], True),
    ([{"role": "assistant", "content": None, "tool_calls": []}], [{"role": "assistant"}], True),
    ([{"role": "user", "content": "x "}], [{"role": "user", "content": "x"}], False),
    ([{"role": "user", "content": "x", "name": "a"}], [{"role": "user", "content": "x"}], False),
    ([{"role": "assistant", "content": ""}], [{"role": "assistant", "content": None}], False),
])
def test_message_identity_null_is_absent(a, b, same):
    assert (messages_key(a) == messages_key(b)) is same


def test_fingerprint_counts_method_path_query_and_body():
    base = fingerprint("GET", "/v1/models", "", b"")
    assert base == fingerprint("get", "/v1/models", "", b"")
    assert base != fingerprint("GET", "/v1/models", "limit=2", b"")
    assert base != fingerprint("POST", "/v1/models", "", b"")
    assert fingerprint("POST", "/v1/x", "", b"{}", {"a": 1, "stream": True}) == \
        fingerprint("POST", "/v1/x", "", b"{ }", {"a": 1.0})
    assert fingerprint("POST", "/v1/x", "", b"\x00\x01") != fingerprint("POST", "/v1/x", "", b"\x00\x02")


def test_request_params_leave_out_messages_and_volatile_fields():
    body = {"model": "m", "messages": [], "stream": True, "user": "u", "tools": [], "seed": 1}
    assert request_params(body) == {"model": "m", "tools": [], "seed": 1}


@pytest.mark.parametrize("name, secret", [
    ("Authorization", True), ("api-key", True), ("X-Api-Key", True), ("Cookie", True),
    ("Proxy-Authorization", True), ("X-Goog-Api-Key", True), ("x-auth-token", True),
    ("Content-Type", False), ("OpenAI-Organization", False), ("x-stainless-retry-count", False),
])
def test_secret_headers(name, secret):
    assert is_secret_header(name) is secret
    assert (redact_headers([(name, "v")]) == []) is secret


def test_canonical_is_compact_sorted_and_unicode():
    assert canonical({"b": 1.0, "a": "é"}) == '{"a":"é","b":1}'


def _multipart(boundary: str, parts: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for name, content in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{name}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_requests_are_keyed_by_their_parts_not_the_boundary():
    a = _multipart("abc123", [("file", b"\x00\x01data"), ("purpose", b"fine-tune")])
    b = _multipart("zzz999-other", [("file", b"\x00\x01data"), ("purpose", b"fine-tune")])
    c = _multipart("abc123", [("file", b"\x00\x01datA"), ("purpose", b"fine-tune")])
    fa, fb, fc = (fingerprint("POST", "/v1/files", "", x) for x in (a, b, c))
    assert fa == fb and fa != fc
    assert fingerprint("POST", "/v1/files", "", b"--not multipart") != fa
