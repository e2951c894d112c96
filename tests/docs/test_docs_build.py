"""The documentation site builds without a single warning, and agrees with its sources.

The build runs ``mkdocs build --strict`` (mkdocs.yml at the repository root) into a
temporary directory, so broken links, missing pages and docstrings the API reference
cannot render all fail here. It needs the ``docs`` extra; without it the build test is
skipped, except in CI, where a missing extra is an error.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ci import unavailable
from paths import ROOT

DOCS_PACKAGES = ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def _sh_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [m.strip() for m in re.findall(r"^```(?:sh|bash|console)\n(.*?)^```", text, re.S | re.M)]


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    missing = _missing_docs_packages()
    if missing:
        message = f"the docs extra is not installed (missing: {', '.join(missing)}); " + (
            "pip install -e '.[docs]'"
        )
        unavailable(message)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    output = done.stdout + done.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not warnings, output
    for page in ("index.html", "reference/smtp/index.html", "reference/pop3-handler/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


def test_home_page_repeats_the_readme_commands() -> None:
    readme = _sh_blocks(ROOT / "README.md")[:2]
    home = _sh_blocks(ROOT / "docs" / "index.md")[:2]
    assert home == readme, "docs/index.md must show README.md's two commands word for word"


def test_error_tree_matches_the_errors_module() -> None:
    """docs/errors.md draws the same tree as the docstring of src/handlers/errors.py."""

    def tree(text: str) -> list[str]:
        start = text.index("MailHandlerError\n")
        lines = []
        for line in text[start:].splitlines():
            if not line.strip() or line.strip().startswith("```"):
                break
            lines.append(line.strip())
        return lines

    module = (ROOT / "src" / "handlers" / "errors.py").read_text(encoding="utf-8")
    page = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert tree(page) == tree(module), "update the tree in docs/errors.md"
