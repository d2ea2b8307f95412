"""`batch --ray`: the same jobs on a small local Ray instance (2 CPUs, no GPU, two actors, batches of two)
give the same output sets and manifest as the plain run, images within one grey level."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.batch import BatchOptions, parse_job_file, run_batch
from aigc_bridge.batch.backends import LocalBackend
from aigc_bridge.batch.manifest import MANIFEST_NAME

JOBS = """\
[defaults]
steps = 3

[[texture]]
name = "wall"
prompt = "red brick wall"
seeds = [1, 2, 3]
tile = "both"
pbr = true

[[texture]]
name = "wood_{w}"
template = "{w} planks"
variables = { w = ["oak", "pine"] }

[[backdrop]]
name = "sky"
prompt = "overcast sky"
seed = 8
"""


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_outputs_as_the_plain_run(tmp_path, tiny_sd, ray_local):
    from aigc_bridge.batch.ray_backend import RayBackend

    job_file = parse_job_file(JOBS)
    plain, scaled = tmp_path / "plain", tmp_path / "ray"
    backend = LocalBackend(tiny_sd, provider="cpu")
    assert run_batch(job_file, backend, BatchOptions(out=plain)).exit_code == 0
    backend = RayBackend(tiny_sd, workers=2, batch_size=2)
    assert backend._resources == {"num_cpus": 1}  # no GPU: one CPU (and one ORT thread) per actor
    try:
        summary = run_batch(job_file, backend, BatchOptions(out=scaled, batch_size=2))
    finally:
        backend.close()
    assert ray_local.is_initialized()  # a cluster the batch did not start is left running
    assert summary.exit_code == 0 and summary.generated == 6
    a = json.loads((plain / MANIFEST_NAME).read_text())
    b = json.loads((scaled / MANIFEST_NAME).read_text())
    assert b["runs"][-1]["mode"] == "ray"
    assert list(a["outputs"]) == list(b["outputs"])  # same sets, same (job file) order
    for stem, entry in a["outputs"].items():
        other = b["outputs"][stem]
        assert (entry["key"], entry["seed"]) == (other["key"], other["seed"])
        assert [f["file"] for f in entry["files"]] == [f["file"] for f in other["files"]]
        for f in entry["files"]:
            if f["file"].endswith(".png"):
                x = np.asarray(Image.open(plain / f["file"])).astype(int)
                y = np.asarray(Image.open(scaled / f["file"])).astype(int)
                assert np.abs(x - y).max() <= 1, f["file"]
    assert sorted(p.name for p in plain.iterdir()) == sorted(p.name for p in scaled.iterdir())
    rerun = RayBackend(tiny_sd, workers=1)
    try:
        again = run_batch(job_file, rerun, BatchOptions(out=scaled))
    finally:
        rerun.close()
    assert (again.generated, again.skipped) == (0, 6)  # resumable the same way


def test_ray_actors_get_the_input_images(tmp_path, tiny_sd, ray_local):
    """Units cross to the actors as text rows: their input images go with them (base64), and the outputs are
    the plain run's."""
    from aigc_bridge.batch.ray_backend import RayBackend

    from .test_protocol_images import png

    (tmp_path / "wall.png").write_bytes(png(32, 32, (190, 40, 30)))
    (tmp_path / "stain.png").write_bytes(png(32, 32, (255, 255, 255), "L"))
    job_file = parse_job_file('[defaults]\nsteps = 3\nsize = 32\n\n'
                              '[[texture]]\nname = "restyled"\nprompt = "blue"\nseeds = [1, 2]\ninit = "wall.png"\n'
                              'strength = 0.7\n\n'
                              '[[texture]]\nname = "patched"\nprompt = "moss"\nseed = 3\ninit = "wall.png"\n'
                              'mask = "stain.png"\n', tmp_path / "jobs.toml")
    plain, scaled = tmp_path / "plain", tmp_path / "ray"
    assert run_batch(job_file, LocalBackend(tiny_sd, provider="cpu"), BatchOptions(out=plain)).exit_code == 0
    backend = RayBackend(tiny_sd, workers=1, batch_size=2)
    try:
        assert run_batch(job_file, backend, BatchOptions(out=scaled, batch_size=2)).exit_code == 0
    finally:
        backend.close()
    for name in ("restyled-1.png", "restyled-2.png", "patched.png"):
        x = np.asarray(Image.open(plain / name)).astype(int)
        y = np.asarray(Image.open(scaled / name)).astype(int)
        assert np.abs(x - y).max() <= 1, name
