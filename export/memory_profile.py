"""The memory profile of a model package: each graph's working memory at growing latent sizes.

onnxruntime's profiler reports, per node, how many bytes its arena holds in use (``mem_in_use_peak``); one
run of a fresh session (memory patterns off, as the runtime runs on the CPU) at a given size therefore gives
that graph's exact peak. Sizes double from the smallest the model accepts to at least the native size, and on
until the peak is large enough to be dominated by what grows fastest (self-attention, quadratic in the latent
area) or the side is four times the native one, so the runtime can extrapolate beyond the table with the
growth it last saw (aigc_bridge/engine/memory.py reads it).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ENOUGH = 32 * 2**20        # a peak this large at or above the native size is attention-dominated: stop
WIDEST = 4                 # or once the side is this many times the native side
CEILING = 1.0 * 2**30      # never measure a size whose peak could exceed this (grows at most 16x per doubling)
MAX_SECONDS = 20.0         # nor after a run this slow
METHOD = ("onnxruntime arena peak (profiler mem_in_use_peak), one run of a fresh session per size, memory "
          "patterns off, batch 1 at each size and batch 2 at the largest")


def profile_package(root: Path, manifest: dict, log: Callable[[str], None] = print) -> dict | None:
    """The manifest's ``memory`` section for the package in ``root``; None where it cannot be measured
    (graphs optimised for the GPU only run on CUDA, whose profiler does not report the arena)."""
    if manifest.get("optimization") == "gpu":
        log("  memory profile: skipped (GPU-optimised graphs); requests are not checked before they run")
        return None
    factor = manifest["vae_scale_factor"]
    targets = [(manifest["unet"]["graphs"]["none"], 1), (manifest["vae_decoder"]["graphs"]["none"], 1)]
    if manifest.get("vae_encoder"):
        targets.append((manifest["vae_encoder"]["graphs"]["none"], factor))
    if manifest["unet"].get("control"):  # the residual-input UNet and each controlnet run at latent size
        targets.append((manifest["unet"]["control"]["graphs"]["none"], 1))
    targets += [(entry["graphs"]["none"], 1) for entry in (manifest.get("controlnets") or {}).values()]
    return {"method": METHOD, "provider": "CPUExecutionProvider",
            "graphs": profile_graphs(root, manifest, targets, log)}


def profile_graphs(root: Path, manifest: dict, targets: list[tuple[str, int]],
                   log: Callable[[str], None] = print) -> dict:
    """Each (graph file, input scale against the latents) measured; the manifest's ``memory.graphs`` entries."""
    import onnxruntime as ort

    factor = manifest["vae_scale_factor"]
    multiple = max(1, manifest["size_multiple"] // factor)
    native = max(manifest["native_size"]) // factor
    downscales = {r["name"]: r["downscale"] for r in (manifest["unet"].get("control") or {}).get("residuals", [])}
    graphs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for graph, scale in targets:
            graphs[graph] = _profile_graph(ort, root / graph, scale, multiple, native, Path(scratch),
                                           factor, downscales)
            entry = graphs[graph]
            log(f"  memory profile {graph}: {len(entry['latent_areas'])} sizes up to "
                f"{int(entry['latent_areas'][-1] ** 0.5) * factor} px, peak {entry['peak_bytes'][-1] / 2**20:.0f} MB")
    return graphs


def _profile_graph(ort, path: Path, scale: int, multiple: int, native: int, scratch: Path, factor: int = 1,
                   downscales: dict[str, int] | None = None) -> dict:
    inputs = [(v.name, v.shape, v.type) for v in ort.InferenceSession(str(path)).get_inputs()]
    areas, peaks = [], []
    side = multiple

    def feeds(batch: int, side: int) -> dict[str, np.ndarray]:
        dims = {"image_height": side * factor, "image_width": side * factor}
        for name, ds in (downscales or {}).items():
            dims[f"{name}_height"] = dims[f"{name}_width"] = max(1, side // ds)
        return _feeds(inputs, batch, side * scale, dims)

    while True:
        started = time.perf_counter()
        peak = _peak(ort, path, feeds(1, side), scratch)
        areas.append(side * side)
        peaks.append(max(peak, 1))
        slow = time.perf_counter() - started > MAX_SECONDS
        if slow or peak * 16 > CEILING or (side >= native and (peak >= ENOUGH or side >= WIDEST * native)):
            break
        side *= 2
    top = _peak(ort, path, feeds(2, side), scratch)
    return {"latent_areas": areas, "peak_bytes": peaks, "batch2_ratio": round(top / peaks[-1], 4)}


def _feeds(inputs: list[tuple], batch: int, side: int, extra: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Inputs of the graph's own declared types, with its dynamic axes (batch, height, width, and ``extra``:
    the control image's and the residuals' sides) set."""
    rng = np.random.default_rng(0)
    dims = {**(extra or {}), "batch": batch, "height": side, "width": side}
    feeds = {}
    for name, shape, kind in inputs:
        shape = [d if isinstance(d, int) else dims.get(d, 1) for d in shape]
        if "int" in kind:
            feeds[name] = np.zeros(shape, dtype=np.int64 if "64" in kind else np.int32)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float16 if "float16" in kind else np.float32)
    return feeds


def _peak(ort, path: Path, feeds: dict[str, np.ndarray], scratch: Path) -> int:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = False
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text(encoding="utf-8"))
    finally:
        trace.unlink(missing_ok=True)
    return max((int(e["args"].get("mem_in_use_peak", 0)) for e in events if e.get("cat") == "Node"), default=0)
