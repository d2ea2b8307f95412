"""Batch ``[[project]]`` jobs: texture objects of a .blend from their shape (docs/batch.md, "project").

Each job: Blender (``blend_apply.py extract``) checks and reads the objects' evaluated meshes into arrays and
saves a working copy of the .blend inside --out; the loop (projection.service) runs on the batch's backend
(the local engine, or a sidecar's ``project`` request); the textures are written to ``OUT/NAME/OBJECT.png``;
then Blender (``bake_apply``) wires them into the copy's materials for the UV maps they were baked for and
optionally exports ``OUT/NAME.glb``. The source .blend is never written, and nothing is written outside --out.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..assets.writers import write_atomic
from ..errors import AigcError, InvalidRequest
from ..project_request import (
    MAX_TRIANGLES,
    ArrayInput,
    CameraInput,
    MeshInput,
    ProjectRequest,
    ViewsInput,
)

PROJECT_KEYS = ("name", "blend", "objects", "prompt", "negative", "seed", "steps", "texture_size", "views",
                "elevation", "top", "bottom", "view_size", "cameras", "strength", "control_scale", "glb")


@dataclass(frozen=True)
class ProjectJob:
    name: str
    source: str          # "project[0]"
    line: int | None
    blend: Path
    objects: tuple[str, ...]
    request: ProjectRequest  # meshes empty until Blender has read them (a placeholder mesh here)
    scene_cameras: bool = False
    glb: bool = False

    @property
    def where(self) -> str:
        return f"{self.source} ({self.name})"


_PLACEHOLDER = MeshInput("placeholder", ArrayInput("float32", (3, 3), bytes(36)),
                         ArrayInput("int32", (1, 3), bytes(12)), ArrayInput("float32", (1, 3, 2), bytes(24)))


def parse_projects(entries: object, blend_file: Path | None, base: Path | None, problem) -> list[ProjectJob]:
    """``[[project]]`` tables -> jobs; every problem is reported through ``problem(where, key, message, table)``."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problem("file", "project", "write project jobs as [[project]] tables", ("project", 0))
        return []
    jobs = []
    for i, raw in enumerate(entries):
        t = ("project", i)
        where = f"project[{i}] ({raw.get('name', '?')})"
        count = len(jobs)
        for key in raw:
            if key not in PROJECT_KEYS:
                problem(where, key, f"unknown key; a [[project]] job has {', '.join(PROJECT_KEYS)}", t)
        name = raw.get("name")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            problem(where, "name", "must be a file-safe name (no / , not starting with .)", t)
            continue
        objects = raw.get("objects")
        if not isinstance(objects, list) or not objects or not all(isinstance(o, str) and o for o in objects):
            problem(where, "objects", 'must list the objects to texture: objects = ["Crate", "Barrel"]', t)
        blend = raw.get("blend")
        path = blend_file
        if blend is not None:
            if not isinstance(blend, str) or not blend.endswith(".blend"):
                problem(where, "blend", f"must name a .blend file, got {blend!r}", t)
            else:
                path = Path(blend).expanduser()
                if not path.is_absolute() and base is not None:
                    path = base / path
        if path is None:
            problem(where, "blend", "names no .blend: give blend = \"scene.blend\" or a [blend] table", t)
        elif not Path(path).is_file():
            problem(where, "blend", f"{path} does not exist", t)
        cameras = raw.get("cameras", "ring")
        if cameras not in ("ring", "scene"):
            problem(where, "cameras", f'must be "ring" or "scene", got {cameras!r}', t)
        for key in ("glb", "top", "bottom"):
            if key in raw and not isinstance(raw[key], bool):
                problem(where, key, f"must be true or false, got {raw[key]!r}", t)
        try:
            views = None if cameras == "scene" else ViewsInput(
                raw.get("views", 8), raw.get("elevation", 15.0), raw.get("top", True), raw.get("bottom", False),
                raw.get("view_size", 256))
            request = ProjectRequest(raw.get("prompt", ""), (_PLACEHOLDER,), negative_prompt=raw.get("negative", ""),
                                     seed=raw.get("seed", 0), steps=raw.get("steps"),
                                     texture_size=raw.get("texture_size", 1024), strength=raw.get("strength", 1.0),
                                     control_scale=raw.get("control_scale", 1.0), views=views,
                                     cameras=(CameraInput(tuple(np.eye(4).reshape(-1)), 16, 16, 1, 1, 8, 8),)
                                     if cameras == "scene" else ())
        except InvalidRequest as exc:
            key = {"views.count": "views", "views.elevation_deg": "elevation", "views.size": "view_size",
                   "views.top": "top", "views.bottom": "bottom", "negative_prompt": "negative"}.get(exc.field,
                                                                                                exc.field)
            problem(where, key, exc.message, t)
            continue
        if len(jobs) == count and path is not None and isinstance(objects, list):
            jobs.append(ProjectJob(name, f"project[{i}]", None, Path(path), tuple(objects), request,
                                   cameras == "scene", bool(raw.get("glb", False))))
    return jobs


def check_project_targets(jobs: list[ProjectJob], blender: str | None = None, timeout: float = 300) -> list:
    """Every object a project job names must be a mesh in its .blend: checked before any model is loaded."""
    import tempfile

    from .blend import _close, _run
    from .spec import Problem

    problems = []
    inspected: dict[Path, dict] = {}
    for job in jobs:
        if job.blend not in inspected:
            with tempfile.TemporaryDirectory(prefix="aigc-blend-") as folder:
                plan = {"source": str(job.blend.resolve()), "report": str(Path(folder) / "report.json")}
                inspected[job.blend] = _run(blender, "inspect", plan, Path(folder) / "plan.json", timeout)
        types = {o["name"]: o["type"] for o in inspected[job.blend]["objects"]}
        for name in job.objects:
            if name not in types:
                problems.append(Problem(job.where, "objects", f"{job.blend.name} has no object {name!r}"
                                        + _close(name, set(types)), job.line))
            elif types[name] != "MESH":
                problems.append(Problem(job.where, "objects", f"{name!r} is a {types[name].lower()}, not a mesh: "
                                        "only meshes can be textured from their shape", job.line))
    return problems


def run_projects(jobs: list[ProjectJob], backend, out: Path, blender: str | None, log) -> list[dict]:
    """Run every project job; one report per job (``error`` set when it failed; later jobs still run)."""
    from .blend import _run, find_scene_import

    addon = str(find_scene_import().parent)
    reports = []
    for job in jobs:
        work = out / f".project-{job.name}"
        work.mkdir(parents=True, exist_ok=True)
        copy = out / f"{job.name}.blend"
        report: dict = {"job": job.name, "copy": None, "glb": None, "textures": [], "error": None}
        try:
            if copy.resolve().parent != out.resolve() or copy.resolve() == job.blend.resolve():
                raise AigcError("blend", f"{copy} must be inside --out and not the source", "out")
            plan = {"source": str(job.blend), "copy": str(copy), "objects": list(job.objects), "addon": addon,
                    "arrays": str(work), "report": str(work / "report.json"), "max_triangles": MAX_TRIANGLES,
                    "scene_cameras": job.scene_cameras, "view_size": job.request.width}
            read = _run(blender, "extract", plan, work / "plan.json", 600)
            if read["problems"]:
                raise AigcError("invalid_request", "; ".join(read["problems"]), "objects")
            request = _request(job, read)
            log(f"project {job.name}: {len(request.meshes)} objects, {request.triangle_count:,} triangles, "
                f"{request.view_count} views")
            textures, info = _texture(backend, request, log)
            folder = out / job.name
            entries = []
            for mesh, (png, coverage) in zip(read["meshes"], textures):
                path = write_atomic(folder / f"{mesh['name']}.png", png)
                entries.append({"object": mesh["name"], "image": str(path), "uv_map": mesh["uv_map"],
                                "info": {"prompt": request.prompt, "seed": request.seed, "model": info["model"]}})
                report["textures"].append({"object": mesh["name"], "file": str(path), "coverage": coverage})
            report.update(mode=info["mode"], notes=read["notes"] + info["warnings"])
            plan = {"source": str(job.blend), "copy": str(copy), "addon": addon, "textures": entries,
                    "glb": str(out / f"{job.name}.glb") if job.glb else None, "report": str(work / "report.json")}
            applied = _run(blender, "bake_apply", plan, work / "plan.json", 600)
            report.update(copy=applied["copy"], glb=applied["glb"])
            log(f"project {job.name}: done ({info['mode_text']}); copy {copy.name}"
                + (f", GLB {job.name}.glb" if job.glb else ""))
        except AigcError as exc:
            report["error"] = {"code": exc.code, "message": exc.message}
            log(f"project {job.name} FAILED: {exc.message}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        reports.append(report)
    return reports


def _request(job: ProjectJob, read: dict) -> ProjectRequest:
    meshes = []
    for m in read["meshes"]:
        arrays = {kind: np.load(m[kind]) for kind in ("positions", "triangles", "uvs")}
        meshes.append(MeshInput(m["name"], *(ArrayInput(str(a.dtype), a.shape, np.ascontiguousarray(a).tobytes())
                                            for a in arrays.values())))
    cameras = tuple(CameraInput(tuple(c["world_to_camera"]), c["width"], c["height"], c["fx"], c["fy"], c["cx"],
                                c["cy"], c["projection"], c["name"]) for c in read.get("cameras", []))
    r = job.request
    return ProjectRequest(r.prompt, tuple(meshes), negative_prompt=r.negative_prompt, seed=r.seed, steps=r.steps,
                          texture_size=r.texture_size, strength=r.strength, control_scale=r.control_scale,
                          views=None if cameras else r.views, cameras=cameras)


def _texture(backend, request: ProjectRequest, log) -> tuple[list[tuple[bytes, float]], dict]:
    """The loop on the backend: the local engine in this process, or the sidecar's project request."""
    pipeline = getattr(backend, "pipeline", None)
    if pipeline is not None:
        from ..projection import service

        prepared = service.prepare(request, pipeline)

        def progress(state) -> None:
            if state.stage == "baked":
                log(f"  view {state.done}/{state.total} {state.view_name}: {state.coverage:.0%} seen")

        baked = service.run(prepared, pipeline, on_progress=progress)
        m = pipeline.manifest
        return ([(png, float(c)) for png, c in zip(baked.pngs, baked.result.coverage)],
                {"mode": baked.mode, "mode_text": baked.mode_text, "warnings": baked.result.warnings,
                 "model": m["model_id"]})
    client = getattr(backend, "client", None)
    if client is None:
        raise AigcError("unsupported", "project jobs run on the local engine or a sidecar (--server), not Ray",
                        "backend")
    response = client.project(request)
    return ([(t.data, t.coverage) for t in response.textures],
            {"mode": response.mode, "mode_text": response.mode_text, "warnings": response.warnings,
             "model": response.model_id})
