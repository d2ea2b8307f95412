"""The sidecar's ``project`` request over real sockets against a real `aigc-bridge serve` process with the
shipped texture-mini: mesh arrays as binary frames, progress per view, cancel between views, and the
validation-first rule (bad input is refused before anything is queued)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from aigc_bridge.errors import AigcError, InvalidRequest
from aigc_bridge.project_request import ArrayInput, MeshInput, ProjectRequest, ViewsInput
from aigc_bridge.projection import shapes
from aigc_bridge.protocol import Codec, ProtocolError, project_content

from .sidecar import SidecarProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def arr(a, dtype: str) -> ArrayInput:
    a = np.ascontiguousarray(a, dtype)
    return ArrayInput(dtype, a.shape, a.tobytes())


def mesh_input(mesh, name: str = "cube") -> MeshInput:
    return MeshInput(name, arr(mesh.positions, "float32"), arr(mesh.triangles, "int32"), arr(mesh.uvs, "float32"))


def decoded(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    server = SidecarProcess(tmp_path_factory.mktemp("project-sidecar"), None)  # the shipped texture-mini
    yield server
    server.stop()


def small(prompt: str = "red brick wall", **kw) -> ProjectRequest:
    return ProjectRequest(prompt, (mesh_input(shapes.box()),), texture_size=128,
                          views=ViewsInput(count=4, size=64, bottom=True), **kw)


def test_red_brick_cube_is_red_on_all_six_faces(mini) -> None:
    events = []
    with mini.client() as client:
        response = client.project(small(), on_progress=events.append)
    assert response.mode == "text" and "no depth ControlNet" in response.mode_text
    assert [t.mesh for t in response.textures] == ["cube"]
    texture = decoded(response.textures[0].data)
    assert texture.shape == (128, 128, 3)
    assert response.textures[0].coverage > 0.97
    # every face of the box (one UV island per face) is red where its middle lands in the texture
    box = shapes.box()
    axis = np.argmax(np.abs(box.normals), axis=1) * 2 + (box.normals[np.arange(len(box.normals)),
                                                            np.argmax(np.abs(box.normals), axis=1)] > 0)
    assert sorted(set(axis.tolist())) == list(range(6))
    for face in range(6):
        centre = box.uvs[axis == face].reshape(-1, 2).mean(axis=0)
        col, row = int(centre[0] * 128), int((1 - centre[1]) * 128)
        r, g, b = texture[max(row - 4, 0):row + 4, max(col - 4, 0):col + 4].reshape(-1, 3).mean(axis=0)
        assert r > g + 0.15 and r > b + 0.15, f"face {face}: {r:.2f} {g:.2f} {b:.2f}"
    # progress per view: each view's stages, steps counting views
    views = [e for e in events if e.stage == "baked"]
    assert [e.step for e in views] == list(range(1, 7)) and all(e.total == 6 for e in views)
    assert len(response.views) == 6 and response.views[0]["generated"]


def test_cancel_between_views(mini) -> None:
    with mini.client() as client:
        def stop_after_first(event) -> bool:
            return not (event.stage == "baked" and event.step >= 1)

        with pytest.raises(AigcError) as err:
            client.project(small(), on_progress=stop_after_first)
    assert err.value.code == "cancelled"


def test_mesh_over_the_limit_is_refused_from_its_declaration() -> None:
    """The client refuses it before sending; a peer that sends it anyway is refused by the codec from the
    declared shape, before the arrays are parsed."""
    big = MeshInput("cube", arr(np.zeros((3, 3)), "float32"), arr(np.zeros((2_000_001, 3)), "int32"),
                    arr(np.zeros((2_000_001, 3, 2)), "float32"))
    with pytest.raises(InvalidRequest, match="2,000,001 triangles together; at most 2,000,000") as err:
        ProjectRequest("x", (big,))
    assert err.value.field == "meshes"
    content, buffers = project_content(small())
    content["meshes"][0]["triangles"]["shape"] = [2_000_001, 3]
    codec = Codec(None)
    with pytest.raises(ProtocolError, match="has 2,000,001 triangles; at most 2,000,000") as err:
        codec.decode(codec.encode("project", content, request_key="k", buffers=buffers))
    assert err.value.code == "invalid_request" and err.value.field == "meshes[0].triangles"


@pytest.mark.parametrize(("change", "field", "text"), [
    ("camera_inside", "cameras[0]", "is inside"),
    ("view_size", "views.size", "multiple of 4"),
    ("all_degenerate", "mesh 'cube' triangles", "zero area"),
])
def test_bad_input_refused_before_queueing(mini, change, field, text) -> None:
    from aigc_bridge.project_request import CameraInput

    box = shapes.box()
    if change == "camera_inside":
        eye = np.eye(4).reshape(-1).tolist()  # at the origin, inside the box
        request = ProjectRequest("x", (mesh_input(box),), texture_size=64,
                                 cameras=(CameraInput(tuple(eye), 64, 64, 50.0, 50.0, 32.0, 32.0),))
    elif change == "view_size":
        request = ProjectRequest("x", (mesh_input(box),), texture_size=64, views=ViewsInput(count=2, size=66))
    else:
        flat = box.positions.copy()
        flat[:, 2] = 0
        flat[:, 1] = 0
        request = ProjectRequest("x", (mesh_input(shapes.Mesh("cube", flat, box.triangles, box.uvs)),),
                                 texture_size=64, views=ViewsInput(count=2, size=64))
    with mini.client() as client, pytest.raises(AigcError) as err:
        client.project(request)
    assert err.value.code == "invalid_request"
    assert text in str(err.value) and err.value.field == field, (str(err.value), err.value.field)
    assert not [line for line in mini.job_lines() if " project 'x'" in line]  # nothing was queued


def test_overlapping_and_mirrored_uvs_are_warnings_with_what_was_done(mini) -> None:
    box = shapes.box()
    uvs = box.uvs.copy()
    uvs[2:4] = uvs[0:2]                 # face 2 stacked on face 1 in the UV map
    uvs[4:6, :, 0] = 1.0 - uvs[4:6, :, 0]  # face 3 mirrored
    mirrored = shapes.Mesh("cube", box.positions, box.triangles, uvs)
    request = ProjectRequest("red brick wall", (mesh_input(mirrored),), texture_size=64,
                             views=ViewsInput(count=2, size=32, top=False))
    with mini.client() as client:
        response = client.project(request)
    text = " ".join(response.warnings)
    assert "mirrored UVs" in text and "baked as they are" in text
    assert "overlap" in text and "the others show the same colours" in text
