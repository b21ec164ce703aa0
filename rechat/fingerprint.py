"""The identity of a request: canonical JSON, volatile fields, and the redaction of secrets.

Owns the rules that decide when two requests are "the same" (docs/format.md, "Matching") and
which headers never reach the disk. Imports nothing from rechat; no I/O.

Two requests are the same when method, path, query and the canonical JSON of their bodies
agree after dropping the volatile fields (`stream`, `stream_options`, `user`): they change
how an answer is delivered or who asked, not what is asked. Headers never count (the SDK's
per-call `x-stainless-*` headers change on every call). In message lists, a field whose value
is null is the same as an absent field (the OpenAI API treats them alike, and clients echo
assistant messages with or without `refusal: null`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

VOLATILE_FIELDS = frozenset({"stream", "stream_options", "user"})

# Headers that carry credentials; forwarded upstream, never written anywhere.
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "api-key", "x-api-key", "openai-api-key",
    "cookie", "set-cookie", "x-goog-api-key", "anthropic-api-key", "ocp-apim-subscription-key",
})


def is_secret_header(name: str) -> bool:
    """True for a header that may carry a credential (by name, case-insensitive)."""
    n = name.lower()
    return n in SECRET_HEADERS or n.endswith("-api-key") or n.endswith("-token") or "secret" in n


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return `headers` without the ones `is_secret_header` flags."""
    return [(k, v) for k, v in headers if not is_secret_header(k)]


# Query parameters that carry credentials (Azure `api-key`, Google `key`, `access_token`...).
_SECRET_QUERY = frozenset({"key", "api_key", "api-key", "apikey", "access_token", "token", "auth",
                           "code", "sig", "signature", "secret", "password"})


def clean_query(query: str) -> str:
    """Return a raw query string without its credential parameters (see `_SECRET_QUERY`).

    Used both for the key and for what is written, so a request still matches its recording.
    """
    if not query:
        return query
    kept = [p for p in query.split("&")
            if p and p.split("=", 1)[0].lower() not in _SECRET_QUERY
            and not is_secret_header(p.split("=", 1)[0])]
    return "&".join(kept)


def _norm(value: Any) -> Any:
    # Integral floats become ints so that `temperature: 1` and `1.0` are one request.
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """Return the canonical JSON text of `value`: sorted keys, no spaces, integral floats as ints."""
    return json.dumps(_norm(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(text: str) -> str:
    """Return a short, stable hex digest (128-bit BLAKE2b) of `text`."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def normalize_message(message: Any) -> Any:
    """Return `message` without null-valued fields and empty `annotations`/`tool_calls` lists."""
    if not isinstance(message, dict):
        return message
    return {k: v for k, v in message.items()
            if v is not None and not (k in ("annotations", "tool_calls") and v == [])}


def messages_key(messages: list) -> str:
    """Return the digest of a message list, null fields dropped (see module docstring)."""
    return digest(canonical([normalize_message(m) for m in messages]))


def request_params(body: dict) -> dict:
    """Return a chat request's parameters: the body without `messages`, volatile fields and nulls.

    A null parameter is the same as an absent one (the API applies its default either way).
    """
    return {k: v for k, v in body.items()
            if k != "messages" and k not in VOLATILE_FIELDS and v is not None}


def body_key(body: Any) -> str:
    """Return the digest of a JSON body without its volatile fields (top level only)."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE_FIELDS}
    return digest(canonical(body))


def multipart_parts(body: bytes) -> list[tuple[bytes, bytes]] | None:
    """Split a multipart/form-data body into (part headers, part content), or None if it is not one.

    The boundary is read from the body's first line (RFC 7578 / RFC 2046 section 5.1.1), so no
    Content-Type header is needed.
    """
    if not body.startswith(b"--"):
        return None
    eol = body.find(b"\r\n")
    if eol < 3 or eol > 72:
        return None
    delim = b"\r\n" + body[:eol]
    if not body.rstrip(b"\r\n").endswith(body[:eol] + b"--"):
        return None
    parts = []
    for chunk in (b"\r\n" + body).split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            return None
        parts.append((head, content))
    return parts


def _multipart_key(parts: list[tuple[bytes, bytes]]) -> str:
    # Part headers (name, filename, type) and a hash of each content; never the random boundary.
    return digest(canonical([[h.decode("latin-1"), hashlib.sha256(c).hexdigest()] for h, c in parts]))


def fingerprint(method: str, path: str, query: str, body: bytes, body_json: Any = None) -> str:
    """Return the fingerprint of a generic request: method, path, query and body.

    A JSON body counts through `body_key`; a multipart body through its parts (headers and
    content hashes, not the boundary); any other body by its raw bytes.
    """
    parts = multipart_parts(body) if body_json is None else None
    if body_json is not None:
        b = body_key(body_json)
    elif parts is not None:
        b = _multipart_key(parts)
    else:
        b = hashlib.blake2b(body, digest_size=16).hexdigest()
    return digest(f"{method.upper()} {path}?{clean_query(query)}\n{b}")
