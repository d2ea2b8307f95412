"""Game-ready outputs through the CLI and the sidecar: the same files, named after the output."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from aigc_bridge.assets.outputs import build_outputs

from .conftest import cli
from .sidecar import SidecarProcess


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_cli_pbr_set_is_named_after_the_output_and_tiles(tiny_sd, tmp_path):
    out = tmp_path / "wall.png"
    proc = cli("generate", "red brick wall", "-o", str(out), "--model", str(tiny_sd), "--steps", "2", "--seed", "3",
               "--tile", "both", "--pbr", "--target-size", "128")
    assert proc.returncode == 0, proc.stderr
    assert _names(tmp_path) == ["wall.json", "wall.png", "wall_ao.png", "wall_height.png", "wall_material.glb",
                                "wall_normal.png", "wall_orm.png", "wall_roughness.png"]
    normal = np.asarray(Image.open(tmp_path / "wall_normal.png"), dtype=np.float32)
    assert normal.shape == (128, 128, 3)
    provenance = json.loads((tmp_path / "wall.json").read_text())
    assert provenance["seed"] == 3 and provenance["prompt"] == "red brick wall"
    assert "wall_normal.png" in proc.stdout and "data" in proc.stdout


def test_cli_backdrop_writes_cube_faces_and_skydome(tiny_sd, tmp_path):
    out = tmp_path / "sky.png"
    proc = cli("generate", "blue sky", "-o", str(out), "--model", str(tiny_sd), "--steps", "2", "--kind", "backdrop")
    assert proc.returncode == 0, proc.stderr
    names = _names(tmp_path)
    assert {"sky.png", "sky.json", "sky_skydome.glb"} <= set(names)
    assert {f"sky_{face}.png" for face in ("px", "nx", "py", "ny", "pz", "nz")} <= set(names)
    with Image.open(out) as image:
        assert image.size[0] == 2 * image.size[1]
    assert json.loads((tmp_path / "sky.json").read_text())["tile"] == "x"


def test_bad_output_options_fail_before_anything_is_written(tiny_sd, tmp_path):
    for args, needle in [(["--target-size", "100"], "power of two"),
                         (["--kind", "backdrop", "--pbr"], "PBR maps are for textures"),
                         (["--kind", "backdrop", "--width", "128", "--height", "128"], "2:1")]:
        proc = cli("generate", "x", "-o", str(tmp_path / "o.png"), "--model", str(tiny_sd), *args)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = cli("generate", "x", "-o", str(blocker / "o.png"), "--model", str(tiny_sd), "--steps", "1", "--pbr")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _names(tmp_path) == ["file"]


def test_sidecar_sends_the_same_output_set_the_cli_writes(tiny_sd, sd_pipeline, tmp_path):
    from aigc_bridge.request import GenerateRequest

    server = SidecarProcess(tmp_path, tiny_sd)
    try:
        with server.client(timeout=60) as client:
            response = client.generate("red brick wall", steps=2, seed=4, tile="both", pbr=True, count=2)
        out = tmp_path / "remote" / "wall.png"
        proc = cli("generate", "red brick wall", "-o", str(out), "--connection-file", str(server.connection_file),
                   "--steps", "2", "--seed", "4", "--tile", "both", "--pbr")
        assert proc.returncode == 0, proc.stderr
    finally:
        server.stop()
    local = sd_pipeline.generate(GenerateRequest("red brick wall", steps=2, seed=4, tile="both", count=2))
    for i, image in enumerate(response.images):
        expected = {o.role: o for o in build_outputs(local.images[i], local.metadata(i), "image", pbr=True)}
        assert image.data == expected["image"].data
        roles = {o.role for o in image.outputs}
        assert roles == set(expected) - {"image"}
        for role in ("normal", "roughness", "orm"):
            assert image.output(role).data == expected[role].data, role
            assert image.output(role).colour_space == "data"
        assert image.output("normal").suffix == "_normal.png"
    assert _names(out.parent) == ["wall.json", "wall.png", "wall_ao.png", "wall_height.png", "wall_material.glb",
                                  "wall_normal.png", "wall_orm.png", "wall_roughness.png"]
