"""An upstream: where forwarded requests go. The only module that sends HTTP requests.

Owns the URL rule and the sending of one request. UPSTREAM works the way `OPENAI_BASE_URL`
does: the client's `/v1/X` goes to `UPSTREAM/X`, whether UPSTREAM ends in `/v1` (OpenAI, vLLM,
llama.cpp) or not (a mock serving at its root). Paths outside `/v1` (Ollama's `/api/...`) go
to the same server with UPSTREAM's trailing `/v1` removed. The client session is shared by all
upstreams and owned by the gateway, and so is the `http1.Client` that plain-http upstreams use
for the requests it takes (rechat/http1.py says why). Must not import the proxy.
"""

from __future__ import annotations

import functools

import aiohttp
from yarl import URL

from rechat import http1
from rechat.errors import ConfigError

# RFC 9110 section 7.6.1: connection-specific headers a proxy must not forward.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class Upstream:
    """One upstream base URL; `session` (an aiohttp.ClientSession) and `fast` (an
    `http1.Client`, or None to send everything through `session`) are set by its owner.

    `timeout_s` bounds connecting and each read (seconds; a stream may last longer as long as
    bytes keep coming). Raises ConfigError for a URL that is not http(s).
    """

    def __init__(self, base_url: str, timeout_s: float = 600.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        u = URL(base_url)
        if u.scheme not in ("http", "https") or not u.host:
            raise ConfigError(f"upstream must be an http(s) URL, got {base_url!r}")
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self.session = session
        self.fast: http1.Client | None = None
        self._plain = u.scheme == "http" and not u.user and not u.password
        self._host, self._port = u.host, u.port or 80
        self._path = u.raw_path.rstrip("/")  # the base's path, as written (percent-encoded)

    def url(self, path: str, query: str = "") -> URL:
        """Return the upstream URL for the client's `path` (``/v1/X`` -> ``UPSTREAM/X``)."""
        return URL(_join(self.base, path) + (f"?{query}" if query else ""), encoded=True)

    def request(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                body: bytes):
        """Start a request upstream; use as ``async with upstream.request(...) as resp``.

        Headers go as the client sent them, less hop-by-hop ones, Host and Content-Length.
        Raises aiohttp.ClientError or asyncio.TimeoutError (the proxy maps them to 502/504).
        """
        assert self.session is not None, "the gateway has not started"
        out, skip, fast_ok = _outgoing(tuple(headers))
        if self.fast is not None and self._plain and fast_ok and method in http1.METHODS:
            target = _join(self._path, path) or "/"
            return self.fast.request(method, self._host, self._port,
                                     target + (f"?{query}" if query else ""), out,
                                     body, self.timeout_s)
        return self.session.request(method, self.url(path, query), headers=out,
                                    data=body if body else None, allow_redirects=False,
                                    skip_auto_headers=skip, timeout=self.timeout)


@functools.lru_cache(maxsize=256)
def _outgoing(headers: tuple[tuple[str, str], ...]
              ) -> tuple[list[tuple[str, str]], list[str], bool]:
    """(headers to send, aiohttp's auto headers to skip, whether http1 can decode every coding
    the client accepts) for a client's headers. A client sends the same headers again and
    again, so each distinct tuple is worked out once (the lists returned are shared: read only).
    """
    out = [(k, v) for k, v in headers
           if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "content-length")]
    sent = {k.lower() for k, _ in out}
    return out, [h for h in _AUTO if h.lower() not in sent], http1.decodes(out)


def _join(base: str, path: str) -> str:
    """The URL rule (module docstring): the client's ``/v1/X`` goes to ``BASE/X``; any other
    path to the same server with BASE's trailing ``/v1`` removed. `base` is a whole base URL
    or only its path."""
    if path.startswith("/v1/") or path == "/v1":
        return base + path[3:]
    return base.removesuffix("/v1") + path
