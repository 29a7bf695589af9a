"""Every ```python block of README.md runs as it stands.

Each block is a complete program; a block whose first line is `# continued` is appended to the
program before it. Each program runs in a fresh interpreter, in an empty directory, with a
timeout. The examples that call an API read its base URL from `MARKET_API` (Binance's public
API when unset, as a user runs them); here it points at a loopback server that answers the
paths they use, so no traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loopback import Response

README = Path(__file__).parent.parent / "README.md"
CONTINUED = "# continued"
CANDLES = [[1732489200000, "97000.5", "97100.0", "96950.0", "97080.2", "12.3"]]


def programs(text: str) -> list[tuple[int, str]]:
    """(line of the first block, source) of each program in `text`."""
    found: list[tuple[int, str]] = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        line = text.count("\n", 0, match.start()) + 1
        source = match.group(1)
        if source.startswith(CONTINUED):
            if not found:
                raise ValueError(f"README.md:{line}: the first python block cannot be a continuation")
            first_line, before = found.pop()
            found.append((first_line, before + "\n" + source))
        else:
            found.append((line, source))
    return found


PROGRAMS = programs(README.read_text(encoding="utf-8"))


def test_the_readme_has_examples():
    assert len(PROGRAMS) >= 4


def test_a_continued_block_joins_the_one_before():
    text = "```python\nx = 1\n```\n\n```python\n# continued\nprint(x)\n```\n\n```python\ny = 2\n```\n"
    assert programs(text) == [(1, "x = 1\n\n# continued\nprint(x)\n"), (10, "y = 2\n")]


@pytest.mark.parametrize("source", [source for _, source in PROGRAMS], ids=[f"README.md:{line}" for line, _ in PROGRAMS])
def test_example_runs(source, tmp_path, http_server):
    http_server.script("/api/v3/klines", Response.json(CANDLES))
    env = {**os.environ, "MARKET_API": http_server.base_url, "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", source], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "Traceback" not in run.stderr and "Error fetching market data" not in run.stderr, run.stderr
