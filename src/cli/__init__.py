"""The ``mailhandlers`` command line: ``send``, ``fetch``, ``check`` and ``demo``.

Run it as ``mailhandlers`` (the console script) or ``python -m src``. Each command
lives in its own module; :mod:`src.cli.main` builds the parser and turns failures
into one-line messages and the exit codes listed in :class:`ExitCode`.
"""

from .common import ExitCode
from .main import main

__all__ = ["ExitCode", "main"]
