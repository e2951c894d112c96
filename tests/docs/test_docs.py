"""Every Python sample in the project's documentation runs as written.

Each page's ``python`` blocks run in order in one namespace, so a page can start a
local server in its first block and use it below. Pages clean up after themselves;
any server they leave running is stopped here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from paths import ROOT

PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "SMTP_HANDLER.md",
        ROOT / "POP3_HANDLER.md",
        *(ROOT / "docs").glob("**/*.md"),
    ]
)
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, code) for each ```python block of a page."""
    text = page.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in _BLOCK.finditer(text)]


def _stop_leftovers(namespace: dict[str, Any]) -> None:
    for value in namespace.values():
        stop = getattr(value, "stop", None)
        if callable(stop) and type(value).__module__.startswith("src.testing"):
            stop()


@pytest.mark.parametrize(
    "page", [p for p in PAGES if p.exists() and python_blocks(p)], ids=lambda p: p.name
)
def test_page_samples_run(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    try:
        for line, code in python_blocks(page):
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
    finally:
        _stop_leftovers(namespace)


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^```(?:sh|bash|console)\n(.*?)^```", text, re.S | re.M)
    assert len(commands) >= 2
    first, second = commands[0].strip(), commands[1].strip()
    assert "quickstart" in first or " demo" in first
    # The demo needs the servers, not the whole test tool chain.
    assert "'.[testing]'" in first and "[test]" not in first
    assert second.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert second in ci


def test_quickstart_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert '"status": "success"' in done.stdout


@pytest.mark.parametrize("page", ["SMTP_HANDLER.md", "POP3_HANDLER.md"])
def test_the_spec_test_commands_name_files_pytest_collects(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    section = text[text.index("## The spec's test command") :]
    [commands] = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    paths = re.findall(r"python -m pytest (tests/\S+\.py)", commands)
    assert paths
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^\d+ tests collected", done.stdout, re.M), done.stdout
