"""The job file (TOML, docs/batch.md): read it, check ALL of it, and only then hand out jobs.

Every error is collected with its place (job, key, TOML line) and reported together, before a model is
loaded: an overnight run must not stop at job 180 on a typo in job 181, nor make a user fix one error per
run. Request fields are checked by ``GenerateRequest`` itself, one field at a time, so every bad field of a
job is reported and the rules stay the ones the CLI and the sidecar apply.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from pathlib import Path

from ..errors import AigcError, InvalidRequest
from ..input_image import InputImage
from ..request import KINDS, MAX_SEED, MAX_SIDE, ControlInput, GenerateRequest, is_power_of_two
from .locations import LineIndex
from .names import name_problem
from .spec import Job, JobFile, JobFileError, Problem, Targets
from .templates import TemplateError, expand, placeholders, render, varying

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

SCHEMA_VERSION = 1
JOB_TABLES = ("texture", "backdrop", "jobs")
TOP_KEYS = ("version", "defaults", "blend", *JOB_TABLES, "project")
# Job key -> the GenerateRequest field it sets (None: not a request field).
REQUEST_KEYS = {"negative": "negative_prompt", "width": "width", "height": "height", "steps": "steps",
                "guidance": "guidance", "scheduler": "scheduler", "tile": "tile", "count": "count",
                "pbr": "pbr", "target_size": "target_size", "normal_convention": "normal_convention",
                "bit_depth": "bit_depth", "strength": "strength", "mask_blur": "mask_blur"}
IMAGE_KEYS = ("init", "mask", "depth")  # + control: image paths, relative to the job file
CONTROL_KEYS = ("name", "image", "scale", "start", "end")
JOB_KEYS = ("name", "kind", "prompt", "template", "variables", "style", "size", "seed", "seeds", "exr",
            "object", "material", "world", *REQUEST_KEYS, *IMAGE_KEYS, "control")
NOT_DEFAULTS = ("name", "object", "material", "world")
BLEND_KEYS = ("file",)
# Stands in for an input image while its file is only checked (and for one that cannot be read: that job fails).
_PLACEHOLDER = InputImage(None, "image/png", 8, 8, "0" * 64)
# Files the batch writes into --out itself: no output set may take these names.
RESERVED_FILES = ("batch-manifest.json", "batch-blend-plan.json", ".batch.lock")


def load_job_file(path: str | Path) -> JobFile:
    """Read and validate ``path``; raises JobFileError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError([Problem("file", None, f"cannot read it: {exc}")], path) from None
    return parse_job_file(text, path)


def parse_job_file(text: str, path: Path | None = None) -> JobFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError([Problem("file", None, f"not valid TOML: {exc}")], path) from None
    checker = _Checker(LineIndex(text), path)
    job_file = checker.check(data)
    if checker.problems:  # in reading order: file-wide ones first, then by line
        raise JobFileError(sorted(checker.problems, key=lambda p: -1 if p.line is None else p.line), path)
    return job_file


def input_problems(jobs) -> list[Problem]:
    """The jobs whose input images cannot be read: a run fails them alone; ``--check`` reports them."""
    return [Problem(job.where, job.input_error.field, f"{job.input_error.message} (a run fails this job; the others "
                    "still run)", job.line) for job in jobs if job.input_error is not None]


def engine_size_problem(kind: str, width: object, height: object, target_size: object) -> str | None:
    """A texture's engine size keeps its aspect, so its height must come out a power of two as well; the output
    writer (assets.outputs) refuses it only after the image is made, so batch asks first."""
    if kind != "texture" or not all(isinstance(v, int) and v > 0 for v in (width, height, target_size)):
        return None
    out_height = target_size * height / width
    if out_height != int(out_height) or not is_power_of_two(int(out_height)) or out_height > MAX_SIDE:
        return (f"target_size {target_size} would make a {target_size}x{out_height:g} texture from a {width}x{height} "
                f"image: the height must be a power of two too, at most {MAX_SIDE} (use a 1:1, 2:1, 1:2 ... size)")
    return None


def derived_seed(name: str) -> int:
    """The seed of a job that gives none: from its name, so a rerun (or a Ray worker) makes the same image."""
    digest = hashlib.sha256(f"aigc-bridge batch seed:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_SEED - 1024)


def _type_name(value: object) -> str:
    return {str: "text", bool: "true/false", int: "an integer", float: "a number", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


class _Checker:
    """Walks the parsed document once, recording problems instead of stopping at the first."""

    def __init__(self, lines: LineIndex, path: Path | None) -> None:
        self.lines = lines
        self.path = path
        self.problems: list[Problem] = []
        self._from_defaults: set[tuple] = set()  # a bad default is reported once, not once per job
        self._names: dict[str, str] = {}         # casefolded job name -> the entry that has it
        self._world: str | None = None

    def problem(self, where: str, key: str | None, message: str, table: tuple | None = None,
                line_key: str = "") -> None:
        """Record a problem; ``table`` (``()`` for the top level) and the key give its line."""
        line = self.lines.line(table, line_key or key or "") if table is not None else None
        self.problems.append(Problem(where, key, message, line))

    # --- the document ------------------------------------------------------------------------------------

    def check(self, data: dict) -> JobFile:
        for key in data:
            if key not in TOP_KEYS:
                self.problem("file", key, f"unknown table or key{self._suggest(key, TOP_KEYS)}; a job file "
                             f"has {', '.join(TOP_KEYS)}", (key,) if isinstance(data[key], dict) else ())
        version = data.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            self.problem("file", "version", f"this aigc-bridge reads job files of version {SCHEMA_VERSION}, "
                         f"got {version!r}", ())
        defaults = self._defaults(data.get("defaults", {}))
        blend_file = self._blend(data.get("blend"))
        jobs: list[Job] = []
        for table in JOB_TABLES:
            entries = data.get(table, [])
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                self.problem("file", table, f"write jobs as [[{table}]] tables", (table, 0))
                continue
            for i, raw in enumerate(entries):
                jobs += self._job(table, i, raw, defaults, start=len(jobs))
        projects = []
        if "project" in data:
            from .project import parse_projects

            base = self.path.resolve().parent if self.path is not None else None
            projects = parse_projects(data["project"], blend_file, base, self.problem)
            taken = {j.name.casefold() for j in jobs}
            for p in projects:
                if p.name.casefold() in taken:
                    self.problem(p.where, "name", "is the name of another job", ("project", int(p.source[8:-1])))
                taken.add(p.name.casefold())
        if not jobs and not projects and not self.problems:
            self.problem("file", None, "there are no jobs: add [[texture]], [[backdrop]] or [[project]] tables")
        self._check_across(jobs)
        return JobFile(self.path, tuple(jobs), blend_file, tuple(projects))

    def _defaults(self, raw: object, table: str = "defaults") -> dict:
        """``[defaults]`` for every job, with ``[defaults.texture]`` / ``[defaults.backdrop]`` for one kind
        (a tileable texture default must not make backdrops tile vertically)."""
        if not isinstance(raw, dict):
            self.problem(table, None, f"must be a table: [{table}]", (table,))
            return {}
        out: dict = {}
        for key, value in raw.items():
            if table == "defaults" and key in KINDS:
                out[key] = self._defaults(value, f"defaults.{key}")
            elif key in NOT_DEFAULTS or key == "kind":
                self.problem(table, key, f"{key} belongs to each job, not to [{table}]", (table,))
            elif key not in JOB_KEYS:
                self.problem(table, key, f"unknown key{self._suggest(key, JOB_KEYS)}", (table,))
            else:
                out[key] = value
        return out

    def _blend(self, raw: object) -> Path | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.problem("blend", None, "must be a table: [blend] with file = \"scene.blend\"", ("blend",))
            return None
        for key in raw:
            if key not in BLEND_KEYS:
                self.problem("blend", key, f"unknown key{self._suggest(key, BLEND_KEYS)}", ("blend",))
        file = raw.get("file")
        if file is None:
            return None
        if not isinstance(file, str) or not file.endswith(".blend"):
            self.problem("blend", "file", f"must name a .blend file, got {file!r}", ("blend",))
            return None
        path = Path(file).expanduser()
        if not path.is_absolute() and self.path is not None:
            path = self.path.resolve().parent / path
        return path

    # --- one entry of [[texture]] / [[backdrop]] / [[jobs]] ---------------------------------------------

    def _job(self, table: str, index: int, raw: dict, defaults: dict, start: int) -> list[Job]:
        t = (table, index)
        label = f"{table}[{index}]"
        name = raw.get("name")
        where = f"{label} ({name})" if isinstance(name, str) and name else label
        before = len(self.problems)

        kind = raw.get("kind", table if table != "jobs" else "texture")
        if table != "jobs" and kind != table:
            self.problem(where, "kind", f"a [[{table}]] job is a {table}; got kind {kind!r} (use [[jobs]] to "
                         "set kind)", t)
            kind = table
        elif kind not in KINDS:
            self.problem(where, "kind", f"must be texture or backdrop, got {kind!r}", t)
            kind = "texture"
        # Where each value came from, for the line of an error: the job, [defaults.KIND] or [defaults].
        layers = [(("defaults",), {k: v for k, v in defaults.items() if k not in KINDS}),
                  ((f"defaults.{kind}",), defaults.get(kind, {})),
                  (t, {k: v for k, v in raw.items() if k in JOB_KEYS})]
        values: dict = {}
        origin: dict[str, tuple] = {}
        for source, layer in layers:
            if "prompt" in layer or "template" in layer:  # a layer's own text replaces the one below
                for key in ("prompt", "template"):
                    values.pop(key, None)
            for key, value in layer.items():
                if key == "variables" and isinstance(value, dict) and isinstance(values.get(key), dict):
                    value = {**values[key], **value}
                values[key], origin[key] = value, source

        def bad(key: str | None, message: str) -> None:
            source = origin.get((key or "").split(".")[0], t)
            if source == t:
                self.problem(where, key, message, t)
            elif (source, key, message) not in self._from_defaults:  # from the defaults: point there, once
                self._from_defaults.add((source, key, message))
                self.problem(source[0], key, f"{message} (in {where} and any other job it applies to)", source,
                             key or "")

        for key in raw:
            if key not in JOB_KEYS:
                bad(key, f"unknown key{self._suggest(key, JOB_KEYS)}")
        if not isinstance(name, str) or not name:
            bad("name", "every job needs a name (its output file stem), e.g. name = \"brick_wall\"")
            name = None
        for key in ("prompt", "template", "negative", "style", "object", "material"):
            if key in values and not isinstance(values[key], str):
                bad(key, f"must be text, got {_type_name(values[key])}")
                values.pop(key)
        for key in ("exr", "world", "pbr"):
            if key in values and not isinstance(values[key], bool):
                bad(key, f"must be true or false, got {values[key]!r}")
                values.pop(key)

        variables = self._variables(values.get("variables", {}), bad)
        width, height = self._size(kind, values, bad)
        seeds = self._seeds(values, bad)
        targets = self._targets(kind, values, bad)

        has_prompt, has_template = "prompt" in values, "template" in values
        if has_prompt and has_template:
            bad("template", "give prompt or template, not both")
        used: set[str] = set()
        for key in ("template", "name", "object", "material"):
            text = name if key == "name" else values.get(key)
            if not isinstance(text, str):
                continue
            try:
                names = placeholders(text)
            except TemplateError as exc:
                bad(key, str(exc))
                continue
            missing = [n for n in names if n not in variables and not (n == "style" and "style" in values)]
            if missing:
                defined = ", ".join(sorted(variables)) or "none"
                bad(key, f"uses {', '.join('{' + n + '}' for n in missing)}, which variables does not define "
                    f"(defined: {defined})")
            used.update(names)
        own = raw.get("variables") if isinstance(raw.get("variables"), dict) else {}
        for key in own:
            if key in variables and key not in used:
                bad(f"variables.{key}", "is used nowhere: not in the template, the name, object or material")
        if not has_prompt and not has_template and kind == "backdrop":
            bad("prompt", "a backdrop needs a prompt or a template")
        if not has_prompt and not has_template and kind == "texture" and not (targets.object or targets.material):
            bad("prompt", "a texture needs a prompt, a template, or an object/material to describe")
        lacking = [v for v in varying(variables) if name is not None and v not in placeholders_or_empty(name)]
        if lacking:
            bad("name", f"must use {', '.join('{' + v + '}' for v in lacking)}: each value of a listed variable "
                "makes its own job, and the name tells them apart (e.g. name = \"crate_{" + lacking[0] + "}\")")

        fields = {field: values[key] for key, field in REQUEST_KEYS.items() if key in values}
        fields.update(width=width, height=height)
        self._request_fields(kind, fields, values, bad)
        images, input_error = self._images(values, bad)

        contexts: list[tuple[str | None, dict]] = [(None, {})] if lacking else []
        for combo in expand(variables) if not lacking else []:
            context = {**combo, **({"style": values["style"]} if "style" in values else {})}
            job_name = self._job_name(name, context, combo, where, bad) if name is not None else None
            contexts.append((job_name, context))
        if targets.world:
            if self._world is not None:
                bad("world", f"the World is already the target of {self._world}")
            self._world = self._world or where
        if len(self.problems) > before or any(n is None for n, _ in contexts):
            return []
        jobs = []
        for job_name, context in contexts:
            job = self._build(label, t, job_name, kind, values, {**fields, **images}, context, seeds, targets,
                              start + len(jobs), bad, input_error)
            if job is not None:
                jobs.append(job)
        return jobs

    def _job_name(self, name: str, context: dict, combo: dict, where: str, bad) -> str | None:
        """The expanded name, checked on its own and against every earlier job's."""
        try:
            job_name = render(name, context)
        except TemplateError:
            return None  # reported with the placeholders
        problem = name_problem(job_name)
        if problem:
            bad("name", problem + (f" (with variables {combo})" if combo else ""))
            return None
        earlier = self._names.get(job_name.casefold())
        if earlier is not None:
            bad("name", f"{job_name!r} is also the name of {earlier} (names must differ, ignoring case)")
            return None
        self._names[job_name.casefold()] = f"{where}" if job_name in where else f"{where} -> {job_name}"
        return job_name

    def _build(self, label, table, job_name, kind, values, fields, context, seeds, targets, index,
               bad, input_error: AigcError | None = None) -> Job | None:
        if "prompt" in values:
            prompt = values["prompt"]
        elif "template" in values:
            prompt = render(values["template"], context)
        else:
            prompt = self._composed(kind, values, targets, context, bad)
            if prompt is None:
                return None
        targets = dataclasses.replace(
            targets, object=render(targets.object, context) if targets.object else None,
            material=render(targets.material, context) if targets.material else None)
        count = fields.get("count", 1)
        first_seeds = seeds if seeds is not None else [derived_seed(job_name)]
        exr = bool(values.get("exr", False))
        base = {k: v for k, v in fields.items() if k != "count"}
        requests = []
        for seed in first_seeds:
            for i in range(count):
                try:
                    requests.append(GenerateRequest(prompt=prompt, seed=seed + i, kind=kind,
                                                    format="exr" if exr else "png", **base))
                except InvalidRequest as exc:
                    bad(exc.field, exc.message)
                    return None
        stems = (job_name,) if len(requests) == 1 else tuple(f"{job_name}-{k + 1}" for k in range(len(requests)))
        line = self.lines.line(table)
        return Job(index, job_name, kind, label, line, tuple(requests), stems, exr, targets, input_error)

    def _composed(self, kind, values, targets, context, bad) -> str | None:
        """A texture job naming only its object/material: the Blender add-on's composer writes the prompt."""
        try:
            from ..prompts import compose_object_prompt
        except ImportError:  # the composer is optional
            bad("prompt", "a texture needs a prompt or a template")
            return None
        obj = {"name": render(targets.object, context) if targets.object else None,
               "material": render(targets.material, context) if targets.material else None}
        return compose_object_prompt({"style": values.get("style", "")}, obj)

    # --- pieces ------------------------------------------------------------------------------------------

    def _images(self, values: dict, bad) -> tuple[dict, AigcError | None]:
        """init, mask, depth and control images, read now: their content is part of each unit's key. A path
        that is not text is a problem of the file; a file that cannot be read (missing, not an image, over the
        limits) fails this job alone when the batch runs (``Job.input_error``)."""
        out: dict = {}
        errors: list[AigcError] = []

        def load(text: object, field: str, key: str) -> InputImage | None:
            if not isinstance(text, str) or not text:
                bad(key, f"must be the path of an image file (relative to the job file), got {_type_name(text)}")
                return None
            path = Path(text).expanduser()
            if not path.is_absolute() and self.path is not None:
                path = self.path.resolve().parent / path
            try:
                return InputImage.from_path(path, field)
            except InvalidRequest as exc:
                errors.append(exc)
                return _PLACEHOLDER

        for key in IMAGE_KEYS:
            if key in values and (image := load(values[key], key, key)) is not None:
                out[key] = image
        if "control" in values:
            raw = values["control"]
            controls = []
            for i, item in enumerate(raw if isinstance(raw, list) else [raw]):
                key = f"control[{i}]" if isinstance(raw, list) else "control"
                if not isinstance(item, dict):
                    bad(key, 'must be a table, e.g. { name = "depth", image = "depth.png", scale = 0.8 }')
                    continue
                extra = sorted(set(item) - set(CONTROL_KEYS))
                if extra:
                    bad(key, f"unknown key {', '.join(extra)} (a control has {', '.join(CONTROL_KEYS)})")
                    continue
                if "image" not in item:
                    bad(f"{key}.image", "is required: the path of the control image")
                    continue
                image = load(item["image"], f"controls[{len(controls)}].image", f"{key}.image")
                if image is None:
                    continue
                try:
                    controls.append(ControlInput(item.get("name"), image,
                                                 **{k: item[k] for k in ("scale", "start", "end") if k in item}))
                except InvalidRequest as exc:
                    where = (exc.field or "").partition(".")[2]
                    bad(f"{key}.{where}" if where else key, exc.message)
            if controls:
                out["controls"] = tuple(controls)
        return out, (errors[0] if errors else None)

    def _variables(self, raw: object, bad) -> dict[str, str | list[str]]:
        if not isinstance(raw, dict):
            bad("variables", f"must be a table of text or lists of text, got {_type_name(raw)}")
            return {}
        out: dict[str, str | list[str]] = {}
        for key, value in raw.items():
            if not key.isidentifier():
                bad(f"variables.{key}", "a variable name is letters, digits and '_' (it is used as {name})")
            elif isinstance(value, str):
                out[key] = value
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                if len(set(value)) != len(value):
                    bad(f"variables.{key}", "lists the same value twice")
                out[key] = list(value)
            else:
                bad(f"variables.{key}", f"must be text or a non-empty list of text, got {value!r}")
        return out

    def _size(self, kind: str, values: dict, bad) -> tuple[object, object]:
        """``size = 512`` (square; a backdrop: 512 x 256), ``size = [w, h]``, or width and height."""
        width, height = values.get("width"), values.get("height")
        if "size" in values:
            size = values["size"]
            if "width" in values or "height" in values:
                bad("size", "give size or width/height, not both")
            if isinstance(size, int) and not isinstance(size, bool):
                return size, (size // 2 if kind == "backdrop" else size)
            if isinstance(size, list) and len(size) == 2:
                return size[0], size[1]
            bad("size", f"must be one number (square) or [width, height], got {size!r}")
            return None, None
        return width, height

    def _seeds(self, values: dict, bad) -> list[int] | None:
        if "seed" in values and "seeds" in values:
            bad("seeds", "give seed or seeds, not both")
            return None
        if "seeds" in values:
            seeds = values["seeds"]
            if (not isinstance(seeds, list) or not seeds
                    or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
                bad("seeds", f"must be a non-empty list of integers, got {seeds!r}")
                return None
            if len(set(seeds)) != len(seeds):
                bad("seeds", "lists the same seed twice (it would make the same image twice)")
            return list(seeds)
        if "seed" in values:
            return [values["seed"]]
        return None

    def _targets(self, kind: str, values: dict, bad) -> Targets:
        obj, material, world = values.get("object"), values.get("material"), values.get("world", False)
        if kind == "backdrop":
            for key in ("object", "material"):
                if key in values:
                    bad(key, "a backdrop goes onto the World (world = true), not onto an object or material")
            return Targets(world=bool(world))
        if "world" in values:
            bad("world", "only a backdrop can be the World")
        if obj and material:
            bad("material", "give object or material, not both (material: every object that uses it)")
        return Targets(object=obj or None, material=material or None)

    def _request_fields(self, kind: str, fields: dict, values: dict, bad) -> None:
        """Each request field alone (so every bad one is reported), then the combination."""
        job_key = {f: k for k, f in REQUEST_KEYS.items()}
        if "size" in values:
            job_key.update(width="size", height="size")
        seeds = self._seed_values(values)
        def report(exc: InvalidRequest, key: str) -> None:
            message = exc.message
            if exc.field and message.startswith(exc.field + " "):  # "steps must be ..." -> "must be ..."
                message = message[len(exc.field) + 1:]
            bad(key, message)

        checks = {f: v for f, v in fields.items() if v is not None}
        images = {k: _PLACEHOLDER for k in ("init", "mask", "depth") if k in values}
        good = {}
        for field, value in checks.items():
            try:
                GenerateRequest(prompt="x", kind=kind if field in ("pbr", "width", "height") else "texture",
                                **({"init": _PLACEHOLDER} if field == "strength" else {}), **{field: value})
                good[field] = value
            except InvalidRequest as exc:
                report(exc, job_key.get(field, field))
        count = good.get("count", 1)
        for seed in seeds:
            try:
                GenerateRequest(prompt="x", seed=seed, count=count)
            except InvalidRequest as exc:
                report(exc, "seeds" if "seeds" in values else "seed")
                break
        try:  # the rules across fields (a backdrop is 2:1, has no PBR maps), on the fields that passed alone
            GenerateRequest(prompt="x", kind=kind, **good, **images)
        except InvalidRequest as exc:
            report(exc, job_key.get(exc.field, exc.field))
        problem = engine_size_problem(kind, good.get("width"), good.get("height"), good.get("target_size"))
        if problem:
            bad("target_size", problem)

    @staticmethod
    def _seed_values(values: dict) -> list:
        if "seeds" in values and isinstance(values["seeds"], list):
            return [s for s in values["seeds"] if isinstance(s, int) and not isinstance(s, bool)]
        if "seed" in values:
            return [values["seed"]]
        return []

    # --- across jobs -------------------------------------------------------------------------------------

    def _check_across(self, jobs: list[Job]) -> None:
        """Names and files must be unique (ignoring case: Windows and macOS do), targets used once."""
        owner: dict[str, Job] = {}
        reserved = {f.casefold() for f in RESERVED_FILES}
        for job in jobs:
            for stem, request in zip(job.stems, job.requests):
                for filename in output_filenames(stem, job.kind, request.pbr, job.exr):
                    key = filename.casefold()
                    if key in reserved:
                        self._across(job, "name", f"would write {filename}, a file the batch itself keeps in "
                                     "--out; choose another name")
                    elif key in owner and owner[key] is not job:
                        self._across(job, "name", f"would write {filename}, which {owner[key].where} writes "
                                     "too; choose another name")
                    owner.setdefault(key, job)
        for attr, what in (("object", "object"), ("material", "material")):
            seen: dict[str, Job] = {}
            for job in jobs:
                target = getattr(job.targets, attr)
                if target is None:
                    continue
                if target in seen:
                    self._across(job, attr, f"{what} {target!r} is already the target of {seen[target].where}")
                seen.setdefault(target, job)

    def _across(self, job: Job, key: str, message: str) -> None:
        table, _, index = job.source.partition("[")
        self.problem(job.where, key, message, (table, int(index.rstrip("]"))))

    @staticmethod
    def _suggest(key: str, choices) -> str:
        close = difflib.get_close_matches(key, list(choices), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""


def placeholders_or_empty(text: object) -> list[str]:
    try:
        return placeholders(text) if isinstance(text, str) else []
    except TemplateError:
        return []


_FILENAMES: dict[tuple, tuple[str, ...]] = {}


def output_filenames(stem: str, kind: str, pbr: bool, exr: bool) -> list[str]:
    """The files one output set will have, asked of the writer itself (on a blank 16 x 8 image, which takes
    milliseconds), so these names never drift from docs/outputs.md."""
    key = (kind, pbr, exr)
    if key not in _FILENAMES:
        import numpy as np

        from ..assets.outputs import build_outputs

        blank = np.zeros((8, 16, 3) if kind == "backdrop" else (8, 8, 3), np.float32)
        built = build_outputs(blank, {"tile": "none"}, "x", kind=kind, pbr=pbr, exr=exr)
        _FILENAMES[key] = tuple(b.filename[1:] for b in built)
    return [stem + suffix for suffix in _FILENAMES[key]]
