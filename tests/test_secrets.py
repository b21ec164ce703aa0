"""No API key in anything rechat writes, while the upstream still gets it unchanged.

rechat records chat (streamed and not), embeddings, models and a binary endpoint with the key
in `Authorization` (the openai client), `api-key` (aiohttp, Azure style) and `x-api-key`
(urllib, Anthropic style); then every file under the sessions folder and the folder rechat ran
in (its console output included) is searched for the key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path

import aiohttp
import openai
import pytest

from conftest import SECRET, session_texts

# Pieces of the key that must not appear either (a key cut or re-encoded is still a leak).
NEEDLES = [SECRET.encode(), SECRET[8:].encode(), base64.b64encode(SECRET.encode()),
           json.dumps(SECRET).encode()]


def every_file(*folders: Path) -> dict[Path, bytes]:
    out = {}
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                out[p] = p.read_bytes()
    return out


def assert_no_secret(files: dict[Path, bytes]) -> None:
    leaks = [(str(p), n.decode()) for p, data in files.items() for n in NEEDLES if n in data]
    assert not leaks, f"the API key was written to: {leaks}"


async def with_aiohttp(url: str) -> list[tuple[int, bytes]]:
    headers = {"api-key": SECRET, "Content-Type": "application/json"}
    out = []
    async with aiohttp.ClientSession() as s:
        for path, body in [
            ("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "azure"}]}),
            ("/chat/completions", {"model": "m", "stream": True,
                                   "messages": [{"role": "user", "content": "azure stream"}]}),
            ("/embeddings", {"model": "e", "input": "azure"}),
        ]:
            async with s.post(url + path, json=body, headers=headers) as r:
                out.append((r.status, await r.read()))
        async with s.get(url + "/models", headers={"API-Key": SECRET}) as r:
            out.append((r.status, await r.read()))
    return out


def with_urllib(url: str, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={
        "x-api-key": SECRET, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def test_no_api_key_in_any_file_rechat_writes(start_rechat, upstream, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    # default sessions folder (./sessions in the working folder), and the most talkative output
    r = start_rechat("record", upstream.url, "--verbose", cwd=work)
    c = r.client()

    # Authorization: Bearer KEY, from the openai client
    got = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "plain"}])
    assert got.choices[0].message.content == "Echo: plain"
    chunks = list(c.chat.completions.create(model="m", stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "streamed"}]))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Echo: streamed"
    assert c.embeddings.create(model="e", input="vector").data[0].embedding == [0.1, -0.25, 3.5e-05]
    assert [m.id for m in c.models.list()] == ["m1"]
    speech = c.audio.speech.create(model="tts", voice="alloy", input="say it").content
    assert speech == bytes(range(256)) * 40

    # api-key: KEY and x-api-key: KEY, from raw clients
    for status, _ in asyncio.run(with_aiohttp(r.url)):
        assert status == 200
    assert with_urllib(r.url, "POST", "/chat/completions",
                       {"model": "m", "messages": [{"role": "user", "content": "anthropic"}]})[0] == 200
    assert with_urllib(r.url, "GET", "/models", None)[0] == 200
    status, audio = with_urllib(r.url, "POST", "/audio/speech",
                                {"model": "tts", "voice": "alloy", "input": "raw"})
    assert (status, audio) == (200, bytes(range(256)) * 40)

    code = r.stop()
    assert code == 0

    # the upstream got every key, unchanged
    auth = [h for _, _, h, _ in upstream.received if "Authorization" in h]
    assert len(auth) == 5, [h.keys() for _, _, h, _ in upstream.received]
    assert all(h["Authorization"] == f"Bearer {SECRET}" for h in auth)
    api_key = [next(v for k, v in h.items() if k.lower() == "api-key")
               for _, _, h, _ in upstream.received if any(k.lower() == "api-key" for k in h)]
    assert api_key == [SECRET] * 4
    x_api_key = [h.get("x-api-key") or h.get("X-Api-Key") for _, _, h, _ in upstream.received
                 if any(k.lower() == "x-api-key" for k in h)]
    assert x_api_key == [SECRET] * 3
    assert len(upstream.received) == 12

    # everything was recorded ...
    sessions = work / "sessions"
    texts = session_texts(sessions)
    assert len(texts) == 12, sorted(texts)
    assert sum("Echo: " in t for t in texts.values()) == 5
    # ... and the key is in none of it, nor anywhere else rechat wrote (its output included)
    files = every_file(work)
    assert any(p.suffix == ".log" for p in files) and len(files) >= 13
    log = next(data for p, data in files.items() if p.suffix == ".log")
    assert b"Echo: plain" in log  # the output shows the exchanges, just not the key
    assert_no_secret(files)


@pytest.mark.slow
def test_no_api_key_in_files_written_in_serve_mode_or_on_upstream_errors(start_rechat, upstream,
                                                                         tmp_path):
    sessions = tmp_path / "sessions"
    r = start_rechat("serve", upstream.url, "--sessions", str(sessions), "--verbose")
    c = r.client()
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="fail", messages=[{"role": "user", "content": "boom"}])
    # an unreachable upstream: the error message names it, not the key
    dead = start_rechat("serve", "http://127.0.0.1:9/v1", "--sessions", str(sessions))
    with pytest.raises(openai.APIStatusError) as e:
        dead.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    # a recorded exchange replayed to a client with another key
    first = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    n = len(upstream.received)
    other = r.client()
    other.api_key = "sk-other"
    again = other.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert again.choices[0].message.content == first.choices[0].message.content
    assert len(upstream.received) == n  # replayed, so the upstream never saw the second key
    assert r.stop() == 0 and dead.stop() == 0
    assert upstream.received[0][2]["Authorization"] == f"Bearer {SECRET}"
    assert len(session_texts(sessions)) == 1  # the failure was not recorded
    assert_no_secret(every_file(tmp_path))


def test_a_key_in_the_query_string_is_not_recorded_and_still_matches(upstream, start_rechat, tmp_path):
    """Azure and Google style `?api-key=` / `?key=` reach the upstream but never the disk."""
    rec = start_rechat("record", upstream.url, "--sessions", "s")
    url = f"{rec.url}/models?api-key={SECRET}&limit=2"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert json.loads(r.read())["data"][0]["id"] == "m1"
    assert upstream.received[-1][1] == f"/v1/models?api-key={SECRET}&limit=2"
    rec.stop()
    assert_no_secret(every_file(tmp_path))
    text = "".join(session_texts(tmp_path / "s").values())
    assert "endpoint: GET /v1/models?limit=2" in text
    upstream.stop()
    rep = start_rechat("replay", "s")
    with urllib.request.urlopen(f"{rep.url}/models?api-key=another-key&limit=2", timeout=10) as r:
        assert r.status == 200 and r.headers["x-rechat"].startswith("replay")
