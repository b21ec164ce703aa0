"""The console: each exchange printed as readable markdown, marked replay / record / miss.

Owns everything printed while rechat runs; the only core-side module that imports rich. It
subscribes to the proxy's events and never feeds anything back. `--quiet` prints only errors,
`--verbose` adds the request parameters and timings, like the original rechat's console.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from rich.console import Console
from rich.logging import RichHandler
from rich.padding import Padding
from rich.progress import Progress
from rich.text import Text

from rechat import answers
from rechat.store import shown_messages
from rechat.errors import SessionFormatError
from rechat.exchange import Exchange
from rechat.fingerprint import request_params
from rechat.proxy import ProxyEvent

_STYLE = {"replay": "bold green", "record": "bold yellow", "forward": "bold cyan",
          "miss": "bold red", "error": "bold red"}
_LABEL = {"replay": "replayed", "record": "forwarded+recorded", "forward": "forwarded",
          "miss": "miss", "error": "error"}
_LIMIT = 1200  # characters of a message shown without --verbose


class ConsoleView:
    """Prints events; `level` is "quiet", "normal" or "verbose"."""

    def __init__(self, level: str = "normal", console: Console | None = None,
                 show_diff: bool = False) -> None:
        self.level = level
        self.show_diff = show_diff
        self.out = console or Console(highlight=False, soft_wrap=True)
        self.counts: Counter[str] = Counter()
        self.saved_ms = 0.0
        self._progress: Progress | None = None
        self._load_started: float | None = None
        logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True,
                            handlers=[RichHandler(console=Console(stderr=True), show_path=False)])

    # -- lifecycle -------------------------------------------------------------------------

    def progress(self, done: int, total: int) -> None:
        """Show a progress bar once loading the session files has taken more than 0.3 s."""
        if self.level == "quiet":
            return
        now = time.monotonic()
        if self._load_started is None:
            self._load_started = now
        if self._progress is None and (done >= total or now - self._load_started < 0.3):
            return
        if self._progress is None:
            self._progress = Progress(console=self.out, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("loading sessions", total=total)
        self._progress.update(self._task, completed=done)
        if done >= total:
            self._progress.stop()
            self._progress = None

    def ready(self, config, store, url: str) -> None:
        """Print where rechat listens and the line that points a client at it."""
        if self.level == "quiet":
            return
        up = config.upstream if config.mode.value != "replay" else "none (offline)"
        if isinstance(up, list):
            up = ", ".join(up)
        self.out.print(Text.assemble(("rechat ", "bold"), (config.mode.value, "bold magenta"),
                                     f" · listening on {url}/v1 · upstream {up}"))
        self.out.print(f"sessions: {', '.join(store.dirs)} · {len(store.files)} files, "
                       f"{store.answer_count} answers"
                       + (f", {len(store.errors)} broken" if store.errors else ""))
        if config.ui:
            self.out.print(f"web UI: {url}/")
        self.out.print(Text(f"export OPENAI_BASE_URL={url}/v1", style="bold"))

    def summary(self) -> None:
        """Print a one-line summary of the run."""
        if self.level == "quiet" or not self.counts:
            return
        c = self.counts
        self.out.print(f"rechat: {sum(c.values())} requests · {c['replay']} replayed · "
                       f"{c['record']} recorded · {c['forward']} forwarded · {c['miss']} missed"
                       + (f" · {c['error']} errors" if c["error"] else "")
                       + f" · {_duration(self.saved_ms)} saved")

    # -- events ----------------------------------------------------------------------------

    def session_error(self, err: SessionFormatError) -> None:
        """Report a session file that could not be read (always shown)."""
        self.out.print(Text(f"broken session {err}", style="bold red"))

    def reloaded(self, path: str) -> None:
        """Note that a hand-edited session file was re-indexed."""
        if self.level != "quiet":
            self.out.print(Text(f"reloaded {path}", style="dim"))

    def event(self, ev: ProxyEvent) -> None:
        """Print one exchange."""
        if ev.kind == "start":
            return
        self.counts[ev.kind] += 1
        if ev.kind == "replay" and ev.answer is not None:
            self.saved_ms += float(ev.answer.meta.get("ms", {}).get("total", 0) or 0)
        if self.level == "quiet" and ev.kind != "error":
            return
        req = ev.request
        body = req.json if isinstance(req.json, dict) else {}
        status = ev.response.status if ev.response is not None else 404
        label = _LABEL[ev.kind]
        if ev.kind == "replay" and ev.similarity is not None:
            label = f"replayed fuzzy {ev.similarity:.2f}"
        head = Text.assemble((f"[{label}]", _STYLE[ev.kind]), " ",
                             f"{req.method} {req.path} {status}")
        if body.get("model"):
            head.append(f" · {body['model']}", "magenta")
        head.append(f" · {ev.ms:.0f} ms", "dim")
        if ev.position and ev.position[1] > 1:
            head.append(f" · answer {ev.position[0] + 1}/{ev.position[1]}", "dim")
        if ev.file:
            head.append(f" · {ev.file.rsplit('/', 1)[-1]}", "dim")
        self.out.print(head)
        if self.show_diff and ev.diff:
            self._diff(ev.diff)
        if ev.detail:
            self.out.print(Padding(Text(ev.detail, style="red" if ev.kind != "forward" else "dim"),
                                   (0, 0, 0, 2)))
        if self.level == "verbose":
            params = request_params(body) if req.is_chat else {}
            if params:
                self.out.print(Padding(Text(json.dumps(params, ensure_ascii=False)[:2000],
                                            style="dim"), (0, 0, 0, 2)))
            r = ev.response
            if r is not None and r.total_ms:
                self.out.print(Padding(Text(f"upstream: ttfb {r.ttfb_ms:.1f} ms, "
                                            f"total {r.total_ms:.1f} ms", style="dim"), (0, 0, 0, 2)))
        if not req.is_chat:
            return
        msgs = shown_messages(req.path, body["messages"])
        if msgs:
            self._message(msgs[-1])
        answer = self._answer(ev)
        if answer:
            self._message(answer)

    def _diff(self, lines: list[str]) -> None:
        style = {"+": "green", "-": "red", "@": "cyan"}
        for line in lines:
            self.out.print(Padding(Text(line, style=style.get(line[:1], "dim")), (0, 0, 0, 2)))

    def _answer(self, ev: ProxyEvent) -> dict | None:
        if ev.answer is not None and ev.answer.message is not None:
            return ev.answer.message
        if ev.file and ev.response is not None:
            got = answers.chat_answer(Exchange(ev.request, ev.response))
            return got[0] if got else None
        return None

    def _message(self, m: dict) -> None:
        if not isinstance(m, dict):
            return
        self.out.print(Padding(Text(f"### {m.get('role', '?')}", style="bold blue"), (0, 0, 0, 2)))
        parts: list[str] = []
        for key in ("reasoning_content", "reasoning"):
            if isinstance(m.get(key), str):
                parts.append(f"({key}) {m[key]}")
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts += [p.get("text") or f"[{p.get('type')}]" for p in c if isinstance(p, dict)]
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function", {}) if isinstance(tc, dict) else {}
            parts.append(f"→ {fn.get('name')}({fn.get('arguments')})")
        text = "\n".join(parts)
        if self.level != "verbose" and len(text) > _LIMIT:
            text = text[:_LIMIT] + f" … ({len(text) - _LIMIT} more characters)"
        self.out.print(Padding(Text(text), (0, 0, 0, 4)))


def _duration(ms: float) -> str:
    """`ms` for people: 0.4 s, 12 s, 3 min 05 s, 2 h 10 min."""
    s = ms / 1000
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


__all__ = ["ConsoleView"]
