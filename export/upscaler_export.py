"""PyTorch super-resolution file (.pth, .safetensors, ...) -> aigc-bridge upscaler package (docs/upscalers.md).

spandrel detects the architecture and its settings from the weights alone (ESRGAN / Real-ESRGAN, the compact
Real-ESRGAN, SPAN, SwinIR, HAT, DAT, OmniSR, ... : what artists download), then the graphs go through the same
machinery as every model (``onnx_export``): TorchScript export at opset 17, the plain graph and its circular-padding
variants in one shared weights file, and a parity check against torch before anything is written. Each tile
variant must also commute with circular shifts (rolling the input by k pixels rolls the output by scale x k); a
variant that does not (an architecture that pads or shifts windows itself) is left out, and the runtime gets
tileable output from that model by running it on wrapped context instead.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aigc_bridge.engine.package import MANIFEST_NAME, TILE_GRAPHS, package_hash, sha256_file
from aigc_bridge.upscale.package import (
    DEFAULT_CONTEXT,
    EXACT_LIMIT,
    UPSCALER_FORMAT,
    UPSCALER_FORMAT_VERSION,
)

from .onnx_export import OPSET, ExportError, _export_variant, _Graph, _SharedWeights, staged

GRAPH = "upscaler"
PROFILE_SIDE = 64  # the memory profile measures up to 4x this side (or 32 MB of arena), as for models' native size


class _Upscale(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model(image)


def load_descriptor(path: str | Path):
    """spandrel's model descriptor for a weights file; every failure names the file and what spandrel said."""
    from .spandrel_import import import_spandrel

    spandrel = import_spandrel()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist", "source")
    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError as exc:
        detail = str(exc) or "no known architecture matches its weights"
        raise ExportError(f"{path.name}: spandrel {spandrel.__version__} does not recognise this architecture "
                          f"({type(exc).__name__}: {detail}); spandrel lists the ones it knows", "source") from None
    except Exception as exc:  # a corrupt or foreign file: torch / safetensors raise many types
        raise ExportError(f"{path.name} could not be read as PyTorch weights: {type(exc).__name__}: {exc}",
                          "source") from None
    return descriptor


def _check(descriptor, name: str) -> None:
    arch = descriptor.architecture.name
    if not isinstance(descriptor, _image_descriptor_type()):
        raise ExportError(f"{name} is a {arch} model ({descriptor.purpose}), not an image upscaler", "source")
    if descriptor.scale < 2:
        raise ExportError(f"{name} is a {arch} model at scale {descriptor.scale} ({descriptor.purpose}): an "
                          "upscaler needs scale 2 or more", "source")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ExportError(f"{name} ({arch}) takes {descriptor.input_channels} and gives "
                          f"{descriptor.output_channels} channels; upscalers here are RGB in, RGB out", "source")


def _image_descriptor_type():
    from .spandrel_import import import_spandrel

    return import_spandrel().ImageModelDescriptor


def export_upscaler(source, out_dir: str | Path, *, model_id: str | None = None, seamless: bool = True,
                    overwrite: bool = False, context: int = DEFAULT_CONTEXT, extra: dict | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """Export ``source`` (a weights file spandrel reads, or a spandrel ``ImageModelDescriptor``) to a verified
    upscaler package in ``out_dir``. ``context``: input pixels of overlap each side of a tile in tiled inference;
    ``extra``: manifest fields to add (e.g. what the model was trained for)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)", "out_dir")
    if isinstance(source, (str, Path)):
        log(f"loading {source}")
        descriptor, source_name = load_descriptor(source), str(source)
    else:
        descriptor, source_name = source, model_id or "module"
    _check(descriptor, Path(source_name).name)
    model = descriptor.model.float().eval()
    with staged(out_dir) as staging:
        manifest = _export_into(descriptor, model, source_name, staging, model_id, seamless, context, extra or {},
                                log)
    log(f"wrote {out_dir} ({manifest['model_id']}: {manifest['architecture']} x{manifest['scale']}, "
        f"tile graphs {sorted(set(manifest['graphs']) - {'none'}) or 'none'})")
    return out_dir


def _export_into(descriptor, model: nn.Module, source: str, root: Path, model_id: str | None, seamless: bool,
                 context: int, extra: dict, log: Callable[[str], None]) -> dict:
    req = descriptor.size_requirements
    multiple = max(1, int(req.multiple_of))
    minimum = max(int(req.minimum), multiple)

    def side(n: int) -> int:  # a valid side length near n
        return max(minimum, -(-n // multiple) * multiple)

    def images(seed, batch, h, w):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(batch, 3, h, w, generator=g),)

    axes = {0: "batch", 2: "height", 3: "width"}
    check = (2, side(24), side(24) if req.square else side(40))
    graph = _Graph(GRAPH, _Upscale(model), images, ["image"], ["upscaled"], {"image": axes, "upscaled": axes},
                   (1, side(32), side(32)), check, seamless_target=model,
                   tiles=TILE_GRAPHS if seamless else ("none",))
    shift = multiple * max(1, 4 // multiple)
    equivariance, left_out = {}, {}
    with tempfile.TemporaryDirectory() as scratch, open(root / f"{GRAPH}.weights", "wb") as weights_file:
        weights = _SharedWeights(weights_file)
        for tile in graph.tiles:
            try:
                _export_variant(graph, tile, weights, root, Path(scratch), False, "none", log)
            except ExportError as exc:
                if tile == "none":
                    raise
                reason = exc.message.split("; the package was not written")[0]
            else:
                if tile == "none":
                    continue
                error = _roll_error(root / graph.files[tile], tile, check, shift, int(descriptor.scale))
                equivariance[tile] = error
                if error <= EXACT_LIMIT:
                    continue
                reason = (f"rolling the input by {shift} px moves the output by up to {error:.2e} more than a roll "
                          f"(limit {EXACT_LIMIT:g})")
            # a variant that is not exact is not shipped: tiles come from wrapped context instead (runtime)
            name = graph.files.pop(tile, f"{GRAPH}.tile_{tile}.onnx")
            (root / name).unlink(missing_ok=True)
            graph.parity.pop(name, None)
            left_out[tile] = reason
            log(f"  {name} left out ({reason}); tileable output comes from wrapped context instead")
    arch = descriptor.architecture
    manifest = {
        "format": UPSCALER_FORMAT, "format_version": UPSCALER_FORMAT_VERSION,
        "model_id": model_id or Path(source).stem, "source": source,
        "architecture": arch.name, "architecture_id": arch.id, "tags": list(descriptor.tags),
        "scale": int(descriptor.scale), "precision": "fp32", "opset": OPSET,
        "size_requirements": {"minimum": minimum, "multiple_of": multiple, "square": bool(req.square)},
        "graphs": graph.files, "equivariance": {k: float(v) for k, v in equivariance.items()},
        "tile_graphs_left_out": left_out,
        "context": int(context),
        "memory": _memory_profile(root / graph.files["none"], minimum, multiple),
        "parity": graph.parity, **extra,
    }
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest["files"] = files
    manifest["package_hash"] = package_hash(files)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _roll_error(path: Path, tile: str, shape: tuple[int, int, int], shift: int, scale: int) -> float:
    """max |f(roll(x, k)) - roll(f(x), scale k)| for a periodic random input (x only for tile "x")."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    _b, h, w = shape
    x = np.random.default_rng(7).random((1, 3, h, w), dtype=np.float32)
    dy = shift if tile == "both" else 0
    y = session.run(None, {"image": x})[0]
    rolled = session.run(None, {"image": np.roll(x, (dy, shift), axis=(2, 3))})[0]
    return float(np.max(np.abs(np.roll(y, (dy * scale, shift * scale), axis=(2, 3)) - rolled)))


def _memory_profile(path: Path, minimum: int, multiple: int) -> dict:
    """The graph's measured arena peak at growing input sizes, as ``memory_profile`` measures every model's
    graphs (aigc_bridge.engine.memory reads it): here the areas are the input image's, in pixels."""
    import onnxruntime as ort

    from .memory_profile import METHOD, _profile_graph

    start = max(8, minimum)
    start = -(-start // multiple) * multiple
    with tempfile.TemporaryDirectory() as scratch:
        entry = _profile_graph(ort, path, 1, start, PROFILE_SIDE, Path(scratch))
    return {"method": METHOD, "provider": "CPUExecutionProvider", "graphs": {path.name: entry},
            "weights_bytes": path.with_suffix(".weights").stat().st_size}


def attach_upscaler(model_dir: str | Path, upscaler_dir: str | Path, name: str = "upscaler",
                    log: Callable[[str], None] = print) -> Path:
    """Ship an upscaler inside a text-to-image package: copied to ``model_dir/name``, named in the manifest's
    ``upscaler`` field, its files added to ``files`` (the package hash changes: it is a different package)."""
    from aigc_bridge.upscale.package import UpscalerPackage

    model_dir, upscaler_dir = Path(model_dir), Path(upscaler_dir)
    UpscalerPackage.load(upscaler_dir)  # verified before it is shipped
    manifest_path = model_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    target = model_dir / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(upscaler_dir, target)
    files = {k: v for k, v in manifest["files"].items() if not k.startswith(f"{name}/")}
    files.update({str(p.relative_to(model_dir)): sha256_file(p) for p in sorted(target.rglob("*")) if p.is_file()})
    manifest["upscaler"] = name
    manifest["files"] = dict(sorted(files.items()))
    manifest["package_hash"] = package_hash(manifest["files"])
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(manifest_path)
    log(f"{model_dir}: ships {target.name}/ (package {manifest['package_hash'][:12]})")
    return target
