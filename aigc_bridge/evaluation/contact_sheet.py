"""A contact sheet: prompts in, one labelled grid of textures out (the README shows texture-mini's); with
``--upscale``, each texture at its upscaler's size twice, resampled and through the model's upscaler.

    python -m aigc_bridge.evaluation.contact_sheet -o docs/images/texture-mini-contact-sheet.png [--model DIR]
    python -m aigc_bridge.evaluation.contact_sheet --upscale -o docs/images/texture-mini-128.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..assets.writers import png_bytes, write_atomic
from ..engine import Pipeline
from ..models import default_model_dir
from ..request import GenerateRequest
from ..texture_data import HELD_OUT_COMBOS

# (prompt, colour, family): the colour x family pair says whether the prompt's combination was held out of
# training, which the sheet marks, so the reader sees generalisation next to recall.
PROMPTS = (
    ("red brick wall", "red", "bricks"), ("blue brick wall", "blue", "bricks"),
    ("weathered yellow wooden planks", "yellow", "planks"), ("green grass", "green", "grass"),
    ("white marble", "white", "marble"), ("green checkerboard", "green", "checker"),
    ("orange gravel", "orange", "gravel"), ("black fabric weave", "black", "weave"),
    ("small red hexagon tiles", "red", "hexagons"), ("large purple stripes", "purple", "stripes"),
    ("small white polka dots", "white", "dots"), ("blue zigzag pattern", "blue", "zigzag"),
)


def label(prompt: str, colour: str, family: str) -> str:
    return f"{prompt} *" if (colour, family) in HELD_OUT_COMBOS else prompt


def contact_sheet(pipeline: Pipeline, prompts: tuple[tuple[str, str, str], ...], seed: int, scale: int,
                  columns: int) -> np.ndarray:
    """Each prompt once (tile both, 2x2 tiled so seams would show), a caption strip under each; "*" marks
    a colour x material combination the model never saw in training."""
    from PIL import Image, ImageDraw

    tiles = []
    for prompt, colour, family in prompts:
        image = pipeline.generate(GenerateRequest(prompt, seed=seed, tile="both")).image_uint8(0)
        tiled = np.tile(image, (2, 2, 1))
        big = Image.fromarray(tiled).resize((tiled.shape[1] * scale, tiled.shape[0] * scale), Image.NEAREST)
        cell = Image.new("RGB", (big.width, big.height + 18), "white")
        cell.paste(big, (0, 0))
        ImageDraw.Draw(cell).text((3, big.height + 3), label(prompt, colour, family), fill="black")
        tiles.append(cell)
    width, height = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (width + 6) + 6, rows * (height + 6) + 6), "white")
    for i, cell in enumerate(tiles):
        sheet.paste(cell, (6 + (i % columns) * (width + 6), 6 + (i // columns) * (height + 6)))
    return np.asarray(sheet)


# Prompts for the resampled-vs-upscaled sheet: fine structure (grout, mortar, grain) is where the stage shows.
UPSCALE_PROMPTS = PROMPTS[:2] + PROMPTS[4:5] + PROMPTS[6:7] + PROMPTS[8:9] + PROMPTS[10:11]


def upscale_sheet(pipeline: Pipeline, prompts: tuple[tuple[str, str, str], ...], seed: int, zoom: int = 2,
                  columns: int = 2) -> np.ndarray:
    """Per prompt, one 32 px texture brought to the upscaler's size two ways, side by side: Lanczos-3
    resampling (what `--target-size` did before) and the model's own upscaler; shown at ``zoom`` x (nearest)."""
    from PIL import Image, ImageDraw

    from ..assets.resize import resize

    upscaler = pipeline.upscaler
    if upscaler is None:
        raise SystemExit("this model ships no upscaler")
    cells = []
    for prompt, colour, family in prompts:
        image = pipeline.generate(GenerateRequest(prompt, seed=seed, tile="both")).images[0]
        size = image.shape[0] * upscaler.scale
        pair = [np.clip(resize(image, size, size, "both"), 0, 1), upscaler(image, "both")]
        panels = [Image.fromarray(np.round(x * 255).astype(np.uint8)).resize((size * zoom, size * zoom),
                                                                             Image.NEAREST) for x in pair]
        cell = Image.new("RGB", (2 * panels[0].width + 4, panels[0].height + 18), "white")
        cell.paste(panels[0], (0, 0))
        cell.paste(panels[1], (panels[0].width + 4, 0))
        ImageDraw.Draw(cell).text((3, panels[0].height + 3), f"{label(prompt, colour, family)}: resampled | "
                                  f"{upscaler.name}", fill="black")
        cells.append(cell)
    width, height = cells[0].size
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * (width + 10) + 10, rows * (height + 10) + 10), "white")
    for i, cell in enumerate(cells):
        sheet.paste(cell, (10 + (i % columns) * (width + 10), 10 + (i // columns) * (height + 10)))
    return np.asarray(sheet)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="model package (default: the shipped texture-mini)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=int, default=3, help="pixel size of each generated pixel")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--upscale", action="store_true", help="resampled vs the model's upscaler, side by side")
    args = p.parse_args(argv)
    pipeline = Pipeline.load(args.model or default_model_dir(), provider="cpu")
    sheet = (upscale_sheet(pipeline, UPSCALE_PROMPTS, args.seed) if args.upscale
             else contact_sheet(pipeline, PROMPTS, args.seed, args.scale, args.columns))
    write_atomic(args.output, png_bytes(sheet))
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
