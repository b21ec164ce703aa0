"""docs/usage.md embeds the CLI's help; this test fails when they drift apart.

Run `RECHAT_UPDATE_DOCS=1 make test PYTEST_ARGS=tests/test_docs.py` to rewrite the blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "usage.md"
BLOCK = re.compile(r"(<!-- help: (?P<cmd>[a-z ]*) -->\n```text\n)(?P<body>.*?)(```)", re.S)


def _help(cmd: str) -> str:
    out = subprocess.run([sys.executable, "-m", "rechat", *cmd.split(), "--help"],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr
    return "\n".join(line.rstrip() for line in out.stdout.splitlines()).strip() + "\n"


def test_usage_doc_embeds_current_help():
    text = DOC.read_text()
    blocks = list(BLOCK.finditer(text))
    assert {m["cmd"] for m in blocks} >= {"", "serve", "record", "replay"}
    if os.environ.get("RECHAT_UPDATE_DOCS"):
        DOC.write_text(BLOCK.sub(lambda m: m.group(1) + _help(m["cmd"]) + m.group(4), text))
        return
    for m in blocks:
        assert m["body"] == _help(m["cmd"]), f"docs/usage.md is stale for `rechat {m['cmd']} --help`"
