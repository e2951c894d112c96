"""``Secret`` and ``keyed_digest``, which live in ``_net.secret`` so the network layer
can hold credentials too; imported here for the code that has always found them here."""

from __future__ import annotations

from .._net.secret import Secret, keyed_digest

__all__ = ["Secret", "keyed_digest"]
