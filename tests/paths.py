"""Where things are, for tests at any depth below ``tests/``."""

from __future__ import annotations

from pathlib import Path

#: The project's root: pyproject.toml, README.md, src/, docs/, examples/.
ROOT = Path(__file__).resolve().parents[1]
#: Hand-written test messages.
DATA = ROOT / "tests" / "data"
#: The package under test.
PACKAGE = ROOT / "src" / "handlers"
#: Runnable examples.
EXAMPLES = ROOT / "examples"
#: The shared corpus of real-world mail, beside the project (read-only, never copied in).
CORPUS = ROOT.parent / "shared" / "mail-corpus"
