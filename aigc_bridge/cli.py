"""The `aigc-bridge` command. Every subcommand imports what it needs lazily, so `--help` is instant and
the runtime commands never import torch."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import AigcError

NO_MODEL_HELP = (
    "no model given: pass --model DIR, a model package made by `aigc-bridge export SOURCE DIR` "
    "(SOURCE: a diffusers folder or a Hugging Face id such as stabilityai/sd-turbo; needs "
    "`pip install 'aigc-bridge[export]'`)"
)


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seed", type=int, help="seed of the first image (default: random, printed)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's recommendation)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the model's native size)")
    p.add_argument("--height", type=int, help="image height in pixels")
    p.add_argument("--tile", choices=("none", "both", "x"), default="none",
                   help="seamless: both = tileable texture, x = wraps horizontally (360-degree panorama)")
    p.add_argument("--scheduler", choices=("euler", "euler_a", "ddim", "dpmpp_2m", "lcm"))
    p.add_argument("--count", type=int, default=1, help="images (seeds seed, seed+1, ...)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigc-bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aigc-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", required=True, type=Path,
                     help="output PNG; with --count N the files are NAME-1.png ... NAME-N.png")
    gen.add_argument("--model", type=Path, help="model package folder")
    gen.add_argument("--provider", default="auto", help="auto, cuda, dml, coreml or cpu")
    _add_generation_options(gen)
    gen.set_defaults(run=_generate)

    exp = sub.add_parser("export", help="export a diffusers pipeline to an ONNX model package")
    exp.add_argument("source", help="diffusers pipeline folder or Hugging Face hub id")
    exp.add_argument("out_dir", type=Path)
    exp.add_argument("--model-id", help="name results will cite (default: the source's name)")
    exp.add_argument("--fp16", action="store_true", help="fp16 weights (GPU); SDXL's VAE stays fp32")
    exp.add_argument("--distillation", choices=("none", "turbo", "lcm"),
                     help="override detection (turbo: 1 step, no guidance; lcm: 4 steps, LCM scheduler)")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    exp.set_defaults(run=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except AigcError as exc:
        print(f"aigc-bridge: error: {exc.message}" + (f" (field: {exc.field})" if exc.field else ""),
              file=sys.stderr)
        return 130 if exc.code == "cancelled" else 2


def _request_from_args(args: argparse.Namespace):
    from .request import GenerateRequest

    return GenerateRequest(prompt=args.prompt, negative_prompt=args.negative, width=args.width,
                           height=args.height, steps=args.steps, guidance=args.guidance, seed=args.seed,
                           scheduler=args.scheduler, tile=args.tile, count=args.count)


def output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(count)]


def _generate(args: argparse.Namespace) -> int:
    from .assets.writers import png_bytes, write_atomic
    from .progress import ProgressBar

    if args.output.suffix.lower() != ".png":
        raise AigcError("invalid_request", f"output must be a .png file, got {args.output.name}", "output")
    request = _request_from_args(args)  # validate before loading anything
    if args.model is None:
        raise AigcError("no_model", NO_MODEL_HELP, "model")
    from .engine import Pipeline

    pipeline = Pipeline.load(args.model, provider=args.provider)
    resolved = pipeline.resolve(request)
    bar = ProgressBar(resolved.steps, "denoising")
    interrupted: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        result = pipeline.generate(resolved, callback=lambda ev: bar.update(ev.step) or not interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    for message in result.warnings:
        print(f"aigc-bridge: warning: {message}", file=sys.stderr)
    for i, path in enumerate(output_paths(args.output, resolved.count)):
        write_atomic(path, png_bytes(result.images[i]))
        print(f"{path}  seed {result.seeds[i]}  {resolved.width}x{resolved.height}  {resolved.steps} steps  "
              f"{result.timings_ms['total']:.0f} ms  ({result.provider})")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from aigc_bridge_export.onnx_export import export_pipeline
    except ImportError as exc:
        raise AigcError("missing_dependency", f"export needs the export extra ({exc.name} is missing): "
                        "pip install 'aigc-bridge[export]'", "export") from None
    export_pipeline(args.source, args.out_dir, model_id=args.model_id, fp16=args.fp16,
                    distillation=args.distillation, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
