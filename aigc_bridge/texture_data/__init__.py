"""Procedural, captioned, tileable material images: the training data of texture-mini, numpy only.

It lives in the runtime package (not in ``export/``) because the evaluation (``aigc_bridge.evaluation``)
fits its pattern classifier on these images at evaluation time, without torch. Every sample is a pure
function of (seed, split, index), so any subset can be regenerated on any machine, in any order.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .backdrops import BACKDROPS, backdrop
from .grammar import (
    BACKDROP_NOUNS,
    BACKDROP_TEMPLATES,
    CAPTION_RE,
    COLOURS,
    HELD_OUT_COMBOS,
    HUE_RANGES,
    SCALES,
    TEMPLATES,
    WEARS,
    is_held_out_caption,
    texture_phrase,
    vocabulary,
)
from .patterns import FAMILIES, ORIENTATIONS, Canvas, periodic_noise, structure

__all__ = [
    "BACKDROPS", "CAPTION_RE", "COLOURS", "FAMILIES", "HELD_OUT_COMBOS", "HUE_RANGES", "SPLITS",
    "Sample", "Spec", "batch", "caption_for", "draw_caption", "is_held_out_caption", "render", "sample",
    "training_caption", "vocabulary",
]

# train: what the model sees. heldout_combo: colour x family pairs never trained. heldout_caption: trained
# pairs, but caption strings never trained. any: every texture (for the evaluation's pattern classifier).
# backdrop: the panorama skies (trained; they have no held-out part).
SPLITS = ("train", "heldout_combo", "heldout_caption", "any", "backdrop")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
COLOURLESS_FRACTION = 0.1  # training captions without a colour word: "brick wall" means "any colour"


@dataclass(frozen=True)
class Spec:
    """What an image shows; the caption is drawn from it."""

    kind: str                     # "texture" or "backdrop"
    family: str                   # a pattern family, or a backdrop kind
    colour: str | None = None
    scale: str = "medium"
    wear: str = "plain"
    orientation: str | None = None


@dataclass(frozen=True)
class Sample:
    image: np.ndarray             # (H, W, 3) float32 in [0, 1]
    caption: str
    spec: Spec


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])


def render(spec: Spec, rng: np.random.Generator, size: int = 32, periods: int = 1) -> np.ndarray:
    """The image of ``spec``: (size, size, 3) for textures, (size, 2 * size, 3) for backdrops.

    ``periods`` > 1 draws that many periods across (and, for textures, down): the same image tiled, which
    is how the tests prove that every family tiles exactly."""
    if spec.kind == "backdrop":
        return backdrop(rng, spec.family, Canvas(size, 2 * size, (1, periods))).astype(np.float32)
    c = Canvas(size, size, (periods, periods))
    m = structure(rng, spec.family, c, spec.scale, spec.orientation)
    if spec.wear != "clean":
        m = m + (0.05 if spec.wear == "plain" else 0.12) * periodic_noise(rng, c, beta=1.5)
    if spec.wear == "weathered":
        stains = periodic_noise(rng, c, beta=3.0)
        m = m - 0.35 * np.clip(stains - 0.8, 0.0, 1.0)
    return _paint(m, m[:size, :size], COLOURS[spec.colour], rng).astype(np.float32)


def _paint(m: np.ndarray, period: np.ndarray, colour, rng: np.random.Generator) -> np.ndarray:
    """Structure map -> RGB of one hue: the mean brightness and the hue are the colour's, the pattern only
    modulates brightness, so the image's mean colour is exactly the prototype's (statistics are taken
    over one ``period`` of the map)."""
    hue = ((colour.hue + rng.uniform(-colour.hue_jitter, colour.hue_jitter)) % 360) / 360
    chroma = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*colour.saturation), 1.0))
    spread = period.max() - period.min()
    centred = (m - period.mean()) / (spread if spread > 1e-6 else 1.0)
    value = np.clip(rng.uniform(*colour.value) + 2 * rng.uniform(*colour.contrast) * centred, 0.02, 1.0)
    return value[..., None] * chroma


def caption_for(spec: Spec, rng: np.random.Generator, with_colour: bool = True) -> str:
    """One caption of ``spec`` from the grammar (a random synonym and template)."""
    if spec.kind == "backdrop":
        noun = BACKDROP_NOUNS[spec.family][rng.integers(len(BACKDROP_NOUNS[spec.family]))]
        return BACKDROP_TEMPLATES[rng.integers(len(BACKDROP_TEMPLATES))].format(p=noun)
    phrase = texture_phrase(spec.family, spec.colour if with_colour else None, spec.scale, spec.wear,
                            spec.orientation, noun=int(rng.integers(3)), scale_word=int(rng.integers(3)),
                            wear_word=int(rng.integers(3)))
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(p=phrase)


def _draw_spec(rng: np.random.Generator, split: str) -> Spec:
    if split == "backdrop":
        return Spec("backdrop", BACKDROPS[rng.integers(len(BACKDROPS))])
    families, colours = list(FAMILIES), list(COLOURS)
    if split == "heldout_combo":
        colour, family = sorted(HELD_OUT_COMBOS)[rng.integers(len(HELD_OUT_COMBOS))]
    else:
        while True:
            family, colour = families[rng.integers(len(families))], colours[rng.integers(len(colours))]
            if split == "any" or (colour, family) not in HELD_OUT_COMBOS:
                break
    scale = SCALES[rng.integers(len(SCALES))]
    wear = WEARS[rng.choice(3, p=[0.25, 0.5, 0.25])]
    orientation = ORIENTATIONS[rng.integers(len(ORIENTATIONS))] if family == "stripes" else None
    return Spec("texture", family, colour, scale, wear, orientation)


def draw_caption(spec: Spec, rng: np.random.Generator, split: str = "train") -> str | None:
    """A caption of ``spec`` allowed in ``split`` (train: no held-out caption string, sometimes no colour
    word; heldout_caption: only held-out strings), or None when the draw is not allowed. Training draws a
    fresh caption of each image at every use, so the model sees every synonym and template."""
    with_colour = split != "train" or rng.random() >= COLOURLESS_FRACTION
    caption = caption_for(spec, rng, with_colour)
    held = spec.kind == "texture" and is_held_out_caption(caption)
    if (split == "heldout_caption" and not held) or (split == "train" and held):
        return None
    return caption


def sample(seed: int, index: int, split: str = "train", size: int = 32) -> Sample:
    """Sample ``index`` of ``split``: deterministic, independent of every other index."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    rng = _rng(seed, split, index)
    for _ in range(1000):
        spec = _draw_spec(rng, split)
        caption = draw_caption(spec, rng, split)
        if caption is not None:
            return Sample(render(spec, rng, size), caption, spec)
    raise RuntimeError(f"no {split} sample found for index {index}")  # unreachable with these grammars


def batch(seed: int, start: int, count: int, split: str = "train", size: int = 32
          ) -> tuple[np.ndarray, list[str], list[Spec]]:
    """Samples ``start .. start + count - 1`` as uint8 images (N, H, W, 3), captions and specs."""
    samples = [sample(seed, i, split, size) for i in range(start, start + count)]
    images = np.stack([np.round(s.image * 255).astype(np.uint8) for s in samples])
    return images, [s.caption for s in samples], [s.spec for s in samples]


def training_caption(spec: Spec, rng: np.random.Generator) -> str:
    """A fresh training caption of ``spec`` (redrawn until it is not a held-out string)."""
    for _ in range(100):
        caption = draw_caption(spec, rng, "train")
        if caption is not None:
            return caption
    raise RuntimeError(f"every caption of {spec} is held out")  # unreachable: 45+ variants per spec
