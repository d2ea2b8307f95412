"""Entry point of a sidecar started from Blender: a script the child Python runs, never imported by Blender.

``python [-I -S] sidecar_boot.py --parent PID [--site DIR] [--numpy DIR] -- serve ARGS...``

- ``--site``: the extension's packages as Blender installed them from its wheels (onnxruntime, tokenizers,
  pillow, openexr, pyzmq, aigc-bridge): put first on ``sys.path``. With ``-I -S`` (isolated, no site) it is the
  only folder of packages there: no user site-packages, no PYTHONPATH, no other environment.
- ``--numpy``: the folder that holds Blender's own numpy. Only the ``numpy`` package is importable from it
  (a finder for that one name); the folder itself never goes on ``sys.path``.
- ``--parent``: exit when that process (Blender) is gone, even if it crashed and never stopped us.

The first line on stderr says what it runs on (interpreter, flags, ``sys.path``), so the log shows it.
Standard library only: nothing else is importable before the paths are set.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import signal
import sys
import threading
import time

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # a plain `python script.py` puts the add-on's folder first: never import from it

BOOT = "aigc-bridge sidecar bootstrap: "


class OnlyFrom(importlib.abc.MetaPathFinder):
    """Finds the named top-level packages in one folder, and nothing else there."""

    def __init__(self, names: set[str], folder: str) -> None:
        self.names, self.folder = names, folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names:
            return importlib.machinery.PathFinder.find_spec(fullname, [self.folder])
        return None


def _parent_gone(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return True
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0  # WAIT_OBJECT_0: it exited
        finally:
            kernel32.CloseHandle(handle)
    return os.getppid() != pid  # re-parented: Blender is gone


def watch_parent(pid: int, interval: float = 1.0) -> None:
    """Stop like `kill -TERM` (the job is cancelled, the connection file removed) once Blender is gone."""

    def loop() -> None:
        while not _parent_gone(pid):
            time.sleep(interval)
        print(f"{BOOT}Blender (pid {pid}) is gone: stopping", file=sys.stderr, flush=True)
        if sys.platform == "win32":
            os._exit(0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name="watch-parent", daemon=True).start()


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(f"{BOOT}usage: sidecar_boot.py [options] -- serve ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="sidecar_boot.py")
    parser.add_argument("--parent", type=int)
    parser.add_argument("--site")
    parser.add_argument("--numpy")
    args = parser.parse_args(argv[:split])
    if args.site:
        sys.path.insert(0, args.site)
    if args.numpy:
        sys.meta_path.append(OnlyFrom({"numpy"}, args.numpy))
    print(BOOT + json.dumps({"executable": sys.executable, "isolated": sys.flags.isolated,
                             "no_site": sys.flags.no_site, "no_user_site": sys.flags.no_user_site,
                             "ignore_environment": sys.flags.ignore_environment, "path": sys.path,
                             "numpy": args.numpy}), file=sys.stderr, flush=True)
    if args.parent:
        watch_parent(args.parent)
    from aigc_bridge.cli import main as cli

    return cli(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
