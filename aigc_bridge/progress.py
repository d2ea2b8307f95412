"""A terminal progress bar on stderr (no dependency), drawn only where a person is watching."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = time.monotonic()
        self._line = ""

    def update(self, done: int, note: str = "") -> None:
        """Redraw with ``done`` of ``total``; ``note`` (e.g. "jobs 3/20") follows the ETA."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        filled = int(self.width * min(done, self.total) / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        self._line = (f"{self.label} [{bar}] {done}/{self.total}  {elapsed:5.1f}s  eta {eta:5.1f}s"
                      + (f"  {note}" if note else ""))
        self.stream.write("\r\033[K" + self._line)
        self.stream.flush()

    def log(self, message: str) -> None:
        """A line of its own above the bar (or just the line where nobody watches), so logs and the bar
        do not garble each other."""
        if self.enabled:
            self.stream.write("\r\033[K" + message + "\n" + self._line)
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
