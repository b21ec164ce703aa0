"""Sessions and exchanges as HTML for the web UI: mistune for markdown, pygments for code.

Owns how a session looks in the browser: close to how GitHub renders the markdown file (the
front matter as a table, one `### role` heading per message, its content as a blockquote of
rendered markdown, tool calls, fenced code with syntax highlighting), plus what GitHub hides
(the recorded model, usage and timings of each answer). Pure: data in, HTML text out. Imports
mistune and pygments, and from rechat only `sessionfile` (for the `Session` shape); must not
import aiohttp, the store or the proxy.

Everything in a session is untrusted (it came from a model, a user or a file anybody may
edit). Raw HTML in markdown is escaped, never passed through; link and image URLs are limited
to http(s), mailto and inline raster images (`data:image/png|gif|jpeg|webp`); every other
string is escaped. The UI's Content-Security-Policy (no inline scripts) is a second fence.
"""

from __future__ import annotations

import base64
import html
import json
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import threading

import mistune
from mistune.util import striptags
from pygments import highlight as _pyg_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

from rechat.sessionfile import Session

CSS_CLASS = "hl"
_FORMATTER = HtmlFormatter(cssclass=CSS_CLASS, wrapcode=True)
_SAFE_SCHEMES = ("http:", "https:", "mailto:")
_SAFE_DATA = ("data:image/png;", "data:image/gif;", "data:image/jpeg;", "data:image/webp;")
_LONG = 20000  # characters of a code block highlighted; the rest is shown plain


def esc(text: Any) -> str:
    """Return `text` (any value, via str) escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def safe_url(url: str, images: bool = False) -> str | None:
    """Return `url` if it is safe to link (or, with `images`, to show), else None.

    Allowed: http, https and mailto URLs, relative URLs and fragments; with `images`, also
    inline PNG, GIF, JPEG and WebP data URLs. `javascript:`, `vbscript:`, `file:` and the rest
    are refused, however they are spelled (case, entities, percent-encoding, whitespace).
    """
    u = html.unescape(url)
    for _ in range(3):
        u = unquote(u)
    u = "".join(ch for ch in u if ch > " " and ch not in "\x7f").lower()
    if images and u.startswith(_SAFE_DATA):
        return url
    if ":" not in u.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]:
        return url  # relative
    return url if u.startswith(_SAFE_SCHEMES) else None


def highlight(code: str, lang: str | None) -> str:
    """Return `code` as a highlighted `<div class="hl"><pre>` block (plain when `lang` is unknown)."""
    lexer = None
    if lang:
        try:
            lexer = get_lexer_by_name(lang.lower(), stripnl=False)
        except ClassNotFound:
            lexer = None
    if lexer is None or len(code) > _LONG:
        return f'<div class="{CSS_CLASS}"><pre><code>{esc(code)}</code></pre></div>'
    return _pyg_highlight(code, lexer, _FORMATTER)


def pygments_css(dark_style: str = "github-dark", light_style: str = "default") -> str:
    """Return the stylesheet for highlighted code: light, and dark under prefers-color-scheme."""
    light = HtmlFormatter(style=light_style).get_style_defs(f".{CSS_CLASS}")
    dark = HtmlFormatter(style=dark_style).get_style_defs(f".{CSS_CLASS}")
    return (f"{light}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}\n")


class _Html(mistune.HTMLRenderer):
    """mistune's renderer with raw HTML escaped, safe URLs only and pygments for code."""

    def __init__(self) -> None:
        super().__init__(escape=True)

    def link(self, text: str, url: str, title: str | None = None) -> str:
        u = safe_url(url)
        if u is None:
            return f'<span class="unsafe-link" title="link removed">{text}</span>'
        t = f' title="{esc(title)}"' if title else ""
        return f'<a href="{esc(u)}" rel="noopener noreferrer nofollow" target="_blank"{t}>{text}</a>'

    def image(self, text: str, url: str, title: str | None = None) -> str:
        u = safe_url(url, images=True)
        alt = esc(html.unescape(striptags(text)) if text else "")
        if u is not None and u.lower().startswith("data:"):
            return f'<img src="{esc(u)}" alt="{alt}">'
        if u is None:
            return f'<span class="unsafe-link">[image: {alt}]</span>'
        # Remote images are linked, not loaded: the UI works offline and never phones home.
        return (f'<a class="image-link" href="{esc(u)}" rel="noopener noreferrer nofollow" '
                f'target="_blank">[image: {alt or esc(u)}]</a>')

    def block_code(self, code: str, info: str | None = None) -> str:
        lang = info.strip().split(None, 1)[0] if info and info.strip() else None
        return highlight(code, lang)


_local = threading.local()  # one parser per thread: the web layer renders in worker threads


@lru_cache(maxsize=2048)
def markdown(text: str) -> str:
    """Return `text` rendered from markdown to safe HTML (raw HTML escaped)."""
    md = getattr(_local, "md", None)
    if md is None:
        md = _local.md = mistune.create_markdown(renderer=_Html(), plugins=[
            "strikethrough", "table", "url", "task_lists"])
    return md(text)  # type: ignore[return-value]


def _json_block(text: str) -> str | None:
    """Highlighted, pretty-printed JSON if `text` is a JSON object or array, else None."""
    t = text.strip()
    if not t or t[0] not in "[{":
        return None
    try:
        value = json.loads(t)
    except ValueError:
        return None
    return highlight(json.dumps(value, indent=2, ensure_ascii=False), "json")


def json_html(value: Any) -> str:
    """Return `value` as pretty, highlighted JSON."""
    return highlight(json.dumps(value, indent=2, ensure_ascii=False), "json")


def body_html(data: bytes | None, content_type: str = "") -> str:
    """Return an HTTP body for reading: pretty JSON, SSE events, text, or a binary summary."""
    if not data:
        return '<p class="muted">(empty body)</p>'
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f'<p class="muted">{len(data)} bytes of binary data ({esc(content_type or "unknown type")})</p>'
    j = _json_block(text)
    if j is not None:
        return j
    if "event-stream" in content_type or text.startswith("data:"):
        return highlight(text, "text")
    return highlight(text, "text")


def _lazy_body(get, content_type: str) -> str:
    # Bodies of readable forms are made on first use, and large uploads read from blob files.
    try:
        return body_html(get(), content_type)
    except Exception as e:  # a missing blob file must not hide the rest of the session
        return f'<p class="muted">(body not available: {esc(e)})</p>'


def _attrs_line(attrs: dict) -> str:
    return "".join(f' <span class="attr">{esc(k)}={esc(v if isinstance(v, str) else json.dumps(v))}</span>'
                   for k, v in attrs.items())


def _content_html(content: Any, role: str) -> str:
    if isinstance(content, str):
        if role == "tool":
            j = _json_block(content)
            if j is not None:
                return f'<blockquote class="content">{j}</blockquote>'
        return f'<blockquote class="content">{markdown(content)}</blockquote>'
    if isinstance(content, list):
        out = []
        for p in content:
            out.append(_part_html(p))
        return "".join(out)
    return ""


def _part_html(p: Any) -> str:
    if not isinstance(p, dict):
        return f'<div class="part">{json_html(p)}</div>'
    t = p.get("type")
    if t == "text" and isinstance(p.get("text"), str):
        return (f'<div class="part"><h4 class="label">part text</h4>'
                f'<blockquote class="content">{markdown(p["text"])}</blockquote></div>')
    if t == "image_url" and isinstance(p.get("image_url"), dict):
        url = str(p["image_url"].get("url", ""))
        extra = {k: v for k, v in p["image_url"].items() if k != "url"}
        head = f'<h4 class="label">part image_url{_attrs_line(extra)}</h4>'
        u = safe_url(url, images=True)
        if u is not None and u.lower().startswith("data:image/"):
            return f'<div class="part">{head}<img class="inline-image" src="{esc(u)}" alt="image"></div>'
        shown = url if len(url) < 200 else url[:200] + "…"
        if u is not None:
            return (f'<div class="part">{head}<p><a href="{esc(u)}" rel="noopener noreferrer nofollow" '
                    f'target="_blank">{esc(shown)}</a></p></div>')
        return f'<div class="part">{head}<p class="muted">{esc(shown)}</p></div>'
    if t == "input_audio" and isinstance(p.get("input_audio"), dict):
        a = p["input_audio"]
        data = str(a.get("data", ""))
        try:
            n = len(base64.b64decode(data, validate=False))
        except ValueError:
            n = len(data)
        return (f'<div class="part"><h4 class="label">part input_audio</h4>'
                f'<p class="muted">{n} bytes of {esc(a.get("format", "audio"))} audio</p></div>')
    return f'<div class="part"><h4 class="label">part {esc(t or "")}</h4>{json_html(p)}</div>'


def _tool_call_html(tc: Any) -> str:
    if not isinstance(tc, dict):
        return f'<div class="tool-call">{json_html(tc)}</div>'
    fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
    args = fn.get("arguments", "")
    body = _json_block(args) if isinstance(args, str) else json_html(args)
    if body is None:
        body = highlight(str(args), "text")
    attrs = {"id": tc["id"]} if tc.get("id") else {}
    return (f'<div class="tool-call"><h4 class="label">tool_call <code>{esc(fn.get("name", "?"))}</code>'
            f'{_attrs_line(attrs)}</h4>{body}</div>')


def _meta_line(meta: dict) -> str:
    """The facts GitHub hides in the rechat:response comment, as one line."""
    bits: list[str] = []
    model = None
    usage = None
    if isinstance(meta.get("completion"), dict):
        model = meta["completion"].get("model")
        usage = meta["completion"].get("usage")
    elif isinstance(meta.get("sse"), list):
        for e in meta["sse"][:2]:
            try:
                model = model or json.loads(e).get("model")
            except (ValueError, AttributeError):
                pass
        for e in reversed(meta["sse"][-3:]):
            try:
                u = json.loads(e).get("usage")
            except (ValueError, AttributeError):
                u = None
            if isinstance(u, dict):
                usage = u
                break
    if model:
        bits.append(f'<span class="model">{esc(model)}</span>')
    ms = meta.get("ms")
    if isinstance(ms, dict) and isinstance(ms.get("total"), (int, float)):
        t = f'{ms["total"]:.0f} ms'
        if isinstance(ms.get("ttfb"), (int, float)):
            t += f' (first byte {ms["ttfb"]:.0f} ms)'
        bits.append(esc(t))
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        bits.append(esc(f'{usage.get("prompt_tokens", "?")} + {usage.get("completion_tokens", "?")} '
                        f'= {usage["total_tokens"]} tokens'))
    if meta.get("stream"):
        bits.append(f'streamed ({len(meta.get("sse") or [])} events)')
    if isinstance(meta.get("at"), str):
        bits.append(f'<time datetime="{esc(meta["at"])}">{esc(meta["at"][:19].replace("T", " "))}</time>')
    if meta.get("upstream"):
        bits.append(esc(meta["upstream"]))
    if not bits:
        return '<div class="answer-meta muted">written by hand</div>'
    return '<div class="answer-meta">' + " · ".join(bits) + "</div>"


def message_html(m: dict, index: int, line: int | None = None, meta: dict | None = None,
                 answer: int | None = None, highlight_answer: int | None = None) -> str:
    """Return one message section: `### role` heading, content, fields, parts, tool calls.

    `index` is the message's position in its session (anchor `m{index}`), `line` the 1-based
    line of its heading, `meta` the hidden response metadata of an answer, `answer` the
    answer's 0-based index among the session's answers (anchor `a{answer}`).
    """
    role = str(m.get("role", "?"))
    attrs = {k: v for k, v in m.items()
             if k not in ("role", "content", "tool_calls", "refusal")
             and (isinstance(v, (int, float, bool)) or (k in ("name", "tool_call_id") and isinstance(v, str)))}
    fields = {k: v for k, v in m.items()
              if k not in ("role", "content", "tool_calls") and k not in attrs and v is not None}
    classes = f"msg role-{esc(role)}" + (" focus" if answer is not None and answer == highlight_answer else "")
    ids = f' id="m{index}"' + (f' data-answer="{answer}"' if answer is not None else "")
    out = [f'<section class="{classes}"{ids}>',
           f'<h3 class="role">{esc(role)}{_attrs_line(attrs)}'
           + (f'<a class="line" href="#m{index}" title="line {line} of the file">L{line}</a>' if line else "")
           + (f'<span class="answer-no">answer {answer + 1}</span>' if answer is not None else "")
           + "</h3>"]
    for k, v in fields.items():
        if isinstance(v, str):
            label = f'<h4 class="label">{esc(k)}</h4>'
            body = f'<blockquote class="content">{markdown(v)}</blockquote>'
            if k in ("reasoning_content", "reasoning"):
                out.append(f'<details class="field reasoning" open><summary>{esc(k)}</summary>{body}</details>')
            else:
                out.append(f'<div class="field">{label}{body}</div>')
        else:
            out.append(f'<details class="field"><summary>{esc(k)}</summary>{json_html(v)}</details>')
    out.append(_content_html(m.get("content"), role))
    for tc in m.get("tool_calls") or []:
        out.append(_tool_call_html(tc))
    if meta is not None or (role == "assistant" and answer is not None):
        out.append(_meta_line(meta or {}))
    out.append("</section>")
    return "\n".join(out)


def params_html(params: dict) -> str:
    """Return the front matter as GitHub shows it: a table of parameters."""
    if not params:
        return ""
    rows = []
    for k, v in params.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            cell = f"<code>{esc(json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)}</code>"
        else:
            cell = f'<details><summary>{esc(_summary(v))}</summary>{json_html(v)}</details>'
        rows.append(f"<tr><th>{esc(k)}</th><td>{cell}</td></tr>")
    return '<table class="front-matter"><tbody>' + "".join(rows) + "</tbody></table>"


def _summary(v: Any) -> str:
    if isinstance(v, list):
        names = [x.get("function", {}).get("name") for x in v
                 if isinstance(x, dict) and isinstance(x.get("function"), dict)]
        if names and all(names):
            return ", ".join(names)
        return f"{len(v)} items"
    if isinstance(v, dict):
        return ", ".join(list(v)[:6])
    return str(v)


def session_html(s: Session, highlight_answer: int | None = None) -> str:
    """Return a whole session: its front matter table, then every message or exchange."""
    out = ['<article class="session markdown-body">']
    if s.kind == "generic":
        out.append(f'<p class="endpoint"><code>{esc(s.endpoint)}</code></p>')
        for i, ex in enumerate(s.exchanges):
            ctype = ""
            for k, v in (ex.meta.get("headers") or []):
                if str(k).lower() == "content-type":
                    ctype = str(v)
            focus = " focus" if i == highlight_answer else ""
            out.append(f'<section class="msg exchange{focus}" id="m{i}" data-answer="{i}">'
                       f'<h3 class="role">request<a class="line" href="#m{i}">L{ex.line}</a>'
                       f'<span class="answer-no">exchange {i + 1}</span></h3>'
                       f"{_lazy_body(lambda: ex.request_body, 'application/json')}"
                       f'<h3 class="role">response <span class="attr">{esc(ex.status)}</span></h3>'
                       f"{_lazy_body(lambda: ex.body, ctype)}{_meta_line(ex.meta)}</section>")
        out.append("</article>")
        return "\n".join(out)
    out.append(params_html(s.params))
    n = 0
    for i, m in enumerate(s.messages):
        answer = None
        if i and m.get("role") == "assistant":
            answer = n
            n += 1
        line = s.lines[i] if i < len(s.lines) else None
        out.append(message_html(m, i, line, s.responses.get(i), answer, highlight_answer))
    out.append("</article>")
    return "\n".join(out)


def conversation_html(params: dict, messages: list, answer: dict | None = None,
                      meta: dict | None = None) -> str:
    """Return one exchange as a conversation: the request's messages, then the answer."""
    out = ['<article class="session markdown-body">', params_html(params)]
    for i, m in enumerate(messages):
        if isinstance(m, dict):
            out.append(message_html(m, i))
        else:
            out.append(json_html(m))
    if answer is not None:
        out.append(message_html(answer, len(messages), meta=meta or {}, answer=0, highlight_answer=0))
    out.append("</article>")
    return "\n".join(out)


def diff_html(lines: list[str]) -> str:
    """Return unified diff lines, highlighted."""
    return highlight("\n".join(lines), "diff") if lines else '<p class="muted">(no difference)</p>'


__all__ = ["markdown", "highlight", "session_html", "conversation_html", "message_html",
           "params_html", "body_html", "json_html", "diff_html", "pygments_css", "safe_url", "esc"]
