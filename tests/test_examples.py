"""The bundled example sessions and the README's tour work exactly as printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from rechat.store import Store

ROOT = Path(__file__).resolve().parent.parent


def test_every_bundled_session_loads():
    errors = []
    store = Store([str(ROOT / "sessions")], on_error=errors.append)
    assert store.load() == 4 and errors == []
    assert store.answer_count == 6


def test_readme_starts_with_run_and_test():
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [ln.split("#")[0].strip() for ln in lines[:8] if ln.startswith("make ")]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "rechat replay sessions/" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_tour(start_rechat):
    rx = start_rechat("replay", str(ROOT / "sessions"), "--no-watch")
    readme = (ROOT / "README.md").read_text()
    python = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    python = python.replace("http://127.0.0.1:8910/v1", rx.url)
    out = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Paris.\nHere is a haiku:\n\nLate proxy at night")

    def post(content: str):
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
        req = urllib.request.Request(rx.url + "/chat/completions", body.encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, body = post("What is the capital of France?")
    assert status == 200 and body["choices"][0]["message"]["content"] == "Paris."
    status, body = post("What is the capital of Spain?")
    assert status == 404 and body["error"]["code"] == "rechat_miss"
    assert "sessions/france.md:6 (similarity 0.9" in body["error"]["message"]
