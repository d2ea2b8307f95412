"""`aigc-bridge batch` end to end on the tiny model: 20 jobs, kill -9 in the middle and resume, failures
that do not stop the run, Ctrl-C, and the sidecar backend giving the same files as the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.batch.manifest import MANIFEST_NAME
from aigc_bridge.batch.outdir import LOCK_NAME, is_temporary

from .conftest import cli

STEPS = 6


def twenty_jobs() -> str:
    """12 plain textures (two with 2 seeds), 4 PBR textures, 2 from a template with 2 values, 2 backdrops."""
    parts = [f"[defaults]\nsteps = {STEPS}\n\n[defaults.texture]\ntile = \"both\"\n"]
    for i in range(12):
        seeds = f"seeds = [{i}, {100 + i}]" if i < 2 else f"seed = {i}"
        parts.append(f'[[texture]]\nname = "plain_{i:02d}"\nprompt = "texture number {i}"\n{seeds}\n')
    for i in range(4):
        parts.append(f'[[texture]]\nname = "pbr_{i}"\nprompt = "stone {i}"\npbr = true\nseed = {50 + i}\n')
    parts.append('[[texture]]\nname = "wood_{w}"\ntemplate = "{w} planks"\nvariables = { w = ["oak", "ash"] }\n')
    for i in range(2):
        parts.append(f'[[backdrop]]\nname = "sky_{i}"\nprompt = "sky {i}"\nseed = {70 + i}\n')
    return "\n".join(parts)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aigc_bridge.cli", "batch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


def wait_for_outputs(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (out / MANIFEST_NAME).exists():
            doc = manifest(out)  # always valid JSON: it is replaced atomically
            if len(doc["outputs"]) >= n:
                return doc
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} outputs after {timeout} s")


def listed_files(doc: dict) -> list[str]:
    return [f["file"] for entry in doc["outputs"].values() for f in entry["files"]]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, tiny_sd):
    """A 20-job run killed with SIGKILL once 4 output sets are recorded, then run again to the end."""
    folder = tmp_path_factory.mktemp("batch20")
    jobs, out = folder / "jobs.toml", folder / "out"
    jobs.write_text(twenty_jobs())
    args = [str(jobs), "--out", str(out), "--model", str(tiny_sd)]
    proc = start(args)
    wait_for_outputs(proc, out, 4)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = manifest(out)
    mtimes = {name: (out / name).stat().st_mtime_ns for name in listed_files(before)}
    (out / ".plain_99.png.x1y2z3_a.part").write_bytes(b"half a file")  # what a kill during a write leaves
    resumed = cli("batch", *args)
    return out, before, mtimes, resumed


def test_twenty_jobs_end_to_end_with_a_manifest_of_every_output(killed_and_resumed):
    out, _, _, run = killed_and_resumed
    assert run.returncode == 0, run.stderr
    doc = manifest(out)
    assert doc["summary"]["jobs"] == 20 and doc["summary"]["done"] == 20 and doc["summary"]["outputs"] == 22
    assert all(job["status"] == "done" for job in doc["jobs"].values())
    stems = {s for job in doc["jobs"].values() for s in job["outputs"]}
    assert stems == set(doc["outputs"]) and len(stems) == 22
    assert {"plain_00-1", "plain_00-2", "wood_oak", "wood_ash", "sky_1", "pbr_3"} <= stems
    for entry in doc["outputs"].values():
        roles = {f["role"] for f in entry["files"]}
        assert {"image", "provenance"} <= roles
        if entry["job"].startswith("pbr_"):
            assert {"normal", "roughness", "orm", "material"} <= roles
        if entry["kind"] == "backdrop":
            assert {"cube_px", "skydome"} <= roles
        provenance = json.loads((out / f"{entry['files'][-1]['file']}").read_text())
        assert provenance["batch"]["key"] == entry["key"] and provenance["seed"] == entry["seed"]
    assert "batch: 20 jobs: 20 done" in run.stdout


def test_after_kill_9_every_output_is_there_exactly_once_and_nothing_partial(killed_and_resumed):
    out, _, _, _ = killed_and_resumed
    doc = manifest(out)
    files = listed_files(doc)
    assert len(files) == len(set(files))
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == sorted([*files, MANIFEST_NAME, LOCK_NAME])  # no temporaries, no strays
    assert not [n for n in on_disk if is_temporary(n) or n.endswith((".part", ".tmp"))]
    import hashlib

    for entry in doc["outputs"].values():
        for f in entry["files"]:
            assert hashlib.sha256((out / f["file"]).read_bytes()).hexdigest() == f["sha256"]


def test_finished_jobs_were_not_made_again(killed_and_resumed):
    out, before, mtimes, _ = killed_and_resumed
    doc = manifest(out)
    done_before = set(before["outputs"])
    assert len(done_before) >= 4
    for stem in done_before:
        assert doc["outputs"][stem]["run"] == 1
        assert doc["outputs"][stem]["generated_at"] == before["outputs"][stem]["generated_at"]
    for name, mtime in mtimes.items():
        assert (out / name).stat().st_mtime_ns == mtime
    runs = doc["runs"]
    assert len(runs) == 2 and runs[0]["finished"] is None  # the killed run never finished
    assert runs[1]["skipped"] == len(done_before) and runs[1]["generated"] == 22 - len(done_before)
    assert {e["run"] for s, e in doc["outputs"].items() if s not in done_before} == {2}


def test_a_failed_job_does_not_stop_the_others_and_a_rerun_retries_it(tmp_path, tiny_sd):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\nsteps = 2\n' + "".join(f'\n[[texture]]\nname = "{n}"\nprompt = "{n}"\nseed = 1\n'
                                                      for n in ("good_a", "bad", "good_b")))
    out = tmp_path / "out"
    (out / "bad.png").mkdir(parents=True)  # a folder where the image should go: that set cannot be written
    run = cli("batch", str(jobs), "--out", str(out), "--model", str(tiny_sd))
    assert run.returncode == 1, run.stderr
    assert "2 done" in run.stdout and "1 failed" in run.stdout and "FAILED bad: output_unwritable" in run.stdout
    doc = manifest(out)
    assert doc["jobs"]["bad"]["status"] == "failed" and doc["jobs"]["bad"]["error"]["field"] == "output"
    assert (out / "good_a.png").is_file() and (out / "good_b.png").is_file() and not (out / "bad.json").exists()
    (out / "bad.png").rmdir()
    again = cli("batch", str(jobs), "--out", str(out), "--model", str(tiny_sd))
    last = manifest(out)["runs"][-1]
    assert again.returncode == 0 and (last["generated"], last["skipped"], last["failed"]) == (1, 2, 0)
    assert manifest(out)["jobs"]["bad"]["status"] == "done"


def test_model_limits_are_checked_before_generating(tmp_path, tiny_sd):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[texture]]\nname = "odd"\nprompt = "a"\nsize = 66\n\n'      # not a multiple of 4
                    '[[texture]]\nname = "tall"\nprompt = "b"\nsize = [64, 70]\n')
    out = tmp_path / "out"
    run = cli("batch", str(jobs), "--out", str(out), "--model", str(tiny_sd))
    assert run.returncode == 2 and "2 errors, nothing was generated" in run.stderr, run.stderr
    assert "jobs.toml:1: texture[0] (odd): width: width 66 is not a multiple of 4" in run.stderr
    assert "jobs.toml:6: texture[1] (tall): height: height 70 is not a multiple of 4" in run.stderr
    assert not (out / "odd.png").exists() and not (out / "tall.png").exists()


def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(tmp_path, tiny_sd):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text("[defaults]\nsteps = 20\n" + "".join(
        f'\n[[texture]]\nname = "t{i}"\nprompt = "t {i}"\nseed = {i}\n' for i in range(8)))
    out = tmp_path / "out"
    args = [str(jobs), "--out", str(out), "--model", str(tiny_sd)]
    proc = start(args)
    wait_for_outputs(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout and "stopping" in stderr
    doc = manifest(out)
    assert doc["runs"][-1]["interrupted"] is True and doc["runs"][-1]["finished"]
    assert 1 <= len(doc["outputs"]) < 8
    assert not [p for p in out.iterdir() if is_temporary(p.name)]
    rerun = cli("batch", *args)
    assert rerun.returncode == 0 and manifest(out)["summary"]["done"] == 8


def test_the_sidecar_makes_the_same_files(tmp_path, tiny_sd):
    from .sidecar import SidecarProcess

    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\nsteps = 3\n\n[[texture]]\nname = "wall"\nprompt = "brick"\nseeds = [4, 5]\n'
                    'pbr = true\ntile = "both"\n\n[[backdrop]]\nname = "sky"\nprompt = "sky"\nseed = 9\n')
    local = cli("batch", str(jobs), "--out", str(tmp_path / "local"), "--model", str(tiny_sd))
    assert local.returncode == 0, local.stderr
    sidecar = SidecarProcess(tmp_path, tiny_sd)
    try:
        remote = cli("batch", str(jobs), "--out", str(tmp_path / "remote"), "--connection-file",
                     str(sidecar.connection_file), "--batch-size", "2")
    finally:
        sidecar.stop()
    assert remote.returncode == 0, remote.stderr
    a, b = manifest(tmp_path / "local"), manifest(tmp_path / "remote")
    assert [e["key"] for e in a["outputs"].values()] == [e["key"] for e in b["outputs"].values()]
    assert b["runs"][-1]["mode"] == "sidecar"
    for name in ("wall-1.png", "wall-2_normal.png", "sky.png", "sky_px.png"):
        x = np.asarray(Image.open(tmp_path / "local" / name)).astype(int)
        y = np.asarray(Image.open(tmp_path / "remote" / name)).astype(int)
        assert np.abs(x - y).max() <= 1, name
    provenance = json.loads((tmp_path / "remote" / "wall-2.json").read_text())
    assert provenance["batch"]["job"] == "wall" and provenance["files"][0]["filename"] == "wall-2.png"


def test_no_model_no_endpoint_is_a_clear_error(tmp_path):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[texture]]\nname = "a"\nprompt = "a"\n')
    run = cli("batch", str(jobs), "--out", str(tmp_path / "out"), env={**os.environ, "AIGC_BRIDGE_MODEL": "none"})
    assert run.returncode == 2 and "no model given" in run.stderr
    run = cli("batch", str(jobs), "--out", str(tmp_path / "out"), "--model", "m", "--workers", "2")
    assert run.returncode == 2 and "--workers needs --ray" in run.stderr
    assert os.path.exists(tmp_path / "jobs.toml")
