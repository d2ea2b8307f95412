"""TOML line numbers for error messages: tomllib gives values, not where they were written.

A light scan of the text, good for the shapes job files use (``[defaults]``, ``[[texture]]``,
``[texture.variables]``, ``key = value``); anything it cannot place simply has no line.
"""

from __future__ import annotations

import re

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")


def _dotted(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in text.split(".")]


class LineIndex:
    """Where each table and key of a TOML document starts: ``line(("texture", 2), "steps")``."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple, int] = {}
        counts: dict[str, int] = {}
        table: tuple = ()
        prefix: list[str] = []
        in_string = None
        for number, raw in enumerate(text.splitlines(), start=1):
            if in_string is not None:  # inside a multi-line string: nothing here is a key
                if raw.count(in_string) % 2:
                    in_string = None
                continue
            if match := _ARRAY_HEADER.match(raw):
                name = ".".join(_dotted(match.group(1)))
                index = counts.get(name, 0)
                counts[name] = index + 1
                table, prefix = (name, index), []
                self._lines.setdefault((table, ""), number)
            elif match := _TABLE_HEADER.match(raw):
                parts = _dotted(match.group(1))
                parent = ".".join(parts[:-1])
                if parent in counts:  # [texture.variables] after [[texture]]: a sub-table of the last one
                    table, prefix = (parent, counts[parent] - 1), parts[-1:]
                else:
                    table, prefix = (".".join(parts),), []
                self._lines.setdefault((table, ".".join(prefix)), number)
            elif match := _KEY.match(raw):
                key = ".".join(prefix + _dotted(match.group(1)))
                self._lines.setdefault((table, key), number)
                for quote in ('"""', "'''"):
                    if raw.count(quote) % 2:
                        in_string = quote

    def line(self, table: tuple, key: str = "") -> int | None:
        """The line of ``key`` in ``table`` (``("defaults",)`` or ``("texture", 0)``), else of the closest
        enclosing key or of the table's header."""
        while True:
            if (table, key) in self._lines:
                return self._lines[(table, key)]
            if not key:
                return None
            key = key.rpartition(".")[0]
