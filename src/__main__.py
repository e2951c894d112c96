"""``python -m src``: the ``mailhandlers`` command line."""

from src.cli.main import main

raise SystemExit(main())
