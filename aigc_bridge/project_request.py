"""The ``project`` request (texture meshes from their shape, docs/projection.md), checked at the edge.

Standard library only, like request.py: the protocol codec and the client (bundled into Blender) use it.
Mesh arrays travel as raw little-endian bytes with a declared dtype and shape (binary frames on the wire);
here they are checked from the declaration and the byte count alone (the triangle limit before anything is
parsed); the sidecar turns them into numpy arrays and runs the geometry checks (projection.mesh) before
the job is queued.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields

from .errors import InvalidRequest
from .request import MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS

MAX_TRIANGLES = 2_000_000        # all meshes of one request together
MAX_VERTICES = 3 * MAX_TRIANGLES
MAX_MESHES = 64
MAX_CAMERAS = 66                 # a ring of 64, top and bottom
MAX_VIEW_SIDE = 2048
DTYPES = {"float32": 4, "float64": 8, "int32": 4, "uint32": 4, "int64": 8}
ARRAY_DTYPES = {"positions": ("float32", "float64"), "triangles": ("int32", "uint32", "int64"),
                "uvs": ("float32", "float64")}
ARRAY_SHAPES = {"positions": (None, 3), "triangles": (None, 3), "uvs": (None, 3, 2)}
MAX_ARRAY_BYTES = MAX_VERTICES * 3 * 8   # the largest array: float64 positions
TEXTURE_SIZES = tuple(1 << k for k in range(4, 13))  # 16 .. 4096, powers of two (mipmaps halve cleanly)


@dataclass(frozen=True)
class ArrayInput:
    """One mesh array: ``dtype`` (little-endian), ``shape`` and the raw bytes (C order)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes = field(repr=False)

    @classmethod
    def checked(cls, dtype: object, shape: object, data: object, where: str, kind: str) -> ArrayInput:
        if dtype not in ARRAY_DTYPES[kind]:
            raise InvalidRequest(f"{where}.dtype must be one of {', '.join(ARRAY_DTYPES[kind])}, got {dtype!r}",
                                 f"{where}.dtype")
        want = ARRAY_SHAPES[kind]
        if not isinstance(shape, (list, tuple)) or len(shape) != len(want) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise InvalidRequest(f"{where}.shape must be {_shape_text(want)}, got {shape!r}", f"{where}.shape")
        if any(w is not None and s != w for s, w in zip(shape, want)):
            raise InvalidRequest(f"{where}.shape must be {_shape_text(want)}, got {list(shape)}", f"{where}.shape")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"{where} must be bytes, got {type(data).__name__}", where)
        size = math.prod(shape) * DTYPES[dtype]
        if len(data) != size:
            raise InvalidRequest(f"{where} declares {dtype} {list(shape)} ({size:,} bytes) but carries "
                                 f"{len(data):,} bytes", where)
        return cls(dtype, tuple(shape), bytes(data))

    def descriptor(self, buffer: int) -> dict:
        return {"buffer": buffer, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class MeshInput:
    name: str
    positions: ArrayInput
    triangles: ArrayInput
    uvs: ArrayInput

    @property
    def triangle_count(self) -> int:
        return self.triangles.shape[0]


@dataclass(frozen=True)
class CameraInput:
    """A given camera (a scene's own): the projection core's ``Camera`` fields, world_to_camera row-major."""

    world_to_camera: tuple[float, ...]
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    projection: str = "perspective"
    name: str = ""


@dataclass(frozen=True)
class ViewsInput:
    """A ring of ``count`` cameras at ``elevation_deg`` around the objects, plus top / bottom views, each
    ``size`` pixels square (generated at that size)."""

    count: int = 8
    elevation_deg: float = 15.0
    top: bool = True
    bottom: bool = False
    size: int = 256
    fov_deg: float = 40.0

    def __post_init__(self) -> None:
        _int("views.count", self.count, 0, 64)
        _num("views.elevation_deg", self.elevation_deg, -89.0, 89.0)
        _bool("views.top", self.top)
        _bool("views.bottom", self.bottom)
        _int("views.size", self.size, 16, MAX_VIEW_SIDE)
        _num("views.fov_deg", self.fov_deg, 5.0, 120.0)
        if self.count + self.top + self.bottom == 0:
            raise InvalidRequest("no views: set views.count above 0 or ask for top / bottom views", "views.count")

    @property
    def total(self) -> int:
        return self.count + self.top + self.bottom


@dataclass(frozen=True)
class ProjectRequest:
    """What to texture and how. Exactly one of ``views`` (a ring) and ``cameras`` (given ones); ``views``
    defaults to a ring of 8 and a top view."""

    prompt: str
    meshes: tuple[MeshInput, ...]
    negative_prompt: str = ""
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    texture_size: int = 1024
    strength: float = 1.0
    control_scale: float = 1.0
    views: ViewsInput | None = None
    cameras: tuple[CameraInput, ...] = ()

    def __post_init__(self) -> None:
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
                raise InvalidRequest(f"{name} must be a text of at most {MAX_PROMPT_CHARS:,} characters", name)
        if not self.prompt.strip():
            raise InvalidRequest("prompt must be a non-empty text", "prompt")
        _int("seed", self.seed, 0, MAX_SEED - MAX_CAMERAS)
        if self.steps is not None:
            _int("steps", self.steps, 1, MAX_STEPS)
        if self.guidance is not None:
            _num("guidance", self.guidance, 0.0, 50.0)
        if self.texture_size not in TEXTURE_SIZES or isinstance(self.texture_size, bool):
            raise InvalidRequest(f"texture_size must be a power of two from 16 to 4096, got {self.texture_size!r}",
                                 "texture_size")
        _num("strength", self.strength, 0.0, 1.0)
        if self.strength <= 0:
            raise InvalidRequest("strength must be above 0 and at most 1", "strength")
        _num("control_scale", self.control_scale, 0.0, 4.0)
        if not self.meshes:
            raise InvalidRequest("meshes must hold at least one mesh", "meshes")
        if len(self.meshes) > MAX_MESHES:
            raise InvalidRequest(f"{len(self.meshes)} meshes; the limit is {MAX_MESHES}", "meshes")
        total = sum(m.triangle_count for m in self.meshes)
        if total > MAX_TRIANGLES:
            raise InvalidRequest(f"the meshes have {total:,} triangles together; at most {MAX_TRIANGLES:,} can be "
                                 "textured in one request (decimate them, or texture them separately)", "meshes")
        if self.views is not None and self.cameras:
            raise InvalidRequest("give views (a ring around the objects) or cameras, not both", "cameras")
        if len(self.cameras) > MAX_CAMERAS:
            raise InvalidRequest(f"{len(self.cameras)} cameras; the limit is {MAX_CAMERAS}", "cameras")
        if self.views is None and not self.cameras:
            object.__setattr__(self, "views", ViewsInput())

    # duck-typed for the sidecar's job board and log line (as GenerateRequest's): one "step" per view
    count = 1

    @property
    def view_count(self) -> int:
        return self.views.total if self.views is not None else len(self.cameras)

    @property
    def width(self) -> int:
        return self.views.size if self.views is not None else max(c.width for c in self.cameras)

    @property
    def height(self) -> int:
        return self.views.size if self.views is not None else max(c.height for c in self.cameras)

    @property
    def triangle_count(self) -> int:
        return sum(m.triangle_count for m in self.meshes)

    # --- the wire ---------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict, buffers: dict[int, bytes]) -> tuple[ProjectRequest, list[str]]:
        """From untrusted JSON and the message's array buffers (by index; each used once). Unknown keys are
        returned (to be reported)."""
        if not isinstance(data, dict):
            raise InvalidRequest("a project request must be a JSON object", None)
        if "prompt" not in data:
            raise InvalidRequest("prompt is required", "prompt")
        if "meshes" not in data:
            raise InvalidRequest("meshes is required", "meshes")
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        values = {k: v for k, v in data.items() if k in known and k not in ("meshes", "views", "cameras")}
        used: set[int] = set()
        values["meshes"] = tuple(_mesh(item, f"meshes[{i}]", buffers, used)
                                 for i, item in enumerate(_list(data["meshes"], "meshes", MAX_MESHES)))
        if data.get("views") is not None:
            values["views"] = _views(data["views"])
        if data.get("cameras") is not None:
            values["cameras"] = tuple(_camera(item, f"cameras[{i}]")
                                      for i, item in enumerate(_list(data["cameras"], "cameras", MAX_CAMERAS)))
        unused = sorted(set(buffers) - used)
        if unused:
            raise InvalidRequest(f"array buffers {unused} belong to no mesh", "buffers")
        for key in ("seed", "texture_size", "steps"):
            if key in values and isinstance(values[key], float) and values[key].is_integer():
                values[key] = int(values[key])
        return cls(**values), unknown

    def to_dict(self) -> dict:
        """JSON-ready, each array by its dtype, shape and sha256: enough to tell two requests apart."""
        content, buffers = self.to_wire()
        for mesh in content["meshes"]:
            for kind in ARRAY_SHAPES:
                ref = mesh[kind]
                ref["sha256"] = hashlib.sha256(buffers[ref.pop("buffer")]).hexdigest()
        return content

    def to_wire(self) -> tuple[dict, list[bytes]]:
        """JSON content and the array buffers, in order (``buffers[i]`` is what ``{"buffer": i}`` names)."""
        buffers: list[bytes] = []
        meshes = []
        for mesh in self.meshes:
            entry: dict = {"name": mesh.name}
            for kind in ARRAY_SHAPES:
                array = getattr(mesh, kind)
                entry[kind] = array.descriptor(len(buffers))
                buffers.append(array.data)
            meshes.append(entry)
        content = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name not in ("meshes", "views", "cameras")}
        content["meshes"] = meshes
        if self.cameras:
            content["cameras"] = [{f.name: (list(getattr(c, f.name)) if f.name == "world_to_camera"
                                            else getattr(c, f.name)) for f in fields(c)} for c in self.cameras]
        else:
            content["views"] = {f.name: getattr(self.views, f.name) for f in fields(ViewsInput)}
        content = {k: v for k, v in content.items() if v is not None}
        return content, buffers


def _mesh(item: object, where: str, buffers: dict[int, bytes], used: set[int]) -> MeshInput:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object with name, positions, triangles, uvs", where)
    extra = sorted(set(item) - {"name", *ARRAY_SHAPES})
    if extra:
        raise InvalidRequest(f"{where} has unknown keys: {', '.join(extra)}", where)
    name = item.get("name", "mesh")
    if not isinstance(name, str) or not 1 <= len(name) <= 256:
        raise InvalidRequest(f"{where}.name must be a text of 1 to 256 characters", f"{where}.name")
    arrays = {}
    for kind in ARRAY_SHAPES:
        desc, at = item.get(kind), f"{where}.{kind}"
        if not isinstance(desc, dict) or set(desc) != {"buffer", "dtype", "shape"}:
            raise InvalidRequest(f'{at} must be {{"buffer": index, "dtype": ..., "shape": [...]}}', at)
        index = desc["buffer"]
        if isinstance(index, bool) or not isinstance(index, int) or index not in buffers:
            raise InvalidRequest(f"{at}.buffer names no array buffer of this message: {index!r}", f"{at}.buffer")
        if index in used:
            raise InvalidRequest(f"{at}.buffer {index} is already used by another array", f"{at}.buffer")
        used.add(index)
        shape = desc["shape"]
        if kind == "triangles" and isinstance(shape, list) and shape and isinstance(shape[0], int) \
                and shape[0] > MAX_TRIANGLES:
            raise InvalidRequest(f"{where} ({name!r}) has {shape[0]:,} triangles; at most {MAX_TRIANGLES:,} can "
                                 "be textured (decimate it)", at)
        if kind == "positions" and isinstance(shape, list) and shape and isinstance(shape[0], int) \
                and shape[0] > MAX_VERTICES:
            raise InvalidRequest(f"{where} ({name!r}) has {shape[0]:,} vertices; the limit is {MAX_VERTICES:,}", at)
        arrays[kind] = ArrayInput.checked(desc["dtype"], shape, buffers[index], at, kind)
    if arrays["uvs"].shape[0] != arrays["triangles"].shape[0]:
        raise InvalidRequest(f"{where}.uvs must have one (3, 2) entry per triangle: {arrays['uvs'].shape[0]} for "
                             f"{arrays['triangles'].shape[0]} triangles", f"{where}.uvs")
    return MeshInput(name, **arrays)


def _views(item: object) -> ViewsInput:
    if not isinstance(item, dict):
        raise InvalidRequest("views must be an object (count, elevation_deg, top, bottom, size, fov_deg)", "views")
    known = {f.name for f in fields(ViewsInput)}
    extra = sorted(set(item) - known)
    if extra:
        raise InvalidRequest(f"views has unknown keys: {', '.join(extra)}", "views")
    return ViewsInput(**item)


def _camera(item: object, where: str) -> CameraInput:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object", where)
    known = {f.name for f in fields(CameraInput)}
    extra, missing = sorted(set(item) - known), sorted(k for k in ("world_to_camera", "width", "height", "fx",
                                                                    "fy", "cx", "cy") if k not in item)
    if extra or missing:
        raise InvalidRequest(f"{where}: " + "; ".join(([f"unknown keys {', '.join(extra)}"] if extra else [])
                                                      + ([f"missing {', '.join(missing)}"] if missing else [])),
                             where)
    matrix = item["world_to_camera"]
    if not isinstance(matrix, list) or len(matrix) != 16 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in matrix):
        raise InvalidRequest(f"{where}.world_to_camera must be 16 finite numbers (a 4x4 matrix, row-major)",
                             f"{where}.world_to_camera")
    for key in ("width", "height"):
        _int(f"{where}.{key}", item[key], 16, MAX_VIEW_SIDE)
    for key in ("fx", "fy", "cx", "cy"):
        _num(f"{where}.{key}", item[key], -1e9, 1e9)
    if item.get("projection", "perspective") not in ("perspective", "orthographic"):
        raise InvalidRequest(f"{where}.projection must be perspective or orthographic", f"{where}.projection")
    name = item.get("name", "")
    if not isinstance(name, str) or len(name) > 256:
        raise InvalidRequest(f"{where}.name must be a text of at most 256 characters", f"{where}.name")
    return CameraInput(**{**item, "world_to_camera": tuple(float(v) for v in matrix)})


def _list(value: object, name: str, limit: int) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"{name} must be a list", name)
    if len(value) > limit:
        raise InvalidRequest(f"{name} has {len(value)} items; the limit is {limit}", name)
    return value


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"


def _int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be an integer from {lo} to {hi}, got {value!r}", name)


def _num(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}", name)


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false, got {value!r}", name)
