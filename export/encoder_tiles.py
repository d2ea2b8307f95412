"""Seamless VAE-encoder graphs for a package exported without them, torch-free (onnx + onnxruntime).

Packages from before the encoder had tile variants (the shipped texture-mini among them) have only
``vae_encoder.onnx``. Re-exporting needs the torch source, which a package does not keep, so the variants are
derived from the plain graph instead: every zero padding in front of a Conv (the Conv's own ``pads`` and the
downsamplers' explicit ``Pad`` nodes) becomes circular padding (Slice + Concat, as the exporter's circular convs
lower to) on the axes the mode wraps. The new graphs point into the same ``vae_encoder.weights``; the manifest's
``files``, ``package_hash``, ``vae_encoder.graphs`` and ``parity`` are rewritten to match.

The check, without torch: the circular graph must commute with circular shifts (rolling the image by
``vae_scale_factor`` x k pixels rolls the latents by k). On the tiny test model the derived graphs equal the
ones the exporter makes from torch exactly (tests/test_conditioning_texture.py).

    python -m aigc_bridge_export.encoder_tiles PACKAGE_DIR
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from aigc_bridge.engine.package import MANIFEST_NAME, package_hash, sha256_file

from .errors import ExportError

_BIG = np.iinfo(np.int64).max
MODES = ("both", "x")


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def _slice(graph: onnx.GraphProto, x: str, out: str, axis: int, start: int, end: int) -> onnx.NodeProto:
    inputs = [x, _const(graph, f"{out}_s", [start]), _const(graph, f"{out}_e", [end]),
              _const(graph, f"{out}_a", [axis])]
    return helper.make_node("Slice", inputs, [out])


def _circular(graph: onnx.GraphProto, x: str, axis: int, begin: int, end: int, tag: str) -> tuple[str, list]:
    """Nodes that pad ``x`` circularly by ``begin`` / ``end`` on ``axis``; returns the padded name and nodes."""
    parts, nodes = [], []
    if begin:
        nodes.append(_slice(graph, x, f"{tag}_wrap_begin{axis}", axis, -begin, _BIG))
        parts.append(nodes[-1].output[0])
    parts.append(x)
    if end:
        nodes.append(_slice(graph, x, f"{tag}_wrap_end{axis}", axis, 0, end))
        parts.append(nodes[-1].output[0])
    if len(parts) == 1:
        return x, nodes
    out = f"{tag}_wrapped{axis}"
    nodes.append(helper.make_node("Concat", parts, [out], axis=axis))
    return out, nodes


def _pad_amounts(model: onnx.ModelProto, pad_nodes: list[onnx.NodeProto],
                 base_dir: Path) -> dict[str, tuple[int, int, int, int]]:
    """(top, left, bottom, right) of each explicit Pad, measured by running the graph once with its input and
    output exposed: the exporter computes a Pad's amounts inside the graph, so they are not constants."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for node in pad_nodes:
        probe.graph.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                   for n in (node.input[0], node.output[0])])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    path = base_dir / ".pad_probe.onnx"  # beside the graph: its weights are external data next to it
    onnx.save(probe, str(path))
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    finally:
        path.unlink(missing_ok=True)
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 24)).astype(np.float32)
    names = [n for node in pad_nodes for n in (node.input[0], node.output[0])]
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: image})))
    amounts = {}
    for node in pad_nodes:
        before, after = values[node.input[0]], values[node.output[0]]
        dh, dw = after.shape[2] - before.shape[2], after.shape[3] - before.shape[3]
        if after.shape[:2] != before.shape[:2] or dh < 0 or dw < 0:
            raise ExportError(f"{node.name}: not a spatial zero padding", node.name)
        for top in range(dh + 1):
            for left in range(dw + 1):
                inner = after[:, :, top:top + before.shape[2], left:left + before.shape[3]]
                if np.array_equal(inner, before):
                    amounts[node.output[0]] = (top, left, dh - top, dw - left)
        if node.output[0] not in amounts:
            raise ExportError(f"{node.name}: could not locate the padding", node.name)
    return amounts


def circular_variant(model: onnx.ModelProto, mode: str, base_dir: Path) -> onnx.ModelProto:
    """A copy of ``model`` (loaded without its external data, which lies in ``base_dir``) whose zero paddings
    before convolutions wrap on both axes or on x only."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    pad_nodes = [n for n in model.graph.node if n.op_type == "Pad"]
    for node in pad_nodes:
        attrs = {a.name: a for a in node.attribute}
        if "mode" in attrs and attrs["mode"].s not in (b"constant", b""):
            raise ExportError(f"{node.name}: {attrs['mode'].s.decode()} padding is already not zero", node.name)
    amounts = _pad_amounts(model, pad_nodes, Path(base_dir)) if pad_nodes else {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        tag = f"circ{index}"
        node.input[:] = [renamed.get(name, name) for name in node.input]
        if node.op_type == "Pad":
            top, left, bottom, right = amounts[node.output[0]]
            x, added = _circular(graph, node.input[0], 3, left, right, tag)
            nodes += added
            if mode == "both":
                x, added = _circular(graph, x, 2, top, bottom, tag)
                nodes += added
            elif top or bottom:
                pads = _const(graph, f"{tag}_pads", [0, 0, top, 0, 0, 0, bottom, 0])
                nodes.append(helper.make_node("Pad", [x, pads], [f"{tag}_zero_y"], mode="constant"))
                x = f"{tag}_zero_y"
            renamed[node.output[0]] = x
            continue
        if node.op_type == "Conv":
            attrs = {a.name: a for a in node.attribute}
            pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
            if any(pads):
                top, left, bottom, right = pads
                x, added = _circular(graph, node.input[0], 3, left, right, tag)
                nodes += added
                keep = [top, 0, bottom, 0]
                if mode == "both":
                    x, added = _circular(graph, x, 2, top, bottom, tag)
                    nodes += added
                    keep = [0, 0, 0, 0]
                node.input[0] = x
                del attrs["pads"].ints[:]
                attrs["pads"].ints.extend(keep)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(_prune(nodes, {o.name for o in graph.output}))
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for output in graph.output:
        if output.name in renamed:
            raise ExportError("a padding feeds the graph output directly", output.name)
    return out


def _prune(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop the nodes nothing reads any more (what computed the replaced Pads' amounts)."""
    while True:
        used = outputs | {name for node in nodes for name in node.input}
        kept = [node for node in nodes if any(out in used for out in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def check_variant(path: Path, mode: str, scale: int) -> dict:
    """Shift equivariance on the wrapped axes (GroupNorm's statistics are global, so no pixel of a circular
    graph equals the plain graph's; tests compare with the exporter's torch-made variants instead)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    circular = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1234)
    image = rng.uniform(-1, 1, (1, 3, 12 * scale, 16 * scale)).astype(np.float32)
    base = circular.run(None, {"image": image})[0]
    k = 3
    shift = (0, 0, k * scale, 2 * k * scale) if mode == "both" else (0, 0, 0, 2 * k * scale)
    latent_shift = (k, 2 * k) if mode == "both" else (0, 2 * k)
    rolled = circular.run(None, {"image": np.roll(image, shift[2:], axis=(2, 3))})[0]
    err = float(np.max(np.abs(rolled - np.roll(base, latent_shift, axis=(2, 3)))))
    limit = 1e-4 + 1e-3 * float(np.max(np.abs(base)))
    if not err <= limit:
        raise ExportError(f"{path.name}: rolling the image does not roll the latents (max error {err:.3g}, "
                          f"limit {limit:.3g}); not added", path.name)
    return {"max_abs_error": err, "limit": limit, "provider": "CPUExecutionProvider",
            "shape": list(image.shape[:1]) + [image.shape[2] // scale, image.shape[3] // scale],
            "method": "roll equivariance (torch-free)"}


def add_encoder_tiles(package_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Add ``vae_encoder.tile_both.onnx`` and ``vae_encoder.tile_x.onnx`` to a package that lacks them, and
    rewrite its manifest (graphs, parity, files, package_hash). Returns the new manifest."""
    root = Path(package_dir)
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    graphs = manifest["vae_encoder"]["graphs"]
    plain = root / graphs["none"]
    model = onnx.load(str(plain), load_external_data=False)
    scale = int(manifest["vae_scale_factor"])
    for mode in MODES:
        if mode in graphs:
            log(f"{graphs[mode]} already there")
            continue
        name = f"{plain.stem}.tile_{mode}.onnx"
        staged = root / f".{name}.tmp"
        onnx.save(circular_variant(model, mode, root), str(staged))
        try:
            manifest.setdefault("parity", {})[name] = check_variant(staged, mode, scale)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        os.replace(staged, root / name)
        graphs[mode] = name
        log(f"added {name}: rolled input -> rolled latents within {manifest['parity'][name]['max_abs_error']:.2e}")
    files = dict(manifest["files"])
    files.update({graphs[mode]: sha256_file(root / graphs[mode]) for mode in MODES})
    files = dict(sorted(files.items()))
    manifest["files"], manifest["package_hash"] = files, package_hash(files)
    staged = root / f".{MANIFEST_NAME}.tmp"
    staged.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(staged, root / MANIFEST_NAME)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="add seamless VAE-encoder graphs to a model package")
    parser.add_argument("package", type=Path)
    args = parser.parse_args(argv)
    manifest = add_encoder_tiles(args.package)
    print(f"{args.package}: package_hash {manifest['package_hash']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
