"""The installed extension's sidecar: the bundled runtime (Blender's interpreter, isolated, on the zip's wheels)
against a named Python environment (this venv), side by side in one Blender session.

Builds the Linux x86-64 zip for this Blender line (wheels from build/wheels or PyPI), installs it with
``package_install_files`` into an empty user folder in a Python that sees only bpy and numpy, then alternates
the two runtimes over several rounds: start the sidecar on texture-mini until it is ready, make one texture,
read the resident memory of Blender's process and of the sidecar, stop. Medians per runtime.

    python benchmarks/bench_extension.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SESSION = r'''
import json, sys, time
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
t = time.perf_counter()
bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
install_s = time.perf_counter() - t
ADDON = "bl_ext.user_default.aigc_bridge"
runner = sys.modules[ADDON + ".runner"]
prefs = bpy.context.preferences.addons[ADDON].preferences
bpy.ops.mesh.primitive_cube_add()
bpy.context.object["aigc_prompt"] = "red brick wall"
settings = bpy.context.scene.aigc
settings.texture_size, settings.steps = "NATIVE", 20

def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024

rows = []
for _ in range(int(sys.argv[3])):
    for runtime, env in (("bundled", ""), ("environment", sys.argv[2])):
        prefs.python_env = env
        t = time.perf_counter()
        assert bpy.ops.aigc.start_sidecar(mode="BLOCKING") == {"FINISHED"}
        ready_s = time.perf_counter() - t
        t = time.perf_counter()
        assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
        texture_s = time.perf_counter() - t
        rows.append({"runtime": runtime, "ready_s": ready_s, "texture_s": texture_s,
                     "blender_rss_mb": rss_mb("self"), "sidecar_rss_mb": rss_mb(runner.STATE.sidecar.proc.pid),
                     "onnxruntime_in_blender": any(m.split(".")[0] == "onnxruntime" for m in sys.modules)})
        bpy.ops.aigc.stop_sidecar()
print("RESULT " + json.dumps({"install_s": install_s, "rows": rows}))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import bpy  # noqa: F401  (only to find it)
    import numpy

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "blender_addon" / "build.py"), "--platform", "linux-x64", "--line",
                        "blender4.2", "--output-dir", str(tmp / "dist")], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
        build_s = time.perf_counter() - t
        (zip_path,) = (tmp / "dist").glob("*.zip")
        zip_mb = zip_path.stat().st_size / 1e6
        only = tmp / "only-bpy"
        only.mkdir()
        (only / "bpy").symlink_to(Path(sys.modules["bpy"].__file__).resolve().parents[4])
        (only / "numpy").symlink_to(Path(numpy.__file__).parent)
        (tmp / "home").mkdir()
        env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp / "user"), "MESA_SHADER_CACHE_DIR": str(tmp),
               "PYTHONPATH": str(only), "HOME": str(tmp / "home")}
        proc = subprocess.run([sys.executable, "-S", "-c", SESSION, str(zip_path), sys.prefix, str(args.rounds)],
                              capture_output=True, text=True, env=env, cwd=tmp)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout + proc.stderr)
            return 1
        result = json.loads(line[7:])
    print(f"Linux zip {zip_mb:.1f} MB: build (wheels cached) {build_s:.1f} s, "
          f"install from disk {result['install_s']:.1f} s")
    print("| runtime | sidecar ready (s) | first texture, 32 px, 20 steps (s) | Blender RSS (MB) | sidecar RSS (MB) |")
    print("|---|---|---|---|---|")
    for runtime in ("bundled", "environment"):
        rows = [r for r in result["rows"] if r["runtime"] == runtime]
        med = {k: statistics.median(r[k] for r in rows) for k in ("ready_s", "texture_s", "blender_rss_mb",
                                                                    "sidecar_rss_mb")}
        print(f"| {runtime} | {med['ready_s']:.2f} | {med['texture_s']:.2f} | {med['blender_rss_mb']:.0f} | "
              f"{med['sidecar_rss_mb']:.0f} |")
    print(f"onnxruntime imported into Blender: {any(r['onnxruntime_in_blender'] for r in result['rows'])}; "
          f"{args.rounds} rounds, runtimes alternating")
    return 0


if __name__ == "__main__":
    sys.exit(main())
