"""Pure data: a request, its response, and the exchange they form; an answer the store can replay.

Owns the vocabulary shared by every layer. Imports nothing from rechat but `errors`; no I/O.
An *exchange* is one request and its response (with its SSE events when streamed); an
*answer* is what a session holds for replay: the recorded (or hand-written) response to one
request, located by session file and position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CHAT_PATH = "/v1/chat/completions"
OLLAMA_CHAT_PATH = "/api/chat"  # Ollama's own chat endpoint (rechat/ollama.py)
CHAT_PATHS = (CHAT_PATH, OLLAMA_CHAT_PATH)
# Ollama's endpoints that stream unless the body says `"stream": false`.
_STREAM_BY_DEFAULT = (OLLAMA_CHAT_PATH, "/api/generate")


def header(headers: list[tuple[str, str]], name: str, default: str | None = None) -> str | None:
    """Return the first of `headers` called `name` (case-insensitive), or `default`."""
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return default


@dataclass(slots=True)
class Request:
    """One HTTP request as the client sent it.

    `path` is the client's path (``/v1/chat/completions``), `query` the raw query string without
    ``?``, `headers` the client's headers in order (secrets included: redact before writing),
    `body` the raw body bytes.
    """

    method: str
    path: str
    query: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    _json: Any = field(default=None, repr=False)
    _json_error: str | None = field(default=None, repr=False)
    _parsed: bool = field(default=False, repr=False)

    @property
    def json(self) -> Any:
        """The body decoded as JSON, or None when it is empty or not JSON (see `json_error`)."""
        if not self._parsed:
            self._parsed = True
            if self.body:
                try:
                    self._json = json.loads(self.body)
                except (ValueError, UnicodeDecodeError) as e:
                    self._json_error = str(e)
        return self._json

    @property
    def json_error(self) -> str | None:
        """Why the body is not JSON, or None when it is (or is empty)."""
        self.json
        return self._json_error

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first header called `name` (case-insensitive), or `default`."""
        return header(self.headers, name, default)

    @property
    def is_chat(self) -> bool:
        """True for a chat request (OpenAI's chat completions or Ollama's /api/chat) whose body is
        a JSON object with a messages list."""
        return self.method == "POST" and self.path in CHAT_PATHS and self.shape.chat

    @property
    def wants_stream(self) -> bool:
        """True when the JSON body asks for ``stream: true``; for Ollama's /api/chat and
        /api/generate, unless it says ``stream: false`` (their default is to stream)."""
        return self.shape.stream

    @property
    def shape(self) -> "Shape":
        """What the replay path asks of the body (see `Shape`), without parsing it again for a
        body seen before: shapes of bodies up to 64 KiB are kept per (path, body), so replaying
        the same request does not decode its JSON at all."""
        key = (self.path, self.body)
        got = _SHAPES.get(key) if len(self.body) <= _SHAPE_MAX else None
        if got is None:
            j = self.json
            got = Shape.of(self.path, j)
            if len(self.body) <= _SHAPE_MAX:
                if len(_SHAPES) >= 4096:
                    _SHAPES.clear()
                _SHAPES[key] = got
        return got


@dataclass(frozen=True, slots=True)
class Shape:
    """The facts of a request body the replay path needs, immutable and shareable.

    `chat`: a JSON object with a ``messages`` list; `stream`: the answer is to be streamed
    (``stream: true``, or for Ollama's /api/chat and /api/generate anything but
    ``stream: false``); `include_usage`: ``stream_options.include_usage`` is true; `model`:
    the ``model`` string or None; `choices`: how many choices the answer is to have (``n``,
    OpenAI's chat and legacy completions; 1 when absent or not an integer above 1).
    """

    chat: bool
    stream: bool
    include_usage: bool
    model: str | None
    choices: int = 1

    @staticmethod
    def of(path: str, j: Any) -> "Shape":
        """The shape of the decoded body `j` sent to `path`."""
        if not isinstance(j, dict):
            return Shape(False, False, False, None)
        stream = (j.get("stream") is not False if path in _STREAM_BY_DEFAULT
                  else j.get("stream") is True)
        opts = j.get("stream_options")
        usage = isinstance(opts, dict) and opts.get("include_usage") is True
        model = j.get("model")
        n = j.get("n")
        return Shape(isinstance(j.get("messages"), list), stream, usage,
                     model if isinstance(model, str) else None,
                     n if type(n) is int and n > 1 else 1)


_SHAPE_MAX = 1 << 16
_SHAPES: dict[tuple[str, bytes], Shape] = {}


@dataclass(slots=True)
class Response:
    """One HTTP response as the upstream sent it (body already decoded from gzip/br).

    `events` holds the SSE events' data strings in order when the response was an SSE stream
    (``text/event-stream``), with `event_ms` their arrival times in ms since the request was
    sent. `ttfb_ms` is the time to the response headers, `total_ms` to the end of the body.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    events: list[str] | None = None
    event_ms: list[float] | None = None
    ttfb_ms: float = 0.0
    total_ms: float = 0.0

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first header called `name` (case-insensitive), or `default`."""
        return header(self.headers, name, default)

    @property
    def json(self) -> Any:
        """The body decoded as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


@dataclass(slots=True)
class Exchange:
    """A request and the response it got from `upstream`, recorded at `recorded_at` (epoch s).

    `request` is as the client sent it (the key of its recording); `served_model` names the
    model actually sent upstream when rechat's model map rewrote it.
    """

    request: Request
    response: Response
    upstream: str = ""
    recorded_at: float = 0.0
    served_model: str | None = None  # the model sent upstream, when the model map changed it


@dataclass(slots=True)
class Answer:
    """A response a session holds for replay.

    For a chat answer, `message` is the assistant message as the session file shows it (edits
    included) and `meta` the hidden response metadata from the file (id, usage, SSE events...;
    empty for a hand-written answer). For a generic answer, `status`, `headers` and `body` are
    the recorded response. `session` is the file's path, `index` the answer's position in it
    (0-based), `line` the 1-based line of its heading, `recorded_at` epoch s (0 if unknown).
    """

    session: str
    index: int
    line: int
    kind: str  # "chat" | "generic"
    message: dict | None = None
    meta: dict = field(default_factory=dict)
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    recorded_at: float = 0.0
