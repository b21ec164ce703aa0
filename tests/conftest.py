"""Shared fixtures: a fake OpenAI upstream on 127.0.0.1 and rechat itself as a real process.

The fake upstream is a small aiohttp app running in a thread of the test process, so tests can
stop it mid-test and inspect what it received. rechat runs as `python -m rechat ...` in a
subprocess, driven with the real `openai` client, curl-like aiohttp/urllib calls, or signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

SECRET = "sk-test-SECRET-do-not-store-0123456789"


@pytest.fixture(params=["c", "python"])
def both_paths(request, monkeypatch):
    """Run a test with rechat's C helpers (`rechat.speedups`) and again with the Python each
    caller falls back to, as with ``RECHAT_NO_EXTENSIONS=1``: the two must give the same bytes.
    The C run is skipped only where the extension could not be built."""
    from rechat import speedups

    if request.param == "python":
        monkeypatch.setattr("rechat.rewrite._fused_event", None)
        monkeypatch.setattr("rechat.rewrite._fused_events", None)
        monkeypatch.setattr("rechat.rewrite._fused_touches", None)
        monkeypatch.setattr("rechat.modelmap._fused_locate", None)
        monkeypatch.setattr("rechat.modelmap._fused_events", None)
        monkeypatch.setattr("rechat.modelmap._fused_swap", None)
        monkeypatch.setattr("rechat.modelmap._fused_learn", None)
        monkeypatch.setattr("rechat.modelmap._fused_learn_events", None)
    elif speedups.event is None:
        pytest.skip("rechat._fused is not built, or RECHAT_NO_EXTENSIONS is set")
    return request.param


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Fake upstream


def _chunk(base: dict, delta: dict, finish=None, **extra) -> str:
    return "data: " + json.dumps({**base, "choices": [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}) + "\n\n"


class FakeUpstream:
    """A deterministic OpenAI-compatible server.

    Chat answers "Echo: <last user text>"; with `tools` and a user turn last it calls the first
    tool; after a tool result it answers "Tool said: <result>"; a model containing "reasoner"
    adds `reasoning_content`; model "fail" answers 500; model "slow" streams 20 chunks 50 ms
    apart; model "hang" never answers. Every request is appended to `received` as
    (method, path, headers dict, body bytes).
    """

    def __init__(self, prefix: str = "/v1") -> None:
        self.prefix = prefix
        self.port = free_port()
        self.received: list[tuple[str, str, dict, bytes]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def chat_count(self) -> int:
        return sum(1 for r in self.received if r[1].endswith("/chat/completions"))

    # handlers -----------------------------------------------------------------------------

    async def _record(self, req: web.Request) -> bytes:
        body = await req.read()
        self.received.append((req.method, req.path_qs, dict(req.headers), body))
        return body

    async def chat(self, req: web.Request) -> web.StreamResponse:
        b = json.loads(await self._record(req))
        model = b.get("model", "m")
        if model == "fail":
            return web.json_response({"error": {"message": "upstream exploded", "type": "server_error",
                                                "param": None, "code": None}}, status=500)
        if model == "hang":
            await asyncio.sleep(30)
        msgs = b["messages"]
        last = msgs[-1]
        message: dict = {"role": "assistant"}
        if last["role"] == "tool":
            message["content"] = f"Tool said: {last['content']}"
        elif b.get("tools"):
            fn = b["tools"][0]["function"]["name"]
            message["content"] = None
            message["tool_calls"] = [{"id": f"call_{len(self.received)}", "type": "function",
                                      "function": {"name": fn, "arguments": json.dumps(
                                          {"q": str(last["content"])[:20]})}}]
        else:
            c = last["content"]
            text = c if isinstance(c, str) else " ".join(p.get("text", "") for p in c)
            message["content"] = f"Echo: {text}"
        if "reasoner" in model:
            message["reasoning_content"] = "Let me think.\nYes."
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        base = {"id": f"chatcmpl-{len(self.received)}", "object": "chat.completion.chunk",
                "created": 1700000000, "model": model + "-2024", "system_fingerprint": "fp_1"}
        if not b.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {**message, "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": finish}], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        inc = (b.get("stream_options") or {}).get("include_usage")
        extra = {"usage": None} if inc else {}
        pieces: list[dict] = [{"role": "assistant", "content": "" if message.get("content") is not None else None}]
        if message.get("reasoning_content"):
            pieces += [{"reasoning_content": p} for p in ("Let me think.", "\nYes.")]
        if message.get("content"):
            words = message["content"].split(" ")
            pieces += [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
        for i, tc in enumerate(message.get("tool_calls") or []):
            pieces.append({"tool_calls": [{"index": i, "id": tc["id"], "type": "function",
                                           "function": {"name": tc["function"]["name"], "arguments": ""}}]})
            args = tc["function"]["arguments"]
            for j in range(0, len(args), 5):
                pieces.append({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 5]}}]})
        if model == "slow":
            pieces += [{"content": f" {i}"} for i in range(20)]
        for d in pieces:
            await resp.write(_chunk(base, d, **extra).encode())
            if model == "slow":
                await asyncio.sleep(0.05)
        await resp.write(_chunk(base, {}, finish, **extra).encode())
        if inc:
            await resp.write(("data: " + json.dumps({**base, "choices": [], "usage": usage}) + "\n\n").encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def embeddings(self, req: web.Request) -> web.Response:
        b = json.loads(await self._record(req))
        return web.json_response({"object": "list", "model": b.get("model"), "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.25, 3.5e-05]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}})

    async def models(self, req: web.Request) -> web.Response:
        await self._record(req)
        return web.json_response({"object": "list", "data": [
            {"id": "m1", "object": "model", "created": 0, "owned_by": "fake"}]},
            headers={"x-request-id": "req_123"})

    async def speech(self, req: web.Request) -> web.Response:
        await self._record(req)
        return web.Response(body=bytes(range(256)) * 40, content_type="audio/mpeg")

    # Ollama's own API (/api/...), at the server root whatever the prefix ------------------

    async def ollama_chat(self, req: web.Request) -> web.StreamResponse:
        b = json.loads(await self._record(req))
        text = f"Echo: {b['messages'][-1]['content']}"
        base = {"model": b["model"], "created_at": "2026-11-21T00:00:00Z"}
        if b.get("stream", True) is False:
            return web.json_response({**base, "message": {"role": "assistant", "content": text},
                                      "done": True, "done_reason": "stop", "eval_count": 3})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(req)
        for i, w in enumerate(text.split(" ")):
            await resp.write((json.dumps({**base, "message": {
                "role": "assistant", "content": w if i == 0 else " " + w}, "done": False}) + "\n").encode())
        await resp.write((json.dumps({**base, "message": {"role": "assistant", "content": ""},
                                      "done": True, "done_reason": "stop"}) + "\n").encode())
        return resp

    async def ollama_generate(self, req: web.Request) -> web.StreamResponse:
        b = json.loads(await self._record(req))
        text = f"Echo: {b['prompt']}"
        base = {"model": b["model"], "created_at": "2026-11-21T00:00:00Z"}
        if b.get("stream", True) is False:
            return web.json_response({**base, "response": text, "done": True})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(req)
        for w in text.split(" "):
            await resp.write((json.dumps({**base, "response": w + " ", "done": False}) + "\n").encode())
        await resp.write((json.dumps({**base, "response": "", "done": True}) + "\n").encode())
        return resp

    async def ollama_tags(self, req: web.Request) -> web.Response:
        await self._record(req)
        return web.json_response({"models": [{"name": "llama3:8b", "model": "llama3:8b",
                                              "size": 1, "digest": "x", "details": {}}]})

    async def ollama_version(self, req: web.Request) -> web.Response:
        await self._record(req)
        return web.json_response({"version": "0.5.0"})

    # lifecycle ----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        """Add this fake's handlers to `app` (subclasses add or replace their own)."""
        p = self.prefix
        app.router.add_post(p + "/chat/completions", self.chat)
        app.router.add_post(p + "/embeddings", self.embeddings)
        app.router.add_get(p + "/models", self.models)
        app.router.add_post(p + "/audio/speech", self.speech)
        app.router.add_post("/api/chat", self.ollama_chat)
        app.router.add_post("/api/generate", self.ollama_generate)
        app.router.add_get("/api/tags", self.ollama_tags)
        app.router.add_get("/api/version", self.ollama_version)

    def start(self) -> "FakeUpstream":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=1 << 30)
            self.routes(app)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake upstream did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture
def upstream():
    u = FakeUpstream().start()
    yield u
    u.stop()


# ---------------------------------------------------------------------------------------------
# rechat as a process


class Rechat:
    """`python -m rechat ARGS --port P` in a subprocess; `url` is its `/v1` base URL."""

    def __init__(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "rechat", *args, "--port", str(self.port)]
        self.cwd = cwd
        self.log = (cwd or Path(".")) / f"rechat-{self.port}.log"
        e = {**os.environ, "COLUMNS": "200", **(env or {})}
        self._log = open(self.log, "w+")
        self.proc = subprocess.Popen(self.args, cwd=cwd, env=e, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rechat exited {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"rechat not ready:\n{self.output()}")

    def health(self) -> dict:
        with urllib.request.urlopen(self.base + "/healthz", timeout=5) as r:
            return json.loads(r.read())

    def client(self, **kw):
        import openai
        return openai.OpenAI(base_url=self.url, api_key=SECRET, max_retries=0, **kw)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"rechat did not stop on signal {sig}")
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_rechat(tmp_path):
    """Start rechat processes: ``start_rechat("record", upstream.url, "--sessions", dir)``."""
    procs: list[Rechat] = []

    def start(*args: str, **kw) -> Rechat:
        kw.setdefault("cwd", tmp_path)
        r = Rechat(*args, **kw)
        procs.append(r)
        return r

    yield start
    for r in procs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(5)


def session_texts(folder: Path) -> dict[str, str]:
    """Return {file name: text} of every session file under `folder`."""
    return {p.name: p.read_text() for p in sorted(folder.rglob("*.md"))}
