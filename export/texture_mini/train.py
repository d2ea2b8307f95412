"""Train texture-mini end to end, resumably:

    python -m aigc_bridge_export.texture_mini.train --out runs/texture-mini --seed 0

data -> word-level tokenizer -> VAE (+ latents) -> UNet + text encoder -> diffusers pipeline -> ONNX
package (OUT/texture-mini) -> the 128 px stage (OUT/sr, shipped inside the package; train_sr.py) -> evaluation
(OUT/eval.json). Each phase checkpoints; kill the run and rerun
the same command with --resume, and it continues from the last checkpoint with the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .config import SRConfig, TrainConfig, preset, sr_preset
from .loop import append_timings, exit_code, run_config

PACKAGE_DIR, EVAL_FILE, SR_DIR = "texture-mini", "eval.json", "sr"
_SR_PRESETS = {"smoke": "smoke", "test": "test"}  # the 128 px stage's preset for the base preset (else full)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aigc_bridge_export.texture_mini.train",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, package, evaluation)")
    p.add_argument("--seed", type=int, help="seed of data, initialisation and batches (default 0)")
    p.add_argument("--preset", choices=("full", "full64", "smoke", "test"), help="full (default): ~2 h on 2 CPU cores; "
                   "smoke: a few minutes; test: seconds")
    p.add_argument("--steps", type=int, help="UNet steps (overrides the preset)")
    p.add_argument("--vae-steps", type=int, help="VAE steps (overrides the preset)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="delete --out and start again")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on machines with 2 cores or fewer, "
                   "where a second thread competing with any other process ran 5-7x slower; else all cores)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _config(args: argparse.Namespace) -> TrainConfig:
    wanted = preset(args.preset or "full", seed=args.seed, unet_steps=args.steps, vae_steps=args.vae_steps)
    explicit = bool(args.preset or args.seed is not None or args.steps or args.vae_steps)
    return run_config(args.out, wanted, args.resume, args.overwrite, explicit, TrainConfig)


def run(args: argparse.Namespace, log=print) -> dict:
    """The whole pipeline; returns the evaluation summary (or the package path without evaluation)."""
    import torch

    from .data import build_data
    from .loop import Progress
    from .models import build_tokenizer
    from .package import export_package, save_pipeline
    from .train_sr import run_stage as run_sr_stage
    from .unet_phase import train_unet
    from .vae_phase import encode_latents, train_vae

    config = _config(args)
    threads = args.threads or (1 if (os.cpu_count() or 1) <= 2 else None)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    log(f"texture-mini: seed {config.seed}, {config.image_size}px, VAE {config.vae_steps} + UNet "
        f"{config.unet_steps} steps on {device} ({torch.get_num_threads()} threads) -> {args.out}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    bar = Progress("data", config.train_images + config.backdrop_images, 0, args.quiet)
    data = build_data(config, progress=lambda _n: bar.update())
    bar.close()
    timings["data_s"] = time.perf_counter() - t
    tokenizer = build_tokenizer(config)

    t = time.perf_counter()
    vae = train_vae(config, data, args.out, device, args.quiet, log)
    timings["vae_s"] = time.perf_counter() - t
    t = time.perf_counter()
    latents = encode_latents(vae, data, args.out, device, log)
    timings["latents_s"] = time.perf_counter() - t
    t = time.perf_counter()
    unet, text_encoder = train_unet(config, data, latents, tokenizer, args.out, device, args.quiet, log)
    timings["unet_s"] = time.perf_counter() - t

    t = time.perf_counter()
    diffusers_dir = save_pipeline(config, vae, text_encoder, tokenizer, unet, args.out)
    package = export_package(config, diffusers_dir, args.out / PACKAGE_DIR, log=log if not args.quiet else
                             (lambda _m: None))
    timings["export_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sr_config = run_config(args.out / SR_DIR, sr_preset(_SR_PRESETS.get(args.preset, "full"), seed=config.seed),
                           args.resume, True, False, SRConfig)
    run_sr_stage(sr_config, package, args.out / SR_DIR, quiet=args.quiet, attach=True,
                 log=log if not args.quiet else (lambda _m: None))
    timings["sr_stage_s"] = time.perf_counter() - t
    totals = training_seconds(args.out)
    append_timings(args.out, timings, totals)
    log("timings (this session): " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    log("training time over all sessions: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in totals.items()))
    if args.no_eval:
        return {"package": str(package)}
    from aigc_bridge.evaluation import format_report, run_eval

    report = run_eval(package, seed=config.seed)
    (args.out / EVAL_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(format_report(report))
    return report


def training_seconds(out: Path) -> dict[str, float]:
    """Seconds each training phase has run, summed over every session that resumed it (the checkpoints
    carry the count; time after a phase's last checkpoint in a killed session is redone, so counted once)."""
    from . import sr_phase, unet_phase, vae_phase
    from .loop import load

    totals = {phase: float(load(out / module.CHECKPOINT)["seconds"])
              for phase, module in (("vae", vae_phase), ("unet", unet_phase)) if (out / module.CHECKPOINT).is_file()}
    if (out / SR_DIR / sr_phase.CHECKPOINT).is_file():
        totals["sr"] = float(load(out / SR_DIR / sr_phase.CHECKPOINT)["seconds"])
    return totals


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
