"""The validated shapes of a batch: jobs as the job file states them, and the problems found in it.

Everything here is plain data, trusted once ``jobfile`` has built it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AigcError
from ..request import GenerateRequest


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job file: where (job and key, TOML line when known) and why."""

    where: str            # "texture[2] (crate_oak)", "defaults", "file"
    key: str | None
    message: str
    line: int | None = None

    def format(self, path: str | Path | None = None) -> str:
        place = f"{path}:" if path is not None else ""
        if self.line is not None:
            place += f"{self.line}:" if path is not None else f"line {self.line}:"
        key = f" {self.key}:" if self.key else ""
        return f"{place + ' ' if place else ''}{self.where}:{key} {self.message}"


class JobFileError(AigcError):
    """The job file is wrong; ``problems`` lists every error found, each with its location."""

    def __init__(self, problems: list[Problem], path: str | Path | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        lines = "\n".join("  " + p.format(path) for p in self.problems)
        count = len(self.problems)
        super().__init__("invalid_job_file",
                         f"{path or 'the job file'}: {count} error{'s' if count != 1 else ''}, nothing was "
                         f"generated:\n{lines}", None)


@dataclass(frozen=True)
class Targets:
    """What a job's result goes onto in a .blend: an object, every object using a material, or the World."""

    object: str | None = None
    material: str | None = None
    world: bool = False

    def to_dict(self) -> dict:
        return {"object": self.object, "material": self.material, "world": self.world}


@dataclass(frozen=True)
class Job:
    """One job after template expansion: every image it makes, as validated requests (count 1 each, seed
    set), with the file stem each image's output set is named after."""

    index: int                       # position among all jobs of the file, after expansion
    name: str
    kind: str                        # texture | backdrop
    source: str                      # "texture[2]": the entry of the file it came from
    line: int | None
    requests: tuple[GenerateRequest, ...]
    stems: tuple[str, ...]
    exr: bool = False
    targets: Targets = field(default_factory=Targets)
    # An input image (init, mask, control, depth) that cannot be read: this job fails with it when the batch
    # runs, and the others still run (its requests hold a placeholder record in that image's place).
    input_error: AigcError | None = None

    @property
    def where(self) -> str:
        return f"{self.source} ({self.name})"


@dataclass(frozen=True)
class JobFile:
    path: Path | None
    jobs: tuple[Job, ...]
    blend_file: Path | None = None   # from the file's [blend] table, relative paths resolved
    projects: tuple = ()             # [[project]] jobs (batch.project.ProjectJob): texture from shape
