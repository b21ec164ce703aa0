"""Hot reload: watchfiles watches the sessions folders and re-indexes what people edit.

Owns the watcher task; the only module that imports watchfiles. Plugged into the app's
`cleanup_ctx`, it starts with the server and stops with it. A file created, edited or deleted
by hand is served within a second of saving (debounce 50 ms); the store's own writes are
recognised (`Store.is_own_write`) and do not trigger a reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

import watchfiles

from rechat.store import Store

log = logging.getLogger("rechat")


def _watched(path: str, roots: list[str]) -> bool:
    # Session files and folders (a folder moved in or out is one event); never anything in or
    # under a dot-name below a sessions folder: the store's temp files, `.rechat/log.sqlite`.
    for root in roots:
        if path.startswith(root + os.sep):
            return not any(p.startswith(".") for p in path[len(root) + 1:].split(os.sep))
    return not os.path.basename(path).startswith(".")


class Watcher:
    """Watch `store.dirs` and call `store.reload_file` for changed session files.

    `on_reload(path)` is called after a file was re-indexed (or removed).
    """

    def __init__(self, store: Store, on_reload: Callable[[str], None] | None = None,
                 debounce_ms: int = 50) -> None:
        self.store = store
        self.on_reload = on_reload or (lambda p: None)
        self.debounce_ms = debounce_ms
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Start watching in a background task."""
        for d in self.store.dirs:
            os.makedirs(d, exist_ok=True)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop watching and wait for the task to end."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()

    def _session_files(self, path: str) -> list[str]:
        """The session files a change at `path` concerns: itself, or those in a folder."""
        if path.endswith(".md"):
            return [path]
        if os.path.isdir(path):
            return sorted(os.path.join(root, n) for root, dirs, names in os.walk(path)
                          for n in names if n.endswith(".md") and not n.startswith(".")
                          if not any(part.startswith(".") for part in os.path.relpath(
                              root, path).split(os.sep) if part != "."))
        prefix = os.path.abspath(path) + os.sep  # a folder removed or moved away
        return [f for f in list(self.store.files) if f.startswith(prefix)]

    async def _run(self) -> None:
        watch = watchfiles.awatch(*self.store.dirs, stop_event=self._stop, debounce=self.debounce_ms,
                                  step=25, watch_filter=lambda _c, p: _watched(p, self.store.dirs),
                                  recursive=True, yield_on_timeout=False)
        self.ready.set()
        try:
            async for changes in watch:
                for path in sorted({p for _, p in changes}):
                    for file in self._session_files(path):
                        if self.store.is_own_write(file):
                            continue
                        try:
                            if self.store.reload_file(file):
                                self.on_reload(file)
                        except Exception:
                            log.exception("reloading %s failed", file)
        except Exception:
            log.exception("the sessions watcher stopped")
