"""Job files: the documented example loads, every error is reported with its place before anything runs,
names cannot leave --out, templates expand in a fixed order. No model needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc_bridge.batch import JobFileError, load_job_file, parse_job_file
from aigc_bridge.batch.jobfile import derived_seed
from aigc_bridge.batch.names import inside, name_problem
from aigc_bridge.batch.plan import groups, units_of

from .conftest import REPO, cli

EXAMPLE = REPO / "examples" / "jobs.toml"


def problems_of(text: str) -> list:
    with pytest.raises(JobFileError) as info:
        parse_job_file(text, Path("jobs.toml"))
    return info.value.problems


def test_the_documented_example_loads():
    job_file = load_job_file(EXAMPLE)
    jobs = {j.name: j for j in job_file.jobs}
    assert list(jobs) == ["brick_wall", "planks_oak", "planks_pine", "quay_stone", "crate", "brick_wall_blue",
                          "brick_wall_patched", "harbour_sky"]
    assert jobs["brick_wall"].stems == ("brick_wall-1", "brick_wall-2")
    assert [r.seed for r in jobs["brick_wall"].requests] == [11, 12]
    assert jobs["brick_wall"].targets.object == "Wall" and jobs["quay_stone"].targets.material == "Stone"
    wall = jobs["brick_wall"].requests[0]
    assert (wall.tile, wall.pbr, wall.target_size, wall.negative_prompt) == (
        "both", True, 1024, "text, watermark, logo, blurry, people")
    assert jobs["planks_pine"].requests[0].prompt == "pine planks, flaking blue paint, weathered, muted colours"
    assert "crate" in jobs["crate"].requests[0].prompt  # composed from the object's name
    sky = jobs["harbour_sky"]
    assert sky.kind == "backdrop" and sky.exr and sky.targets.world
    assert (sky.requests[0].pbr, sky.requests[0].tile, sky.requests[0].target_size) == (False, None, 2048)
    assert jobs["quay_stone"].requests[0].normal_convention == "directx"


def test_every_error_is_reported_with_its_place():
    text = """\
[defaults]
steps = 0
colour = "red"

[[texture]]
name = "wall"
prompt = "brick"
tile = "diagonal"
guidance = "high"

[[texture]]
name = "crate_{wood}"
template = "{wood} crate, {finish}"
variables = { wood = ["oak", "pine"] }

[[backdrop]]
name = "sky"
prompt = "sky"
size = [100, 64]
pbr = true
world = true

[[backdrop]]
name = "Sky"
prompt = "dusk"
world = true
seeds = [1, 1]
"""
    found = {(p.where.split(" ")[0], p.key, p.line) for p in problems_of(text)}
    assert found == {
        ("defaults", "colour", 3),
        ("defaults", "steps", 2),
        ("texture[0]", "tile", 8),
        ("texture[0]", "guidance", 9),
        ("texture[1]", "template", 13),
        ("backdrop[0]", "size", 19),
        ("backdrop[0]", "pbr", 20),
        ("backdrop[1]", "name", 24),     # same name as backdrop[0], ignoring case
        ("backdrop[1]", "world", 26),    # the World is taken
        ("backdrop[1]", "seeds", 27),
    }


def test_the_command_reports_all_errors_and_writes_nothing(tmp_path):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[texture]]\nname = "../up"\nprompt = "x"\nsteps = -1\n\n[[texture]]\nprompt = "y"\n'
                    'unknown = 1\n')
    out = tmp_path / "out"
    run = cli("batch", str(jobs), "--out", str(out), "--model", str(tmp_path / "no-model"))
    assert run.returncode == 2
    assert "4 errors, nothing was generated" in run.stderr
    for expected in ("jobs.toml:2: texture[0] (../up): name:", "jobs.toml:4: texture[0] (../up): steps:",
                     "jobs.toml:6: texture[1]: name:", "jobs.toml:8: texture[1]: unknown:"):
        assert expected in run.stderr, run.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["../wall", "..", "/etc/passwd", "a/b", "a\\b", "C:wall", "wall?", "wall name",
                                  ".hidden", "-x", "wall.", "con", "NUL.png", "é", "x" * 101, ""])
def test_names_that_could_escape_or_misbehave_are_refused(name):
    assert name_problem(name) is not None


def test_an_engine_size_whose_height_is_not_a_power_of_two_is_refused():
    problems = problems_of('[[texture]]\nname = "t"\nprompt = "a"\nsize = [64, 48]\ntarget_size = 64\n')
    assert [(p.key, p.line) for p in problems] == [("target_size", 5)] and "64x48" in problems[0].message


def test_names_made_by_variables_are_checked_too():
    problems = problems_of('[[texture]]\nname = "t_{v}"\ntemplate = "{v}"\nvariables = { v = ["ok", "../../x"] }\n')
    assert len(problems) == 1 and problems[0].key == "name" and "contains a path" in problems[0].message


def test_inside_guards_the_last_step(tmp_path):
    assert inside(tmp_path, tmp_path / "a.png") == (tmp_path / "a.png").resolve()
    for bad in (tmp_path / ".." / "a.png", Path("/tmp/elsewhere.png")):
        with pytest.raises(ValueError):
            inside(tmp_path, bad)


def test_output_files_of_two_jobs_must_not_collide():
    problems = problems_of('[[texture]]\nname = "wall"\nprompt = "a"\npbr = true\n\n'
                           '[[texture]]\nname = "wall_normal"\nprompt = "b"\n\n'
                           '[[texture]]\nname = "batch-manifest"\nprompt = "c"\n')
    assert [(p.where, p.key) for p in problems] == [("texture[1] (wall_normal)", "name"),
                                                    ("texture[2] (batch-manifest)", "name")]
    assert "wall_normal.png" in problems[0].message


def test_templates_expand_in_the_written_order_with_stable_seeds():
    text = ('[[texture]]\nname = "{a}_{b}"\ntemplate = "{a} {b}, {c}"\n'
            'variables = { b = ["x", "y"], a = ["p", "q"], c = "same" }\n')
    jobs = parse_job_file(text).jobs
    assert [j.name for j in jobs] == ["p_x", "q_x", "p_y", "q_y"]  # b written first: it changes slowest
    assert [j.requests[0].prompt for j in jobs][:2] == ["p x, same", "q x, same"]
    assert [j.requests[0].seed for j in jobs] == [derived_seed(j.name) for j in jobs]
    assert parse_job_file(text).jobs == jobs  # the same on every read
    problems = problems_of('[[texture]]\nname = "fixed"\ntemplate = "{a}"\nvariables = { a = ["x", "y"] }\n')
    assert problems[0].key == "name" and "{a}" in problems[0].message


def test_units_keys_and_groups():
    jobs = parse_job_file('[[texture]]\nname = "w"\nprompt = "a"\nseeds = [1, 2, 3, 7]\n\n'
                          '[[texture]]\nname = "v"\nprompt = "b"\nseed = 4\ncount = 2\n').jobs
    units = units_of(jobs, "model-a")
    assert [u.stem for u in units] == ["w-1", "w-2", "w-3", "w-4", "v-1", "v-2"]
    assert [u.request.seed for u in units] == [1, 2, 3, 7, 4, 5]
    assert [[u.stem for u in g] for g in groups(units, 2)] == [["w-1", "w-2"], ["w-3"], ["w-4"], ["v-1", "v-2"]]
    assert [u.key for u in units_of(jobs, "model-a")] == [u.key for u in units]
    assert not {u.key for u in units_of(jobs, "model-b")} & {u.key for u in units}  # a new model: all anew


def test_the_docs_show_the_example_unchanged():
    assert "```toml\n" + EXAMPLE.read_text() + "```" in (REPO / "docs" / "batch.md").read_text()


def test_the_blender_step_command_lines():
    from aigc_bridge.batch.blend import RUNNER, blender_command

    assert RUNNER.is_file()
    assert blender_command(None, "apply", Path("p.json"))[1:] == [str(RUNNER), "apply", "p.json"]
    assert blender_command("/opt/blender/blender", "apply", Path("p.json")) == [
        "/opt/blender/blender", "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(RUNNER),
        "--", "apply", "p.json"]
