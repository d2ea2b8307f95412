"""The generate request, validated once at the edge (CLI, protocol, job files) and trusted inside.

Standard library only: the protocol codec and the client (bundled into Blender) use it too.
Limits here are absolute sanity bounds; what a given model accepts (size multiples) is checked by the
engine against its manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import InvalidRequest
from .input_image import InputImage

TILE_MODES = ("none", "both", "x")
KINDS = ("texture", "backdrop")
FORMATS = ("png", "exr")
NORMAL_CONVENTIONS = ("opengl", "directx")
BIT_DEPTHS = (8, 16)
# dpmpp_2m follows the model's config (Karras sigmas only where it asks); dpmpp_2m_karras forces them.
SCHEDULERS = ("euler", "euler_a", "ddim", "pndm", "dpmpp_2m", "dpmpp_2m_karras", "lcm")
# Flow-matching models (SD 3 / 3.5, FLUX.1) predict a velocity: they take these, and only these.
FLOW_SCHEDULERS = ("flow_euler",)

MAX_SIDE = 4096
MAX_STEPS = 500
MAX_COUNT = 16
MAX_GUIDANCE = 50.0
MAX_PROMPT_CHARS = 100_000  # longer prompts are truncated to the text encoder's tokens anyway
MAX_SEED = 2**53 - 1  # exact in JSON numbers everywhere (JavaScript, Python)
MIN_TARGET = 16
MAX_CONTROLS = 4       # ControlNets at once (each adds a full encoder pass per step)
MAX_MASK_BLUR = 256    # pixels
IMAGE_FIELDS = ("init", "mask", "depth")  # plus controls[i].image


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
class ControlInput:
    """One ControlNet unit: a controlnet the package has (by name), its image, how strongly it steers and over
    which part of the schedule (fractions of the steps, as diffusers' control_guidance_start / end)."""

    name: str
    image: InputImage
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidRequest("a control's name must be a controlnet of the model (e.g. depth)", "controls.name")
        if not isinstance(self.image, InputImage):
            raise InvalidRequest(f"control {self.name}: image must be an image", "controls.image")
        _check_number("controls.scale", self.scale, 0.0, 4.0)
        _check_number("controls.start", self.start, 0.0, 1.0)
        _check_number("controls.end", self.end, 0.0, 1.0)
        if self.start >= self.end:
            raise InvalidRequest(f"control {self.name}: start ({self.start}) must be below end ({self.end})",
                                 "controls.start")

    def to_dict(self) -> dict:
        return {"name": self.name, "image": self.image.to_record(), "scale": self.scale, "start": self.start,
                "end": self.end}


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
    # Image conditioning (docs/conditioning.md). ``init`` starts from an image (image to image); ``strength``
    # (0 < S <= 1; default 0.8 with an init alone, 1.0 with a mask or seamless_band) is how much of the
    # schedule runs; ``mask`` (white = repaint) needs an init; ``keep_unmasked`` pastes the pixels outside the
    # mask back exactly.
    init: InputImage | None = None
    strength: float | None = None
    mask: InputImage | None = None
    mask_blur: int = 0
    keep_unmasked: bool = True
    controls: tuple[ControlInput, ...] = ()
    depth: InputImage | None = None  # the SD 2 depth model's depth map (near = bright)
    # Make the init tile (aigc_bridge/seamless.py): repaint only a band this wide (a fraction of each side)
    # around its wrap seams, in tile mode ``tile`` (both, or x); the result has the init's size.
    seamless_band: float | None = None

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
        _check_choice("scheduler", self.scheduler, SCHEDULERS + FLOW_SCHEDULERS, optional=True)
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
        self._check_conditioning()

    def _check_conditioning(self) -> None:
        for name in IMAGE_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, InputImage):
                raise InvalidRequest(f"{name} must be an image", name)
        if self.strength is not None:
            _check_number("strength", self.strength, 0.0, 1.0)
            if self.strength <= 0.0:
                raise InvalidRequest(f"strength must be above 0 and at most 1, got {self.strength}", "strength")
            if self.init is None:
                raise InvalidRequest("strength applies to an init image: give init (or leave strength out)",
                                     "strength")
        if self.mask is not None and self.init is None:
            raise InvalidRequest("a mask says which part of the init image to repaint: give init too", "mask")
        if self.mask is not None and (self.mask.width, self.mask.height) != (self.init.width, self.init.height):
            raise InvalidRequest(f"mask is {self.mask.width} x {self.mask.height} pixels; it must be the init's size, "
                                 f"{self.init.width} x {self.init.height} (a mask must have its init's size)", "mask")
        _check_int("mask_blur", self.mask_blur, 0, MAX_MASK_BLUR)
        if not isinstance(self.keep_unmasked, bool):
            raise InvalidRequest(f"keep_unmasked must be true or false, got {self.keep_unmasked!r}", "keep_unmasked")
        if not isinstance(self.controls, tuple) or not all(isinstance(c, ControlInput) for c in self.controls):
            raise InvalidRequest("controls must be a list of controls", "controls")
        if len(self.controls) > MAX_CONTROLS:
            raise InvalidRequest(f"{len(self.controls)} controls; the limit is {MAX_CONTROLS}", "controls")
        if self.seamless_band is not None:
            _check_number("seamless_band", self.seamless_band, 0.0, 0.5)
            if self.seamless_band <= 0.0:
                raise InvalidRequest(f"seamless_band must be above 0 and at most 0.5 (of each side), got "
                                     f"{self.seamless_band}", "seamless_band")
            if self.init is None:
                raise InvalidRequest("seamless_band makes an init image tile: give init", "seamless_band")
            if self.mask is not None or self.controls or self.depth is not None:
                raise InvalidRequest("seamless_band repaints its own band: leave out mask, controls and depth",
                                     "seamless_band")
            if self.tile == "none":
                raise InvalidRequest("seamless_band needs tile both or x (the default is both)", "tile")
            if self.count != 1 or self.kind != "texture":
                raise InvalidRequest("a seamless request makes one texture: count 1, kind texture", "count")

    @property
    def effective_strength(self) -> float:
        """The fraction of the schedule that runs: 1 from noise, else strength or its default."""
        if self.init is None:
            return 1.0
        if self.strength is not None:
            return self.strength
        return 1.0 if self.mask is not None or self.seamless_band is not None else 0.8

    def images(self) -> dict[str, InputImage]:
        """Every input image by field name (``controls[i].image`` for controls): what a codec carries."""
        out = {name: getattr(self, name) for name in IMAGE_FIELDS if getattr(self, name) is not None}
        out.update({f"controls[{i}].image": c.image for i, c in enumerate(self.controls)})
        return out

    @classmethod
    def from_dict(cls, data: dict, images: dict[str, InputImage] | None = None) -> tuple[GenerateRequest, list[str]]:
        """Build from untrusted JSON; unknown keys are returned (to be reported), never fatal. Input images
        come apart from the JSON (binary frames, files), keyed as :meth:`images` names them; an image field in
        ``data`` is the codec's reference to one and is not read here, and ``controls`` is a list of
        ``{name, scale, start, end}`` objects whose images are ``images["controls[i].image"]``."""
        if not isinstance(data, dict):
            raise InvalidRequest("a generate request must be a JSON object", None)
        images = dict(images or {})
        known = {f.name for f in fields(cls)}
        if "prompt" not in data:
            raise InvalidRequest("prompt is required", "prompt")
        unknown = sorted(k for k in data if k not in known)
        values = {k: v for k, v in data.items() if k in known and k not in IMAGE_FIELDS and k != "controls"}
        for name in IMAGE_FIELDS:
            if data.get(name) is not None or name in images:
                if name not in images:
                    raise InvalidRequest(f"{name} names no image (the request carries none for it)", name)
                values[name] = images.pop(name)
        values["controls"] = _controls_from_json(data.get("controls"), images)
        if images:
            raise InvalidRequest(f"images for no field of the request: {', '.join(sorted(images))}", "images")
        return cls(**values), unknown

    def to_dict(self) -> dict:
        """JSON-ready; an input image becomes its record (sha256, mime, size), enough to name it."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in IMAGE_FIELDS:
            out[name] = None if out[name] is None else out[name].to_record()
        out["controls"] = [c.to_dict() for c in self.controls]
        return out


def _controls_from_json(value: object, images: dict[str, InputImage]) -> tuple[ControlInput, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest("controls must be a list of {name, scale, start, end} objects", "controls")
    if len(value) > MAX_CONTROLS:
        raise InvalidRequest(f"{len(value)} controls; the limit is {MAX_CONTROLS}", "controls")
    out = []
    for i, item in enumerate(value):
        field = f"controls[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{field} must be an object with name, scale, start, end", field)
        extra = sorted(set(item) - {"name", "image", "scale", "start", "end"})
        if extra:
            raise InvalidRequest(f"{field} has unknown keys: {', '.join(extra)}", field)
        image = images.pop(f"{field}.image", None)
        if image is None:
            raise InvalidRequest(f"{field}.image names no image (the request carries none for it)", f"{field}.image")
        out.append(ControlInput(item.get("name"), image, **{k: item[k] for k in ("scale", "start", "end")
                                                            if k in item}))
    return tuple(out)


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, got {type(value).__name__}", name)
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{name} is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}", name)


def _check_number(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number, got {type(value).__name__}", name)
    if not (-math.inf < value < math.inf) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}, got {value}", name)


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
