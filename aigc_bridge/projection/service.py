"""A ``project`` request (aigc_bridge.project_request) run on a loaded engine: what the sidecar and batch share.

``prepare`` turns the request into checked meshes, cameras and loop options (every check that can fail
without generating: arrays, limits, zero-area faces, UV problems, cameras inside objects, the view size the
model accepts), so a bad request is refused before it is queued and nothing has run. ``run`` then drives the
loop with an ``EngineGenerator`` and returns the textures as PNG bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..assets.writers import png_bytes
from ..errors import InvalidRequest
from ..project_request import ProjectRequest
from ..request import GenerateRequest
from .cameras import Camera, check_outside, checked_camera, ring_cameras
from .engine_generator import EngineGenerator, describe_mode
from .loop import LoopOptions, LoopResult, LoopState, texture_meshes
from .mesh import Mesh


@dataclass
class Prepared:
    request: ProjectRequest
    meshes: list[Mesh]
    cameras: list[Camera]
    options: LoopOptions


@dataclass
class Baked:
    """The loop's result with each texture as PNG bytes (8-bit sRGB, top row first)."""

    result: LoopResult
    pngs: list[bytes]
    mode: str
    mode_text: str


def mesh_of(mesh_input) -> Mesh:
    arrays = {kind: np.frombuffer(getattr(mesh_input, kind).data, "<" + _code(getattr(mesh_input, kind).dtype))
              .reshape(getattr(mesh_input, kind).shape) for kind in ("positions", "triangles", "uvs")}
    return Mesh.checked(arrays["positions"], arrays["triangles"], arrays["uvs"], mesh_input.name)


def _code(dtype: str) -> str:
    return {"float32": "f4", "float64": "f8", "int32": "i4", "uint32": "u4", "int64": "i8"}[dtype]


def cameras_of(request: ProjectRequest, meshes: list[Mesh]) -> list[Camera]:
    if request.cameras:
        return [checked_camera(Camera(np.array(c.world_to_camera, np.float64).reshape(4, 4), c.width, c.height,
                                      c.fx, c.fy, c.cx, c.cy, c.projection, c.name), i)
                for i, c in enumerate(request.cameras)]
    v = request.views
    return ring_cameras([m.positions for m in meshes], count=v.count, elevation_deg=v.elevation_deg, top=v.top,
                        bottom=v.bottom, width=v.size, height=v.size, fov_deg=v.fov_deg)


def prepare(request: ProjectRequest, pipeline=None) -> Prepared:
    """Every check short of generating; with ``pipeline``, also that the model takes the views' sizes."""
    meshes = [mesh_of(m) for m in request.meshes]
    cameras = cameras_of(request, meshes)
    check_outside(cameras, meshes)
    options = LoopOptions(request.prompt, seed=request.seed, texture_size=request.texture_size,
                          strength=request.strength)
    if pipeline is not None:
        for i, (w, h) in enumerate(sorted({(c.width, c.height) for c in cameras})):
            try:
                pipeline.resolve(GenerateRequest(prompt=request.prompt, width=w, height=h, steps=request.steps,
                                                 seed=request.seed))
            except InvalidRequest as exc:
                field = "views.size" if request.views is not None else f"cameras[{i}]"
                raise InvalidRequest(f"views of {w} x {h}: {exc.message}", field) from None
    return Prepared(request, meshes, cameras, options)


def run(prepared: Prepared, pipeline, *, state: LoopState | None = None,
        on_progress: Callable[[LoopState], None] | None = None) -> Baked:
    """Texture the meshes. ``state.cancel()`` stops between views, and within a view between steps."""
    req = prepared.request
    state = state or LoopState(total=len(prepared.cameras))
    generator = EngineGenerator(pipeline, steps=req.steps, guidance=req.guidance,
                                negative_prompt=req.negative_prompt, control_scale=req.control_scale,
                                cancelled=lambda: state.cancelled)
    result = texture_meshes(prepared.meshes, prepared.cameras, generator, prepared.options,
                            on_progress=on_progress, state=state)
    pngs = [png_bytes(t) for t in result.textures]
    return Baked(result, pngs, generator.mode, describe_mode(generator.mode))
