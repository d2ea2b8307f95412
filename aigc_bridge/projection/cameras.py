"""Cameras: a ring around the objects (plus top / bottom), or given ones (a scene's own), checked.

Camera space is Blender's and OpenGL's: the camera looks down -Z with +Y up and +X right. Pixel (col, row)
covers [col, col + 1) x [row, row + 1) with the top row first, so a camera-space point (x, y, z) lands at
image position (cx + fx * x / -z, cy - fy * y / -z); an orthographic camera drops the division (fx, fy in
pixels per unit). The world is Z-up (Blender's): a ring turns around Z, "top" looks down -Z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest

MIN_VIEW, MAX_VIEW = 16, 2048
PERSPECTIVE, ORTHOGRAPHIC = "perspective", "orthographic"


@dataclass(frozen=True)
class Camera:
    world_to_camera: np.ndarray  # (4, 4) rigid transform
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    projection: str = PERSPECTIVE
    name: str = ""

    @property
    def rotation(self) -> np.ndarray:
        return self.world_to_camera[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.world_to_camera[:3, 3]

    @property
    def position(self) -> np.ndarray:
        """The eye in world space (for an orthographic camera: a point on its image plane)."""
        return -self.rotation.T @ self.translation

    @property
    def forward(self) -> np.ndarray:
        return -self.rotation[2]

    @property
    def perspective(self) -> bool:
        return self.projection == PERSPECTIVE

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T + self.translation

    def project(self, points_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image x, y (continuous, pixel units) and depth (distance along the view axis) of camera-space points."""
        depth = -points_camera[..., 2]
        scale = 1.0 / np.where(depth > 0, depth, np.inf) if self.perspective else 1.0
        x = self.cx + self.fx * points_camera[..., 0] * scale
        y = self.cy - self.fy * points_camera[..., 1] * scale
        return x, y, depth

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per column and per row, the camera-plane coordinate of pixel centres: x/-z and y/-z for a
        perspective camera (the ray through the pixel is (rx, ry, -1)), x and y for an orthographic one."""
        rx = (np.arange(self.width) + 0.5 - self.cx) / self.fx
        ry = -(np.arange(self.height) + 0.5 - self.cy) / self.fy
        return rx, ry

    def footprint(self, depth: np.ndarray | float) -> np.ndarray | float:
        """World size of one pixel at ``depth``."""
        return depth / self.fx if self.perspective else 1.0 / self.fx


def look_at(eye: object, target: object, *, up: object = (0.0, 0.0, 1.0), width: int = 512, height: int = 512,
            fov_deg: float = 40.0, name: str = "") -> Camera:
    """A perspective camera at ``eye`` looking at ``target``; ``fov_deg`` spans the longer image side."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    if abs(float(forward @ up)) > 0.999:  # looking straight up or down: any horizontal "up" works
        up = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    rotation = np.stack([right, true_up, -forward])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = -rotation @ eye
    focal = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return Camera(matrix, width, height, focal, focal, width / 2, height / 2, PERSPECTIVE, name)


def bounding_sphere(positions: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Centre of the joint bounding box and the radius that encloses every vertex."""
    points = np.concatenate(positions)
    centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
    return centre, float(np.linalg.norm(points - centre, axis=1).max())


def ring_cameras(positions: list[np.ndarray], *, count: int = 8, elevation_deg: float = 15.0, top: bool = True,
                 bottom: bool = False, width: int = 512, height: int = 512, fov_deg: float = 40.0,
                 margin: float = 1.1) -> list[Camera]:
    """``count`` cameras on a ring around the objects at ``elevation_deg`` (above the horizon), then top and
    bottom views; each frames the bounding sphere (times ``margin``). The order spirals out from the front
    (Blender's front view, the camera on -Y): front, then +-45 degrees, +-90..., back, top, bottom, so
    each view after the first overlaps what earlier ones painted."""
    _check_int("count", count, 0, 64)
    _check_int("width", width, MIN_VIEW, MAX_VIEW)
    _check_int("height", height, MIN_VIEW, MAX_VIEW)
    if not -89.0 <= elevation_deg <= 89.0:
        raise InvalidRequest(f"elevation_deg must be between -89 and 89 degrees, got {elevation_deg}",
                             "elevation_deg")
    if not 5.0 <= fov_deg <= 120.0:
        raise InvalidRequest(f"fov_deg must be between 5 and 120 degrees, got {fov_deg}", "fov_deg")
    if count + top + bottom == 0:
        raise InvalidRequest("no views: set count > 0 or ask for top / bottom views", "count")
    centre, radius = bounding_sphere(positions)
    radius = max(radius, 1e-6)
    short_fov = 2 * math.atan(math.tan(math.radians(fov_deg) / 2) * min(width, height) / max(width, height))
    distance = margin * radius / math.sin(short_fov / 2)
    azimuths = [0.0]
    step = 360.0 / count if count else 0.0
    for k in range(1, count):
        side = (k + 1) // 2 * step
        azimuths.append(side if k % 2 else -side)
    cameras = []
    elevation = math.radians(elevation_deg)
    for k, azimuth in enumerate(azimuths[:count]):
        a = math.radians(azimuth)
        direction = np.array([math.sin(a) * math.cos(elevation), -math.cos(a) * math.cos(elevation),
                              math.sin(elevation)])
        cameras.append(look_at(centre + distance * direction, centre, width=width, height=height,
                               fov_deg=fov_deg, name=f"ring {k + 1} ({azimuth:+.0f} deg)"))
    if top:
        cameras.append(look_at(centre + [0, 0, distance], centre, up=(0, 1, 0), width=width, height=height,
                               fov_deg=fov_deg, name="top"))
    if bottom:
        cameras.append(look_at(centre - [0, 0, distance], centre, up=(0, 1, 0), width=width, height=height,
                               fov_deg=fov_deg, name="bottom"))
    return cameras


def checked_camera(value: Camera, index: int) -> Camera:
    """Validate a camera that came from outside (a scene, the wire)."""
    where = f"cameras[{index}]"
    m = np.asarray(value.world_to_camera, np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise InvalidRequest(f"{where}: world_to_camera must be a finite 4x4 matrix", f"{where}.world_to_camera")
    rotation = m[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0:
        raise InvalidRequest(f"{where}: world_to_camera must be a rotation and a translation (no scale, shear "
                             "or mirror); apply the camera's scale", f"{where}.world_to_camera")
    _check_int(f"{where}.width", value.width, MIN_VIEW, MAX_VIEW)
    _check_int(f"{where}.height", value.height, MIN_VIEW, MAX_VIEW)
    for name in ("fx", "fy", "cx", "cy"):
        v = getattr(value, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or (name in ("fx", "fy") and v <= 0):
            raise InvalidRequest(f"{where}.{name} must be a finite {'positive ' if name[1] == 'x' else ''}"
                                 f"number, got {v!r}", f"{where}.{name}")
    if value.projection not in (PERSPECTIVE, ORTHOGRAPHIC):
        raise InvalidRequest(f"{where}.projection must be {PERSPECTIVE!r} or {ORTHOGRAPHIC!r}",
                             f"{where}.projection")
    return Camera(m, value.width, value.height, float(value.fx), float(value.fy), float(value.cx),
                  float(value.cy), value.projection, value.name)


def winding_number(corners: np.ndarray, point: np.ndarray) -> float:
    """Generalised winding number of a triangle soup around ``point``: 1 inside a closed, outward-wound
    mesh, 0 outside, in between for open meshes (Jacobson et al. 2013; solid angles by Van Oosterom and
    Strackee)."""
    a, b, c = (corners[:, k] - point for k in range(3))
    la, lb, lc = (np.linalg.norm(v, axis=1) for v in (a, b, c))
    det = np.einsum("ij,ij->i", a, np.cross(b, c))
    div = (la * lb * lc + np.einsum("ij,ij->i", a, b) * lc + np.einsum("ij,ij->i", a, c) * lb
           + np.einsum("ij,ij->i", b, c) * la)
    return float(np.arctan2(det, div).sum() * 2 / (4 * math.pi))


def check_outside(cameras: list[Camera], meshes: list) -> None:
    """A perspective camera inside an object sees its inside: refuse it, naming both."""
    for index, camera in enumerate(cameras):
        if not camera.perspective:
            continue
        eye = camera.position
        for mesh in meshes:
            lo, hi = mesh.positions.min(axis=0), mesh.positions.max(axis=0)
            if (eye < lo).any() or (eye > hi).any():
                continue
            if abs(winding_number(mesh.corners, eye)) >= 0.5:
                label = f" ({camera.name!r})" if camera.name else ""
                raise InvalidRequest(f"cameras[{index}]{label} is inside {mesh.name!r}: it would see the object "
                                     "from within; move it outside", f"cameras[{index}]")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be an integer from {lo} to {hi}, got {value!r}", name)
