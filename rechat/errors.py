"""Exceptions raised by rechat's core, and the OpenAI-shaped error body.

Imports nothing from rechat. The tree:

    RechatError
    ├── SessionFormatError     a session file that cannot be read (path, line, message)
    ├── ConfigError            a bad option value (unknown record mode, bad upstream URL)
    ├── DumpFormatError        a dump line that cannot be read (rechat/dump.py)
    ├── ExportError            an input `rechat export` cannot read (rechat/export.py)
    └── UpstreamError          the upstream could not be reached or timed out
        └── UpstreamTimeout
"""

from __future__ import annotations

import json


class RechatError(Exception):
    """Base of every error rechat raises on purpose."""


class SessionFormatError(RechatError):
    """A session file breaks the format of docs/format.md.

    `path` is the file, `line` the 1-based line number where the problem was found (0 when it
    concerns the whole file), `message` says what is wrong in words a person can act on.
    """

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


class ConfigError(RechatError):
    """An option has a value rechat cannot use; the message lists the valid ones."""


class UpstreamError(RechatError):
    """The upstream could not be reached (refused, reset, DNS); maps to HTTP 502."""

    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout; maps to HTTP 504."""

    status = 504
    code = "upstream_timeout"


def error_body(message: str, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> bytes:
    """Return an OpenAI-shaped error body as JSON bytes.

    Shape (OpenAI API reference, "Error codes"): ``{"error": {"message", "type", "param", "code"}}``.
    """
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}},
                      ensure_ascii=False).encode()
