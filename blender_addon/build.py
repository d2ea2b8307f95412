"""Build the installable extension zips: `make addon` (or `python blender_addon/build.py`).

One zip per platform and Blender line, each carrying the whole sidecar runtime as wheels, so an artist
installs one file and presses Generate, with no Python environment of their own:

- Blender 4.2 - 5.0 (Python 3.11) and Blender 5.1+ (Python 3.13): ``blender4.2`` / ``blender5.1`` zips
  (``blender_version_max`` / ``_min`` keep each in its line; one zip for both would carry every wheel twice);
- per platform (Blender's own ``extension build --split-platforms``): onnxruntime (CPU on Linux, DirectML on
  Windows, the Core ML build on macOS), tokenizers, pillow, openexr, pyzmq, and the aigc-bridge runtime (with
  texture-mini) as our own wheel. numpy is Blender's.

Wheels come from PyPI with `pip download --only-binary=:all: --no-deps --platform ... --python-version ...`
(never a source build) into ``build/wheels`` (kept between runs: the only cache, inside the checkout); a
wheel missing for a platform we claim stops the build with its name. The staged extension (``build/
extension-*``, the add-on's files plus a manifest listing the wheels) goes through Blender's builder and
every zip through Blender's ``extension validate``, both from the installed ``bpy`` (bl_pkg), in throwaway
user folders. Nothing is written into ``blender_addon/``. Needs the dev venv (pip, setuptools, bpy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD = REPO / "build"
CACHE = BUILD / "wheels"
MANIFEST = HERE / "blender_manifest.toml"
# The add-on's own files that go into the zip (build.py itself does not).
ADDON_FILES = tuple(sorted(p.name for p in HERE.glob("*.py") if p.name != "build.py"))


@dataclass(frozen=True)
class Line:
    """A Blender line: its Python, and the Blender versions it covers (manifest bounds)."""

    name: str
    python: str
    blender_min: str
    blender_max: str | None  # exclusive, as the manifest's blender_version_max


LINES = (Line("blender4.2", "3.11", "4.2.0", "5.1.0"), Line("blender5.1", "3.13", "5.1.0", None))

# Blender platform -> pip platform tags (newest first; the manylinux baseline is Blender's glibc 2.28) and the
# onnxruntime build for it. onnxruntime stopped publishing Intel-macOS wheels after 1.23.2: that platform
# keeps the last one (opset 17 graphs, what our exporter writes, run on it).
PLATFORMS = {
    "linux-x64": (("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
                  "onnxruntime==1.32.0"),
    "windows-x64": (("win_amd64",), "onnxruntime-directml==1.24.4"),
    "macos-arm64": (("macosx_14_0_arm64", "macosx_11_0_arm64", "macosx_10_15_universal2"), "onnxruntime==1.32.0"),
    "macos-x64": (("macosx_13_0_x86_64", "macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_15_universal2"),
                  "onnxruntime==1.23.2"),
}
# Pinned to the dev venv's versions: the tests run the sidecar on the same ones.
COMMON = ("pyzmq==27.3.0", "tokenizers==0.23.3", "pillow==13.0.0", "openexr==3.5.3")
RUNTIME_DIST = "aigc_bridge"
RUNTIME_EXCLUDE = ("__pycache__", "*.pyc")


def log(message: str) -> None:
    print(f"[addon] {message}", flush=True)


def fail(message: str) -> None:
    sys.exit(f"[addon] error: {message}")


def run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        fail(f"{what}\n  {' '.join(cmd)}\n{result.stdout}{result.stderr}")
    return result


def _dist(requirement: str) -> str:
    return re.sub(r"[-_.]+", "_", requirement.split("==")[0]).lower()


def _wheel_dist(filename: str) -> str:
    return re.sub(r"[-_.]+", "_", filename.split("-")[0]).lower()


def download(platform: str, python: str, offline: bool) -> list[Path]:
    """The wheels one platform and Python need, from build/wheels or PyPI; fails naming any missing one."""
    tags, onnxruntime = PLATFORMS[platform]
    requirements = (onnxruntime, *COMMON)
    key = hashlib.sha256(json.dumps([platform, python, tags, requirements]).encode()).hexdigest()[:12]
    record = CACHE / f"{platform}-py{python}-{key}.json"
    if record.exists():
        files = [CACHE / name for name in json.loads(record.read_text())]
        if all(f.exists() for f in files):
            return files
    if offline:
        fail(f"--offline, but build/wheels has no wheels for {platform}, Python {python}: run once online")
    files: list[Path] = []
    for requirement in requirements:
        with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-cache-dir",
                   "--only-binary=:all:", "--no-deps", "--python-version", python, "--implementation", "cp",
                   *[arg for tag in tags for arg in ("--platform", tag)], requirement, "-d", tmp]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if result.returncode != 0 or len(wheels) != 1:
                detail = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
                fail(f"no {requirement} wheel for {platform} (Python {python}, tags {', '.join(tags)}) on PyPI: "
                     f"{detail}\n  Pin a version that has one in {Path(__file__).name} (PLATFORMS / COMMON), or "
                     "stop claiming the platform.")
            target = CACHE / wheels[0].name
            if not target.exists():
                shutil.move(str(wheels[0]), target)
            files.append(target)
    record.write_text(json.dumps([f.name for f in files]))
    return files


def build_runtime_wheel(out: Path) -> Path:
    """The aigc-bridge runtime (everything under aigc_bridge/, with texture-mini; not the exporter) as
    ``aigc_bridge-VERSION-py3-none-any.whl``: the sidecar runs from it, and the add-on imports its client."""
    import aigc_bridge

    version = aigc_bridge.__version__
    stage = BUILD / "runtime-wheel"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copytree(REPO / "aigc_bridge", stage / "aigc_bridge", ignore=shutil.ignore_patterns(*RUNTIME_EXCLUDE))
    shutil.copy2(REPO / "LICENSE", stage / "LICENSE")
    deps = ", ".join(f'"{_dist(r).replace("_", "-")}>={r.split("==")[1].split(".")[0]}"' for r in COMMON)
    (stage / "pyproject.toml").write_text(f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{RUNTIME_DIST}"
version = "{version}"
description = "The aigc-bridge runtime (sidecar, engine, client), bundled into the Blender extension"
license = "GPL-3.0-or-later"
license-files = ["LICENSE"]
requires-python = ">=3.10"
dependencies = ["numpy", "onnxruntime", {deps}]

[tool.setuptools.packages.find]
include = ["aigc_bridge*"]

[tool.setuptools.package-data]
"*" = ["**/*"]
""", encoding="utf-8")
    for old in out.glob(f"{RUNTIME_DIST}-*.whl"):
        old.unlink()
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "-w", str(out), str(stage)], "pip wheel of the runtime failed")
    wheel = out / f"{RUNTIME_DIST}-{version}-py3-none-any.whl"
    if not wheel.exists():
        fail(f"pip wheel did not produce {wheel.name}")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    for needed in ("aigc_bridge/cli.py", "aigc_bridge/models/texture-mini/model.json"):
        if needed not in names:
            fail(f"the runtime wheel lacks {needed}")
    return wheel


def manifest_text(line: Line, wheels: list[str], platforms: list[str]) -> str:
    """The source manifest with this line's Blender bounds, the platforms and the wheels it carries."""
    text = MANIFEST.read_text(encoding="utf-8")
    text = re.sub(r'^blender_version_min = ".*"$', f'blender_version_min = "{line.blender_min}"', text, flags=re.M)
    if line.blender_max:
        text = text.replace(f'blender_version_min = "{line.blender_min}"',
                            f'blender_version_min = "{line.blender_min}"\n'
                            f'blender_version_max = "{line.blender_max}"')
    text = re.sub(r"^platforms = \[.*\]$", "platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]", text,
                  flags=re.M)
    listing = "wheels = [\n" + "".join(f'  "./wheels/{name}",\n' for name in sorted(wheels)) + "]\n\n"
    return text.replace("[permissions]", listing + "[permissions]", 1)


def blender_cli(args: list[str]) -> subprocess.CompletedProcess:
    """Blender's `extension` command (bl_pkg.cli_extension, with Blender's tag list) in a child bpy process
    with throwaway user folders, so the build never touches the developer's Blender config."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BLENDER_USER_RESOURCES": tmp, "MESA_SHADER_CACHE_DIR": tmp}
        code = "import sys, bpy, bl_pkg\nsys.exit(bl_pkg.cli_extension(sys.argv[1:]) or 0)\n"
        return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)


def zip_wheels(path: Path) -> tuple[list[str], list[str]]:
    """The wheels a zip holds, and the ones its manifest lists for its platform."""
    with zipfile.ZipFile(path) as z:
        held = sorted(Path(n).name for n in z.namelist() if n.startswith("wheels/") and n.endswith(".whl"))
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode("utf-8"))
    # a split zip keeps the source list in `wheels` and names its own in [build.generated]
    listed = manifest.get("build", {}).get("generated", {}).get("wheels", manifest.get("wheels", []))
    return held, sorted(Path(w).name for w in listed)


def _link_or_copy(src: Path, dst: Path) -> None:
    """The staged extension shares the cached wheels' disk space where the file system allows."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_line(line: Line, platforms: list[str], runtime: Path, out_dir: Path, offline: bool) -> list[dict]:
    log(f"{line.name} (Python {line.python}): wheels for {', '.join(platforms)}")
    expected: dict[str, set[str]] = {}
    stage = BUILD / f"extension-{line.name}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "wheels").mkdir(parents=True)
    for name in ADDON_FILES:
        shutil.copy2(HERE / name, stage / name)
    shutil.copy2(runtime, stage / "wheels" / runtime.name)
    for platform in platforms:
        files = download(platform, line.python, offline)
        expected[platform] = {runtime.name, *(f.name for f in files)}
        for f in files:
            if not (stage / "wheels" / f.name).exists():
                _link_or_copy(f, stage / "wheels" / f.name)
    names = sorted(p.name for p in (stage / "wheels").glob("*.whl"))
    (stage / "blender_manifest.toml").write_text(manifest_text(line, names, platforms), encoding="utf-8")

    manifest = tomllib.loads((stage / "blender_manifest.toml").read_text(encoding="utf-8"))
    stem = f"{manifest['id']}-{manifest['version']}-{line.name}"
    for old in out_dir.glob(f"{stem}-*.zip"):
        old.unlink()
    result = blender_cli(["build", "--split-platforms", "--source-dir", str(stage),
                          "--output-filepath", str(out_dir / f"{stem}.zip")])
    if result.returncode != 0:
        fail(f"Blender's extension build refused {stage}:\n{result.stdout}{result.stderr}")
    report = []
    for platform in platforms:
        path = out_dir / f"{stem}-{platform.replace('-', '_')}.zip"
        if not path.exists():
            fail(f"Blender's build made no {path.name}:\n{result.stdout}")
        check = blender_cli(["validate", str(path)])
        if check.returncode != 0:
            fail(f"Blender's extension validate refused {path.name}:\n{check.stdout}{check.stderr}")
        held, listed = zip_wheels(path)
        if set(held) != expected[platform] or held != listed:
            fail(f"{path.name} carries {held}, its manifest lists {listed}; expected {sorted(expected[platform])}")
        dists = sorted(_wheel_dist(w) for w in held)
        report.append({"zip": path.name, "platform": platform, "python": line.python, "bytes": path.stat().st_size,
                       "wheels": held, "dists": dists})
        log(f"  {path.name}: {path.stat().st_size / 1e6:.1f} MB, validated; {len(held)} wheels: {', '.join(dists)}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "dist", help="where the zips go (dist/)")
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                        help="build only these platforms (repeatable; default: all)")
    parser.add_argument("--line", action="append", choices=[line.name for line in LINES],
                        help="build only these Blender lines (repeatable; default: all)")
    parser.add_argument("--offline", action="store_true", help="use only the wheels already in build/wheels")
    args = parser.parse_args(argv)

    CACHE.mkdir(parents=True, exist_ok=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    platforms = args.platform or list(PLATFORMS)
    runtime = build_runtime_wheel(BUILD)
    log(f"runtime wheel: {runtime.name} ({runtime.stat().st_size / 1e6:.1f} MB)")
    report = [entry for line in LINES if not args.line or line.name in args.line
              for entry in build_line(line, platforms, runtime, args.output_dir, args.offline)]
    (args.output_dir / "extension-zips.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    log(f"ok: {len(report)} zips in {args.output_dir}; install one with Edit > Preferences > Get Extensions > "
        "Install from Disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
