"""``--blend scene.blend --export-glb out.glb``: the driver's side of the Blender step.

Blender runs in a subprocess (the ``bpy`` module in this Python, or a Blender executable with
``--blender``) on ``blend_apply.py``, which uses the add-on's own ``scene_import`` module. Before any image
is generated, ``inspect`` checks that every object and material a job names exists; afterwards ``apply``
writes a copy of the .blend into --out (the user's file is never written) and the GLB.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aigc_bridge

from ..errors import AigcError
from .manifest import Manifest
from .plan import Unit
from .spec import Job, Problem

RUNNER = Path(__file__).with_name("blend_apply.py")
PLAN_NAME = "batch-blend-plan.json"
SCENE_IMPORT_ENV = "AIGC_BRIDGE_SCENE_IMPORT"
ALBEDO_ROLES = {"image": "albedo", "normal": "normal", "roughness": "roughness", "orm": "orm"}
_INFO_KEYS = ("prompt", "negative_prompt", "seed", "steps", "width", "height", "tile", "kind")


def find_scene_import() -> Path:
    """The add-on's ``scene_import.py``: $AIGC_BRIDGE_SCENE_IMPORT, else the installed add-on package
    (``aigc_bridge_blender``, found without importing it: its ``__init__`` needs bpy), else ``blender_addon/``
    beside the package (a source checkout)."""
    spec = importlib.util.find_spec("aigc_bridge_blender")
    installed = [Path(p) / "scene_import.py" for p in (spec.submodule_search_locations or [])] if spec else []
    candidates = [os.environ.get(SCENE_IMPORT_ENV), *installed,
                  Path(aigc_bridge.__file__).resolve().parent.parent / "blender_addon" / "scene_import.py"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise AigcError("missing_dependency", "--blend needs the Blender add-on's scene_import.py: run from a source "
                    f"checkout or set {SCENE_IMPORT_ENV}=/path/to/blender_addon/scene_import.py", "blend")


def blender_command(blender: str | None, mode: str, plan: Path) -> list[str]:
    """The command that runs ``blend_apply.py``: the bpy module here, or a Blender executable."""
    if blender:
        return [blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(RUNNER), "--",
                mode, str(plan)]
    return [sys.executable, str(RUNNER), mode, str(plan)]


def _run(blender: str | None, mode: str, plan: dict, plan_path: Path, timeout: float) -> dict:
    plan_path.write_text(json.dumps(plan, indent=2), encoding="utf-8")
    report = Path(plan["report"])
    report.unlink(missing_ok=True)
    try:
        proc = subprocess.run(blender_command(blender, mode, plan_path), capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AigcError("blender", f"Blender ({mode}) did not run: {exc}", "blend") from None
    if proc.returncode != 0 or not report.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise AigcError("blender", f"Blender ({mode}) failed (exit {proc.returncode}):\n  " + "\n  ".join(tail),
                        "blend")
    try:
        return json.loads(report.read_text(encoding="utf-8"))
    finally:
        report.unlink(missing_ok=True)


def check_targets(blend: Path, jobs: list[Job], blender: str | None = None, timeout: float = 300) -> list[Problem]:
    """Every object and material the jobs name must be in ``blend``: checked before generation starts."""
    if not blend.is_file():
        return [Problem("blend", "file", f"{blend} does not exist")]
    if not any(j.targets.object or j.targets.material or j.targets.world for j in jobs):
        return []
    with tempfile.TemporaryDirectory(prefix="aigc-blend-") as folder:
        plan = {"source": str(blend.resolve()), "report": str(Path(folder) / "report.json")}
        info = _run(blender, "inspect", plan, Path(folder) / "plan.json", timeout)
    objects = {o["name"] for o in info["objects"]}
    materials = set(info["materials"])
    problems = []
    for job in jobs:
        if job.targets.object and job.targets.object not in objects:
            problems.append(Problem(job.where, "object", f"{blend.name} has no object {job.targets.object!r}"
                                    + _close(job.targets.object, objects), job.line))
        if job.targets.material and job.targets.material not in materials:
            problems.append(Problem(job.where, "material", f"{blend.name} has no material "
                                    f"{job.targets.material!r}" + _close(job.targets.material, materials),
                                    job.line))
    return problems


def _close(name: str, names: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _info(manifest: Manifest, unit: Unit) -> dict:
    entry = manifest.data["outputs"].get(unit.stem, {})
    request = unit.request.to_dict()
    info = {k: request.get(k) for k in _INFO_KEYS}
    info.update(model=entry.get("model_id"), model_hash=entry.get("model_hash"), provider=entry.get("provider"),
                request_key=unit.key)
    return {k: v for k, v in info.items() if v is not None}


def build_plan(jobs: list[Job], units: list[Unit], manifest: Manifest, blend: Path, out: Path,
               glb: Path | None) -> dict:
    """What Blender should do: each targeted job's FIRST image (its first seed) and where it goes."""
    first = {}
    for unit in units:
        if unit.image == 0 and manifest.done(unit):
            first[unit.job] = unit
    textures, backdrops = [], []
    for job in jobs:
        unit = first.get(job.name)
        if unit is None:
            continue
        files = manifest.output_files(unit.stem)
        if job.kind == "texture" and (job.targets.object or job.targets.material):
            maps = {ALBEDO_ROLES[role]: str(path) for role, path in files.items() if role in ALBEDO_ROLES}
            textures.append({"job": job.name, "object": job.targets.object, "material": job.targets.material,
                             "maps": maps, "info": _info(manifest, unit)})
        elif job.kind == "backdrop" and job.targets.world:
            image = files.get("image_linear") or files["image"]  # the HDR panorama when there is one
            backdrops.append({"job": job.name, "image": str(image), "skydome": str(files.get("skydome", "")) or None,
                              "info": _info(manifest, unit)})
    stem = blend.stem
    copy = out / f"{stem}.blend"
    if copy.resolve() == blend.resolve():
        copy = out / f"{stem}_aigc.blend"
    return {"source": str(blend.resolve()), "copy": str(copy.resolve()),
            "glb": str(glb.resolve()) if glb is not None else None, "scene_import": str(find_scene_import()),
            "textures": textures, "backdrops": backdrops, "report": str((out / ".batch-blend-report.json").resolve())}


def apply_to_blend(plan: dict, out: Path, blender: str | None = None, timeout: float = 600) -> dict:
    """Run the Blender step; the plan stays in --out so the same step can be rerun by hand (docs/batch.md)."""
    return _run(blender, "apply", plan, out / PLAN_NAME, timeout)
