"""Record modes, the caching proxy's switches, match rules, repeat order, fuzzy, diff, latency.

All through real rechat processes and the real openai client.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from conftest import free_port, session_texts
from rechat import sessionfile

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def write_session(folder: Path, name: str, params: dict, answers: list[str], ask=ASK, meta=None):
    folder.mkdir(exist_ok=True)
    for i, a in enumerate(answers):
        text = sessionfile.render_chat(params, ask + [{"role": "assistant", "content": a}],
                                       {len(ask): meta or {"at": f"2026-01-01T00:00:0{i}+00:00"}})
        (folder / f"{name}_{i}.md").write_text(text)


def test_passthrough_forwards_and_records_nothing(upstream, start_rechat, tmp_path):
    write_session(tmp_path / "s", "paris", {"model": "m1"}, ["Paris."])
    rx = start_rechat("passthrough", upstream.url, "--sessions", "s")
    r = rx.client().chat.completions.with_raw_response.create(model="m1", messages=ASK)
    assert r.headers["x-rechat"] == "forward"
    assert r.parse().choices[0].message.content == "Echo: What is the capital of France?"
    rx.stop()
    assert list(session_texts(tmp_path / "s")) == ["paris_0.md"]


def test_cache_switches(upstream, start_rechat, tmp_path):
    write_session(tmp_path / "s", "paris", {"model": "m1"}, ["Paris."])
    # --no-respond-from-cache: hits are forwarded (and recorded).
    rx = start_rechat(upstream.url, "--sessions", "s", "--no-respond-from-cache")
    assert rx.client().chat.completions.create(model="m1", messages=ASK).choices[0].message.content \
        .startswith("Echo:")
    rx.stop()
    assert len(session_texts(tmp_path / "s")) == 2
    # --no-store: misses are forwarded but never written; hits still come from the sessions.
    rx = start_rechat(upstream.url, "--sessions", "s", "--no-store")
    c = rx.client()
    assert c.chat.completions.create(model="m1", messages=ASK).choices[0].message.content == "Paris."
    c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "new"}])
    rx.stop()
    assert len(session_texts(tmp_path / "s")) == 2


def test_unknown_mode_fails_with_the_valid_ones(tmp_path):
    p = subprocess.run([sys.executable, "-m", "rechat", "--mode", "replya", "--port", str(free_port())],
                       cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "serve, record, replay, passthrough" in p.stdout + p.stderr


@pytest.mark.parametrize("match, kw, hit", [
    ("default", {"temperature": 0.2}, True),
    ("default", {"temperature": 0.9}, False),
    ("default", {"temperature": 0.2, "user": "u"}, True),
    ("exact", {"temperature": 0.2}, True),
    ("exact", {"temperature": 0.2, "user": "u"}, False),
    ("exact", {"temperature": 0.2, "seed": 1}, False),
    ("content", {"temperature": 0.9}, True),
])
def test_match_rules(start_rechat, tmp_path, match, kw, hit):
    write_session(tmp_path / "s", "paris", {"model": "m1", "temperature": 0.2}, ["Paris."])
    c = start_rechat("replay", "s", "--match", match).client()
    model = "other-model" if match == "content" else "m1"
    if hit:
        assert c.chat.completions.create(model=model, messages=ASK, **kw).choices[0].message.content == "Paris."
    else:
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model=model, messages=ASK, **kw)


@pytest.mark.parametrize("repeat, expected", [
    ("last", ["one", "two", "two", "two"]),
    ("cycle", ["one", "two", "one", "two"]),
    ("first", ["one", "two", "one", "one"]),
])
def test_repeat_orders(start_rechat, tmp_path, repeat, expected):
    write_session(tmp_path / "s", "paris", {"model": "m1"}, ["one", "two"])
    c = start_rechat("replay", "s", "--repeat", repeat).client()
    got = [c.chat.completions.create(model="m1", messages=ASK).choices[0].message.content
           for _ in expected]
    assert got == expected


def test_fuzzy_serves_the_nearest_above_the_threshold(start_rechat, tmp_path):
    write_session(tmp_path / "s", "paris", {"model": "m1"}, ["Paris."])
    rx = start_rechat("replay", "s", "--fuzzy", "0.9")
    c = rx.client()
    r = c.chat.completions.with_raw_response.create(
        model="m1", messages=[{"role": "user", "content": "What is the capital of France ?"}])
    tag = r.headers["x-rechat"]
    assert tag.startswith("replay; fuzzy=0.9") and tag.endswith("session=paris_0.md")
    assert r.parse().choices[0].message.content == "Paris."
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "Name a river."}])
    assert "replayed fuzzy 0.9" in rx.output()


def test_diff_prints_what_changed(start_rechat, tmp_path):
    write_session(tmp_path / "s", "paris", {"model": "m1", "temperature": 0.2}, ["Paris."],
                  ask=[{"role": "system", "content": "Be terse."}] + ASK)
    rx = start_rechat("replay", "s", "--diff")
    with pytest.raises(openai.NotFoundError) as e:
        rx.client().chat.completions.create(model="m1", temperature=0.2, messages=[
            {"role": "system", "content": "Be terse. "}] + ASK)
    assert "paris_0.md" in e.value.body["message"]
    time.sleep(0.3)
    out = rx.output()
    assert "-Be terse." in out and "+Be terse. " in out and "@@" in out


def test_latency_replays_the_recorded_timing(start_rechat, tmp_path):
    meta = {"at": "2026-01-01T00:00:00+00:00", "ms": {"ttfb": 400.0, "total": 600.0}}
    write_session(tmp_path / "s", "slow", {"model": "m1"}, ["Paris."], meta=meta)

    def first_byte(*args: str) -> float:
        c = start_rechat("replay", "s", *args).client()
        c.chat.completions.create(model="m1", messages=ASK)  # warm the connection
        t0 = time.monotonic()
        stream = c.chat.completions.create(model="m1", messages=ASK, stream=True)
        next(iter(stream))
        return time.monotonic() - t0

    assert first_byte("--latency", "recorded") >= 0.4
    assert first_byte("--latency", "0.5") >= 0.2
    assert first_byte() < 0.2


def test_every_run_writes_a_dump_that_flow_loads_as_answers(upstream, start_rechat, tmp_path):
    rec = start_rechat("record", upstream.url, "--sessions", "s")
    first = rec.client().chat.completions.create(model="m1", messages=ASK)
    rec.stop()
    dumps = sorted(tmp_path.glob("flows_*.jsonl"))
    assert len(dumps) == 1 and '"kind": "record"' in dumps[0].read_text().replace('":"', '": "')
    upstream.stop()
    (tmp_path / "empty").mkdir()
    # `-f` alone loads every flows_*.jsonl of the dump folder (the original rechat's flag).
    rep = start_rechat("replay", "empty", "-f", "--no-dump")
    again = rep.client().chat.completions.create(model="m1", messages=ASK)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert session_texts(tmp_path / "empty") == {}
