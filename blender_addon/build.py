"""Build the installable extension zip: `make addon` (or `python blender_addon/build.py`).

One command so nobody assembles wheels by hand: it downloads the pyzmq wheels for every platform and Python
the manifest supports (pip download --only-binary, never a source build), builds our light client as a
wheel (only the modules Blender needs), checks that the manifest's ``wheels`` list names exactly those
files, then builds the zip and validates it with Blender's own extension builder, the one `blender
--command extension build` runs, found inside the installed ``bpy`` package (bl_pkg).

Not part of the extension (the manifest excludes it); needs the dev venv (pip, setuptools, bpy).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WHEELS = HERE / "wheels"
MANIFEST = HERE / "blender_manifest.toml"
PYZMQ_VERSION = "27.3.0"  # the dev venv's pyzmq: the tests run against the same version
# (pip --platform, --python-version): Blender 4.2-5.0 ship Python 3.11, Blender 5.1+ Python 3.13.
PYZMQ_TARGETS = [(platform, python) for python in ("3.11", "3.13")
                 for platform in ("manylinux_2_28_x86_64", "win_amd64", "macosx_11_0_arm64", "macosx_11_0_x86_64")]
# The part of aigc_bridge the add-on imports (aigc_bridge.client and what it needs, and the composer).
CLIENT_MODULES = ("__init__", "client", "protocol", "request", "input_image", "project_request", "errors", "prompts")
CLIENT_DIST = "aigc_bridge_client"


def log(message: str) -> None:
    print(f"[addon] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"[addon] failed: {' '.join(cmd)}\n{result.stdout}{result.stderr}")
    return result


def download_pyzmq(offline: bool) -> set[str]:
    """pyzmq wheels for every target; files already in wheels/ are kept (pip never builds from source)."""
    if offline:
        names = {p.name for p in WHEELS.glob(f"pyzmq-{PYZMQ_VERSION}-*.whl")}
        log(f"pyzmq {PYZMQ_VERSION}: {len(names)} wheels already in {WHEELS.relative_to(REPO)} (offline)")
        return names
    names: set[str] = set()
    for platform, python in PYZMQ_TARGETS:
        with tempfile.TemporaryDirectory() as tmp:
            run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
                 "--no-deps", "--platform", platform, "--python-version", python,
                 f"pyzmq=={PYZMQ_VERSION}", "-d", tmp])
            for wheel in Path(tmp).glob("*.whl"):
                names.add(wheel.name)
                if not (WHEELS / wheel.name).exists():
                    shutil.move(str(wheel), WHEELS / wheel.name)
    log(f"pyzmq {PYZMQ_VERSION}: {len(names)} wheels for {len(PYZMQ_TARGETS)} platform/Python targets")
    return names


def check_client_imports(package: Path) -> None:
    """Fail if a bundled module imports a sibling that is not bundled (it would break only inside Blender)."""
    for name in CLIENT_MODULES:
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
                    and node.module.split(".")[0] not in CLIENT_MODULES):
                sys.exit(f"[addon] aigc_bridge/{name}.py imports .{node.module}, which the client wheel "
                         f"does not bundle: add it to CLIENT_MODULES in {Path(__file__).name}")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aigc_bridge."):
                sys.exit(f"[addon] aigc_bridge/{name}.py imports {node.module}: use a relative import")


def build_client_wheel() -> str:
    """`pip wheel --no-deps` of a staging project holding only CLIENT_MODULES, as aigc_bridge_client."""
    import aigc_bridge

    version = aigc_bridge.__version__
    stage = REPO / "build" / "client-wheel"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "aigc_bridge").mkdir(parents=True)
    check_client_imports(REPO / "aigc_bridge")
    for name in CLIENT_MODULES:
        shutil.copy2(REPO / "aigc_bridge" / f"{name}.py", stage / "aigc_bridge" / f"{name}.py")
    shutil.copy2(REPO / "LICENSE", stage / "LICENSE")
    (stage / "pyproject.toml").write_text(f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{CLIENT_DIST}"
version = "{version}"
description = "The light aigc-bridge sidecar client, bundled into the Blender extension"
license = "GPL-3.0-or-later"
license-files = ["LICENSE"]
requires-python = ">=3.10"
dependencies = ["pyzmq>=25"]

[tool.setuptools]
packages = ["aigc_bridge"]
""", encoding="utf-8")
    for old in WHEELS.glob(f"{CLIENT_DIST}-*.whl"):
        old.unlink()
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "-w", str(WHEELS), str(stage)])
    shutil.rmtree(stage / "build", ignore_errors=True)
    name = f"{CLIENT_DIST}-{version}-py3-none-any.whl"
    if not (WHEELS / name).exists():
        sys.exit(f"[addon] pip wheel did not produce {name}")
    log(f"client wheel: {name} ({(WHEELS / name).stat().st_size // 1024} KiB, modules: "
        f"{', '.join(CLIENT_MODULES)})")
    return name


def check_manifest(names: set[str]) -> None:
    """The manifest's list is the truth users install from: it must name exactly the built wheels."""
    listed = {Path(p).name for p in tomllib.loads(MANIFEST.read_text(encoding="utf-8")).get("wheels", [])}
    if listed != names:
        lines = "\n".join(f'  "./wheels/{n}",' for n in sorted(names))
        sys.exit(f"[addon] {MANIFEST.name} lists {sorted(listed - names) or 'nothing extra'} and misses "
                 f"{sorted(names - listed) or 'nothing'}; set its wheels to:\nwheels = [\n{lines}\n]")
    for stale in WHEELS.glob("*.whl"):
        if stale.name not in names:
            stale.unlink()
            log(f"removed stale {stale.name}")


def blender_cli(args: list[str]) -> int:
    """Run Blender's `extension` command (bl_pkg.cli_extension, with Blender's tag list) in a child bpy
    process with throwaway user folders, so the build never touches the developer's Blender config."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BLENDER_USER_RESOURCES": tmp, "MESA_SHADER_CACHE_DIR": tmp}
        code = ("import sys, bpy, bl_pkg\n"
                "sys.exit(bl_pkg.cli_extension(sys.argv[1:]) or 0)\n")
        return subprocess.run([sys.executable, "-c", code, *args], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "dist", help="where the zip goes (dist/)")
    parser.add_argument("--offline", action="store_true", help="use the wheels already in blender_addon/wheels")
    args = parser.parse_args(argv)

    WHEELS.mkdir(exist_ok=True)
    names = download_pyzmq(args.offline) | {build_client_wheel()}
    check_manifest(names)
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = args.output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    zip_path.unlink(missing_ok=True)
    log(f"blender extension build -> {zip_path.relative_to(REPO) if zip_path.is_relative_to(REPO) else zip_path}")
    if blender_cli(["build", "--source-dir", str(HERE), "--output-filepath", str(zip_path)]) != 0:
        sys.exit("[addon] Blender's extension build failed (see above)")
    log("blender extension validate")
    if blender_cli(["validate", str(zip_path)]) != 0:
        sys.exit("[addon] Blender's extension validate refused the zip (see above)")
    log(f"ok: {zip_path} ({zip_path.stat().st_size // 1024} KiB); install it with Edit > Preferences > "
        "Get Extensions > Install from Disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
