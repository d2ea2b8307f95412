"""write_outputs / build_outputs: names, colour spaces, provenance, one transaction, clear errors;
and the whole path on a real (tiny) model's output."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.assets import writers
from aigc_bridge.assets.outputs import build_outputs, write_outputs
from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.errors import AigcError, InvalidRequest
from aigc_bridge.request import GenerateRequest

METADATA = {"prompt": "red brick wall", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 4,
            "guidance": 7.5, "seed": 1, "scheduler": "euler", "tile": "both", "count": 1, "kind": "texture",
            "format": "png", "model_id": "tiny-sd", "model_hash": "sha256:abc", "provider": "CPUExecutionProvider",
            "timings_ms": {"total": 12.5}, "tool_version": "0.1.0"}
TEXTURE_FILES = ["wall.json", "wall.png", "wall_ao.png", "wall_height.png", "wall_material.glb", "wall_normal.png",
                 "wall_orm.png", "wall_roughness.png"]
BACKDROP_FILES = ["sky.json", "sky.png", "sky_nx.png", "sky_ny.png", "sky_nz.png", "sky_px.png", "sky_py.png",
                  "sky_pz.png", "sky_skydome.glb"]


def tileable(size: int = 64, seed: int = 0, width: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width = width or size
    f_y, f_x = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(width)[None, :]
    gain = np.exp(-(f_x**2 + f_y**2) * (size / 6) ** 2)[..., None]
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, width, 3)), axes=(0, 1)) * gain, axes=(0, 1)))
    return np.clip((noise - noise.mean()) / (noise.std() * 6) + 0.5, 0, 1).astype(np.float32)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_texture_set_is_named_after_the_output(tmp_path):
    files = write_outputs(tileable(), METADATA, tmp_path / "wall.png", pbr=True, target_size=128)
    assert listing(tmp_path) == TEXTURE_FILES
    assert [f.path.name for f in files] == ["wall.png", "wall_normal.png", "wall_roughness.png", "wall_height.png",
                                            "wall_ao.png", "wall_orm.png", "wall_material.glb", "wall.json"]
    spaces = {f.path.name: f.colour_space for f in files}
    assert spaces["wall.png"] == "srgb"
    assert all(spaces[n] == "data" for n in ("wall_normal.png", "wall_roughness.png", "wall_height.png",
                                             "wall_ao.png", "wall_orm.png"))
    for f in files:
        if f.mime == "image/png":
            assert Image.open(f.path).size == (128, 128)
    assert Image.open(tmp_path / "wall_roughness.png").mode == "L"
    assert Image.open(tmp_path / "wall_height.png").mode == "I;16"  # height is always 16-bit in a PNG
    orm = np.asarray(Image.open(tmp_path / "wall_orm.png"))
    assert orm.shape == (128, 128, 3) and not orm[..., 2].any()  # B = metallic = 0
    assert np.array_equal(orm[..., 0], np.asarray(Image.open(tmp_path / "wall_ao.png")))


def test_exr_variants_and_16_bit(tmp_path):
    pytest.importorskip("OpenEXR")
    files = write_outputs(tileable(), METADATA, tmp_path / "wall.exr", pbr=True, bit_depth=16)  # .exr = exr on
    names = {f.path.name: f for f in files}
    assert "wall_height.exr" in names and "wall_height.png" not in names
    assert names["wall.exr"].colour_space == "linear_rec709" and names["wall_height.exr"].colour_space == "data"
    assert names["wall.png"].bit_depth == 16 and names["wall_normal.png"].bit_depth == 16
    assert names["wall_height.exr"].bit_depth == 32 and names["wall.exr"].bit_depth == 16


def test_a_backdrop_set_is_named_after_the_output(tmp_path):
    files = write_outputs(tileable(32, width=64), {**METADATA, "tile": "x"}, tmp_path / "sky.png",
                          kind="backdrop", target_size=128)
    assert listing(tmp_path) == BACKDROP_FILES
    assert {f.path.name: f.colour_space for f in files}["sky_px.png"] == "srgb"
    assert Image.open(tmp_path / "sky.png").size == (128, 64)
    assert Image.open(tmp_path / "sky_pz.png").size == (32, 32)


def test_provenance_lists_the_generation_and_every_file(tmp_path):
    files = write_outputs(tileable(), METADATA, tmp_path / "wall.png", pbr=True, normal_convention="directx")
    doc = json.loads((tmp_path / "wall.json").read_text())
    for key in ("prompt", "negative_prompt", "seed", "steps", "scheduler", "guidance", "model_id", "model_hash",
                "provider", "timings_ms", "tool_version"):
        assert doc[key] == METADATA[key], key
    assert doc["outputs"]["normal_convention"] == "directx" and doc["outputs"]["pbr"] is True
    assert doc["assets_ms"] > 0
    listed = {f["filename"]: f for f in doc["files"]}
    assert sorted(listed) == sorted(f.path.name for f in files if f.role != "provenance")
    for f in files:
        if f.role != "provenance":
            assert listed[f.path.name]["colour_space"] == f.colour_space
            assert listed[f.path.name]["bytes"] == f.path.stat().st_size
    partial = build_outputs(tileable(), {"prompt": "x", "seed": np.int64(5), "timings_ms": {"total": np.float32(1)}},
                            "w")
    doc = json.loads(partial[-1].data)
    assert doc["seed"] == 5 and doc["model_hash"] is None  # every documented key, null when unknown


def test_the_bytes_in_memory_are_the_bytes_on_disk(tmp_path):
    built = build_outputs(tileable(32, width=64), {**METADATA, "tile": "x"}, "sky", kind="backdrop")
    write_outputs(tileable(32, width=64), {**METADATA, "tile": "x"}, tmp_path / "sky.png", kind="backdrop")
    for b in built:
        if b.role != "provenance":  # the JSON differs only in assets_ms
            assert (tmp_path / b.filename).read_bytes() == b.data, b.filename
    assert [b.filename for b in built] == [n for n in ["sky.png", *[f"sky_{f}.png" for f in
                                                                   ("px", "nx", "py", "ny", "pz", "nz")],
                                                      "sky_skydome.glb", "sky.json"]]


def test_uint8_input_is_accepted(tmp_path):
    image = np.round(tileable() * 255).astype(np.uint8)
    write_outputs(image, METADATA, tmp_path / "wall.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "wall.png")), image)
    assert listing(tmp_path) == ["wall.json", "wall.png"]


BAD = [
    ({"image": np.zeros((63, 64, 3), np.float32)}, "image"),            # odd
    ({"image": np.zeros((64, 64), np.float32)}, "image"),               # not RGB
    ({"image": np.zeros((4, 4, 3), np.float32)}, "image"),              # too small
    ({"image": np.full((64, 64, 3), np.nan, np.float32)}, "image"),
    ({"target_size": 1000}, "target_size"),                              # not a power of two (engine mode)
    ({"target_size": 48}, "target_size"),
    ({"image": np.zeros((64, 96, 3), np.float32), "target_size": 512}, "target_size"),  # 512 x 341.3
    ({"image": np.zeros((64, 32, 3), np.float32), "target_size": 4096}, "target_size"),  # 4096 x 8192
    ({"kind": "backdrop", "pbr": False}, "image"),                       # 1:1 is not a panorama
    ({"kind": "backdrop"}, "pbr"),                                       # backdrops have no PBR maps
    ({"kind": "sprite"}, "kind"),
    ({"normal_convention": "vulkan", "pbr": True}, "normal_convention"),
    ({"bit_depth": 12}, "bit_depth"),
    ({"pbr": "yes"}, "pbr"),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, change, field):
    args = {"image": tileable(), "pbr": True, **change}
    image = args.pop("image")
    with pytest.raises(InvalidRequest) as err:
        write_outputs(image, METADATA, tmp_path / "out" / "wall.png", **args)
    assert err.value.field == field and err.value.code == "invalid_request" and err.value.message
    assert field in str(err.value)
    assert listing(tmp_path) == []  # not even the folder


@pytest.mark.parametrize("name", ["wall.jpg", "wall"])
def test_the_output_must_be_png_or_exr(tmp_path, name):
    with pytest.raises(InvalidRequest) as err:
        write_outputs(tileable(), METADATA, tmp_path / name)
    assert err.value.field == "output" and listing(tmp_path) == []


def test_an_unwritable_output_folder_is_a_clear_error_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for output in (blocker / "wall.png", blocker / "sub" / "wall.png"):
        with pytest.raises(AigcError) as err:
            write_outputs(tileable(), METADATA, output, pbr=True)
        assert err.value.field == "output"
    assert listing(tmp_path) == ["file"]
    if os.geteuid() != 0:  # root ignores folder permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(AigcError) as err:
            write_outputs(tileable(), METADATA, locked / "wall.png", pbr=True)
        assert err.value.code == "output_unwritable" and listing(locked) == []


def test_a_name_taken_by_a_folder_fails_before_writing_anything(tmp_path):
    (tmp_path / "wall_orm.png").mkdir()
    with pytest.raises(AigcError) as err:
        write_outputs(tileable(), METADATA, tmp_path / "wall.png", pbr=True)
    assert err.value.code == "output_unwritable" and "wall_orm.png" in err.value.message
    assert listing(tmp_path) == ["wall_orm.png"]


def test_a_failure_half_way_through_the_renames_rolls_everything_back(tmp_path, monkeypatch):
    (tmp_path / "wall.png").write_bytes(b"old")  # an earlier run's file is replaced only on success
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(writers.os, "replace", failing_replace)
    with pytest.raises(AigcError) as err:
        write_outputs(tileable(), METADATA, tmp_path / "sub" / "wall.png", pbr=True)
    assert err.value.code == "output_unwritable" and "No space left" in err.value.message
    assert listing(tmp_path) == ["wall.png"] and (tmp_path / "wall.png").read_bytes() == b"old"  # sub/ removed
    monkeypatch.setattr(writers.os, "replace", real_replace)
    write_outputs(tileable(), METADATA, tmp_path / "wall.png", pbr=True)
    assert listing(tmp_path) == TEXTURE_FILES and (tmp_path / "wall.png").read_bytes() != b"old"


def test_a_failure_while_writing_temporaries_leaves_nothing(tmp_path, monkeypatch):
    real_fdopen, opened = os.fdopen, []

    def failing_fdopen(fd, mode="r", *a, **k):
        opened.append(fd)
        f = real_fdopen(fd, mode, *a, **k)
        if len(opened) == 3:
            f.close()
            raise OSError(5, "Input/output error")
        return f

    monkeypatch.setattr(writers.os, "fdopen", failing_fdopen)
    with pytest.raises(AigcError):
        write_outputs(tileable(), METADATA, tmp_path / "wall.png", pbr=True)
    assert listing(tmp_path) == []


# --- a real model's output ----------------------------------------------------------------------------------


def test_every_map_of_a_real_tileable_generation_tiles(sd_pipeline, tmp_path):
    result = sd_pipeline.generate(GenerateRequest("red brick wall", steps=4, seed=1, tile="both"))
    image, metadata = result.images[0], result.metadata(0)
    files = write_outputs(image, metadata, tmp_path / "wall.png", pbr=True, target_size=256)
    ratios = {}
    for f in files:
        if f.mime == "image/png":
            pixels = np.asarray(Image.open(f.path)).astype(np.float64)
            ratios[f.path.name] = (seam_ratio(pixels, 0), seam_ratio(pixels, 1))
    assert len(ratios) == 6 and all(max(r) < 1.5 for r in ratios.values()), ratios
    doc = json.loads((tmp_path / "wall.json").read_text())
    assert doc["prompt"] == "red brick wall" and doc["seed"] == 1 and doc["steps"] == 4
    assert doc["model_hash"] == result.package_hash and doc["provider"] == result.provider
    assert doc["tile"] == "both" and doc["tool_version"] and doc["timings_ms"]["total"] > 0


def test_a_real_x_tiled_generation_makes_a_backdrop_whose_edges_meet(sd_pipeline):
    result = sd_pipeline.generate(GenerateRequest("blue sky, clouds", steps=4, seed=2, width=128, height=64,
                                                  tile="x", kind="backdrop"))
    built = {b.role: b for b in build_outputs(result.images[0], result.metadata(0), "sky", kind="backdrop",
                                              target_size=256)}
    sky = np.asarray(Image.open(io.BytesIO(built["image"].data))).astype(np.float64)
    assert sky.shape == (128, 256, 3) and seam_ratio(sky, 1) < 1.5
    assert json.loads(built["provenance"].data)["tile"] == "x"


def test_the_material_glb_wires_the_set_as_gltf_expects(tmp_path):
    from aigc_bridge.assets.gltf import glb_image, read_glb

    write_outputs(tileable(), METADATA, tmp_path / "wall.png", pbr=True, normal_convention="directx", bit_depth=16)
    gltf, binary = read_glb((tmp_path / "wall_material.glb").read_bytes())
    material = gltf["materials"][0]
    pbr = material["pbrMetallicRoughness"]
    assert pbr["metallicRoughnessTexture"]["index"] == material["occlusionTexture"]["index"]  # one ORM image

    def texture(index: int) -> np.ndarray:
        image = Image.open(io.BytesIO(glb_image(gltf, binary, index)))
        assert image.mode in ("RGB", "L")  # glTF textures: 8-bit, whatever bit depth the files have
        return np.asarray(image).astype(np.float32) / 255.0

    albedo = np.asarray(Image.open(tmp_path / "wall.png")).astype(np.float32) / 255.0  # 16-bit read as 8 by Pillow
    assert np.abs(texture(pbr["baseColorTexture"]["index"]) - albedo).max() < 1.01 / 255  # Pillow truncates
    orm = texture(material["occlusionTexture"]["index"])
    ao16 = np.asarray(Image.open(tmp_path / "wall_ao.png")).astype(np.float32)  # 16-bit grey: Pillow reads I;16
    assert np.abs(orm[..., 0] * 65535 - ao16).max() <= 129  # rounded to 8 bits: within half a step
    assert not orm[..., 2].any()
    directx = np.asarray(Image.open(tmp_path / "wall_normal.png")).astype(np.float32) / 255.0
    gl = texture(material["normalTexture"]["index"])  # the GLB always holds +Y (OpenGL) normals
    assert np.abs(gl[..., 1] - (1.0 - directx[..., 1])).max() < 1.01 / 255
    assert np.abs(gl[..., 0] - directx[..., 0]).max() < 1.01 / 255
    assert "TANGENT" in gltf["meshes"][0]["primitives"][0]["attributes"]


def test_the_assets_layer_imports_no_engine_torch_or_blender():
    import subprocess
    import sys

    code = "import aigc_bridge.assets.outputs, sys; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not {"onnxruntime", "torch", "bpy", "zmq", "aigc_bridge.engine", "OpenEXR"} & loaded
