"""Upscaling on the CPU, side by side in one run: whole image vs tiled (time, peak memory), the memory bound at
1024 -> 4096, and the demo command before (resampling) and after (texture-mini's 128 px stage).

    python benchmarks/bench_upscale.py [--rounds 3] [--threads 2] [--skip-4k]

Models: real spandrel architectures with random weights (timing and memory do not depend on the weights),
exported by `aigc-bridge export`: Real-ESRGAN's compact x4 in the size of realesr-general-x4v3 (64 features, 32
convolutions), and ESRGAN x4 (RRDBNet, 64 filters) with 2 blocks instead of 23: its peak memory is set by the
convolutions at 2x and 4x the input size, which the block count does not change, and 2 blocks keep 1024 -> 4096 to
minutes. Every measurement runs in its own process (peak RSS of that process), rounds alternate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from aigc_bridge.upscale import Upscaler
package, size, tile_size, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
up = Upscaler.load(package, provider="cpu", threads=threads,
                   tile_size=None if tile_size == "auto" else int(tile_size))
y, x = np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")
image = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (3 * x + k * y)) for k in range(3)], -1).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = up(image, "both")
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "before_bytes": before * 1024,
                  "tile": up.plan(size, size), "estimate_bytes": up.estimate_bytes(size + 32, size + 32),
                  "shape": list(out.shape)}))
"""


def _export(spec: str, folder: Path) -> Path:
    """A random-weight .pth of a real architecture, exported by the real command."""
    import torch
    from aigc_bridge_export.spandrel_import import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = (Compact(num_feat=64, num_conv=32, upscale=4) if spec == "compact"
             else ESRGAN(num_filters=64, num_blocks=2, scale=4))
    weights = folder / f"{spec}-x4.pth"
    torch.save(model.state_dict(), weights)
    out = folder / spec
    run = subprocess.run([sys.executable, "-m", "aigc_bridge.cli", "export", str(weights), str(out)],
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr)
    return out


def _measure(package: Path, size: int, tile_size: str, threads: int) -> dict:
    run = subprocess.run([sys.executable, "-c", _CHILD, str(package), str(size), tile_size, str(threads)],
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _demo(upscale: bool, out: Path) -> float:
    cmd = [sys.executable, "-m", "aigc_bridge.cli", "generate", "weathered red brick wall", "-o", str(out),
           "--seed", "1", "--pbr", "--target-size", "256"] + ([] if upscale else ["--upscale", "none"])
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-4k", action="store_true", help="leave out the 1024 -> 4096 run (minutes)")
    args = p.parse_args(argv)
    gib = 2**30
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        compact = _export("compact", tmp)
        print("upscale 512 -> 2048, Real-ESRGAN compact x4 (64 features, 32 convolutions), tile both, "
              f"{args.threads} threads, {args.rounds} rounds, median:")
        results: dict[str, list[dict]] = {"whole": [], "tiled 256": []}
        for _ in range(args.rounds):
            results["whole"].append(_measure(compact, 512, "auto", args.threads))
            results["tiled 256"].append(_measure(compact, 512, "256", args.threads))
        medians = {}
        for name, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            peak = statistics.median(r["peak_bytes"] for r in runs)
            medians[name] = (seconds, peak)
            print(f"  {name:<10} {seconds:6.2f} s   peak RSS {peak / gib:5.2f} GB   (tile {runs[0]['tile']})")
        (ws, wp), (ts, tp) = medians["whole"], medians["tiled 256"]
        print(f"  tiled / whole: time {ts / ws:.2f}x, peak memory {tp / wp:.2f}x")

        if not args.skip_4k:
            esrgan = _export("esrgan", tmp)
            r = _measure(esrgan, 1024, "auto", args.threads)
            whole = _measure_estimate(esrgan, 1024)
            print(f"upscale 1024 -> 4096, ESRGAN x4 (64 filters, 2 blocks), default 2 GB bound: {r['seconds']:.0f} s, "
                  f"peak RSS {r['peak_bytes'] / gib:.2f} GB in {r['tile']} px tiles (whole image would need "
                  f"~{whole / gib:.1f} GB by the estimate)")

        from aigc_bridge.models import default_model_dir

        model = default_model_dir()
        if model is not None and json.loads((model / "model.json").read_text()).get("upscaler"):
            times = {"resampled (before)": [], "128 px stage (after)": []}
            for _ in range(args.rounds):
                times["resampled (before)"].append(_demo(False, tmp / "a" / "wall.png"))
                times["128 px stage (after)"].append(_demo(True, tmp / "b" / "wall.png"))
            print("make demo's command (generate ... --pbr --target-size 256), whole process, median:")
            for name, values in times.items():
                print(f"  {name:<22} {statistics.median(values):5.2f} s")
            before, after = (statistics.median(v) for v in times.values())
            print(f"  after / before: {after / before:.2f}x")
    return 0


def _measure_estimate(package: Path, size: int) -> int:
    from aigc_bridge.upscale import Upscaler

    up = Upscaler.load(package, provider="cpu")
    return up.estimate_bytes(size + 32, size + 32) + 4 * 3 * size * size * 17


if __name__ == "__main__":
    raise SystemExit(main())
