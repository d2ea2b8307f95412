"""Start and stop a local `aigc-bridge serve` from a Python environment the user names (bpy-free).

The sidecar runs in its own Python (the one with ``aigc-bridge[gpu]`` and onnxruntime), never inside
Blender's. It binds a free port (``tcp://127.0.0.1:0``) and writes the endpoint it got, its key and its pid
to a connection file; readiness is that file appearing with the child's pid, checked without waiting
(``poll``), so Blender's UI keeps running while the model loads. Stopping it frees the GPU memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .messages import UserMessage, message

STARTING, READY, FAILED, STOPPED = "starting", "ready", "failed", "stopped"
_LOG_TAIL = 600


def find_python(path: str) -> Path:
    """The interpreter of an environment: the folder (venv/conda root or its bin/Scripts) or the file."""
    p = Path(os.path.expanduser(path.strip()))
    candidates = [p] if p.is_file() else [
        p / "bin" / "python3", p / "bin" / "python", p / "Scripts" / "python.exe", p / "python.exe",
        p / "python3", p / "python"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise LauncherError(message("sidecar_start", f"No Python interpreter found in {path!r}: point Python "
                                "environment at the folder of the environment that has aigc-bridge[gpu] "
                                "(the one holding bin/python or Scripts\\python.exe)"))


class LauncherError(Exception):
    """A sidecar that cannot start, as a UserMessage."""

    def __init__(self, user_message: UserMessage) -> None:
        super().__init__(str(user_message))
        self.user_message = user_message


class LocalSidecar:
    """One child `aigc-bridge serve` process, its connection file and its log."""

    def __init__(self, python: str, model: str, folder: str | os.PathLike, *, provider: str = "auto",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.python = find_python(python)
        self.model = os.path.expanduser(model.strip()) or None  # None: serve's default (texture-mini)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.connection_file = folder / f"sidecar-{os.getpid()}.json"
        self.log_path = folder / f"sidecar-{os.getpid()}.log"
        model_args = ["--model", self.model] if self.model else []
        self.cmd = [str(self.python), "-m", "aigc_bridge.cli", "serve", *model_args,
                    "--bind", "tcp://127.0.0.1:0", "--connection-file", str(self.connection_file),
                    "--provider", provider, *extra_args]
        self.proc: subprocess.Popen | None = None
        self.state = STOPPED
        self.error: UserMessage | None = None
        self.endpoint: str | None = None
        self.started_at = 0.0

    def start(self) -> None:
        """Launch the child (returns at once; follow with ``poll``)."""
        self.connection_file.unlink(missing_ok=True)  # a stale file from a crashed run is not readiness
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0  # no console window pops up
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         creationflags=flags)
        self.state, self.error, self.started_at = STARTING, None, time.monotonic()

    def poll(self) -> str:
        """STARTING, READY, FAILED or STOPPED, without waiting."""
        if self.proc is None:
            return self.state
        code = self.proc.poll()
        if code is not None:
            if self.state != STOPPED:
                self.state = FAILED
                self.error = self._failure(code)
            return self.state
        if self.state == STARTING:
            info = self._read_connection_file()
            if info is not None and info.get("pid") == self.proc.pid:
                self.endpoint = info.get("endpoint")
                self.state = READY
        return self.state

    def wait_ready(self, timeout: float = 180.0) -> str:
        """Block until READY or FAILED (background mode and scripts)."""
        deadline = time.monotonic() + timeout
        while self.poll() == STARTING:
            if time.monotonic() > deadline:
                self.stop()
                self.state = FAILED
                self.error = message("sidecar_start", f"The sidecar did not become ready in {timeout:.0f} s; "
                                     f"its log: {self.log_path}")
                break
            time.sleep(0.1)
        return self.state

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to exit (SIGTERM: it cancels its running job within one step and removes its
        connection file; Windows has no SIGTERM: terminated at once), kill it if it does not."""
        if self.proc is not None and self.proc.poll() is None:
            if sys.platform == "win32":
                self.proc.terminate()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.connection_file.unlink(missing_ok=True)
        self.state = STOPPED

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL:].strip()

    def _read_connection_file(self) -> dict | None:
        try:
            data = json.loads(self.connection_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not there yet, or half written (the server writes it atomically, but be safe)
        return data if isinstance(data, dict) else None

    def _failure(self, code: int) -> UserMessage:
        tail = self.log_tail()
        if "No module named aigc_bridge" in tail or "No module named 'aigc_bridge'" in tail:
            return message("sidecar_start", f"The Python at {self.python} has no aigc-bridge: install it "
                           "there with pip install 'aigc-bridge[gpu]' (or [cpu])")
        last = tail.splitlines()[-1] if tail else "no output"
        return message("sidecar_start", f"The sidecar exited with code {code}: {last} (log: {self.log_path})")
