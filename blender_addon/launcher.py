"""Start and stop a local `aigc-bridge serve` (bpy-free), never inside Blender's process.

Two runtimes: the one bundled with the extension (Blender's own interpreter, isolated with ``-I -S``, on the
packages Blender installed from the extension's wheels and Blender's numpy: nothing to set up), or a Python
environment the user names (e.g. one with onnxruntime-gpu for CUDA). Either way the child runs
``sidecar_boot.py``, which sets its paths, stops it when Blender is gone, and starts `aigc-bridge serve`.
It binds a free port (``tcp://127.0.0.1:0``) and writes the endpoint it got, its key and its pid to a
connection file; readiness is that file appearing with the child's pid, checked without waiting
(``poll``), so Blender's UI keeps running while the model loads. Stopping it frees the GPU memory.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .messages import UserMessage, message

STARTING, READY, FAILED, STOPPED = "starting", "ready", "failed", "stopped"
_LOG_TAIL = 600
BOOT_SCRIPT = Path(__file__).with_name("sidecar_boot.py")


@dataclass(frozen=True)
class Runtime:
    """How to run the sidecar: an interpreter, and for the bundled runtime its isolated paths."""

    python: Path
    site: Path | None = None      # the bundled packages (None: the named environment's own)
    numpy: Path | None = None     # the folder holding Blender's numpy

    @property
    def bundled(self) -> bool:
        return self.site is not None

    def command(self, parent_pid: int) -> list[str]:
        if not self.bundled:
            return [str(self.python), str(BOOT_SCRIPT), "--parent", str(parent_pid), "--"]
        return [str(self.python), "-I", "-S", str(BOOT_SCRIPT), "--parent", str(parent_pid),
                "--site", str(self.site), "--numpy", str(self.numpy), "--"]


def blender_platform() -> str:
    """This machine as Blender names platforms (linux-x64, windows-x64, macos-arm64...)."""
    system = {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    return f"{system}-{machine}"


def _find(name: str, folder: str | None = None):
    return importlib.machinery.PathFinder.find_spec(name, None if folder is None else [folder])


def bundled_runtime() -> Runtime:
    """Blender's interpreter on the extension's own packages: the folder Blender installed the extension's
    wheels into (where this Blender imports ``aigc_bridge`` from), checked to hold onnxruntime, which is
    never imported here (Blender's memory stays untouched)."""
    import aigc_bridge

    site = Path(aigc_bridge.__file__).resolve().parent.parent
    where = f"{blender_platform()}, Python {sys.version_info.major}.{sys.version_info.minor}"
    if _find("onnxruntime", str(site)) is None:
        raise LauncherError(message("no_runtime", f"This extension has no runtime bundled for this Blender "
                                    f"({where}): no onnxruntime beside aigc_bridge in {site}"))
    numpy = _find("numpy")
    if numpy is None or not numpy.submodule_search_locations:
        raise LauncherError(message("no_runtime", f"This Blender ({where}) has no numpy of its own"))
    return Runtime(Path(sys.executable), site, Path(list(numpy.submodule_search_locations)[0]).parent)


def resolve_runtime(python_env: str) -> Runtime:
    """The named environment, or (none named) the bundled runtime."""
    if python_env.strip():
        return Runtime(find_python(python_env))
    return bundled_runtime()


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
        """``python``: a Python environment's folder or interpreter; empty: the bundled runtime."""
        self.runtime = resolve_runtime(python)
        self.python = self.runtime.python
        self.model = os.path.expanduser(model.strip()) or None  # None: serve's default (texture-mini)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.connection_file = folder / f"sidecar-{os.getpid()}.json"
        self.log_path = folder / f"sidecar-{os.getpid()}.log"
        model_args = ["--model", self.model] if self.model else []
        self.cmd = [*self.runtime.command(os.getpid()), "serve", *model_args,
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
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

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
        lines = [x for x in tail.splitlines() if not x.startswith("aigc-bridge sidecar bootstrap: ")]
        last = lines[-1] if lines else "no output"
        if "aigc-bridge: error: " in last:  # the sidecar's own words (e.g. a model it cannot load)
            return message("sidecar_model", f"The sidecar could not start: {last.split('aigc-bridge: error: ', 1)[1]}"
                           f" (log: {self.log_path})")
        return message("sidecar_start", f"The sidecar exited with code {code}: {last} (log: {self.log_path})")
