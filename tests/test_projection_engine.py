"""The loop on the real engine (projection.engine_generator): with a tiny depth ControlNet (random weights,
exported through the real exporter) views run through the ControlNet graphs and the control input changes
the output; the depth image sent for a known scene matches the analytic depth map; the SD 2 depth model
takes it as its depth channel; a model with neither runs on text, image to image and inpainting alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.engine import Pipeline
from aigc_bridge.projection import shapes
from aigc_bridge.projection.cameras import look_at
from aigc_bridge.projection.engine_generator import CONTROLNET, DEPTH, TEXT, EngineGenerator
from aigc_bridge.projection.loop import LoopOptions, texture_meshes
from aigc_bridge.projection.mesh import Mesh

from .test_controlnet import controlnets, depth_model, sd_cn  # noqa: F401  (fixtures)

SIZE = 64  # the tiny models' native size


@pytest.fixture(scope="module")
def cn_pipe(sd_cn):  # noqa: F811
    return Pipeline.load(sd_cn, provider="cpu")


def ground() -> Mesh:
    """A 2 x 2 square on z = 0 (the ground), UVs filling the texture."""
    pos = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float64)
    tri = np.array([[0, 1, 2], [0, 2, 3]])
    uv = (pos[:, :2] + 1) / 2
    return Mesh.checked(pos, tri, uv[tri], "ground")


def analytic_depth(camera) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel centre: does its ray hit the square, and the depth image (inverse depth over the square's
    pixels scaled to [0.5, 1], near = 1) computed from the ray-plane intersection, not the rasteriser."""
    rx, ry = camera.pixel_rays()
    rays = np.stack(np.broadcast_arrays(rx[None, :], ry[:, None], -np.ones((len(ry), len(rx)))), axis=-1)
    world = rays @ camera.rotation  # camera -> world directions (rotation rows are the camera axes)
    eye = camera.position
    t = -eye[2] / world[..., 2]     # along the ray, in units of the view axis (ray z = -1): the depth
    hit = eye + t[..., None] * world
    covered = (t > 0) & (np.abs(hit[..., 0]) <= 1) & (np.abs(hit[..., 1]) <= 1)
    inv = np.where(covered, 1.0 / t, 0.0)
    lo, hi = inv[covered].min(), inv[covered].max()
    return covered, np.where(covered, 0.5 + 0.5 * (inv - lo) / (hi - lo), 0.0)


def sent(image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.data)).convert("L"), np.float32) / 255.0


def test_controlnet_loop_sends_the_analytic_depth_and_runs_the_controlnet_graphs(cn_pipe) -> None:
    cameras = [look_at((0, -3, 2.2), (0, 0, 0), width=SIZE, height=SIZE, fov_deg=60, name="front"),
               look_at((0, 3, 2.2), (0, 0, 0), width=SIZE, height=SIZE, fov_deg=60, name="back")]
    generator = EngineGenerator(cn_pipe, steps=2)
    assert generator.mode == CONTROLNET
    result = texture_meshes([ground()], cameras, generator, LoopOptions("stone tiles", seed=4, texture_size=64))
    assert result.coverage[0] > 0.9 and result.views[0].generated
    first = generator.requests[0]
    assert [c.name for c in first.controls] == ["depth"] and first.init is None
    assert any(r.init is not None and r.controls for r in generator.requests[1:]) or not result.views[1].generated
    graphs = set(cn_pipe.manifest["controlnets"]["depth"]["graphs"].values())
    assert graphs & set(cn_pipe._sessions), "the ControlNet graph never ran"

    covered, want = analytic_depth(cameras[0])
    got = sent(first.controls[0].image)
    assert covered.sum() > 0.1 * covered.size
    assert np.mean((got > 0) != covered) < 0.01  # the same pixels (edges may go either way)
    both = covered & (got > 0)
    assert np.abs(got[both] - want[both]).max() <= 1.5 / 255  # 8-bit PNG of the same values


def test_the_control_input_changes_the_output(cn_pipe) -> None:
    camera = look_at((0, -3, 2.2), (0, 0, 0), width=SIZE, height=SIZE, fov_deg=60)
    _, depth = analytic_depth(camera)
    generator = EngineGenerator(cn_pipe, steps=2)
    args = {"prompt": "stone tiles", "init": None, "mask": None, "strength": 1.0, "seed": 5, "size": (SIZE, SIZE)}
    a = generator(depth=depth.astype(np.float32), **args)
    b = generator(depth=depth[::-1].astype(np.float32), **args)
    again = generator(depth=depth.astype(np.float32), **args)
    assert np.array_equal(a, again)  # deterministic
    assert np.abs(a - b).max() > 2e-3  # the tiny ControlNet's random residuals are small, but they steer
    off = EngineGenerator(cn_pipe, steps=2, control_scale=0.0)
    assert np.abs(off(depth=depth.astype(np.float32), **args) - off(depth=depth[::-1].astype(np.float32),
                                                                    **args)).max() < 1e-6


def test_sd2_depth_model_takes_the_depth_as_its_channel(depth_model) -> None:  # noqa: F811
    pipe = Pipeline.load(depth_model[1], provider="cpu")
    generator = EngineGenerator(pipe, steps=2)
    assert generator.mode == DEPTH
    cameras = [look_at((0, -3, 2.2), (0, 0, 0), width=SIZE, height=SIZE, fov_deg=60)]
    texture_meshes([ground()], cameras, generator, LoopOptions("stone", texture_size=32))
    assert generator.requests[0].depth is not None and not generator.requests[0].controls


def test_a_model_without_depth_runs_on_text_img2img_and_inpainting(sd_pipeline) -> None:
    generator = EngineGenerator(sd_pipeline, steps=2)
    assert generator.mode == TEXT
    box = shapes.box()
    from aigc_bridge.projection.cameras import ring_cameras

    cameras = ring_cameras([box.positions], count=2, top=False, width=SIZE, height=SIZE)
    result = texture_meshes([box], cameras, generator, LoopOptions("crate", texture_size=64))
    first, later = generator.requests[0], generator.requests[1:]
    assert first.init is None and first.depth is None and not first.controls
    assert later and all(r.init is not None and r.mask is not None and r.strength == 1.0 for r in later)
    assert result.textures[0].shape == (64, 64, 3)


def test_the_sidecar_runs_the_loop_through_the_depth_controlnet(sd_cn, tmp_path) -> None:  # noqa: F811
    """A real `aigc-bridge serve` with the tiny depth-ControlNet package: the project request reports the
    ControlNet mode and bakes a texture."""
    from aigc_bridge.project_request import ArrayInput, MeshInput, ProjectRequest, ViewsInput

    from .sidecar import SidecarProcess

    def arr(a, dtype):
        a = np.ascontiguousarray(a, dtype)
        return ArrayInput(dtype, a.shape, a.tobytes())

    box = shapes.box()
    request = ProjectRequest("stone tiles", (MeshInput("box", arr(box.positions, "float32"),
                                                       arr(box.triangles, "int32"), arr(box.uvs, "float32")),),
                             steps=2, texture_size=64, views=ViewsInput(count=2, size=SIZE, top=False))
    server = SidecarProcess(tmp_path, sd_cn)
    try:
        with server.client() as client:
            response = client.project(request)
    finally:
        server.stop()
    assert response.mode == CONTROLNET and "depth ControlNet" in response.mode_text
    assert len(response.views) == 2 and response.textures[0].coverage > 0.4  # front and back of 6 faces
