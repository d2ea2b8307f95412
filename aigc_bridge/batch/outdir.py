"""The --out folder: one writer at a time, output sets written as transactions, leftovers of a killed run
removed.

``write_all_atomic`` never leaves a partial set behind when it can run its cleanup; a SIGKILL (or a power
cut) can still leave its hidden temporaries, and a set whose renames were cut short. The next run removes
the temporaries here, and remakes the set because the manifest never recorded it.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ..assets.outputs import BuiltOutput
from ..assets.writers import write_all_atomic
from ..errors import AigcError
from .names import inside

LOCK_NAME = ".batch.lock"
# write_all_atomic's temporaries (".wall.png.k2j4_x9a.part") and the Blender step's (".scene.tmp-4242.blend").
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.part$|^\..+\.tmp-\d+\.(blend|glb)$")


def is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.match(name))


def remove_temporaries(out: Path) -> list[str]:
    """Delete what a killed run left half-written in ``out`` (top level only: names are flat)."""
    removed = []
    for entry in os.scandir(out):
        if entry.is_file(follow_symlinks=False) and is_temporary(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return sorted(removed)


def write_set(out: Path, files: list[BuiltOutput]) -> list[Path]:
    """One output set, all files or none; every path is checked to be inside ``out`` first."""
    paths = [inside(out, out / f.filename) for f in files]
    return write_all_atomic([(p, f.data) for p, f in zip(paths, files)])


class OutLock:
    """An exclusive lock on ``out``: two runs writing one manifest would each lose the other's entries."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; the run goes ahead unguarded
            return self
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise AigcError("busy", f"another `aigc-bridge batch` is writing into {self.path.parent}; wait for "
                            "it to finish (or stop it) first", "out") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock; the file stays (removing it would race)
            self._fd = None
