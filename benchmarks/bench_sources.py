"""What loading an artist's model costs at export, before any graph is traced: the same tiny SD pipeline as a
diffusers folder, as a single-file checkpoint (.safetensors and weights-only .ckpt, converted by diffusers'
from_single_file), and with two LoRAs fused and an embedding added. The rounds alternate, so a shared
machine's drift hits every variant alike; the table shows medians and the ratio to the diffusers folder.

    python benchmarks/bench_sources.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch
    from aigc_bridge_export.adapters import add_embeddings, fuse_loras
    from aigc_bridge_export.original_layout import save_single_file
    from aigc_bridge_export.single_file import load_source
    from aigc_bridge_export.tiny import build_tiny_sd, write_tiny_embedding, write_tiny_lora
    from diffusers import DiffusionPipeline

    torch.set_num_threads(2)
    quiet = {"log": lambda _m: None}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = build_tiny_sd(root / "tiny-sd")
        base = DiffusionPipeline.from_pretrained(src)
        files = {suffix: save_single_file(base, root / f"tiny{suffix}") for suffix in (".safetensors", ".ckpt")}
        loras = [f"{write_tiny_lora(base, root / 'a.safetensors', 'kohya', seed=1)}:0.8",
                 f"{write_tiny_lora(base, root / 'b.safetensors', 'peft', seed=2)}:0.5"]
        embedding = str(write_tiny_embedding(base, root / "style.pt"))

        def with_adapters():
            pipe = load_source(str(files[".safetensors"]), config=str(src), **quiet).pipe
            fuse_loras(pipe, loras, **quiet)
            add_embeddings(pipe, [embedding], **quiet)

        variants = {
            "diffusers folder": lambda: load_source(str(src), **quiet),
            "single .safetensors": lambda: load_source(str(files[".safetensors"]), config=str(src), **quiet),
            "single .ckpt (weights-only)": lambda: load_source(str(files[".ckpt"]), config=str(src), **quiet),
            "+ 2 LoRAs + 1 embedding": with_adapters,
        }
        for run in variants.values():  # warm-up: imports, file cache
            run()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                t = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t) * 1e3)
    base_ms = statistics.median(times["diffusers folder"])
    print(f"{'source':<30} {'median ms':>10} {'x folder':>9}   (tiny SD, {args.rounds} rounds)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<30} {median:>10.0f} {median / base_ms:>9.2f}")


if __name__ == "__main__":
    main()
