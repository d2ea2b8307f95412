"""Words: colours (with the HSV prototypes the images use), scale and wear words, family nouns, caption
templates, and the held-out lists that keep some prompts out of training entirely.

Colour prototypes are spread around the hue circle so that the evaluation's hue ranges separate them
(the calibration run confused purple with blue and green with orange; purple here leans to magenta and
green is brighter). The evaluation's ranges are the midpoints between neighbouring prototypes.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from .backdrops import BACKDROPS
from .patterns import FAMILIES, ORIENTATIONS


@dataclass(frozen=True)
class Colour:
    hue: float                      # degrees
    hue_jitter: float
    saturation: tuple[float, float]
    value: tuple[float, float]      # mean brightness of the image
    contrast: tuple[float, float]   # brightness swing of the pattern


COLOURS: dict[str, Colour] = {
    "red": Colour(0, 5, (0.70, 0.90), (0.55, 0.75), (0.30, 0.50)),
    "orange": Colour(28, 4, (0.80, 0.95), (0.65, 0.85), (0.30, 0.45)),
    "yellow": Colour(56, 4, (0.70, 0.90), (0.70, 0.88), (0.25, 0.40)),
    "green": Colour(125, 12, (0.60, 0.85), (0.50, 0.75), (0.30, 0.50)),
    "blue": Colour(222, 12, (0.60, 0.85), (0.50, 0.75), (0.30, 0.50)),
    "purple": Colour(292, 8, (0.50, 0.75), (0.50, 0.70), (0.30, 0.45)),
    "white": Colour(0, 180, (0.00, 0.08), (0.78, 0.90), (0.15, 0.30)),
    "black": Colour(0, 180, (0.00, 0.15), (0.10, 0.18), (0.08, 0.18)),
}

# Hue ranges [lo, hi) in degrees (red wraps through 0); chromatic colours also need S > 0.25, V > 0.15.
HUE_RANGES: dict[str, tuple[float, float]] = {
    "red": (345, 15), "orange": (15, 42), "yellow": (42, 85), "green": (85, 175), "blue": (175, 255),
    "purple": (255, 345),
}

SCALES = ("small", "medium", "large")
WEARS = ("clean", "plain", "weathered")
SCALE_WORDS = {"small": ("small",), "medium": (), "large": ("large", "big")}
WEAR_WORDS = {"clean": ("clean",), "plain": (), "weathered": ("weathered", "worn", "old")}

NOUNS: dict[str, tuple[str, ...]] = {
    "bricks": ("brick wall", "bricks", "brickwork"),
    "tiles": ("tiles", "square tiles", "floor tiles"),
    "checker": ("checkerboard", "checker pattern", "checkered floor"),
    "stripes": ("{o} stripes", "{o} striped fabric", "{o} striped wallpaper"),
    "planks": ("wooden planks", "wood planks", "floorboards"),
    "hexagons": ("hexagon tiles", "hexagonal tiles", "honeycomb"),
    "dots": ("polka dots", "dots", "spotted pattern"),
    "marble": ("marble", "marble slab", "veined marble"),
    "grass": ("grass", "lawn", "grass field"),
    "gravel": ("gravel", "pebbles", "stones"),
    "weave": ("fabric weave", "woven fabric", "basket weave"),
    "zigzag": ("zigzag", "zigzag pattern", "chevron pattern"),
}
TEMPLATES = ("{p}", "{p} texture", "seamless {p}", "seamless {p} texture", "tileable {p} texture")

BACKDROP_NOUNS: dict[str, tuple[str, ...]] = {
    "noon": ("clear blue sky", "sky at noon", "midday sky"),
    "dawn": ("sky at dawn", "sunrise sky", "early morning sky"),
    "sunset": ("sky at sunset", "sunset sky", "evening sky"),
    "night": ("night sky", "sky at night", "dark night sky"),
    "starfield": ("starfield", "stars in space", "starry space"),
    "overcast": ("overcast sky", "cloudy grey sky", "grey clouds"),
}
BACKDROP_TEMPLATES = ("{p}", "{p} panorama", "seamless {p} panorama")

# Every colour has exactly one family it is never trained with, and every held-out family one colour.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset({
    ("red", "hexagons"), ("orange", "gravel"), ("yellow", "planks"), ("green", "checker"),
    ("blue", "bricks"), ("purple", "stripes"), ("white", "dots"), ("black", "weave"),
})
_HELD_OUT_CAPTION_MODULUS = 16  # about 1 caption string in 16 of the seen combinations is held out


def is_held_out_caption(caption: str) -> bool:
    """Caption strings kept out of training although their colour x family combination is trained.

    Decided by a hash of the string, so the rule needs no list and is the same on every machine."""
    return zlib.crc32(caption.encode("utf-8")) % _HELD_OUT_CAPTION_MODULUS == 0


def texture_phrase(family: str, colour: str | None, scale: str, wear: str, orientation: str | None,
                   noun: int, scale_word: int = 0, wear_word: int = 0) -> str:
    """The words of a texture caption, without the template."""
    words = []
    if SCALE_WORDS[scale]:
        words.append(SCALE_WORDS[scale][scale_word % len(SCALE_WORDS[scale])])
    if WEAR_WORDS[wear]:
        words.append(WEAR_WORDS[wear][wear_word % len(WEAR_WORDS[wear])])
    if colour:
        words.append(colour)
    words.append(NOUNS[family][noun % len(NOUNS[family])].format(o=orientation or "vertical"))
    return " ".join(words)


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted: the tokenizer's vocabulary."""
    texts = [t for t in TEMPLATES + BACKDROP_TEMPLATES]
    texts += [n for nouns in NOUNS.values() for n in nouns] + list(ORIENTATIONS) + list(COLOURS)
    texts += [w for words in SCALE_WORDS.values() for w in words]
    texts += [w for words in WEAR_WORDS.values() for w in words]
    texts += [n for nouns in BACKDROP_NOUNS.values() for n in nouns]
    words = {w for text in texts for w in re.findall(r"[a-z0-9]+", text.replace("{p}", "").replace("{o}", ""))}
    return sorted(words)


_COLOUR_RE = "|".join(COLOURS)
_NOUN_RE = "|".join(sorted({n.format(o=f"(?:{'|'.join(ORIENTATIONS)})") for ns in NOUNS.values() for n in ns},
                           key=len, reverse=True))
_SCALE_RE = "|".join(w for ws in SCALE_WORDS.values() for w in ws)
_WEAR_RE = "|".join(w for ws in WEAR_WORDS.values() for w in ws)
_PHRASE_RE = rf"(?:(?:{_SCALE_RE}) )?(?:(?:{_WEAR_RE}) )?(?:(?:{_COLOUR_RE}) )?(?:{_NOUN_RE})"
_BACKDROP_RE = "|".join(n for ns in BACKDROP_NOUNS.values() for n in ns)
CAPTION_RE = re.compile(
    rf"^(?:(?:seamless )?{_PHRASE_RE}(?: texture)?|tileable {_PHRASE_RE} texture"
    rf"|(?:(?:seamless )?(?:{_BACKDROP_RE}) panorama|{_BACKDROP_RE}))$")


assert set(NOUNS) == set(FAMILIES) and set(BACKDROP_NOUNS) == set(BACKDROPS)
