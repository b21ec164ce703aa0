"""The upstream: where forwarded requests go. The only outbound HTTP client.

Owns the URL rule and the one shared aiohttp client session. UPSTREAM works the way
`OPENAI_BASE_URL` does: the client's `/v1/X` goes to `UPSTREAM/X`, whether UPSTREAM ends in
`/v1` (OpenAI, vLLM, llama.cpp) or not (a mock serving at its root). Must not import the proxy.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from rechat.errors import ConfigError

# RFC 9110 section 7.6.1: connection-specific headers a proxy must not forward.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class Upstream:
    """One upstream base URL and the client session that talks to it.

    `timeout_s` bounds connecting and each read (seconds; a stream may last longer as long as
    bytes keep coming). Raises ConfigError for a URL that is not http(s).
    """

    def __init__(self, base_url: str, timeout_s: float = 600.0) -> None:
        u = URL(base_url)
        if u.scheme not in ("http", "https") or not u.host:
            raise ConfigError(f"upstream must be an http(s) URL, got {base_url!r}")
        self.base = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the shared client session (one connection pool for every request)."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=self.timeout, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        """Close the client session and its connections."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    def url(self, path: str, query: str = "") -> URL:
        """Return the upstream URL for the client's `path` (``/v1/X`` -> ``UPSTREAM/X``)."""
        tail = path[3:] if path.startswith("/v1/") or path == "/v1" else path
        return URL(self.base + (tail if tail.startswith("/") or not tail else "/" + tail)
                   + (f"?{query}" if query else ""), encoded=True)

    def request(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                body: bytes):
        """Start a request upstream; use as ``async with upstream.request(...) as resp``.

        Headers go as the client sent them, less hop-by-hop ones, Host and Content-Length.
        Raises aiohttp.ClientError or asyncio.TimeoutError (the proxy maps them to 502/504).
        """
        assert self.session is not None, "Upstream.start() was not awaited"
        out = [(k, v) for k, v in headers
               if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "content-length")]
        sent = {k.lower() for k, _ in out}
        skip = [h for h in _AUTO if h.lower() not in sent]
        return self.session.request(method, self.url(path, query), headers=out,
                                    data=body if body else None, allow_redirects=False,
                                    skip_auto_headers=skip)
