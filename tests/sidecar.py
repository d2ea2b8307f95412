"""Helpers for the sidecar tests: the real `aigc-bridge serve` in a subprocess, or a Server on a thread,
both on real loopback sockets. Readiness is the "listening on" line the server prints (an event, not a
sleep); every process started here is stopped by the fixture that made it."""

from __future__ import annotations

import itertools
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

from aigc_bridge.client import Client

READY = "aigc-bridge sidecar listening on "
_counter = itertools.count()


class SidecarProcess:
    """`python -m aigc_bridge.cli serve ...` with a connection file; ``log`` is its stderr."""

    def __init__(self, tmp_path: Path, model: Path | None, *args: str, bind: str = "tcp://127.0.0.1:0",
                 connection_file: Path | None = None, ready_timeout: float = 60.0) -> None:
        n = next(_counter)
        self.connection_file = connection_file or tmp_path / f"sidecar-{n}.json"
        self.log_path = tmp_path / f"sidecar-{n}.log"
        cmd = [sys.executable, "-m", "aigc_bridge.cli", "serve", "--bind", bind,
               "--connection-file", str(self.connection_file), *args]
        if model is not None:
            cmd += ["--model", str(model)]
        self._log = open(self.log_path, "w")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self._readline(ready_timeout)
        if not line.startswith(READY):
            self.stop()
            raise RuntimeError(f"sidecar did not start: {line!r}\n{self.log}")
        self.endpoint = line[len(READY):].strip()

    def _readline(self, timeout: float) -> str:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return ""
        return self.proc.stdout.readline()

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def job_lines(self, request_key: str | None = None) -> list[str]:
        return [line for line in self.log.splitlines()
                if " job " in line and (request_key is None or f" job {request_key[:8]} " in line)]

    def client(self, **kwargs) -> Client:
        return Client.from_connection_file(self.connection_file, **kwargs)

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


def wait_for(client: Client, condition, timeout: float = 30.0) -> None:
    """Pump the client's socket until ``condition()`` holds (event-driven: returns as soon as a message
    makes it true)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        client.poll(0.25)


def running(job) -> bool:
    """True once the job reported a denoising step (it is on the worker, not queued)."""
    job.poll()
    p = job.progress
    return job.done or (p is not None and p.stage in ("denoising", "decoding") and p.step >= 1)
