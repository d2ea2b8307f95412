"""Train texture-mini's 128 px stage on top of a finished base package, resumably:

    python -m aigc_bridge_export.texture_mini.train_sr --out runs/texture-mini-sr --base aigc_bridge/models/texture-mini

data (128 px renders and their 32 px inputs through the base VAE) -> SRVGGNetCompact (circular padding) ->
upscaler package (OUT/texture-mini-sr, exported and parity-checked by ``upscaler_export`` like any .pth) ->
with ``--attach``, shipped inside the base package (its ``upscaler``). Kill it and rerun with ``--resume``: the
batches are a pure function of (seed, step), so the resumed run ends with the uninterrupted run's weights.
``train.py`` runs the same stage after the base model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import SRConfig, sr_preset
from .loop import append_timings, exit_code, run_config

PACKAGE_DIR = "texture-mini-sr"
SR_MODEL_ID = "texture-mini-sr"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aigc_bridge_export.texture_mini.train_sr",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, package, timings)")
    p.add_argument("--base", type=Path, required=True, help="the base texture-mini package (its VAE makes the inputs)")
    p.add_argument("--seed", type=int, help="seed of data, initialisation and batches (default 0)")
    p.add_argument("--preset", choices=("full", "smoke", "test"), help="full (default), smoke, test")
    p.add_argument("--steps", type=int, help="training steps (overrides the preset)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="delete --out and start again")
    p.add_argument("--attach", action="store_true", help="ship the result inside --base (rewrites its manifest)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on machines with 2 cores or fewer)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def run_stage(config: SRConfig, base: Path, out: Path, *, quiet: bool = False, attach: bool = False,
              log=print) -> Path:
    """Data -> training -> upscaler package (-> attached to ``base``); returns the upscaler package."""
    import torch
    from aigc_bridge_export.upscaler_export import attach_upscaler, export_upscaler, load_descriptor

    from .loop import Progress
    from .package import check_size
    from .sr_phase import WEIGHTS, build_sr_data, train_sr

    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = None
    if not (out / WEIGHTS).is_file():  # a finished stage needs no data
        bar = Progress("sr data", config.train_images, 0, quiet)
        data = build_sr_data(config, base, progress=lambda _n: bar.update())
        bar.close()
    timings["data_s"] = time.perf_counter() - t
    t = time.perf_counter()
    weights = train_sr(config, data, out, torch.device("cpu"), quiet, log)
    timings["sr_s"] = time.perf_counter() - t
    t = time.perf_counter()
    base_manifest = json.loads((base / "model.json").read_text(encoding="utf-8"))
    package = export_upscaler(load_descriptor(weights), out / PACKAGE_DIR, model_id=SR_MODEL_ID, overwrite=True,
                              log=log if not quiet else (lambda _m: None),
                              extra={"source": f"texture-mini 128 px stage, seed {config.seed}",
                                     "trained_for": {"model_id": base_manifest["model_id"],
                                                     "input_size": [config.low_size, config.low_size]}})
    if attach:
        attach_upscaler(base, package, log=log)
        check_size(base, log)
    timings["export_s"] = time.perf_counter() - t
    append_timings(out, timings, {"sr": sr_seconds(out)})
    log("timings (this session): " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return package


def sr_seconds(out: Path) -> float:
    """Seconds the SR phase has trained, over every session that resumed it (kept in its checkpoint)."""
    from .loop import load
    from .sr_phase import CHECKPOINT

    return float(load(out / CHECKPOINT)["seconds"]) if (out / CHECKPOINT).is_file() else 0.0


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    wanted = sr_preset(args.preset or "full", seed=args.seed, steps=args.steps)
    explicit = bool(args.preset or args.seed is not None or args.steps)
    config = run_config(args.out, wanted, args.resume, args.overwrite, explicit, SRConfig)
    threads = args.threads or (1 if (os.cpu_count() or 1) <= 2 else None)
    if threads:
        torch.set_num_threads(threads)
    print(f"texture-mini 128 px stage: seed {config.seed}, {config.steps} steps, {torch.get_num_threads()} threads "
          f"-> {args.out}", file=sys.stderr)
    return exit_code(lambda: run_stage(config, args.base, args.out, quiet=args.quiet, attach=args.attach))


if __name__ == "__main__":
    raise SystemExit(main())
