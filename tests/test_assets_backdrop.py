"""360-degree backdrops: 2:1, edges that meet, soft poles, cube faces that agree with the equirect image
(and with each other) along their borders, and a skydome GLB seen from inside."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.assets.gltf import glb_image, read_glb, skydome_glb
from aigc_bridge.assets.outputs import build_outputs
from aigc_bridge.assets.panorama import (
    CUBE_FACES,
    close_seam_x,
    cube_face_directions,
    equirect_directions,
    equirect_to_cube,
    sample_cube,
    sample_equirect,
    soften_poles,
)
from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.assets.writers import png_bytes
from aigc_bridge.errors import InvalidRequest

SEAMLESS = 1.5


def sky_noise(height: int, seed: int = 0, periodic_x: bool = True) -> np.ndarray:
    """A 2:1 test panorama: smooth noise, periodic on x (as tile="x" generates) unless told otherwise."""
    rng = np.random.default_rng(seed)
    width = 2 * height
    big_w = width if periodic_x else width * 2
    fy, fx = np.fft.fftfreq(height * 2)[:, None], np.fft.fftfreq(big_w)[None, :]
    gain = np.exp(-(fx**2 + fy**2) * (height / 6) ** 2)[..., None]
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(height * 2, big_w, 3)), axes=(0, 1)) * gain,
                                 axes=(0, 1)))[:height, :width]
    return np.clip((noise - noise.mean()) / (noise.std() * 6) + 0.5, 0, 1).astype(np.float32)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.float32) / 255.0


def built(image, tile="x", **kwargs) -> dict:
    files = build_outputs(image, {"prompt": "sky", "seed": 3, "tile": tile}, "sky", kind="backdrop", **kwargs)
    return {f.role: f for f in files}


def neighbour_step(image: np.ndarray) -> float:
    """The mean difference between horizontally neighbouring pixels: what 'close' means for this image."""
    return float(np.abs(np.diff(image, axis=1)).mean())


def test_backdrop_is_2_to_1_and_its_edges_meet():
    out = built(sky_noise(64), target_size=256)
    image = decode(out["image"].data)
    assert image.shape == (128, 256, 3) and out["image"].width == 2 * out["image"].height
    assert seam_ratio(image, 1) < SEAMLESS
    assert sorted(r for r in out if r.startswith("cube_")) == sorted(f"cube_{f}" for f in CUBE_FACES)
    assert all(out[f"cube_{f}"].width == out[f"cube_{f}"].height == 64 for f in CUBE_FACES)


def test_a_backdrop_generated_without_x_wrap_gets_its_seam_closed():
    raw = sky_noise(64, seed=1, periodic_x=False)
    assert seam_ratio(raw, 1) > 2.5  # the control: this one shows a seam
    closed = close_seam_x(raw)
    assert np.abs(closed[:, 0] - closed[:, -1]).max() < 1e-6  # the edge columns meet
    assert np.array_equal(closed[:, 8:-8], raw[:, 8:-8])  # only a band of width / 16 at each side changes
    image = decode(built(raw, tile="none")["image"].data)
    assert seam_ratio(image, 1) < SEAMLESS


def test_poles_are_softened_to_one_colour_and_the_equator_is_untouched():
    raw = sky_noise(128, seed=2)
    soft = soften_poles(raw, cap_degrees=30.0)
    assert soft[0].std(axis=0).max() < 1e-6 and soft[-1].std(axis=0).max() < 1e-6  # one colour at each pole
    assert np.allclose(soft[0], raw[0].mean(axis=0), atol=1e-6)  # ... the row's mean
    assert np.array_equal(soft[22:-22], raw[22:-22])  # rows below 60 degrees of latitude are untouched
    kept = [soft[r].std(axis=0).mean() / raw[r].std(axis=0).mean() for r in (0, 4, 10, 16, 21)]
    assert kept[0] < 1e-5 < kept[1] < kept[2] < kept[3] < kept[4] < 1.0, kept  # detail returns away from the pole
    assert seam_ratio(soft, 1) < SEAMLESS  # the filter is periodic on x
    written = decode(built(raw)["image"].data)
    assert len(np.unique(written[0].reshape(-1, 3), axis=0)) == 1 and len(np.unique(written[-1].reshape(-1, 3),
                                                                                     axis=0)) == 1


def analytic_sky(height: int) -> np.ndarray:
    """Colour = 0.5 + 0.4 x direction: each face's colour says which way it looks."""
    return (0.5 + 0.4 * equirect_directions(2 * height, height)).astype(np.float32)


def test_cube_faces_look_where_their_names_say():
    faces = equirect_to_cube(analytic_sky(256))
    axes = {"px": (1, 0, 0), "nx": (-1, 0, 0), "py": (0, 1, 0), "ny": (0, -1, 0), "pz": (0, 0, 1), "nz": (0, 0, -1)}
    for face, axis in axes.items():
        n = faces[face].shape[0]
        assert n == 128
        centre = faces[face][n // 2 - 1: n // 2 + 1, n // 2 - 1: n // 2 + 1].mean(axis=(0, 1))
        assert np.allclose(centre, 0.5 + 0.4 * np.array(axis), atol=0.01), face
        expected = 0.5 + 0.4 * cube_face_directions(face, n)
        assert np.abs(faces[face] - expected).max() < 0.01, face
    # upright, seen from inside: the front face's top row looks up, its right column looks right (+x)
    assert faces["pz"][0, 64, 1] > 0.7 and faces["pz"][64, -1, 0] > 0.7
    # the top face has the front (+z) at its bottom edge; the bottom face has it at its top edge
    assert faces["py"][-1, 64, 2] > 0.7 and faces["ny"][0, 64, 2] > 0.7


def cube_edge_directions(steps: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    """Points along the 12 cube edges, each nudged a hair into one and the other of the two faces."""
    t = np.linspace(-0.98, 0.98, steps)
    pairs = []
    for a in range(3):  # the edge runs along axis a; the other two axes sit at +-1
        b, c = [i for i in range(3) if i != a]
        for sb in (-1, 1):
            for sc in (-1, 1):
                edge = np.zeros((steps, 3))
                edge[:, a], edge[:, b], edge[:, c] = t, sb, sc
                into_b, into_c = edge.copy(), edge.copy()
                into_b[:, c] *= 0.995  # |b| wins: face of axis b
                into_c[:, b] *= 0.995  # |c| wins: face of axis c
                pairs.append((into_b, into_c))
    return pairs


def border_errors(faces: dict, sky: np.ndarray) -> tuple[float, float]:
    """Worst mean difference along a cube edge: face vs equirect, and face vs the neighbouring face."""
    worst_equirect, worst_pair = 0.0, 0.0
    for into_b, into_c in cube_edge_directions():
        on_b, on_c = sample_cube(faces, into_b), sample_cube(faces, into_c)
        truth = sample_equirect(sky, into_b)  # the same directions, sampled from the equirect image
        worst_equirect = max(worst_equirect, float(np.abs(on_b - truth).mean()))
        worst_pair = max(worst_pair, float(np.abs(on_b - on_c).mean()))
    return worst_equirect, worst_pair


def test_cube_faces_agree_with_the_equirect_and_each_other_along_their_borders():
    sky = sky_noise(256, seed=4)
    faces = equirect_to_cube(sky)
    step = neighbour_step(sky)
    face_step = float(np.mean([neighbour_step(f) for f in faces.values()]))
    worst_equirect, worst_pair = border_errors(faces, sky)
    # the same direction from a face and from the equirect: a small fraction of a neighbour step (measured 0.15)
    assert worst_equirect < 0.25 * step, (worst_equirect, step)
    # across a border, the two faces' outermost pixels differ like any two neighbours (measured 0.67 step)
    assert worst_pair < 1.0 * face_step, (worst_pair, face_step)
    random_dirs = np.random.default_rng(0).normal(size=(4000, 3))
    assert np.abs(sample_cube(faces, random_dirs) - sample_equirect(sky, random_dirs)).mean() < 0.25 * step
    mirrored = {**faces, "px": faces["px"][:, ::-1]}  # the control: one face the wrong way round
    assert border_errors(mirrored, sky)[1] > 2.0 * face_step


def test_skydome_glb_is_a_sphere_seen_from_inside_with_the_equirect_unlit():
    sky = sky_noise(32, seed=5)
    png = png_bytes(sky)
    gltf, binary = read_glb(skydome_glb(png, radius=10.0, segments=32, rings=16))

    def accessor(i: int) -> np.ndarray:
        acc = gltf["accessors"][i]
        view = gltf["bufferViews"][acc["bufferView"]]
        width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
        dtype = np.uint32 if acc["componentType"] == 5125 else np.float32
        data = np.frombuffer(binary, dtype, acc["count"] * width, view["byteOffset"])
        return data.reshape(acc["count"], width) if width > 1 else data

    prim = gltf["meshes"][0]["primitives"][0]
    pos, uv = accessor(prim["attributes"]["POSITION"]), accessor(prim["attributes"]["TEXCOORD_0"])
    tri = accessor(prim["indices"]).reshape(-1, 3)
    assert np.allclose(np.linalg.norm(pos, axis=1), 10.0, atol=1e-4)
    a, b, c = pos[tri[:, 0]], pos[tri[:, 1]], pos[tri[:, 2]]
    facing = np.sum(np.cross(b - a, c - a) * (a + b + c), axis=1)
    assert (facing < 0).all()  # counter-clockwise seen from the centre: front faces point inward
    assert np.sum(np.cross(b - a, c - a) * (a + b + c) > 0) == 0 and len(tri) == 32 * 16 * 2 - 2 * 32
    assert np.allclose(accessor(prim["attributes"]["NORMAL"]), -pos / 10.0, atol=1e-5)
    forward = np.argmin(pos[:, 2])  # glTF -Z: the panorama's centre
    right = np.argmax(pos[:, 0])
    top = np.argmax(pos[:, 1])
    assert np.allclose(uv[forward], (0.5, 0.5), atol=1e-6) and np.isclose(uv[right][0], 0.75)
    assert np.isclose(uv[top][1], 0.0)
    material = gltf["materials"][prim["material"]]
    assert "KHR_materials_unlit" in material["extensions"] and gltf["extensionsUsed"] == ["KHR_materials_unlit"]
    texture = material["pbrMetallicRoughness"]["baseColorTexture"]["index"]
    assert glb_image(gltf, binary, texture) == png
    sampler = gltf["samplers"][gltf["textures"][texture]["sampler"]]
    assert sampler["wrapS"] == 10497 and sampler["wrapT"] == 33071  # repeat around, clamp at the poles


def test_backdrop_exr_is_linear_and_marked_as_a_latlong_environment():
    openexr = pytest.importorskip("OpenEXR")
    out = built(sky_noise(32), exr=True, bit_depth=16)
    assert out["image_linear"].filename == "sky.exr" and out["image_linear"].colour_space == "linear_rec709"
    assert out["cube_px"].filename == "sky_px.exr" and out["cube_px"].colour_space == "linear_rec709"
    buffer = io.BytesIO(out["image_linear"].data)
    with openexr.File(buffer) as exr:  # the header is a live view: read it before the file closes
        assert exr.header()["envmap"] == openexr.ENVMAP_LATLONG
        assert np.allclose(exr.header()["chromaticities"], (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290))
        pixels = exr.channels()["RGB"].pixels.astype(np.float32)
    srgb = decode_png16(out["image"].data)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    assert pixels.shape == (32, 64, 3) and np.abs(pixels - linear).max() < 2e-3  # half floats


def decode_png16(data: bytes) -> np.ndarray:
    """Our 16-bit PNGs (filter Up on every row), decoded by hand: Pillow reads 16-bit RGB as 8-bit."""
    import struct
    import zlib

    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 16
    chunks, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos: pos + 8])
        if kind == b"IDAT":
            chunks += data[pos + 8: pos + 8 + length]
        pos += 12 + length
    channels = 3 if colour == 2 else 1
    rows = np.frombuffer(zlib.decompress(chunks), np.uint8).reshape(height, 1 + width * channels * 2)
    assert (rows[:, 0] == 2).all()
    raw = np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8)  # undo "Up": running sum modulo 256
    values = raw.view(">u2").reshape(height, width, channels).astype(np.float32) / 65535.0
    return values if channels == 3 else values[..., 0]


@pytest.mark.parametrize(("shape", "field"), [((64, 64, 3), "image"), ((64, 96, 3), "image"),
                                              ((33, 66, 3), "image")])
def test_a_backdrop_must_be_2_to_1_and_even(shape, field):
    with pytest.raises(InvalidRequest) as err:
        built(np.zeros(shape, np.float32))
    assert err.value.field == field


def test_a_backdrop_has_no_pbr_maps():
    with pytest.raises(InvalidRequest) as err:
        build_outputs(sky_noise(32), {"tile": "x"}, "sky", kind="backdrop", pbr=True)
    assert err.value.field == "pbr"
