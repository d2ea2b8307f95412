"""Export a model into the models folder from the preferences (bpy-free): `aigc-bridge export` runs in its
own process, in the Python environment the user named (the one with the export extra: torch never enters
Blender, nor the bundled runtime), and ``advance`` (called by the runner's timer) follows its output
without waiting: a progress bar from the graphs it writes, its last line, and a message at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .launcher import LauncherError, find_python
from .messages import message

POLL_S = 0.25
_GRAPHS = 9  # graphs a typical SD export writes (encoder, UNet and VAE, each with its tiling variants)


@dataclass
class ExportJob:
    proc: subprocess.Popen
    out_dir: Path
    log_path: Path
    started_at: float
    line: str = ""
    graphs: int = 0
    _read: int = 0

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def fraction(self) -> float:
        return min(0.95, self.graphs / _GRAPHS)

    def read(self) -> None:
        """Take in the lines written since the last call (never waits)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._read)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1
        self._read += end
        for raw in chunk[:end].decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if line:
                self.line = line[:160]
                self.graphs += line.startswith("exporting ")


@dataclass
class State:
    job: ExportJob | None = None
    message: str = ""
    failed: bool = False


STATE = State()


def export_options(loras: str = "", embeddings: str = "", controlnets: str = "", config: str = "",
                   family: str = "") -> list[str]:
    """The exporter's flags from the preferences' fields (lists separated by ";"), as `aigc-bridge export` takes
    them: the exporter itself checks each one and says what is wrong."""
    args: list[str] = []
    for flag, text in (("--lora", loras), ("--embedding", embeddings), ("--controlnet", controlnets)):
        args += [a for item in text.split(";") if item.strip() for a in (flag, item.strip())]
    if config.strip():
        args += ["--config", os.path.expanduser(config.strip())]
    if family.strip():
        args += ["--family", family.strip()]
    return args


def start(python_env: str, source: str, models_folder: str, name: str, options: list[str] = ()) -> ExportJob:
    """Check what can be checked here, then launch the export (returns at once); ``options``: export_options'."""
    if STATE.job is not None and STATE.job.running:
        raise LauncherError(message("export", "An export is already running"))
    if not python_env.strip():
        raise LauncherError(message("export", "Exporting needs a Python environment with the export extra: the "
                                    "runtime bundled with the extension has no torch, by design"))
    python = find_python(python_env)
    if not source.strip():
        raise LauncherError(message("export", "Set Source to a diffusers folder or a Hugging Face hub id"))
    folder = Path(os.path.expanduser(models_folder.strip())) if models_folder.strip() else None
    if folder is None or not folder.is_dir():
        raise LauncherError(message("models_folder", f"The models folder {folder or '(not set)'} does not exist"))
    name = name.strip() or Path(source.strip().rstrip("/\\")).name.replace("/", "-")
    out_dir = folder / name
    if out_dir.exists():
        raise LauncherError(message("export", f"{out_dir} already exists: give the package another name"))
    log_path = folder / f".{name}.export.log"
    flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(python), "-u", "-m", "aigc_bridge.cli", "export", source.strip(), str(out_dir),
                                 "--model-id", name, *options], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, creationflags=flags)
    STATE.job, STATE.message, STATE.failed = ExportJob(proc, out_dir, log_path, time.monotonic()), "", False
    return STATE.job


def advance() -> float | None:
    """The timer's part: follow the export; None once it is over (or there is none)."""
    job = STATE.job
    if job is None:
        return None
    job.read()
    if job.running:
        return POLL_S
    code = job.proc.returncode
    STATE.job = None
    if code == 0 and (job.out_dir / "model.json").is_file():
        from . import model_list

        model_list.forget()
        STATE.message, STATE.failed = (f"Exported {job.out_dir.name} into {job.out_dir.parent} "
                                       f"({time.monotonic() - job.started_at:.0f} s)"), False
    else:
        last = job.line.split("aigc-bridge: error: ", 1)[-1] or f"exit code {code}"
        STATE.message, STATE.failed = f"Export failed: {last} (log: {job.log_path})", True
    return None


def cancel() -> None:
    job = STATE.job
    if job is not None and job.running:
        job.proc.kill()
        job.proc.wait()
        STATE.job, STATE.message, STATE.failed = None, "Export cancelled.", False
