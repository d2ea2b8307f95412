"""Batch jobs with input images (init, mask, control, depth): paths relative to the job file, their content in
the resume key, an unreadable one failing its job alone, and the same files through a sidecar as in process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from aigc_bridge.batch import load_job_file
from aigc_bridge.batch.jobfile import parse_job_file
from aigc_bridge.batch.plan import Unit, units_of
from aigc_bridge.batch.spec import JobFileError

from .conftest import cli
from .sidecar import SidecarProcess
from .test_protocol_images import png

REPO = Path(__file__).resolve().parent.parent


def test_the_example_restyles_and_patches_its_brick_wall() -> None:
    jobs = {j.name: j for j in load_job_file(REPO / "examples" / "jobs.toml").jobs}
    blue, patched = jobs["brick_wall_blue"].requests[0], jobs["brick_wall_patched"].requests[0]
    wall = (REPO / "examples" / "images" / "brick_wall.png").read_bytes()
    assert blue.init.data == wall and blue.init.sha256 == hashlib.sha256(wall).hexdigest()
    assert blue.strength == 0.7 and blue.mask is None
    assert patched.mask.width == patched.init.width and patched.mask_blur == 4
    assert jobs["brick_wall_blue"].input_error is None


def job_file(folder: Path, body: str) -> Path:
    path = folder / "jobs.toml"
    path.write_text(body)
    return path


def keys(path: Path) -> list[str]:
    return [u.key for u in units_of(load_job_file(path).jobs, "model-hash")]


def test_the_resume_key_covers_the_images_content_not_their_path(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(png(16, 16, (200, 30, 30)))
    path = job_file(tmp_path, '[[texture]]\nname = "x"\nprompt = "p"\ninit = "a.png"\nstrength = 0.5\nseed = 1\n')
    first = keys(path)
    assert keys(path) == first  # same content: resumes
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    path.write_text(path.read_text().replace("a.png", "b.png"))
    assert keys(path) == first  # same bytes under another name: still the same work
    (tmp_path / "b.png").write_bytes(png(16, 16, (30, 30, 200)))
    assert keys(path) != first  # new bytes: made again


def test_controls_from_a_table_or_a_list(tmp_path) -> None:
    (tmp_path / "d.png").write_bytes(png(16, 16, (90, 90, 90)))
    one = job_file(tmp_path, '[[texture]]\nname = "x"\nprompt = "p"\nseed = 1\n'
                             'control = { name = "depth", image = "d.png", scale = 0.8 }\n')
    (control,) = load_job_file(one).jobs[0].requests[0].controls
    assert (control.name, control.scale, control.start, control.end) == ("depth", 0.8, 0.0, 1.0)
    two = job_file(tmp_path, '[[texture]]\nname = "x"\nprompt = "p"\nseed = 1\n'
                             '[[texture.control]]\nname = "depth"\nimage = "d.png"\n'
                             '[[texture.control]]\nname = "canny"\nimage = "d.png"\nstart = 0.2\nend = 0.6\n')
    controls = load_job_file(two).jobs[0].requests[0].controls
    assert [c.name for c in controls] == ["depth", "canny"] and controls[1].start == 0.2
    unit = units_of(load_job_file(two).jobs, "h")[0]
    assert Unit.from_dict(json.loads(json.dumps(unit.to_dict(images=True)))).request == unit.request  # Ray rows


@pytest.mark.parametrize("body, key, words", [
    ('strength = 0.5', "strength", "applies to an init image"),
    ('init = "a.png"\nstrength = 1.5', "strength", "between 0.0 and 1.0"),
    ('init = "a.png"\nstrength = 0', "strength", "above 0"),
    ('mask = "a.png"', "mask", "give init too"),
    ('init = 3', "init", "must be the path of an image file"),
    ('control = { name = "depth", image = "a.png", scale = 9 }', "control.scale", "between 0.0 and 4.0"),
    ('control = { name = "depth", image = "a.png", weight = 1 }', "control", "unknown key weight"),
    ('control = { name = "depth" }', "control.image", "is required"),
    ('mask_blur = -1', "mask_blur", "between 0 and 256"),
])
def test_image_keys_are_checked_with_the_rest_of_the_file(tmp_path, body, key, words) -> None:
    (tmp_path / "a.png").write_bytes(png())
    text = f'[[texture]]\nname = "x"\nprompt = "p"\nseed = 1\n{body}\n'
    with pytest.raises(JobFileError) as info:
        parse_job_file(text, tmp_path / "jobs.toml")
    assert [(p.key, words in p.message) for p in info.value.problems] == [(key, True)], info.value.problems


def test_a_missing_image_fails_its_job_and_the_others_run(tmp_path, tiny_sd) -> None:
    (tmp_path / "ok.png").write_bytes(png(32, 32))
    path = job_file(tmp_path, '[defaults]\nsteps = 2\nsize = 32\n\n'
                              '[[texture]]\nname = "plain"\nprompt = "p"\nseed = 1\n\n'
                              '[[texture]]\nname = "lost"\nprompt = "p"\nseed = 2\ninit = "images/nowhere.png"\n\n'
                              '[[texture]]\nname = "restyled"\nprompt = "p"\nseed = 3\ninit = "ok.png"\n'
                              'strength = 0.5\n')
    out = tmp_path / "out"
    run = cli("batch", str(path), "--out", str(out), "--model", str(tiny_sd))
    assert run.returncode == 1, run.stderr
    doc = json.loads((out / "batch-manifest.json").read_text())
    statuses = {name: job["status"] for name, job in doc["jobs"].items()}
    assert statuses == {"plain": "done", "lost": "failed", "restyled": "done"}
    error = doc["jobs"]["lost"]["error"]
    assert error["field"] == "init" and "cannot read init" in error["message"] and "nowhere.png" in error["message"]
    assert "FAILED lost" in run.stdout + run.stderr
    assert (out / "restyled.png").is_file() and not (out / "lost.png").exists()


def test_a_sidecar_batch_writes_the_bytes_a_local_one_does(tmp_path, tiny_sd) -> None:
    (tmp_path / "wall.png").write_bytes(png(32, 32, (180, 40, 30)))
    (tmp_path / "stain.png").write_bytes(png(32, 32, (255, 255, 255), "L"))
    path = job_file(tmp_path, '[defaults]\nsteps = 3\nsize = 32\n\n'
                              '[[texture]]\nname = "restyled"\nprompt = "blue"\nseed = 4\ninit = "wall.png"\n'
                              'strength = 0.7\n\n'
                              '[[texture]]\nname = "patched"\nprompt = "moss"\nseed = 5\ninit = "wall.png"\n'
                              'mask = "stain.png"\n')
    local = cli("batch", str(path), "--out", str(tmp_path / "local"), "--model", str(tiny_sd))
    assert local.returncode == 0, local.stderr
    server = SidecarProcess(tmp_path, tiny_sd)
    try:
        remote = cli("batch", str(path), "--out", str(tmp_path / "remote"), "--connection-file",
                     str(server.connection_file))
    finally:
        server.stop()
    assert remote.returncode == 0, remote.stderr
    for name in ("restyled.png", "patched.png"):
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_check_reports_an_unreadable_image(tmp_path) -> None:
    path = job_file(tmp_path, '[[texture]]\nname = "lost"\nprompt = "p"\nseed = 2\ninit = "nowhere.png"\n')
    run = cli("batch", str(path), "--out", str(tmp_path / "out"), "--check", "--endpoint", "tcp://127.0.0.1:1")
    assert run.returncode == 2
    assert "texture[0] (lost): init: cannot read init" in run.stderr and "nowhere.png" in run.stderr
