"""Output names: a job's name becomes file names inside --out, so it must never reach outside it.

Names are refused, not silently rewritten: a quietly "fixed" name makes two jobs write the same file, or a
file appear somewhere nobody looks. The rules are the strictest of Windows, macOS and Linux, so a job file
that works on one works on all.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_NAME_CHARS = 100
_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# Device names Windows refuses as file stems, whatever the extension.
_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                               *(f"lpt{i}" for i in range(1, 10))})


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be an output name (None when it can): one plain file stem, letters, digits,
    ``_``, ``-`` and ``.``, starting with a letter or digit, no ``..``, at most 100 characters."""
    if not isinstance(name, str):
        return f"must be text, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if "/" in name or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return (f"{name!r} contains a path; a name is one file stem inside --out (no '/', '\\' or drive), "
                "e.g. 'brick_wall'")
    if os.path.isabs(name):
        return f"{name!r} is an absolute path; a name is one file stem inside --out"
    if ".." in name:
        return f"{name!r} contains '..'; a name is one file stem inside --out"
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name)} characters long; the limit is {MAX_NAME_CHARS}"
    if not _ALLOWED.fullmatch(name):
        odd = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        if odd:
            return (f"{name!r} contains {', '.join(repr(c) for c in odd)}; use letters, digits, '_', '-' "
                    "and '.'")
        return f"{name!r} must start with a letter or a digit"
    if name.endswith("."):
        return f"{name!r} ends with '.', which Windows drops"
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        return f"{name!r} is a device name on Windows"
    return None


def inside(folder: Path, path: Path) -> Path:
    """``path`` resolved, if it lies in ``folder``; the last guard before a write, whatever the checks
    before it missed."""
    root = folder.resolve()
    resolved = path.resolve()
    if resolved.parent != root and root not in resolved.parents:
        raise ValueError(f"{path} is outside {folder}")
    return resolved
