"""Generation through the sidecar against in process, and status round trips per second, in one run.

The same request (tiny SD-like model, 64 x 64, 4 Euler steps, CFG 7.5, fixed seed) alternates call by
call between the Pipeline loaded in this process and `aigc-bridge serve` (a subprocess, signed frames,
driven by aigc_bridge.client), each side with the same onnxruntime thread count, so drift on a shared
machine hits both alike. The sidecar's time includes everything a client waits for: queueing, progress
events, PNG encoding, HMAC signing and transfer. Target: at most 1.05x. With ``--init-size N`` both sides run
image to image (strength 0.75) with an N x N photo-like PNG init and a mask of its size, so the sidecar's time
also holds sending the two images as frames (protocol 1.2: header checks, sha256, transfer).

    python benchmarks/bench_sidecar.py [--calls 30] [--steps 4] [--size 64] [--threads 2] [--model DIR]
                                       [--init-size 1024]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _model(tmp: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_sd

    return export_pipeline(build_tiny_sd(tmp / "diffusers"), tmp / "onnx", log=lambda _m: None)


def _start_sidecar(model: Path, threads: int, conn: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aigc_bridge.cli", "serve", "--model", str(model), "--provider", "cpu",
           "--threads", str(threads), "--bind", "tcp://127.0.0.1:0", "--connection-file", str(conn)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # printed once the model is loaded and the socket bound
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the sidecar did not start: {line!r}")
    return proc


def _images(size: int) -> dict:
    """An init with photo-like detail (so the PNG is as large as a real one) and a square mask, or nothing."""
    if not size:
        return {}
    import numpy as np

    from aigc_bridge.assets.writers import png_bytes
    from aigc_bridge.input_image import InputImage

    rng = np.random.default_rng(0)
    pixels = np.clip(np.kron(rng.random((size // 8, size // 8, 3)), np.ones((8, 8, 1)))
                     + rng.normal(0, 0.05, (size, size, 3)), 0, 1).astype(np.float32)
    mask = np.zeros((size, size, 3), np.float32)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    init = InputImage.from_bytes(png_bytes(pixels), "init")
    print(f"init {size}x{size} PNG: {len(init.data) / 2**20:.2f} MiB; mask {len(png_bytes(mask)) / 1024:.1f} KiB")
    return {"init": init, "mask": InputImage.from_bytes(png_bytes(mask), "mask"), "strength": 0.75}


def _rate(call, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a model package (default: build the tiny test model)")
    parser.add_argument("--init-size", type=int, default=0, help="image to image with an init (and a mask) of this "
                        "many pixels a side (0: text to image)")
    ns = parser.parse_args()

    from aigc_bridge.assets.writers import png_bytes
    from aigc_bridge.client import Client
    from aigc_bridge.engine import Pipeline
    from aigc_bridge.request import GenerateRequest

    with tempfile.TemporaryDirectory() as tmp:
        model = _model(Path(tmp), ns.model)
        conn = Path(tmp) / "sidecar.json"
        server = _start_sidecar(model, ns.threads, conn)
        try:
            pipeline = Pipeline.load(model, provider="cpu", threads=ns.threads)
            request = dict(prompt="red brick wall", steps=ns.steps, guidance=7.5, seed=0, width=ns.size,
                           height=ns.size, scheduler="euler", **_images(ns.init_size))
            local = GenerateRequest(**request)
            inproc, inproc_png, sidecar = [], [], []
            with Client.from_connection_file(conn, timeout=30) as client:
                for i in range(ns.warmup + ns.calls):
                    t0 = time.perf_counter()
                    result = pipeline.generate(local)
                    t1 = time.perf_counter()
                    png_bytes(result.images[0])
                    t2 = time.perf_counter()
                    response = client.generate_request(local)
                    t3 = time.perf_counter()
                    if i >= ns.warmup:
                        inproc.append(t1 - t0)
                        inproc_png.append(t2 - t0)
                        sidecar.append(t3 - t2)
                assert response.images[0].data == png_bytes(result.images[0]), "the two sides disagree"
                status_rates = [_rate(client.status, 1.0) for _ in range(3)]
                ping_rates = [_rate(client.ping, 1.0) for _ in range(3)]
                client.shutdown(drain=False)
            server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()

    def row(name: str, times: list[float]) -> str:
        return f"{name:<26} {statistics.median(times) * 1e3:>9.1f} {min(times) * 1e3:>9.1f}"

    print(f"model {model.name if ns.model else 'tiny SD-like'}, {ns.size}x{ns.size}, {ns.steps} steps, Euler, "
          f"CFG 7.5, {ns.threads} threads each side; {ns.calls} alternating calls after {ns.warmup} warm-ups\n")
    print(f"{'':<26} {'median ms':>9} {'best ms':>9}")
    print(row("in process (generate)", inproc))
    print(row("in process (+ PNG encode)", inproc_png))
    print(row("sidecar (client.generate)", sidecar))
    ratio = statistics.median(sidecar) / statistics.median(inproc)
    ratio_png = statistics.median(sidecar) / statistics.median(inproc_png)
    best = min(sidecar) / min(inproc)
    print(f"\nsidecar / in process: {ratio:.3f}x median, {best:.3f}x best; vs in process + PNG: "
          f"{ratio_png:.3f}x  (target <= 1.05x: {'met' if ratio <= 1.05 else 'NOT met'})")
    print(f"status round trips: {statistics.median(status_rates):,.0f}/s, ping: "
          f"{statistics.median(ping_rates):,.0f}/s (median of 3 x 1 s, signed)")


if __name__ == "__main__":
    main()
