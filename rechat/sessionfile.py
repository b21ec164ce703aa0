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
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import frontmatter
import mistune
import yaml
from mistune.block_parser import BlockParser
from mistune.core import BlockState

from rechat.errors import SessionFormatError
from rechat.exchange import CHAT_PATH

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


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(slots=True)
class GenericExchange:
    """One recorded exchange of a non-chat endpoint (docs/format.md, "Other endpoints").

    `request_body`/`body` are exact bytes; `meta` is the hidden response comment (headers as
    ``[[name, value], ...]``, timings in ms, upstream, recorded_at epoch s); `line` is 1-based.
    """

    request_body: bytes
    status: int
    body: bytes
    meta: dict = field(default_factory=dict)
    line: int = 0


@dataclass(slots=True)
class Session:
    """One session file, parsed.

    `kind` is "chat" (messages and answers) or "generic" (`exchanges`). `method`/`path`/`query`
    name the endpoint (``POST /v1/chat/completions`` unless the front matter's `rechat.endpoint`
    says otherwise). For a chat session, `params` are the front matter's request parameters,
    `messages` the messages in order with `lines` their 1-based heading lines, and `responses`
    maps the index of an assistant message to its hidden response metadata.
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


def render_message(message: dict, response: dict | None = None) -> list[str]:
    """Return the markdown lines of one message section (docs/format.md, "Messages").

    `response`, for an assistant message that answered a request, is written as the hidden
    `rechat:response` comment after the section. Null fields are not written (null and absent
    are the same in the OpenAI API). Raises ValueError if `message` has no string `role`.
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
        if _ATTR_KEY.match(k) and (isinstance(v, (int, float, bool))
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


def _body_block(body: bytes) -> list[str]:
    if not body:
        return []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        import base64
        b64 = base64.b64encode(body).decode()
        return ["", *_fence("\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)), "base64")]
    try:
        json.loads(text)
        info = "json"
    except ValueError:
        info = "text"
    return ["", *_fence(text, info)]


def render_generic(endpoint: str, exchanges: list[GenericExchange]) -> str:
    """Return the text of a generic session file: fenced request and response bodies, exact.

    `endpoint` is ``METHOD /path?query``. JSON and text bodies are fenced as they are, other
    bodies as base64 (docs/format.md, "Other endpoints").
    """
    reserved = {"endpoint": endpoint}
    if endpoint.split("?")[0].split(" ", 1)[-1] == CHAT_PATH:
        reserved["kind"] = "generic"
    lines = _front_matter({"rechat": reserved})
    for ex in exchanges:
        lines += ["", "### request", *_body_block(ex.request_body),
                  "", f"### response {ex.status}", *_body_block(ex.body)]
        if ex.meta:
            lines += ["", comment("response", ex.meta)]
    return "\n".join(lines) + "\n"


def write_atomic(file: str, text: str) -> None:
    """Write `text` to `file` so that readers see the old or the new file, never a part.

    Writes a temp file in the same folder (named `.NAME.*.tmp`, which loaders ignore), fsyncs
    it, renames it over `file`, and fsyncs the folder. Raises OSError.
    """
    folder = os.path.dirname(os.path.abspath(file))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(file)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
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
        end = super().parse_fenced_code(m, state)
        if state.tokens and state.tokens[-1]["type"] == "block_code":
            state.tokens[-1]["pos"] = m.start()
        return end


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
        chat = s.method == "POST" and s.path == CHAT_PATH
        s.kind = reserved.get("kind") or ("chat" if chat else "generic")
        if s.kind not in ("chat", "generic"):
            raise SessionFormatError(file, first - 1, f"front matter `rechat.kind` must be chat "
                                     f"or generic, not {s.kind!r}")
    state = BlockState()
    state.process(body)
    _parser.parse(state)
    lines = _Lines(body, first)
    try:
        if s.kind == "chat":
            _read_chat(s, state.tokens, lines)
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

    def finish() -> None:
        if label is not None:
            raise _Bad(label[3], f"#### {label[0]} has no <blockquote> block")
        if msg is not None and parts is not None:
            if "content" in msg:
                raise _Bad(s.lines[-1], "a message has both content and #### part blocks")
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
                s.messages.append(msg)
                s.lines.append(ln)
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


def _unclosed_pos(lines: _Lines) -> int:
    # block_html tokens carry no position; find the unclosed opening line in the source.
    m = _OPEN_LINE.search(lines.text, lines.pos)
    return m.start() if m else lines.pos


def _read_generic(s: Session, tokens: list[dict], lines: _Lines) -> None:
    import base64
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
            if info == "base64":
                try:
                    data = base64.b64decode("".join(raw.split()), validate=True)
                except ValueError as e:
                    raise _Bad(ln, f"base64 block does not decode: {e}") from None
            else:
                data = raw.encode("utf-8")
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


def read(file: str) -> Session:
    """Read and parse the session file at `file`. Raises OSError or `SessionFormatError`."""
    with open(file, encoding="utf-8", newline="") as f:
        try:
            text = f.read()
        except UnicodeDecodeError as e:
            raise SessionFormatError(file, 0, f"not UTF-8 text: {e}") from None
    return parse(text, file)
