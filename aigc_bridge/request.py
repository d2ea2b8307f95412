"""The generate request, validated once at the edge (CLI, protocol, job files) and trusted inside.

Standard library only: the protocol codec and the client (bundled into Blender) use it too.
Limits here are absolute sanity bounds; what a given model accepts (size multiples) is checked by the
engine against its manifest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import InvalidRequest

TILE_MODES = ("none", "both", "x")
KINDS = ("texture", "backdrop")
FORMATS = ("png", "exr")
NORMAL_CONVENTIONS = ("opengl", "directx")
BIT_DEPTHS = (8, 16)
# dpmpp_2m follows the model's config (Karras sigmas only where it asks); dpmpp_2m_karras forces them.
SCHEDULERS = ("euler", "euler_a", "ddim", "pndm", "dpmpp_2m", "dpmpp_2m_karras", "lcm")

MAX_SIDE = 4096
MAX_STEPS = 500
MAX_COUNT = 16
MAX_GUIDANCE = 50.0
MAX_PROMPT_CHARS = 100_000  # longer prompts are truncated to the text encoder's tokens anyway
MAX_SEED = 2**53 - 1  # exact in JSON numbers everywhere (JavaScript, Python)
MIN_TARGET = 16


def is_power_of_two(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def check_target_size(target_size: object, field: str = "target_size") -> int:
    """Engine mode: a power of two between 16 and the largest side a request may have."""
    if isinstance(target_size, bool) or not isinstance(target_size, int):
        raise InvalidRequest(f"{field} must be an integer, got {type(target_size).__name__}", field)
    if not is_power_of_two(target_size) or not MIN_TARGET <= target_size <= MAX_SIDE:
        sizes = ", ".join(str(1 << k) for k in range(MIN_TARGET.bit_length() - 1, MAX_SIDE.bit_length()))
        raise InvalidRequest(f"{field} must be a power of two for game engines ({sizes}); got {target_size}", field)
    return target_size


@dataclass(frozen=True)
class GenerateRequest:
    """What to generate. ``None`` means "the model's default" (native size, recommended steps, the model's
    tiling; a backdrop defaults to 2:1 and wrapping on x). The last four fields shape the output files
    (docs/outputs.md): PBR maps, engine size, normal convention and PNG depth."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    tile: str | None = None
    count: int = 1
    kind: str = "texture"
    format: str = "png"
    pbr: bool = False
    target_size: int | None = None
    normal_convention: str = "opengl"
    bit_depth: int = 8

    def __post_init__(self) -> None:
        _check_text("prompt", self.prompt)
        _check_text("negative_prompt", self.negative_prompt)
        for name, hi in (("width", MAX_SIDE), ("height", MAX_SIDE), ("steps", MAX_STEPS)):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 1, hi)
        _check_int("count", self.count, 1, MAX_COUNT)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED - self.count)
        if self.guidance is not None:
            if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)):
                raise InvalidRequest(f"guidance must be a number, got {type(self.guidance).__name__}",
                                     "guidance")
            if not (-math.inf < self.guidance < math.inf) or not 0.0 <= self.guidance <= MAX_GUIDANCE:
                raise InvalidRequest(f"guidance must be between 0 and {MAX_GUIDANCE}, got {self.guidance}",
                                     "guidance")
        _check_choice("scheduler", self.scheduler, SCHEDULERS, optional=True)
        _check_choice("tile", self.tile, TILE_MODES, optional=True)
        _check_choice("kind", self.kind, KINDS)
        _check_choice("format", self.format, FORMATS)
        _check_choice("normal_convention", self.normal_convention, NORMAL_CONVENTIONS)
        if self.bit_depth not in BIT_DEPTHS or isinstance(self.bit_depth, bool):
            raise InvalidRequest(f"bit_depth must be 8 or 16, got {self.bit_depth!r}", "bit_depth")
        if not isinstance(self.pbr, bool):
            raise InvalidRequest(f"pbr must be true or false, got {self.pbr!r}", "pbr")
        if self.pbr and self.kind == "backdrop":
            raise InvalidRequest("PBR maps are for textures; a backdrop has none (use kind texture)", "pbr")
        if self.target_size is not None:
            check_target_size(self.target_size)
        if self.kind == "backdrop" and self.width and self.height and self.width != 2 * self.height:
            raise InvalidRequest(f"a backdrop is equirectangular, 2:1: width must be twice the height "
                                 f"({2 * self.height} for height {self.height}), got {self.width}", "width")

    @classmethod
    def from_dict(cls, data: dict) -> tuple[GenerateRequest, list[str]]:
        """Build from untrusted JSON; unknown keys are returned (to be reported), never fatal."""
        if not isinstance(data, dict):
            raise InvalidRequest("a generate request must be a JSON object", None)
        known = {f.name for f in fields(cls)}
        if "prompt" not in data:
            raise InvalidRequest("prompt is required", "prompt")
        unknown = sorted(k for k in data if k not in known)
        return cls(**{k: v for k, v in data.items() if k in known}), unknown

    def to_dict(self) -> dict:
        return asdict(self)


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, got {type(value).__name__}", name)
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{name} is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}", name)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, got {type(value).__name__}", name)
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}, got {value}", name)


def _check_choice(name: str, value: object, choices: tuple[str, ...], optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise InvalidRequest(f"{name} must be one of {', '.join(choices)}; got {value!r}", name)
