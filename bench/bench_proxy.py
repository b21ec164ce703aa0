"""Side-by-side throughput and latency of rechat against a bare aiohttp server.

One script, one run: starts a bare aiohttp server that answers a fixed chat completion, rechat
replaying the same answer, and rechat forwarding to the bare server (`rechat passthrough` and
`rechat record`), all with their default options, plus replay and passthrough "lean" (`--no-ui
--no-dump`: no web UI, request log or dump) to show what those cost, and two forwarding floors
(a byte pipe, and an aiohttp server forwarding with the least possible client). Every server is its own process
bound to 127.0.0.1; the load generator is this process (raw asyncio HTTP/1.1 keep-alive client,
cheaper than aiohttp's client so that the servers are the bottleneck). Prints requests/s, p50/p99 latency and server CPU per request for each scenario,
the ratios, and the verdict against the targets (see bench/README.md, docs/performance.md).

    .venv/bin/python bench/bench_proxy.py            # full run (~7 min)
    .venv/bin/python bench/bench_proxy.py --quick    # short run (~30 s)

Exits 0 whatever the figures: it is a measurement, not a test. Exits 1 only when the bench
itself could not run (a server did not start, requests failed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
_STOP = False  # set by SIGTERM
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
RECHAT = [PY, "-m", "rechat"]

# Targets from the issue.
TARGET_REPLAY_RATIO = 0.7     # replay req/s >= 0.7 x bare req/s (concurrent load)
TARGET_FORWARD_ADD_MS = 0.3   # forwarding adds <= 0.3 ms at p50 with one connection

# -- the fixed exchange ----------------------------------------------------------------------

REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in one paragraph."},
        {"role": "user", "content": "Why do record/replay proxies make tests of LLM apps "
                                    "fast and deterministic?"},
    ],
    "temperature": 0,
    "max_tokens": 200,
}
ANSWER = ("A record/replay proxy answers each request from a file recorded once, so a test "
          "run needs no network, no API key and no tokens; the same request always gets the "
          "same bytes back, so assertions do not flake, and a replay takes a fraction of a "
          "millisecond instead of seconds.")
COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000001", "object": "chat.completion",
    "created": 1763683200, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER,
                                         "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 38, "completion_tokens": 62, "total_tokens": 100},
    "service_tier": "default", "system_fingerprint": "fp_bench",
}


def _chunks() -> list[dict]:
    base = {"id": COMPLETION["id"], "object": "chat.completion.chunk",
            "created": COMPLETION["created"], "model": COMPLETION["model"],
            "service_tier": "default", "system_fingerprint": "fp_bench"}
    words = ANSWER.split(" ")
    pieces = [" ".join(words[i:i + 4]) + (" " if i + 4 < len(words) else "")
              for i in range(0, len(words), 4)]
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "",
                                                       "refusal": None},
                                 "logprobs": None, "finish_reason": None}]}]
    out += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": None,
                                  "finish_reason": None}]} for p in pieces]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                     "finish_reason": "stop"}]})
    return out


COMPLETION_BYTES = json.dumps(COMPLETION).encode()
SSE_EVENTS = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in _chunks()] + [b"data: [DONE]\n\n"]
WHOLE_STREAM = b"".join(SSE_EVENTS)


# -- the bare server (run as `bench_proxy.py --bare-server PORT`) -----------------------------

def run_bare_server(port: int, gap_ms: float = 0.0, one_write: bool = False) -> None:
    """A minimal aiohttp server: parse the JSON body, answer the fixed completion or stream.

    A stream is `SSE_EVENTS`, one write each, and a pause of `gap_ms` ms after each when it is
    not 0: a model's tokens come tens of ms apart, so a proxy gets each event as a piece of its
    own, where without the pause it gets them in pieces of several events, cut anywhere. With
    `one_write`, the whole stream goes in one write (as a cache or a replaying rechat sends
    it): a proxy on the same machine gets it as one piece.
    """
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if body.get("stream") is True:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            for ev in (WHOLE_STREAM,) if one_write else SSE_EVENTS:
                await resp.write(ev)
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
            await resp.write_eof()
            return resp
        return web.Response(body=COMPLETION_BYTES, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, handle_signals=True)


def run_raw_server(port: int) -> None:
    """The floor: plain asyncio, no HTTP framework; answers every request with the completion."""
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % len(COMPLETION_BYTES)) + COMPLETION_BYTES

    class Raw(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.buf = transport, bytearray()

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                head = bytes(self.buf[:i]).lower()
                j = head.find(b"content-length:")
                n = int(head[j + 15:].split(b"\r\n", 1)[0]) if j >= 0 else 0
                if len(self.buf) < i + 4 + n:
                    return
                del self.buf[:i + 4 + n]
                self.transport.write(reply)

    async def main() -> None:
        await _serve_until_sigterm(await asyncio.get_running_loop().create_server(
            Raw, HOST, port))

    asyncio.run(main())


# -- the forwarding floors (run as `bench_proxy.py --pipe-server PORT UPSTREAM_PORT`, ...) -----

async def _serve_until_sigterm(server) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def run_pipe_server(port: int, upstream_port: int) -> None:
    """The floor of any proxy: a byte pipe, each client connection joined to its own upstream
    connection; no HTTP parsing at all. What one more loopback hop through a Python process
    costs."""

    class Up(asyncio.Protocol):
        def __init__(self, down: asyncio.Transport) -> None:
            self.down = down

        def data_received(self, data: bytes) -> None:
            self.down.write(data)

        def connection_lost(self, exc) -> None:
            self.down.close()

    class Down(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.up, self.early = transport, None, []
            asyncio.get_running_loop().create_task(self._connect())

        async def _connect(self) -> None:
            up, _ = await asyncio.get_running_loop().create_connection(
                lambda: Up(self.transport), HOST, upstream_port)
            self.up = up
            for data in self.early:
                up.write(data)

        def data_received(self, data: bytes) -> None:
            if self.up is None:
                self.early.append(data)
            else:
                self.up.write(data)

        def connection_lost(self, exc) -> None:
            if self.up is not None:
                self.up.close()

    async def main() -> None:
        await _serve_until_sigterm(await asyncio.get_running_loop().create_server(
            Down, HOST, port))

    asyncio.run(main())


def run_aiohttp_forward_server(port: int, upstream_port: int) -> None:
    """The floor of a proxy built on aiohttp's server: a web.Application with one catch-all
    handler that reads the body and sends it upstream with the least client there is (kept
    connections, responses framed by Content-Length only, headers not even parsed), then
    answers with the upstream's body. Anything rechat does on the way costs more than this."""
    from aiohttp import web

    class Least(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.buf, self.waiter = transport, b"", None

        def data_received(self, data: bytes) -> None:
            self.buf += data
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].lower()
            j = head.find(b"content-length:")
            n = int(head[j + 15:].split(b"\r\n", 1)[0])
            if len(self.buf) >= i + 4 + n:
                body, self.buf = self.buf[i + 4:i + 4 + n], b""
                self.waiter.set_result(body)

    idle: list[Least] = []

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        conn = idle.pop() if idle else (await asyncio.get_running_loop().create_connection(
            Least, HOST, upstream_port))[1]
        conn.waiter = asyncio.get_running_loop().create_future()
        conn.transport.write(b"%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json"
                             b"\r\nContent-Length: %d\r\n\r\n%s" % (
                                 request.method.encode(), request.path_qs.encode(),
                                 HOST.encode(), upstream_port, len(body), body))
        answer = await conn.waiter
        idle.append(conn)
        return web.Response(body=answer, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, handle_signals=True)


# -- a small HTTP/1.1 keep-alive client -------------------------------------------------------

class _Conn(asyncio.Protocol):
    """One keep-alive connection; `await conn.request(raw)` returns (status, body length)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.length = -1        # Content-Length, or -1 before headers; -2 for chunked
        self.pos = 0            # chunked: parse position in buf
        self.body_len = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            done = self._parse()
        except Exception as e:  # malformed response
            if self.fut is not None and not self.fut.done():
                self.fut.set_exception(e)
            return
        if done and self.fut is not None and not self.fut.done():
            self.fut.set_result((self.status, self.body_len))

    def _parse(self) -> bool:
        buf = self.buf
        if self.length == -1:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return False
            head = bytes(buf[:i]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split(" ", 2)[1])
            length = None
            for line in head[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "transfer-encoding" and "chunked" in v.lower():
                    length = -2
            if length is None:
                raise ValueError("response without Content-Length or chunked encoding")
            self.length = length
            del buf[:i + 4]
        if self.length >= 0:
            if len(buf) < self.length:
                return False
            self.body_len = self.length
            del buf[:self.length]
            return True
        while True:  # chunked
            j = buf.find(b"\r\n", self.pos)
            if j < 0:
                return False
            size = int(bytes(buf[self.pos:j]).split(b";")[0], 16)
            if size == 0:
                if len(buf) < j + 4:
                    return False
                del buf[:j + 4]  # no trailers
                self.pos = 0
                return True
            end = j + 2 + size + 2
            if len(buf) < end:
                return False
            self.body_len += size
            self.pos = end

    async def request(self, raw: bytes) -> tuple[int, int]:
        self._reset()
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.fut


def build_request(port: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
            "Authorization: Bearer sk-bench-not-a-key\r\nUser-Agent: rechat-bench/1\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


@dataclass
class Phase:
    """One measured phase: a scenario at one concurrency."""

    done: int = 0
    errors: int = 0
    seconds: float = 0.0
    lat_ms: list[float] = field(default_factory=list)
    cpu_ms: float = 0.0   # CPU time of the server process(es) during the phase
    client_cpu_ms: float = 0.0  # CPU time of this process (the load generator)
    other_cpu_ms: float = 0.0   # CPU time of everything else on the machine (noise)

    @property
    def rps(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.lat_ms:
            return float("nan")
        s = sorted(self.lat_ms)
        return s[min(len(s) - 1, int(q * len(s)))]

    @property
    def cpu_us_per_req(self) -> float:
        return self.cpu_ms * 1000 / self.done if self.done else float("nan")

    @property
    def server_busy(self) -> float:
        """Server CPU time over wall time (1.0 = one core busy the whole phase)."""
        return self.cpu_ms / 1000 / self.seconds if self.seconds else float("nan")

    @property
    def other_busy(self) -> float:
        return max(0.0, self.other_cpu_ms / 1000 / self.seconds) if self.seconds else 0.0

    @property
    def client_busy(self) -> float:
        return self.client_cpu_ms / 1000 / self.seconds if self.seconds else float("nan")


async def load(port: int, raw: bytes, concurrency: int, max_requests: int, max_seconds: float,
               expect_len: int | None = None, timeout_s: float = 10.0) -> Phase:
    """Send `raw` over `concurrency` keep-alive connections, at most `max_requests` requests
    and for at most `max_seconds`; every request is bounded by `timeout_s`."""
    loop = asyncio.get_running_loop()
    conns = []
    try:
        for _ in range(concurrency):
            _, c = await asyncio.wait_for(loop.create_connection(_Conn, HOST, port), timeout_s)
            conns.append(c)
        ph = Phase()
        issued = 0
        t_start = time.perf_counter()
        deadline = t_start + max_seconds
        pc = time.perf_counter

        async def worker(c: _Conn) -> None:
            nonlocal issued
            while issued < max_requests and pc() < deadline and not _STOP:
                issued += 1
                t0 = pc()
                status, n = await asyncio.wait_for(c.request(raw), timeout_s)
                ph.lat_ms.append((pc() - t0) * 1000)
                if status != 200 or (expect_len is not None and n != expect_len):
                    ph.errors += 1
                ph.done += 1

        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in conns)),
                               max_seconds + timeout_s + 5)
        ph.seconds = time.perf_counter() - t_start
        return ph
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.close()


async def fetch_one(port: int, body: dict) -> tuple[int, bytes]:
    """One request with the full body returned (for checks); uses aiohttp for correctness."""
    import aiohttp
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.post(f"http://{HOST}:{port}/v1/chat/completions", json=body,
                          headers={"Authorization": "Bearer sk-bench-not-a-key"}) as r:
            return r.status, await r.read()


# -- processes --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_ms(pid: int) -> float:
    """User + system CPU time of process `pid` in ms (Linux /proc), 0 when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def system_busy_ms() -> float:
    """CPU time all processes of the machine spent busy (not idle, not iowait), in ms."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Server:
    """A server process on 127.0.0.1; `stop()` sends SIGTERM, then SIGKILL after 10 s."""

    def __init__(self, name: str, argv: list[str], port: int, logdir: str) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "Server":
        """Start the process and wait until `GET /healthz` answers 200; on failure, kill it."""
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # cwd: the log folder (a temp folder), so that whatever a server writes to its working
        # directory (rechat's flows_*.jsonl dumps) is removed with it, never left in the repo.
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=os.path.dirname(self.log_path),
                                     env=env)
        log.close()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop(timeout_s=5)
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    s.settimeout(2)
                    s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n"
                              "Connection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer /healthz in {timeout_s} s")

    def cpu_ms(self) -> float:
        return cpu_ms(self.proc.pid) if self.proc else 0.0

    def log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- the run ----------------------------------------------------------------------------------

@dataclass
class Scenario:
    key: str
    label: str
    servers: list[str]        # the process whose CPU time is reported (not the upstream's)
    port_of: str              # the process the client talks to
    stream: bool
    fresh: bool = False       # restart with an empty sessions folder before each phase


SCENARIOS = [
    Scenario("raw", "raw asyncio (floor)", ["raw"], "raw", False),
    Scenario("bare", "bare aiohttp", ["bare"], "bare", False),
    Scenario("replay", "rechat replay", ["replay"], "replay", False),
    Scenario("replay_lean", "rechat replay (lean)", ["replay_lean"], "replay_lean", False),
    Scenario("pipe", "byte pipe -> bare (floor)", ["pipe"], "pipe", False),
    Scenario("aio_fwd", "aiohttp forward -> bare (floor)", ["aio_fwd"], "aio_fwd", False),
    Scenario("pass", "rechat passthrough -> bare", ["pass"], "pass", False),
    Scenario("pass_lean", "rechat passthrough (lean)", ["pass_lean"], "pass_lean", False),
    Scenario("record", "rechat record -> bare", ["record"], "record", False, fresh=True),
    Scenario("bare_sse", "bare aiohttp (stream)", ["bare"], "bare", True),
    Scenario("replay_sse", "rechat replay (stream)", ["replay_sse"], "replay_sse", True),
    Scenario("replay_sse_lean", "rechat replay (stream, lean)", ["replay_sse_lean"],
             "replay_sse_lean", True),
    Scenario("pass_sse", "rechat passthrough (stream)", ["pass"], "pass", True),
]


# Options that switch off what rechat does beside proxying (web UI and request log, JSON Lines
# dump): the "lean" scenarios show what those cost. Only the options this rechat has are used.
LEAN_OPTIONS = ["--no-ui", "--no-dump"]


def lean_options() -> list[str]:
    out = subprocess.run(RECHAT + ["replay", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    return [o for o in LEAN_OPTIONS if o in out]


def record_fixture(tmp: str, bare_port: int, stream: bool, logdir: str) -> str:
    """Record the fixed exchange once through `rechat record`; return the sessions folder."""
    folder = os.path.join(tmp, "sessions-stream" if stream else "sessions-json")
    port = free_port()
    rec = Server("fixture-record", RECHAT + ["record", f"http://{HOST}:{bare_port}/v1",
                                             "--sessions", folder, "--port", str(port),
                                             "--quiet", "--no-watch"], port, logdir)
    try:
        rec.start()
        status, _ = asyncio.run(fetch_one(port, dict(REQUEST, stream=stream)))
        if status != 200:
            raise RuntimeError(f"recording the fixture failed: HTTP {status}")
    finally:
        rec.stop()
    files = [f for f in os.listdir(folder) if f.endswith(".md")]
    if len(files) != 1:
        raise RuntimeError(f"expected one session file in {folder}, found {files}")
    with open(os.path.join(folder, files[0]), encoding="utf-8") as f:
        recorded_sse = '"sse":' in f.read()
    if recorded_sse != stream:
        raise RuntimeError(f"{files[0]}: expected a {'streamed' if stream else 'plain'} "
                           "recording")
    return folder


def check_answer(port: int, stream: bool) -> int:
    """Check that the server gives the fixed answer; return the body length the client sees."""
    status, body = asyncio.run(fetch_one(port, dict(REQUEST, stream=stream)))
    if status != 200:
        raise RuntimeError(f"port {port}: HTTP {status}: {body[:300]!r}")
    if stream:
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in body.decode().split("\n")
                       if line.startswith("data: {"))
    else:
        text = json.loads(body)["choices"][0]["message"]["content"]
    if text != ANSWER:
        raise RuntimeError(f"port {port} answered {text!r}")
    return len(body)


def fmt_ms(x: float) -> str:
    return f"{x:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run: 1 round, small phases")
    ap.add_argument("--rounds", type=int, help="rounds (each runs every scenario once); default 5")
    ap.add_argument("--requests", type=int, help="max requests per phase; default 3000")
    ap.add_argument("--seconds", type=float, help="max seconds per phase; default 10")
    ap.add_argument("--concurrency", type=int, default=32, help="connections of the throughput "
                    "phase (default 32)")
    ap.add_argument("--only", help="comma-separated scenario keys (default: all): "
                    + ",".join(s.key for s in SCENARIOS))
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures to FILE")
    ap.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--event-gap-ms", type=float, default=0.0, help=argparse.SUPPRESS)  # its pause
    ap.add_argument("--one-write", action="store_true", help=argparse.SUPPRESS)  # its one write
    ap.add_argument("--raw-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--pipe-server", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--aiohttp-forward-server", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pipe_server:
        run_pipe_server(*args.pipe_server)
        return 0
    if args.aiohttp_forward_server:
        run_aiohttp_forward_server(*args.aiohttp_forward_server)
        return 0
    if args.bare_server:
        run_bare_server(args.bare_server, args.event_gap_ms, args.one_write)
        return 0
    if args.raw_server:
        run_raw_server(args.raw_server)
        return 0

    rounds = args.rounds or (1 if args.quick else 5)
    max_req = args.requests or (600 if args.quick else 3000)
    max_s = args.seconds or (2.0 if args.quick else 10.0)
    warm = 100 if args.quick else 300
    scenarios = [s for s in SCENARIOS if not args.only or s.key in args.only.split(",")]
    shapes = [1, args.concurrency]

    tmp = tempfile.mkdtemp(prefix="rechat-bench-")
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    servers: dict[str, Server] = {}
    results: dict[tuple[str, int], list[Phase]] = {}
    t_run = time.monotonic()
    try:
        bare_port = free_port()
        servers["bare"] = Server("bare", [PY, os.path.abspath(__file__), "--bare-server",
                                          str(bare_port)], bare_port, logdir).start()
        upstream = f"http://{HOST}:{bare_port}/v1"
        raw_port = free_port()
        servers["raw"] = Server("raw", [PY, os.path.abspath(__file__), "--raw-server",
                                        str(raw_port)], raw_port, logdir).start()
        for name, flag in (("pipe", "--pipe-server"), ("aio_fwd", "--aiohttp-forward-server")):
            p = free_port()
            servers[name] = Server(name, [PY, os.path.abspath(__file__), flag, str(p),
                                          str(bare_port)], p, logdir).start()
        json_dir = record_fixture(tmp, bare_port, False, logdir)
        sse_dir = record_fixture(tmp, bare_port, True, logdir)
        for name, folder in (("replay", json_dir), ("replay_sse", sse_dir)):
            p = free_port()
            servers[name] = Server(name, RECHAT + ["replay", folder, "--port", str(p), "--quiet"],
                                   p, logdir).start()
        lean = lean_options()
        p = free_port()
        servers["replay_lean"] = Server("replay_lean", RECHAT + ["replay", json_dir, "--port",
                                                                str(p), "--quiet"] + lean,
                                        p, logdir).start()
        p = free_port()
        servers["replay_sse_lean"] = Server("replay_sse_lean", RECHAT + [
            "replay", sse_dir, "--port", str(p), "--quiet"] + lean, p, logdir).start()
        for name, extra in (("pass", []), ("pass_lean", lean)):
            p = free_port()
            servers[name] = Server(name, RECHAT + ["passthrough", upstream, "--sessions",
                                                   os.path.join(tmp, f"sessions-{name}"),
                                                   "--port", str(p), "--quiet"] + extra,
                                   p, logdir).start()
        rec_seq = 0

        def fresh_record() -> Server:
            # `rechat record` writes a file per exchange: each record phase gets a new process
            # and an empty folder, so that every round measures the same thing.
            nonlocal rec_seq
            rec_seq += 1
            folder = os.path.join(tmp, f"sessions-record-{rec_seq}")
            p = free_port()
            servers["record"] = Server("record", RECHAT + ["record", upstream, "--sessions",
                                                           folder, "--port", str(p), "--quiet"],
                                       p, logdir).start()
            return servers["record"]

        def end_record() -> None:
            t0 = time.monotonic()
            servers.pop("record").stop(timeout_s=120)  # SIGTERM flushes every recording
            flush_s.append(time.monotonic() - t0)
            shutil.rmtree(os.path.join(tmp, f"sessions-record-{rec_seq}"), ignore_errors=True)

        flush_s: list[float] = []
        print(f"rechat bench: {rounds} round(s) x {len(scenarios)} scenarios x concurrency "
              f"{shapes}; each phase <= {max_req} requests and <= {max_s:g} s; "
              f"lean = {' '.join(lean) or '(no such options)'}", flush=True)
        expect: dict[str, int] = {}
        for r in range(rounds):
            for sc in scenarios:
                for conc in shapes:
                    if _STOP:
                        raise KeyboardInterrupt
                    srv = fresh_record() if sc.fresh else servers[sc.port_of]
                    if sc.key not in expect:
                        expect[sc.key] = check_answer(srv.port, sc.stream)
                    raw = build_request(srv.port, dict(REQUEST, stream=True) if sc.stream
                                        else REQUEST)
                    # Warm-up: same shape, not measured.
                    asyncio.run(load(srv.port, raw, conc, warm, max_s, expect[sc.key]))
                    procs = [servers[n] for n in sc.servers]
                    c0, k0 = sum(p.cpu_ms() for p in procs), time.process_time()
                    ours0, sys0 = sum(p.cpu_ms() for p in servers.values()), system_busy_ms()
                    ph = asyncio.run(load(srv.port, raw, conc, max_req, max_s, expect[sc.key]))
                    if _STOP:
                        raise KeyboardInterrupt
                    ph.cpu_ms = sum(p.cpu_ms() for p in procs) - c0
                    ph.client_cpu_ms = (time.process_time() - k0) * 1000
                    ph.other_cpu_ms = (system_busy_ms() - sys0 - ph.client_cpu_ms
                                       - (sum(p.cpu_ms() for p in servers.values()) - ours0))
                    if ph.errors:
                        raise RuntimeError(f"{sc.key} c={conc}: {ph.errors} of {ph.done} "
                                           "requests failed")
                    results.setdefault((sc.key, conc), []).append(ph)
                    if sc.fresh:
                        end_record()
                    print(f"  round {r + 1}/{rounds}  {sc.label:<32} c={conc:<3} "
                          f"{ph.rps:8.0f} req/s  p50 {fmt_ms(ph.pct(0.5))} ms  "
                          f"p99 {fmt_ms(ph.pct(0.99))} ms  ({ph.done} req, "
                          f"{ph.seconds:.1f} s; server {ph.cpu_us_per_req:.0f} us CPU/req, "
                          f"busy {ph.server_busy:.0%}; client {ph.client_busy:.0%}; "
                          f"other processes {ph.other_busy:.0%})",
                          flush=True)
    except KeyboardInterrupt:
        print("bench interrupted; stopping the servers", file=sys.stderr)
        return 130
    except Exception as e:
        return report_failure(e, servers.values())
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, scenarios, shapes, rounds, time.monotonic() - t_run, args)
    return 0


def report_failure(error: Exception, servers) -> int:
    """Print why the bench failed and the log tail of every server (an iterable of `Server`)
    that exited; return 1, the bench's exit status for a failed run."""
    print(f"bench failed: {error}", file=sys.stderr)
    for s in servers:
        if s.proc is not None and s.proc.poll() is not None:
            print(f"--- {s.name} log:\n{s.log_tail()}", file=sys.stderr)
    return 1


def rechat_version() -> str:
    """rechat's version and the work tree's commit (`+dirty` when it has changes)."""
    try:
        from rechat import __version__ as v
    except ImportError:
        v = "?"
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = ""
    return f"{v} ({git})" if git else v


def report(results, scenarios, shapes, rounds, elapsed, args) -> None:
    med = statistics.median

    def m(key: str, conc: int, f) -> float:
        phases = results.get((key, conc))
        return med([f(p) for p in phases]) if phases else float("nan")

    def ratio(a: str, b: str, conc: int, f) -> float:
        # median of per-round ratios: each round's phases ran back to back
        pa, pb = results.get((a, conc)), results.get((b, conc))
        if not pa or not pb:
            return float("nan")
        return med([f(x) / f(y) for x, y in zip(pa, pb)])

    def diff(a: str, b: str, conc: int, f) -> float:
        pa, pb = results.get((a, conc)), results.get((b, conc))
        if not pa or not pb:
            return float("nan")
        return med([f(x) - f(y) for x, y in zip(pa, pb)])

    c1, cn = shapes
    p50 = lambda p: p.pct(0.5)
    p99 = lambda p: p.pct(0.99)
    rps = lambda p: p.rps
    cpu = lambda p: p.cpu_us_per_req
    busy = lambda p: p.server_busy

    print()
    print(f"rechat bench  {datetime.date.today()}  rechat {rechat_version()}  python "
          f"{platform.python_version()}  {os.cpu_count()} cores  {platform.machine()}  "
          f"rounds {rounds}  ({elapsed:.0f} s)")
    print(f"medians over rounds; latency in ms; 'CPU us/req' and 'busy' (CPU time / wall time) "
          f"are those of the process the client talks to, at c={cn}")
    print()
    hdr = (f"| {'scenario':<32} | {'c=1 req/s':>9} | {'c=1 p50':>7} | {'c=1 p99':>7} | "
           f"{f'c={cn} req/s':>10} | {f'c={cn} p50':>8} | {f'c={cn} p99':>8} | {'CPU us/req':>10} | "
           f"{'busy':>4} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for sc in scenarios:
        print(f"| {sc.label:<32} | {m(sc.key, c1, rps):9.0f} | {m(sc.key, c1, p50):7.3f} | "
              f"{m(sc.key, c1, p99):7.3f} | {m(sc.key, cn, rps):10.0f} | "
              f"{m(sc.key, cn, p50):8.3f} | {m(sc.key, cn, p99):8.3f} | "
              f"{m(sc.key, cn, cpu):10.0f} | {m(sc.key, cn, busy):4.0%} |")
    print()

    verdicts = []

    def line(text: str, value: float, target: float | None = None, higher: bool = True,
             unit: str = "") -> None:
        if target is None or value != value:
            print(f"  {text:<52} {value:8.3f}{unit}")
            return
        ok = value >= target if higher else value <= target
        verdicts.append(ok)
        cmp = ">=" if higher else "<="
        print(f"  {text:<52} {value:8.3f}{unit}   target {cmp} {target:g}{unit}   "
              f"{'PASS' if ok else 'FAIL'}")

    keys = {s.key for s in scenarios}
    print("ratios and differences (median of per-round values):")
    if {"bare", "replay"} <= keys:
        line(f"replay / bare req/s, c={cn}", ratio("replay", "bare", cn, rps), TARGET_REPLAY_RATIO)
        line("replay / bare req/s, c=1", ratio("replay", "bare", c1, rps))
        line(f"bare / replay server CPU per request, c={cn}", ratio("bare", "replay", cn, cpu))
        if "replay_lean" in keys:
            line(f"replay (lean) / bare req/s, c={cn}", ratio("replay_lean", "bare", cn, rps))
        line("replay - bare p50, c=1", diff("replay", "bare", c1, p50), unit=" ms")
    if {"bare_sse", "replay_sse"} <= keys:
        line(f"replay / bare req/s, stream, c={cn}", ratio("replay_sse", "bare_sse", cn, rps),
             TARGET_REPLAY_RATIO)
        line(f"bare / replay server CPU per request, stream, c={cn}",
             ratio("bare_sse", "replay_sse", cn, cpu))
        if "replay_sse_lean" in keys:
            line(f"replay (stream, lean) / bare req/s, c={cn}",
                 ratio("replay_sse_lean", "bare_sse", cn, rps))
        line("replay - bare p50, stream, c=1", diff("replay_sse", "bare_sse", c1, p50),
             unit=" ms")
    if {"raw", "bare"} <= keys:
        line("bare - raw asyncio p50, c=1 (aiohttp's own cost)", diff("bare", "raw", c1, p50),
             unit=" ms")
    if {"bare", "pipe"} <= keys:
        line("a byte pipe adds at p50, c=1 (the floor of any proxy)",
             diff("pipe", "bare", c1, p50), unit=" ms")
    if {"bare", "aio_fwd"} <= keys:
        line("aiohttp forward adds at p50, c=1 (its floor)", diff("aio_fwd", "bare", c1, p50),
             unit=" ms")
    if {"bare", "pass"} <= keys:
        line("forwarding adds at p50, c=1 (passthrough - bare)", diff("pass", "bare", c1, p50),
             TARGET_FORWARD_ADD_MS, higher=False, unit=" ms")
        line(f"passthrough / bare req/s, c={cn}", ratio("pass", "bare", cn, rps))
        if "pass_lean" in keys:
            line("forwarding adds at p50, c=1 (passthrough, lean)",
                 diff("pass_lean", "bare", c1, p50), unit=" ms")
    if {"bare", "record"} <= keys:
        line("forwarding adds at p50, c=1 (record - bare)", diff("record", "bare", c1, p50),
             TARGET_FORWARD_ADD_MS, higher=False, unit=" ms")
        line(f"record / bare req/s, c={cn}", ratio("record", "bare", cn, rps))
    if {"bare_sse", "pass_sse"} <= keys:
        line("forwarding adds at p50, stream, c=1", diff("pass_sse", "bare_sse", c1, p50),
             unit=" ms")
    print()
    other = [p.other_busy for v in results.values() for p in v]
    if other:
        print(f"other processes on the machine used {statistics.median(other):.2f} cores "
              f"(median over phases; max {max(other):.2f})"
              + ("  WARNING: the machine was not idle, figures are noisy" if
                 statistics.median(other) > 0.15 else ""))
    print(f"verdict: {sum(verdicts)} of {len(verdicts)} targets met"
          + ("" if all(verdicts) else " (see docs/performance.md)"))

    if args.json:
        raw = {f"{k}@c{c}": [{"rps": p.rps, "p50_ms": p.pct(0.5), "p99_ms": p.pct(0.99),
                              "requests": p.done, "seconds": p.seconds,
                              "cpu_us_per_req": p.cpu_us_per_req} for p in v]
               for (k, c), v in results.items()}
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


def _sigterm(signum, frame):
    # The running phase stops after its in-flight requests, then main's finally stops every
    # server this run started.
    global _STOP
    _STOP = True


if __name__ == "__main__":
    if not any(a.endswith("-server") for a in sys.argv[1:2]):
        signal.signal(signal.SIGTERM, _sigterm)
    sys.exit(main())
