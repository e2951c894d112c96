"""Griffe extension for the API reference: read our reST-flavoured docstrings as Markdown.

The docstrings in ``src`` use a few reStructuredText habits that Markdown does not
know: roles such as ``:class:`SMTPConnectionPool``` and a paragraph ending in ``::``
to introduce an indented example. This extension rewrites them before mkdocstrings
renders the page:

* a role becomes an optional cross-reference: a link when the target is documented
  on some page of the site, plain code otherwise (``~`` keeps only the last name);
* a trailing ``::`` becomes ``:``; the indented block after it is already a Markdown
  code block.

The source files are left untouched. Loaded through ``extensions`` in mkdocs.yml.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
_LITERAL_INTRO = re.compile(r"(?m)(\S)::[ \t]*$")


def _target(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` means where ``obj`` is documented, if it can be found."""
    name = name.removesuffix("()")
    if name.startswith("src."):
        return name
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, ValueError):
            scope = scope.parent
            continue
        return f"{path}.{rest}" if rest else path
    return None


def _rewrite(obj: griffe.Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2)
        title = name.rsplit(".", 1)[-1] if short else name
        code = f"<code>{html.escape(title)}</code>"
        path = _target(obj, name)
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return _LITERAL_INTRO.sub(r"\1:", _ROLE.sub(role, text))


class RstRoles(griffe.Extension):
    """Rewrite reST roles and ``::`` in every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj, obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)  # type: ignore[arg-type]
