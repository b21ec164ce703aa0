"""Session files: markdown <-> sessions. The format is specified in docs/format.md.

Owns the on-disk format and is the only module that imports mistune, python-frontmatter or
PyYAML. Pure: text in, text out (`read`/`write_atomic` are the two I/O helpers). Must not import
the store, the proxy or anything above them.

A chat session is YAML front matter (the request parameters other than `messages`) followed by
one `### role` section per message, its content between a `<blockquote>` line and a
`</blockquote>` line. Every assistant section answers the request made of the front matter and
all messages above it. What is not part of the request (response id, usage, SSE events, timings,
the upstream) sits in `<!-- rechat:response {...} -->` comments that renderers hide.

The grammar is mistune's CommonMark block grammar plus two rules of ours, tried first: a
`<blockquote>` block that runs to the first line that is exactly `</blockquote>` (CommonMark
would end the HTML block at the first blank line and parse the answer as markdown), and a
one-line `<!-- rechat:KIND {json} -->` comment. Inside a block, a content line that looks like
the closing line gets one more backslash on writing and loses one on reading, so any text
round-trips byte for byte. One blank line of padding after `<blockquote>` and before
`</blockquote>` is written (GitHub and VSCode then render the markdown inside) and stripped on
reading; hand-written blocks without padding read the same.

Three more forms: a generic session keeps other endpoints' bodies exactly in fenced blocks
(multipart bodies part by part, parts of BLOB_MIN bytes or more as `blobs/SHA256` files beside
the sessions); the readable forms of the Responses, legacy completions and embeddings
endpoints are turns of `## request` / `## response` and `###` sections, which this module
reads into `forms.Turn`s and forms.py turns into requests and answers. All of them parse into
`Session(kind="generic")` with `exchanges`, so readers of generic sessions read them all.
Fenced blocks are found with str.find, not mistune's multiline regex, so that megabytes of
base64 read in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import frontmatter
import yaml
from mistune.block_parser import BlockParser
from mistune.core import BlockState
from mistune.helpers import unescape_char

from rechat import forms
from rechat.errors import SessionFormatError
from rechat.exchange import CHAT_PATH, CHAT_PATHS
from rechat.fingerprint import multipart_parts

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# Message fields shown on the heading line rather than in a block of their own.
HEADING_FIELDS = ("name", "tool_call_id")

_MARKER_LIKE = re.compile(r"^( {0,3})(\\*</?blockquote>[ \t\r]*)$")
_ESCAPED_MARKER = re.compile(r"^( {0,3})\\(\\*</?blockquote>[ \t\r]*)$")
_OPEN_LINE = re.compile(r"^ {0,3}<blockquote>[ \t]*\r?$", re.M)
_QUOTE_RULE = (r"^ {0,3}<blockquote>[ \t]*\r?\n(?P<rq_body>[\s\S]*?)^ {0,3}</blockquote>[ \t]*\r?$")
_COMMENT_RULE = r"^<!-- rechat:(?P<rc_kind>[a-z_]+) (?P<rc_json>[^\n]*?) -->[ \t]*\r?$"
_ATTR = re.compile(r'\s+(?:(?P<k>[A-Za-z_][\w.-]*)=(?P<v>"(?:[^"\\]|\\.)*"|\S+)|(?P<w>[^\s=]+))')
_BARE = re.compile(r"[A-Za-z0-9_./:@+-]+\Z")
_ATTR_KEY = re.compile(r"[A-Za-z_][\w.-]*\Z")  # a key `_ATTR` reads back
_LABEL = re.compile(r"[a-z_][a-z0-9_]*\Z")  # a `#### label` that reads back as itself
# Labels with a meaning of their own; a message field of that name is kept in rechat:fields.
_RESERVED_LABELS = ("content", "refusal", "part", "tool_call")
# A multipart part at least this large is written once to `blobs/<sha256>` beside the sessions
# instead of inline (docs/format.md, "Large uploads").
BLOB_MIN = 256 * 1024
BLOBS = "blobs"


# ---------------------------------------------------------------------------------------------
# Data


class GenericExchange:
    """One recorded exchange of a generic session (docs/format.md, "Other endpoints"), or of a
    session in a readable form ("Responses", "Completions", "Embeddings").

    `request_body`/`body` are exact bytes; `meta` is the hidden response comment (headers as
    ``[[name, value], ...]``, timings in ms, upstream, `at`); `line` is 1-based. An exchange of
    a readable form also has `form` ("responses", "completion" or "embedding"), `request` (its
    JSON request without the volatile fields) and `answer` (see `forms.read_turn`): its bodies
    are made from them on first use, edits included (`seed` makes the ids of a hand-written
    answer). A multipart request whose large parts live in blob files has `parts`, its parts'
    (headers, sha256 hex) pairs, and reads its body from the blobs when asked for it (raising
    OSError if one is missing).
    """

    __slots__ = ("status", "meta", "line", "form", "request", "answer", "seed", "parts",
                 "_request_body", "_body", "_load")

    def __init__(self, request_body: bytes | None = b"", status: int = 200, body: bytes | None = b"",
                 meta: dict | None = None, line: int = 0, *, form: str | None = None,
                 request: dict | None = None, answer: Any = None, seed: str = "",
                 parts: list[tuple[bytes, str]] | None = None,
                 load: Callable[[], bytes] | None = None) -> None:
        self.status, self.meta, self.line = status, meta if meta is not None else {}, line
        self.form, self.request, self.answer, self.seed = form, request, answer, seed
        self.parts, self._load = parts, load
        self._request_body, self._body = request_body, body

    @property
    def request_body(self) -> bytes:
        if self._request_body is None:
            if self._load is not None:
                return self._load()  # not kept: large uploads stay on disk
            volatile = self.meta.get("request")
            body = {**(self.request or {}), **(volatile if isinstance(volatile, dict) else {})}
            self._request_body = json.dumps(body, ensure_ascii=False).encode()
        return self._request_body

    @request_body.setter
    def request_body(self, value: bytes) -> None:
        self._request_body = value

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = forms.recorded_body(self.form or "", self.answer, self.meta,
                                             self.request or {}, self.seed)
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value

    def __repr__(self) -> str:
        return (f"GenericExchange(status={self.status!r}, line={self.line!r}, form={self.form!r}, "
                f"meta={self.meta!r})")


@dataclass(slots=True)
class Session:
    """One session file, parsed.

    `kind` is "chat" (messages and answers) or "generic" (`exchanges`); `form` names the
    readable form of a generic session ("responses", "completion", "embedding"; None for the
    generic form itself, whose bodies are shown as they are). `method`/`path`/`query` name the
    endpoint (``POST /v1/chat/completions`` unless the front matter's `rechat.endpoint` says
    otherwise). `params` are the front matter's request parameters. For a chat session,
    `messages` are the messages in order with `lines` their 1-based heading lines, and
    `responses` maps the index of an assistant message to its hidden response metadata; the
    other choices of an answer (``n > 1``), shown as `### assistant choice=N` sections, are in
    that metadata as ``choices``, a list of assistant messages.
    """

    file: str
    kind: str = "chat"
    method: str = "POST"
    path: str = CHAT_PATH
    query: str = ""
    params: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    responses: dict[int, dict] = field(default_factory=dict)
    exchanges: list[GenericExchange] = field(default_factory=list)
    form: str | None = None

    @property
    def endpoint(self) -> str:
        """``METHOD /path?query`` as written in the front matter."""
        return f"{self.method} {self.path}" + (f"?{self.query}" if self.query else "")


# ---------------------------------------------------------------------------------------------
# Writing


def quote(text: str) -> list[str]:
    """Return the lines of a `<blockquote>` block holding `text` exactly (padded, escaped)."""
    out = ["<blockquote>", ""]
    for line in text.split("\n"):
        out.append(_MARKER_LIKE.sub(r"\1\\\2", line) if "blockquote>" in line else line)
    out += ["", "</blockquote>"]
    return out


def _unquote(body: str) -> str:
    # `body` is everything between the opening and closing lines, newline-terminated or empty.
    if not body:
        return ""
    lines = body[:-1].split("\n")
    if lines and lines[0] in ("", "\r"):
        lines.pop(0)
    if lines and lines[-1] in ("", "\r"):
        lines.pop()
    return "\n".join(_ESCAPED_MARKER.sub(r"\1\2", ln) if "blockquote>" in ln else ln
                     for ln in lines)


def comment(kind: str, data: Any) -> str:
    """Return a one-line `<!-- rechat:KIND {json} -->` comment.

    `>` is written as `\\u003e` (it only ever occurs inside JSON strings), so `-->` can never
    close the comment early.
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"<!-- rechat:{kind} {text.replace('>', chr(92) + 'u003e')} -->"


def _attr(key: str, value: Any) -> str:
    if isinstance(value, str) and _BARE.match(value):
        try:
            json.loads(value)
        except ValueError:
            return f"{key}={value}"
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def _heading(prefix: str, label: str, word: str | None, attrs: dict) -> str:
    parts = [prefix, label]
    if word is not None:
        parts.append(word)
    parts += [_attr(k, v) for k, v in attrs.items()]
    return " ".join(parts)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _fence(text: str, info: str) -> list[str]:
    runs = [len(m) for m in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return [fence + info, *text.split("\n"), fence]


def _tool_call_readable(tc: Any) -> bool:
    if not isinstance(tc, dict) or set(tc) - {"id", "type", "function"}:
        return False
    fn = tc.get("function")
    return (isinstance(fn, dict) and not set(fn) - {"name", "arguments"}
            and isinstance(fn.get("name"), str) and bool(_BARE.match(fn["name"]))
            and isinstance(fn.get("arguments"), str) and _is_scalar(tc.get("id"))
            and tc.get("type", "function") == "function")


def _part_form(part: Any) -> tuple[str | None, dict, str] | None:
    """Return (type, attrs, text) for a content part with a readable form, else None."""
    if not isinstance(part, dict):
        return None
    t = part.get("type")
    if t == "text" and set(part) == {"type", "text"} and isinstance(part["text"], str):
        return "text", {}, part["text"]
    if t in ("image_url", "input_audio") and set(part) == {"type", t} and isinstance(part[t], dict):
        inner = part[t]
        key = "url" if t == "image_url" else "data"
        rest = {k: v for k, v in inner.items() if k != key}
        if isinstance(inner.get(key), str) and all(
                isinstance(v, (str, int, float, bool)) and _ATTR_KEY.match(k)
                for k, v in rest.items()) and "type" not in rest:
            return t, rest, inner[key]
    return None


def _is_choices(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and m.get("role") == "assistant" for m in value))


def render_message(message: dict, response: dict | None = None, choice: int | None = None) -> list[str]:
    """Return the markdown lines of one message section (docs/format.md, "Messages").

    `response`, for an assistant message that answered a request, is written as the hidden
    `rechat:response` comment after the section; its ``choices`` (the answer's other choices,
    assistant messages) are written before it as `### assistant choice=N` sections, `choice`
    being that N. Null fields are not written (null and absent are the same in the OpenAI API).
    Raises ValueError if `message` has no string `role`.
    """
    role = message.get("role")
    if not isinstance(role, str) or not _BARE.match(role):
        raise ValueError(f"message role must be a plain word, got {role!r}")
    attrs: dict = {}
    hidden: dict = {}
    strings: list[tuple[str, str]] = []
    for k, v in message.items():
        if k in ("role", "content", "tool_calls", "refusal") or v is None:
            continue
        if k == "choice":  # on the heading it would mark another choice of an answer
            hidden[k] = v
        elif _ATTR_KEY.match(k) and (isinstance(v, (int, float, bool))
                                   or (k in HEADING_FIELDS and isinstance(v, str))):
            attrs[k] = v
        elif isinstance(v, str) and _LABEL.match(k) and k not in _RESERVED_LABELS:
            strings.append((k, v))
        else:
            hidden[k] = v
    content = message.get("content")
    parts: list[tuple[str | None, dict, str]] = []
    if isinstance(content, list):
        forms = [_part_form(p) for p in content]
        if content and all(f is not None for f in forms):
            parts = forms  # type: ignore[assignment]
        elif content:
            parts = [f if f is not None else (None, {}, json.dumps(p, ensure_ascii=False))
                     for f, p in zip(forms, content)]
        else:
            hidden["content"] = []
    elif content is not None and not isinstance(content, str):
        hidden["content"] = content
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not (
            isinstance(tool_calls, list) and all(_tool_call_readable(tc) for tc in tool_calls)):
        hidden["tool_calls"] = tool_calls
        tool_calls = None
    refusal = message.get("refusal")
    if refusal is not None and not isinstance(refusal, str):
        hidden["refusal"] = refusal
        refusal = None

    if choice is not None:
        attrs = {"choice": choice, **attrs}
    out = ["", _heading("###", role, None, attrs)]
    if hidden:
        out += ["", comment("fields", hidden)]
    labelled = bool(strings)
    for k, v in strings:
        out += ["", f"#### {k}", "", *quote(v)]
    if isinstance(content, str):
        if labelled:
            out += ["", "#### content"]
        out += ["", *quote(content)]
    if isinstance(refusal, str):
        out += ["", "#### refusal", "", *quote(refusal)]
    for ptype, pattrs, text in parts:
        out += ["", _heading("####", "part", ptype, pattrs), "", *quote(text)]
    for tc in tool_calls or ():
        a = {"id": tc["id"]} if "id" in tc else {}
        if "type" not in tc:
            a["type"] = None  # marks a tool call written without `type`
        out += ["", _heading("####", "tool_call", tc["function"]["name"], a), "",
                *quote(tc["function"]["arguments"])]
    if response is not None:
        if _is_choices(response.get("choices")):
            for n, other in enumerate(response["choices"], 1):
                out += render_message(other, choice=n)
            response = {k: v for k, v in response.items() if k != "choices"}
            if response:
                out += ["", comment("response", response)]
        else:
            out += ["", comment("response", response)]
    return out


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, but strings holding NEL are double-quoted (escaped).

    PyYAML can write U+0085 raw inside a single-quoted scalar, where the loader reads it
    as a line break and folds it into a space; in double quotes it is escaped as `\\N`.
    """


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if "\x85" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _front_matter(data: dict) -> list[str]:
    if not data:
        return []
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=100)
    return ["---", *text.rstrip("\n").split("\n"), "---"]


def render_chat(params: dict, messages: list[dict], responses: dict[int, dict] | None = None,
                endpoint: str | None = None) -> str:
    """Return the text of a chat session file.

    `params` go to the front matter, `messages` become sections, `responses` maps assistant
    message indexes to their hidden metadata. `endpoint` (``METHOD /path``) is written to the
    front matter's reserved `rechat` key when it is not ``POST /v1/chat/completions``.
    """
    fm = dict(params)
    if endpoint and endpoint != f"POST {CHAT_PATH}":
        fm["rechat"] = {"endpoint": endpoint, "kind": "chat"}
    lines = _front_matter(fm)
    lines += render_messages(messages, responses or {}, 0)
    return "\n".join(lines).lstrip("\n") + "\n"


def render_messages(messages: list[dict], responses: dict[int, dict], start: int) -> list[str]:
    """Return the lines of `messages`, the first being message number `start` of its session."""
    out: list[str] = []
    for i, m in enumerate(messages, start):
        out += render_message(m, responses.get(i))
    return out


def _b64_lines(data: bytes) -> str:
    b64 = base64.b64encode(data).decode()
    return "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))


def _multipart_bytes(boundary: bytes, parts: list[tuple[bytes, bytes]], end: bytes) -> bytes:
    # The inverse of fingerprint.multipart_parts: delimiter lines, CRLF, part headers, CRLF CRLF.
    delim = b"--" + boundary
    return b"".join([delim, *(b"\r\n" + h + b"\r\n\r\n" + c + b"\r\n" + delim for h, c in parts),
                     b"--", end])


def _multipart_block(body: bytes, blobs: dict[str, bytes] | None,
                     blob_min: int = BLOB_MIN) -> list[str] | None:
    """Return the ```multipart block of a multipart/form-data body, or None if it is not one.

    One JSON line for the boundary (and an epilogue other than CRLF), then one per part: its
    headers, and its content as `text` (UTF-8), `base64`, or, when `blobs` is given and the
    part is at least BLOB_MIN bytes, a reference ``{"blob": SHA256, "size": N}`` (the bytes go
    to `blobs[SHA256]` for the caller to write).
    """
    parts = multipart_parts(body)
    if not parts:
        return None
    delim = body[:body.find(b"\r\n")]
    end = body[body.rfind(delim + b"--") + len(delim) + 2:]
    if _multipart_bytes(delim[2:], parts, end) != body:
        return None
    head: dict = {"boundary": delim[2:].decode("latin-1")}
    if end != b"\r\n":
        head["end"] = end.decode("latin-1")
    rows = [head]
    for h, c in parts:
        row: dict = {}
        try:
            row["headers"] = h.decode("utf-8")
        except UnicodeDecodeError:
            row["headers_base64"] = base64.b64encode(h).decode()
        if blobs is not None and len(c) >= blob_min:
            sha = hashlib.sha256(c).hexdigest()
            blobs[sha] = c
            row.update(blob=sha, size=len(c))
        else:
            try:
                row["text"] = c.decode("utf-8")
            except UnicodeDecodeError:
                row["base64"] = base64.b64encode(c).decode()
        rows.append(row)
    return ["", *_fence("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), "multipart")]


def _body_block(body: bytes, blobs: dict[str, bytes] | None = None,
                blob_min: int = BLOB_MIN) -> list[str]:
    if not body:
        return []
    multipart = _multipart_block(body, blobs, blob_min)
    if multipart is not None:
        return multipart
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return ["", *_fence(_b64_lines(body), "base64")]
    try:
        json.loads(text)
        info = "json"
    except ValueError:
        info = "text"
    return ["", *_fence(text, info)]


def render_generic(endpoint: str, exchanges: list[GenericExchange],
                   blobs: dict[str, bytes] | None = None, blob_min: int = BLOB_MIN) -> str:
    """Return the text of a generic session file: fenced request and response bodies, exact.

    `endpoint` is ``METHOD /path?query``. JSON and text bodies are fenced as they are,
    multipart/form-data bodies part by part, other bodies as base64 (docs/format.md, "Other
    endpoints"). With `blobs`, a request's multipart parts of BLOB_MIN bytes or more are
    referenced by their SHA-256 and added to `blobs` (hash -> bytes), which the caller writes
    with `write_blob` ("Large uploads"); `blob_min` is that threshold in bytes.
    """
    reserved = {"endpoint": endpoint}
    if endpoint.split("?")[0].split(" ", 1)[-1] in CHAT_PATHS:
        reserved["kind"] = "generic"
    lines = _front_matter({"rechat": reserved})
    for ex in exchanges:
        lines += ["", "### request", *_body_block(ex.request_body, blobs, blob_min),
                  "", f"### response {ex.status}", *_body_block(ex.body)]
        if ex.meta:
            lines += ["", comment("response", ex.meta)]
    return "\n".join(lines) + "\n"


def render_form(form: str, endpoint: str, params: dict, turns: list[forms.Turn]) -> str:
    """Return the text of a session in a readable form (`form` is one of `forms.FORMS`).

    `params` go to the front matter with ``rechat: {endpoint, kind: FORM}``; each turn is
    `## request`, its sections, `## response`, its sections and its `rechat:response` comment
    (docs/format.md, "Responses", "Completions", "Embeddings").
    """
    fm = dict(params)
    fm["rechat"] = {"endpoint": endpoint, "kind": form}
    lines = _front_matter(fm) + render_turns(turns)
    return "\n".join(lines) + "\n"


def render_turns(turns: list[forms.Turn]) -> list[str]:
    """Return the lines of `turns`, to write after a form session's front matter or last turn."""
    out: list[str] = []
    for t in turns:
        out += ["", _heading("##", "request", None, t.request_attrs)]
        for sec in t.request:
            out += _render_section(sec)
        out += ["", _heading("##", "response", None, t.response_attrs)]
        for sec in t.response:
            out += _render_section(sec)
        if t.meta is not None:
            out += ["", comment("response", t.meta)]
    return out


def _render_section(sec: forms.Section) -> list[str]:
    out = ["", _heading("###", sec.word, " ".join(sec.words) or None, sec.attrs)]
    if sec.fields is not None:
        out += ["", comment("fields", sec.fields)]
    for b in sec.blocks:
        if b.label is not None:
            out += ["", _heading("####", b.label, " ".join(b.words) or None, b.attrs)]
        out += ["", *(quote(b.text) if b.info is None else _fence(b.text, b.info))]
    return out


def blob_path(session_file: str, sha: str) -> str | None:
    """Return the file of blob `sha` for a session: `blobs/SHA` in its folder or the nearest
    folder above that has it; None when there is none."""
    d = os.path.dirname(os.path.abspath(session_file))
    while True:
        p = os.path.join(d, BLOBS, sha)
        if os.path.isfile(p):
            return p
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def read_blob(session_file: str, sha: str, size: int | None = None) -> bytes:
    """Return the bytes of blob `sha` referenced by `session_file`. Raises OSError when it is
    missing or does not hold the bytes its hash and size say."""
    p = blob_path(session_file, sha)
    if p is None:
        raise FileNotFoundError(f"{session_file}: blob {sha} is not in a {BLOBS}/ folder beside "
                                "the session or above it")
    with open(p, "rb") as f:
        data = f.read()
    if (size is not None and len(data) != size) or hashlib.sha256(data).hexdigest() != sha:
        raise OSError(f"{p}: the blob does not hold the bytes of its name")
    return data


def write_blob(folder: str, sha: str, data: bytes) -> str:
    """Write `data` once as `folder/blobs/SHA` (atomically; kept if already there); return its path."""
    p = os.path.join(folder, BLOBS, sha)
    if os.path.isfile(p) and os.path.getsize(p) == len(data):
        return p
    write_atomic(p, data)
    return p


def write_atomic(file: str, text: str | bytes) -> None:
    """Write `text` (or bytes) to `file` so that readers see the old or the new file, never a part.

    Writes a temp file in the same folder (named `.NAME.*.tmp`, which loaders ignore), fsyncs
    it, renames it over `file`, and fsyncs the folder. Raises OSError.
    """
    folder = os.path.dirname(os.path.abspath(file))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(file)}.", suffix=".tmp", dir=folder)
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else
              os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------------------------------
# Reading


def _parse_quote(block: BlockParser, m: re.Match, state: BlockState) -> int:
    inner = _OPEN_LINE.search(m.group("rq_body"))
    if inner:
        # Writers escape marker lines inside blocks, so an opening line here means the block
        # before it was never closed.
        state.append_token({"type": "rq_unclosed", "pos": m.start()})
        return m.start("rq_body") + inner.start()
    state.append_token({"type": "rq", "text": _unquote(m.group("rq_body")), "pos": m.start()})
    return m.end() + 1


def _parse_comment(block: BlockParser, m: re.Match, state: BlockState) -> int:
    state.append_token({"type": "rc", "kind": m.group("rc_kind"), "json": m.group("rc_json"),
                        "pos": m.start()})
    return m.end() + 1


class _Blocks(BlockParser):
    """mistune's block parser, with token positions on headings and the two rules of ours."""

    def parse_atx_heading(self, m: re.Match, state: BlockState) -> int:
        end = super().parse_atx_heading(m, state)
        state.tokens[-1]["pos"] = m.start()
        return end

    def parse_raw_html(self, m: re.Match, state: BlockState) -> int | None:
        n = len(state.tokens)
        end = super().parse_raw_html(m, state)
        if len(state.tokens) > n:
            state.tokens[-1]["pos"] = m.start()
        return end

    def parse_fenced_code(self, m: re.Match, state: BlockState) -> int | None:
        # mistune's own method, but the closing fence is found with str.find instead of a
        # multiline regex: a 100 MB base64 block reads in milliseconds, not seconds.
        spaces, marker, info = m.group("fenced_1"), m.group("fenced_2"), m.group("fenced_3")
        c = marker[0]
        if info and c == "`" and c in info:
            return None  # CommonMark example 145: no backticks in a backtick fence's info
        start = m.end() + 1
        found = _fence_end(state.src, start, c, len(marker))
        if found is not None:
            code, end_pos = state.src[start:found[0]], found[1]
        else:
            code, end_pos = state.src[start:], state.cursor_max
        if spaces and code:
            code = re.sub("^ {0," + str(len(spaces)) + "}", "", code, flags=re.M)
        token: dict = {"type": "block_code", "raw": code, "style": "fenced", "marker": marker,
                       "pos": m.start()}
        if info:
            token["attrs"] = {"info": unescape_char(info).strip()}
        state.append_token(token)
        return end_pos


def _fence_end(src: str, start: int, c: str, n: int) -> tuple[int, int] | None:
    """Return (start, end) of the first closing fence line at or after `start`, or None.

    The same lines as mistune's ``^ {0,3}C{n,}[ \t]*(?:\n|$)`` (re.M) searched from `start`
    (a line start): up to 3 spaces, at least `n` fence characters, spaces or tabs; `end` is
    after the line's newline.
    """
    run = c * n
    size = len(src)
    i = src.find(run, start)
    while i != -1:
        ls = src.rfind("\n", 0, i) + 1
        if i - ls <= 3 and src.count(" ", ls, i) == i - ls:
            j = i + n
            while j < size and src[j] == c:
                j += 1
            while j < size and src[j] in " \t":
                j += 1
            if j == size:
                return ls, size
            if src[j] == "\n":
                return ls, j + 1
        nl = src.find("\n", i)
        if nl == -1:
            return None
        i = src.find(run, nl + 1)
    return None


def _new_parser() -> _Blocks:
    p = _Blocks()
    p.register("rq", _QUOTE_RULE, _parse_quote, before="fenced_code")
    p.register("rc", _COMMENT_RULE, _parse_comment, before="fenced_code")
    return p


_parser = _new_parser()
_yaml = frontmatter.YAMLHandler()


class _Lines:
    """Turns character offsets into 1-based line numbers, scanning forward only."""

    def __init__(self, text: str, first_line: int) -> None:
        self.text, self.pos, self.line = text, 0, first_line

    def at(self, pos: int) -> int:
        if pos < self.pos:
            return self.line - self.text.count("\n", pos, self.pos)
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _attrs(rest: str) -> tuple[list[str], dict]:
    words, attrs = [], {}
    pos = 0
    while pos < len(rest):
        m = _ATTR.match(rest, pos)
        if not m:
            raise ValueError(f"cannot read {rest[pos:].strip()!r}")
        if m.group("w") is not None:
            words.append(m.group("w"))
        else:
            v = m.group("v")
            try:
                attrs[m.group("k")] = json.loads(v)
            except ValueError:
                if v.startswith('"'):
                    raise ValueError(f"bad quoted value {v}") from None
                attrs[m.group("k")] = v
        pos = m.end()
    return words, attrs


def _split_front_matter(text: str, file: str) -> tuple[dict, str, int]:
    if not _yaml.detect(text):
        return {}, text, 1
    try:
        fm, body = _yaml.split(text)
    except ValueError:
        raise SessionFormatError(file, 1, "front matter opened with --- is never closed") from None
    try:
        data = _yaml.load(fm)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        # `fm` starts where the opening `---` match ends: on line 1, unless it ate blank lines.
        opening = _yaml.FM_BOUNDARY.match(text)
        first_fm = text.count("\n", 0, opening.end() if opening else 0) + 1
        line = first_fm + mark.line if mark is not None else 1
        raise SessionFormatError(file, line, f"front matter is not valid YAML: "
                                 f"{getattr(e, 'problem', None) or e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SessionFormatError(file, 2, "front matter must be a mapping of request parameters")
    return data, body, text[: len(text) - len(body)].count("\n") + 1


def parse(text: str, file: str = "<string>") -> Session:
    """Parse the text of a session file.

    Returns a `Session`. Raises `SessionFormatError` (with `file` and the 1-based line) when the
    text breaks docs/format.md: bad YAML, an unknown role, an unclosed `<blockquote>`, a block
    outside a section, a `####` heading with no block, a malformed `rechat:` comment.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r\n" in text and text.count("\r\n") == text.count("\n"):
        text = text.replace("\r\n", "\n")  # a file saved with Windows line endings
    params, body, first = _split_front_matter(text, file)
    reserved = params.pop("rechat", None)
    s = Session(file=file, params=params)
    if reserved is not None:
        endpoint = reserved.get("endpoint") if isinstance(reserved, dict) else None
        m = re.fullmatch(r"([A-Z]+) (/[^?\s]*)(?:\?(\S*))?", endpoint or "")
        if not m:
            raise SessionFormatError(file, first - 1, "front matter key `rechat` must hold "
                                     "`endpoint: METHOD /path`")
        s.method, s.path, s.query = m.group(1), m.group(2), m.group(3) or ""
        # The form follows the path unless `kind` says otherwise: a chat request rechat could
        # not write as sections is kept in the generic form, a chat on another path as sections.
        chat = s.method == "POST" and s.path in CHAT_PATHS
        s.kind = reserved.get("kind") or ("chat" if chat else "generic")
        if s.kind not in ("chat", "generic", *forms.FORMS):
            raise SessionFormatError(file, first - 1, f"front matter `rechat.kind` must be one of "
                                     f"chat, generic, {', '.join(forms.FORMS)}, not {s.kind!r}")
        if s.kind in forms.FORMS:
            s.form, s.kind = s.kind, "generic"
    state = BlockState()
    state.process(body)
    _parser.parse(state)
    lines = _Lines(body, first)
    try:
        if s.kind == "chat":
            _read_chat(s, state.tokens, lines)
        elif s.form is not None:
            _read_form(s, state.tokens, lines)
        else:
            _read_generic(s, state.tokens, lines)
    except _Bad as e:
        raise SessionFormatError(file, e.line, e.msg) from None
    return s


class _Bad(Exception):
    def __init__(self, line: int, msg: str) -> None:
        self.line, self.msg = line, msg


def _json_comment(tok: dict, line: int) -> Any:
    try:
        return json.loads(tok["json"])
    except ValueError as e:
        raise _Bad(line, f"rechat:{tok['kind']} comment is not valid JSON: {e}") from None


def _unclosed(tok: dict) -> bool:
    return tok["type"] == "rq_unclosed" or (
        tok["type"] == "block_html" and (tok.get("raw") or "").lstrip().startswith("<blockquote"))


def _read_chat(s: Session, tokens: list[dict], lines: _Lines) -> None:
    msg: dict | None = None
    label: tuple | None = None  # the pending `####` heading: (name, word, attrs, line)
    main_done = False
    parts: list | None = None
    msg_line = 0
    choices: dict[int, list[dict]] = {}  # answer index -> its other choices (n > 1)

    def finish() -> None:
        if label is not None:
            raise _Bad(label[3], f"#### {label[0]} has no <blockquote> block")
        if msg is not None and parts is not None:
            if "content" in msg:
                raise _Bad(msg_line, "a message has both content and #### part blocks")
            msg["content"] = parts

    for tok in tokens:
        t = tok["type"]
        if t == "heading" and tok["attrs"]["level"] in (3, 4):
            ln = lines.at(tok["pos"])
            if not tok["text"]:
                raise _Bad(ln, f"empty {'#' * tok['attrs']['level']} heading")
            head, *rest = tok["text"].split(None, 1)
            try:
                words, attrs = _attrs(" " + rest[0] if rest else "")
            except ValueError as e:
                raise _Bad(ln, f"heading {tok['text']!r}: {e}") from None
            if tok["attrs"]["level"] == 3:
                finish()
                role = head.lower()
                if role not in ROLES:
                    raise _Bad(ln, f"unknown role {head!r} in '### {tok['text']}' "
                                   f"(expected one of: {', '.join(ROLES)})")
                if words:
                    raise _Bad(ln, f"unexpected {words[0]!r} after ### {role} "
                                   "(attributes are written key=value)")
                if "role" in attrs:
                    raise _Bad(ln, f"### {role} has a role= attribute; the role is the word "
                                   "after ###")
                msg = {"role": role, **attrs}
                if "choice" in attrs:
                    n = msg.pop("choice")
                    if role != "assistant" or type(n) is not int or n < 1:
                        raise _Bad(ln, "choice=N (N = 1, 2, ...) marks another choice of an "
                                       "answer and is only written on ### assistant")
                    if not s.messages or s.messages[-1].get("role") != "assistant":
                        raise _Bad(ln, f"### assistant choice={n} must follow the ### assistant "
                                       "section of the answer it is another choice of")
                    choices.setdefault(len(s.messages) - 1, []).append(msg)
                else:
                    s.messages.append(msg)
                    s.lines.append(ln)
                msg_line = ln
                label, main_done, parts = None, False, None
            else:
                if msg is None:
                    raise _Bad(ln, f"#### {head} before any ### role heading")
                if label is not None:
                    raise _Bad(label[3], f"#### {label[0]} has no <blockquote> block")
                label = (head.lower(), words, attrs, ln)
                main_done = True
        elif t == "rq":
            ln = lines.at(tok["pos"])
            if msg is None:
                raise _Bad(ln, "<blockquote> before any ### role heading")
            text = tok["text"]
            if label is None:
                if main_done:
                    raise _Bad(ln, f"a second <blockquote> in ### {msg['role']}; "
                                   "label it with a #### heading")
                msg["content"] = text
                main_done = True
                continue
            name, words, attrs, hl = label
            label = None
            if name == "content":
                if "content" in msg:
                    raise _Bad(hl, "#### content given twice")
                msg["content"] = text
            elif name == "part":
                if parts is None:
                    parts = []
                if not words:
                    try:
                        parts.append(json.loads(text))
                    except ValueError as e:
                        raise _Bad(ln, f"a #### part without a type must hold JSON: {e}") from None
                elif words[0] == "text":
                    parts.append({"type": "text", "text": text})
                else:
                    key = "url" if words[0] == "image_url" else "data"
                    parts.append({"type": words[0], words[0]: {key: text, **attrs}})
            elif name == "tool_call":
                if not words:
                    raise _Bad(hl, "#### tool_call needs the function name: "
                                   "#### tool_call NAME id=ID")
                tc: dict = {}
                if "id" in attrs:
                    tc["id"] = attrs["id"]
                if attrs.get("type", "function") is not None:
                    tc["type"] = attrs.get("type", "function")
                tc["function"] = {"name": words[0], "arguments": text}
                msg.setdefault("tool_calls", []).append(tc)
            else:
                msg[name] = text
        elif t == "rc":
            ln = lines.at(tok["pos"])
            data = _json_comment(tok, ln)
            if msg is None or not isinstance(data, dict):
                raise _Bad(ln, f"rechat:{tok['kind']} comment outside a message section"
                           if msg is None else f"rechat:{tok['kind']} must hold a JSON object")
            if tok["kind"] == "fields":
                msg.update(data)
            elif tok["kind"] == "response":
                s.responses[len(s.messages) - 1] = data
        elif _unclosed(tok):
            pos = tok.get("pos")
            raise _Bad(lines.at(pos if pos is not None else _unclosed_pos(lines)),
                       "<blockquote> is never closed by a line that is exactly </blockquote>")
    finish()
    for i, others in choices.items():
        s.responses[i] = {**s.responses.get(i, {}), "choices": others}


def _unclosed_pos(lines: _Lines) -> int:
    # block_html tokens carry no position; find the unclosed opening line in the source.
    m = _OPEN_LINE.search(lines.text, lines.pos)
    return m.start() if m else lines.pos


def _read_generic(s: Session, tokens: list[dict], lines: _Lines) -> None:
    cur: str | None = None
    ex: GenericExchange | None = None
    for tok in tokens:
        t = tok["type"]
        if t == "heading" and tok["attrs"]["level"] == 3:
            ln = lines.at(tok["pos"])
            words = tok["text"].split() or [""]
            if words[0] == "request":
                ex = GenericExchange(request_body=b"", status=0, body=b"", line=ln)
                s.exchanges.append(ex)
                cur = "request"
            elif words[0] == "response" and ex is not None:
                try:
                    ex.status = int(words[1]) if len(words) > 1 else 200
                except ValueError:
                    raise _Bad(ln, f"### response needs a status code, got {words[1]!r}") from None
                cur = "response"
            else:
                raise _Bad(ln, f"expected ### request or ### response, got ### {tok['text']}")
        elif t == "block_code" and ex is not None and cur:
            ln = lines.at(tok["pos"])
            raw = tok["raw"][:-1] if tok["raw"].endswith("\n") else tok["raw"]
            info = tok.get("attrs", {}).get("info", "")
            if info == "multipart":
                data = _read_multipart(s.file, raw, ln, ex if cur == "request" else None)
            elif info == "base64":
                try:
                    data = base64.b64decode("".join(raw.split()), validate=True)
                except ValueError as e:
                    raise _Bad(ln, f"base64 block does not decode: {e}") from None
            else:
                data = raw.encode("utf-8")
            if data is None:
                cur = None
                continue  # a request whose large parts are blobs: read when asked for
            if cur == "request":
                ex.request_body = data
            else:
                ex.body = data
            cur = None
        elif t == "rc" and tok["kind"] == "response":
            ln = lines.at(tok["pos"])
            if ex is None:
                raise _Bad(ln, "rechat:response comment before any ### request")
            ex.meta = _json_comment(tok, ln)


def _read_multipart(file: str, raw: str, ln: int, ex: GenericExchange | None) -> bytes | None:
    # A ```multipart block: the body's bytes, or None when parts live in blob files; then `ex`
    # (the request's exchange; None for a response body, where blobs are not written) gets the
    # parts' hashes and a loader.
    rows = []
    for n, text in enumerate(raw.split("\n")):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as e:
            raise _Bad(ln + 1 + n, f"a ```multipart line is not JSON: {e}") from None
        if not isinstance(row, dict):
            raise _Bad(ln + 1 + n, "a ```multipart line must be a JSON object")
        rows.append((ln + 1 + n, row))
    if not rows or not isinstance(rows[0][1].get("boundary"), str):
        raise _Bad(ln, 'a ```multipart block starts with {"boundary": "..."}')
    head = rows[0][1]
    boundary = head["boundary"].encode("latin-1", "replace")
    end = head.get("end", "\r\n")
    end = end.encode("latin-1", "replace") if isinstance(end, str) else b"\r\n"
    parts: list[tuple[bytes, Any]] = []
    for at, row in rows[1:]:
        try:
            h = (row["headers"].encode("utf-8") if "headers" in row
                 else base64.b64decode(row["headers_base64"], validate=True))
            if "blob" in row:
                sha, size = row["blob"], row.get("size")
                if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)) or (
                        size is not None and type(size) is not int):
                    raise ValueError("a blob is its SHA-256 in hex, with its size in bytes")
                if ex is None:
                    raise ValueError("blob references are for request bodies")
                c: Any = (sha, size)
            elif "text" in row:
                c = row["text"].encode("utf-8")
            else:
                c = base64.b64decode(row["base64"], validate=True)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise _Bad(at, f"a ```multipart part needs headers and one of text, base64, blob: {e}") from None
        parts.append((h, c))
    if all(isinstance(c, bytes) for _, c in parts):
        return _multipart_bytes(boundary, parts, end)
    assert ex is not None
    ex.parts = [(h, c[0] if isinstance(c, tuple) else hashlib.sha256(c).hexdigest()) for h, c in parts]

    def load() -> bytes:
        return _multipart_bytes(boundary, [(h, read_blob(file, *c) if isinstance(c, tuple) else c)
                                           for h, c in parts], end)
    ex._load, ex._request_body = load, None
    return None


def _read_form(s: Session, tokens: list[dict], lines: _Lines) -> None:
    assert s.form is not None
    for turn in _read_turns(s.form, tokens, lines):
        try:
            got = forms.read_turn(s.form, s.params, turn)
        except forms.FormError as e:
            raise _Bad(e.line, e.msg) from None
        if got is None:
            continue
        request, answer = got
        meta = turn.meta or {}
        status = meta.get("status")
        s.exchanges.append(GenericExchange(
            None, status if type(status) is int else 200, None, meta, turn.line, form=s.form,
            request=request, answer=answer, seed=forms.seed_of(s.file, len(s.exchanges))))


def _read_turns(form: str, tokens: list[dict], lines: _Lines) -> list[forms.Turn]:
    """Group a form session's tokens into turns (docs/format.md, "Readable forms").

    `## request` starts a turn (optional for the first); `## response` starts its answer, and
    in the Responses form is what tells output items from input items; in the other forms the
    section's word says its side. A `rechat:response` comment ends a turn. Other `#`/`##`
    headings, text and fenced blocks other than ```json and ```base64 are notes.
    """
    sides = forms.SIDES.get(form)
    turns: list[forms.Turn] = []
    turn: forms.Turn | None = None
    side = "request"
    sec: forms.Section | None = None
    label: tuple | None = None  # pending `####`: (name, words, attrs, line)
    closed = False

    def new_turn(line: int) -> forms.Turn:
        nonlocal turn, side, closed, sec
        turn = forms.Turn(line=line)
        turns.append(turn)
        side, closed, sec = "request", False, None
        return turn

    def no_label() -> None:
        if label is not None:
            raise _Bad(label[3], f"#### {label[0]} has no block")

    def add(block: forms.Block, ln: int) -> None:
        nonlocal label
        if sec is None:
            raise _Bad(ln, "a block before any ### section")
        if label is not None:
            block.label, block.words, block.attrs = label[0], label[1], label[2]
            label = None
        block.line = ln
        sec.blocks.append(block)

    for tok in tokens:
        t = tok["type"]
        if t == "heading" and tok["attrs"]["level"] in (2, 3, 4):
            level = tok["attrs"]["level"]
            ln = lines.at(tok["pos"])
            head, *rest = tok["text"].split(None, 1) or [""]
            if level == 2 and head.lower() not in ("request", "response"):
                continue  # a note
            if not head:
                raise _Bad(ln, f"empty {'#' * level} heading")
            try:
                words, attrs = _attrs(" " + rest[0] if rest else "")
            except ValueError as e:
                raise _Bad(ln, f"heading {tok['text']!r}: {e}") from None
            head = head.lower()
            if level == 4:
                if sec is None:
                    raise _Bad(ln, f"#### {head} before any ### section")
                no_label()
                label = (head, words, attrs, ln)
                continue
            no_label()
            if level == 2:
                if words:
                    raise _Bad(ln, f"unexpected {words[0]!r} after ## {head} "
                                   "(attributes are written key=value)")
                if head == "request":
                    new_turn(ln).request_attrs = attrs
                else:
                    if turn is None or closed or turn.answered:
                        new_turn(ln)
                    assert turn is not None
                    turn.response_attrs, turn.answered, side, sec = attrs, True, "response", None
                continue
            s_side = side
            if sides is not None:
                s_side = sides.get(head, "")
                if not s_side:
                    raise _Bad(ln, f"unknown section ### {head} (expected one of: "
                                   f"{', '.join(sides)})")
            if turn is None or closed or (s_side == "request" and (turn.response or turn.answered)):
                new_turn(ln)
            assert turn is not None
            sec = forms.Section(head, words, attrs, line=ln)
            (turn.request if s_side == "request" else turn.response).append(sec)
        elif t == "rq":
            add(forms.Block(tok["text"]), lines.at(tok["pos"]))
        elif t == "block_code" and tok.get("style") == "fenced" and (
                tok.get("attrs", {}).get("info") in ("json", "base64")):
            raw = tok["raw"][:-1] if tok["raw"].endswith("\n") else tok["raw"]
            add(forms.Block(raw, info=tok["attrs"]["info"]), lines.at(tok["pos"]))
        elif t == "rc":
            ln = lines.at(tok["pos"])
            data = _json_comment(tok, ln)
            if not isinstance(data, dict):
                raise _Bad(ln, f"rechat:{tok['kind']} must hold a JSON object")
            if tok["kind"] == "fields":
                if sec is None or sec.fields is not None or sec.blocks or label is not None:
                    raise _Bad(ln, "rechat:fields comes right after a ### heading, once")
                sec.fields = data
            elif tok["kind"] == "response":
                no_label()
                if turn is None or closed:
                    raise _Bad(ln, "rechat:response comment outside a turn")
                turn.meta, closed, sec = data, True, None
        elif _unclosed(tok):
            pos = tok.get("pos")
            raise _Bad(lines.at(pos if pos is not None else _unclosed_pos(lines)),
                       "<blockquote> is never closed by a line that is exactly </blockquote>")
    no_label()
    return turns


def read(file: str) -> Session:
    """Read and parse the session file at `file`. Raises OSError or `SessionFormatError`."""
    with open(file, encoding="utf-8", newline="") as f:
        try:
            text = f.read()
        except UnicodeDecodeError as e:
            raise SessionFormatError(file, 0, f"not UTF-8 text: {e}") from None
    return parse(text, file)
