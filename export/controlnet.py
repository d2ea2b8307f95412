"""ControlNets in a model package (docs/model-package.md, "ControlNets").

A diffusers ``ControlNetModel`` becomes its own graph (``controlnet.NAME.onnx``, with seamless variants sharing
``controlnet.NAME.weights``) whose outputs are the down / mid residuals, unscaled; the UNet gets a variant graph
(``unet.control*.onnx``) that takes them as inputs and shares ``unet.weights`` with the plain UNet, so a package
with controlnets costs one UNet on disk. Scaling, guidance start / end and the sum over several controlnets
happen in the runtime's loop, as diffusers' ControlNet pipelines do them.

A controlnet fits a package when it hands the UNet the residuals it takes (count, channels, downscale), reads
the same cross-attention width and, for SDXL, the same added conditions (text_embeds, time_ids).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ExportError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Condition kinds, as controlnet repositories name them (lllyasviel/control_v11p_sd15_canny,
# diffusers/controlnet-depth-sdxl-1.0, thibaud/controlnet-sd21-openpose-diffusers ...): the first found is the
# default name. Longer names first where one contains another.
_KINDS = ("normalbae", "normal", "depth", "canny", "openpose", "lineart_anime", "lineart", "softedge", "scribble",
          "mlsd", "seg", "hed", "tile", "inpaint", "shuffle", "ip2p", "qrcode", "sketch", "pose", "zoe")


def default_name(source: str) -> str:
    """The controlnet's name in the package when none is given: its condition kind where the source's name
    says it ("depth", "canny", ...), else the sanitised last path component."""
    stem = Path(str(source).rstrip("/\\")).name.lower()
    for kind in _KINDS:
        if kind in stem:
            return kind
    name = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")[:32]
    return name or "control"


def parse_spec(spec: str) -> tuple[str, str]:
    """``ID_OR_PATH[=NAME]`` -> (source, name)."""
    source, sep, name = str(spec).rpartition("=")
    if not sep:
        source, name = spec, default_name(spec)
    check_name(name)
    return source, name


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ExportError(f"controlnet name {name!r} must be 1-32 lower-case letters, digits, '-' or '_', starting "
                          "with a letter or digit (e.g. depth, canny)", "name")
    return name


def load_controlnet(source: str):
    """A diffusers ControlNetModel from a folder or hub id, in eval mode."""
    from diffusers import ControlNetModel

    try:
        model = ControlNetModel.from_pretrained(source, torch_dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load controlnet {source}: {exc}", "controlnet") from None
    if model.config.get("global_pool_conditions"):
        raise ExportError(f"controlnet {source} pools its conditions (shuffle-style, guess mode only), which the "
                          "runtime does not run", "controlnet")
    return model.eval()


def residual_layout(model: nn.Module) -> list[dict]:
    """The residuals a UNet's down path hands its up path (and a ControlNet produces): conv_in, every resnet,
    every downsampler, then the mid block; each with its channels and downscale against the latents."""
    out = [{"name": "down_residual_0", "channels": int(model.conv_in.out_channels), "downscale": 1}]
    scale = 1
    for block in model.down_blocks:
        for resnet in block.resnets:
            out.append({"channels": int(resnet.out_channels), "downscale": scale})
        if getattr(block, "downsamplers", None):
            scale *= 2
            out.append({"channels": int(block.downsamplers[0].out_channels), "downscale": scale})
    for i, entry in enumerate(out):
        entry["name"] = f"down_residual_{i}"
    out.append({"name": "mid_residual", "channels": int(model.config.block_out_channels[-1]), "downscale": scale})
    return out


def signature(model: nn.Module) -> dict:
    """What a controlnet and the UNet it feeds must agree on."""
    cfg = model.config
    return {
        "cross_attention_dim": int(cfg.cross_attention_dim if not isinstance(cfg.cross_attention_dim, (list, tuple))
                                   else cfg.cross_attention_dim[0]),
        "block_out_channels": [int(c) for c in cfg.block_out_channels],
        "residuals": [[r["channels"], r["downscale"]] for r in residual_layout(model)],
        "text_time": cfg.get("addition_embed_type") == "text_time",
        "addition_dim": int(cfg.get("projection_class_embeddings_input_dim") or 0),
    }


def describe(sig: dict) -> str:
    kind = ("SDXL-like" if sig["text_time"] else
            {768: "SD 1.x-like", 1024: "SD 2.x-like"}.get(sig["cross_attention_dim"], "SD-like"))
    parts = [kind + f": cross-attention {sig['cross_attention_dim']}"]
    if "block_out_channels" in sig:
        parts.append(f"blocks {'/'.join(map(str, sig['block_out_channels']))}, {len(sig['residuals'])} residuals")
    if sig["text_time"] and "addition_dim" in sig:
        parts.append(f"added conditions {sig['addition_dim']}")
    return ", ".join(parts)


def check_fits(controlnet_sig: dict, controlnet_label: str, base_sig: dict, model_label: str) -> None:
    """A mismatch is an error that names both and what differs."""
    differs = [what for key, what in (("cross_attention_dim", "cross-attention width"),
                                      ("text_time", "added conditions (SDXL text_embeds / time_ids)"),
                                      ("addition_dim", "added-condition width"),
                                      ("residuals", "residual layout (blocks, channels, downsamplers)"))
               if key in base_sig and controlnet_sig[key] != base_sig[key]]
    if differs:
        raise ExportError(f"controlnet {controlnet_label} ({describe(controlnet_sig)}) does not fit model "
                          f"{model_label} ({describe(base_sig)}): the {', '.join(differs)} differ; use a controlnet "
                          "trained for this model's base", "controlnet")


# --- torch wrappers -------------------------------------------------------------------------------------------

class ControlNetGraph(nn.Module):
    """The controlnet at conditioning scale 1: the runtime scales (and sums) the residuals itself."""

    def __init__(self, controlnet: nn.Module, text_time: bool, timestep_cond: bool) -> None:
        super().__init__()
        self.controlnet, self.text_time, self.timestep_cond = controlnet, text_time, timestep_cond

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *extra):
        extra = list(extra)
        added = {"text_embeds": extra.pop(0), "time_ids": extra.pop(0)} if self.text_time else None
        cond = extra.pop(0) if self.timestep_cond else None
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                                    timestep_cond=cond, added_cond_kwargs=added, return_dict=False)
        return (*down, mid)


class UNetWithResiduals(nn.Module):
    """The UNet with the down / mid residual inputs, as diffusers adds them (after the plain UNet's inputs)."""

    def __init__(self, unet_graph: nn.Module, residuals: int) -> None:
        super().__init__()
        self.inner, self.residuals = unet_graph, residuals

    def forward(self, *args):
        base, res = args[:-self.residuals], args[-self.residuals:]
        unet = self.inner
        extra = list(base[3:])
        added = {"text_embeds": extra.pop(0), "time_ids": extra.pop(0)} if unet.text_time else None
        cond = extra.pop(0) if unet.timestep_cond else None
        return unet.unet(base[0], base[1], base[2], timestep_cond=cond, added_cond_kwargs=added,
                         down_block_additional_residuals=tuple(res[:-1]), mid_block_additional_residual=res[-1],
                         return_dict=False)[0]


@dataclass(frozen=True)
class GraphDims:
    """What sample inputs of the UNet-like graphs need, from the pipeline or a package's manifest."""

    latent_channels: int      # the UNet's input channels
    text_length: int
    context_dim: int
    pooled_dim: int
    cond_dim: int
    text_time: bool
    vae_factor: int
    latent_multiple: int

    @classmethod
    def from_manifest(cls, m: dict) -> GraphDims:
        unet = m["unet"]
        return cls(int(unet.get("in_channels", m["latent_channels"])), int(m["text_encoders"][0]["max_length"]),
                   sum(int(e["hidden_size"]) for e in m["text_encoders"]), int(unet.get("pooled_dim", 0)),
                   int(unet.get("timestep_cond_dim", 0)), bool(unet.get("text_time")), int(m["vae_scale_factor"]),
                   int(m["size_multiple"]) // int(m["vae_scale_factor"]))

    def conditions(self, g: torch.Generator, batch: int, h: int, w: int, with_cond: bool) -> list[torch.Tensor]:
        """timestep, encoder_hidden_states and the added conditions, random."""
        args = [torch.rand(batch, generator=g) * 999,
                torch.randn(batch, self.text_length, self.context_dim, generator=g)]
        if self.text_time:
            side_h, side_w = h * self.vae_factor, w * self.vae_factor
            args += [torch.randn(batch, self.pooled_dim, generator=g),
                     torch.tensor([[side_h, side_w, 0, 0, side_h, side_w]] * batch, dtype=torch.float32)]
        if with_cond and self.cond_dim:
            args.append(torch.randn(batch, self.cond_dim, generator=g))
        return args

    def condition_names(self, with_cond: bool) -> list[str]:
        names = ["timestep", "encoder_hidden_states"] + (["text_embeds", "time_ids"] if self.text_time else [])
        return names + (["timestep_cond"] if with_cond and self.cond_dim else [])


def _residual_axes(layout: list[dict]) -> dict[str, dict[int, str]]:
    return {r["name"]: {0: "batch", 2: f"{r['name']}_height", 3: f"{r['name']}_width"} for r in layout}


def _residual_tensors(g: torch.Generator, layout: list[dict], batch: int, h: int, w: int) -> list[torch.Tensor]:
    return [torch.randn(batch, r["channels"], h // r["downscale"], w // r["downscale"], generator=g) * 0.5
            for r in layout]


def unet_control_graph(graph_cls, unet_graph: nn.Module, unet: nn.Module, dims: GraphDims, tiles) -> tuple:
    """The ``unet.control`` variant (a ``graph_cls`` = onnx_export._Graph), weights shared with ``unet``;
    and the residual layout it takes."""
    layout = residual_layout(unet)
    names = ["sample", *dims.condition_names(True), *(r["name"] for r in layout)]

    def make_inputs(seed: int, batch: int, h: int, w: int):
        g = torch.Generator().manual_seed(seed)
        sample = torch.randn(batch, dims.latent_channels, h, w, generator=g)
        return (sample, *dims.conditions(g, batch, h, w, True), *_residual_tensors(g, layout, batch, h, w))

    axes = {name: {0: "batch"} for name in names}
    axes.update(sample={0: "batch", 2: "height", 3: "width"}, out_sample={0: "batch", 2: "height", 3: "width"})
    axes.update(_residual_axes(layout))
    m = dims.latent_multiple
    graph = graph_cls("unet.control", UNetWithResiduals(unet_graph, len(layout)), make_inputs, names, ["out_sample"],
                      axes, (2, 2 * m, 2 * m), (3, 3 * m, 4 * m), seamless_target=unet, tiles=tiles, weights="unet")
    return graph, layout


def controlnet_graph(graph_cls, name: str, controlnet: nn.Module, dims: GraphDims, tiles):
    """The ``controlnet.NAME`` graph: latents, timestep, text conditions and the control image (pixels in [0, 1])
    in; the residuals (named as the UNet's control inputs) out."""
    layout = residual_layout(controlnet)
    with_cond = bool(controlnet.config.get("time_cond_proj_dim"))
    channels = int(controlnet.config.get("conditioning_channels", 3))
    latent_channels = int(controlnet.config.in_channels)
    def make_inputs(seed: int, batch: int, h: int, w: int):
        g = torch.Generator().manual_seed(seed)
        sample = torch.randn(batch, latent_channels, h, w, generator=g)
        conds = dims.conditions(g, batch, h, w, False)
        image = torch.rand(batch, channels, h * dims.vae_factor, w * dims.vae_factor, generator=g)
        cond_dim = int(controlnet.config.get("time_cond_proj_dim") or 0)
        extra = [torch.randn(batch, cond_dim, generator=g)] if with_cond else []
        return (sample, conds[0], conds[1], image, *conds[2:], *extra)

    # the wrapper's order: sample, timestep, encoder_hidden_states, controlnet_cond, [text_embeds, time_ids], [cond]
    names = ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
    names += ["text_embeds", "time_ids"] if dims.text_time else []
    names += ["timestep_cond"] if with_cond else []
    outputs = [r["name"] for r in layout]
    axes = {n: {0: "batch"} for n in names}
    axes.update(sample={0: "batch", 2: "height", 3: "width"},
                controlnet_cond={0: "batch", 2: "image_height", 3: "image_width"})
    axes.update(_residual_axes(layout))
    m = dims.latent_multiple
    module = ControlNetGraph(controlnet, dims.text_time, with_cond)
    graph = graph_cls(f"controlnet.{name}", module, make_inputs, names, outputs, axes, (2, 2 * m, 2 * m),
                      (3, 3 * m, 4 * m), seamless_target=controlnet, tiles=tiles)
    spec = {"conditioning_channels": channels, "timestep_cond": with_cond,
            "channel_order": controlnet.config.get("controlnet_conditioning_channel_order", "rgb")}
    return graph, spec


def controlnet_entry(name: str, source: str, graph, spec: dict, sig: dict) -> dict:
    """The manifest's ``controlnets[NAME]``."""
    return {"source": source, "graphs": dict(graph.files), "conditioning_channels": spec["conditioning_channels"],
            "timestep_cond": spec["timestep_cond"], "cross_attention_dim": sig["cross_attention_dim"],
            "residuals": sig["residuals"]}



# --- adding a controlnet to an existing package ---------------------------------------------------------------

def package_signature(manifest: dict) -> dict | None:
    """The base signature a package's residual-input UNet recorded; None for packages exported without it."""
    control = manifest["unet"].get("control")
    return None if not control else control["signature"]


def add_controlnet(package_dir: str | Path, source: str, name: str | None = None, *, base: str | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Export the controlnet ``source`` into the package at ``package_dir`` as ``name`` (default: from the
    source). A package exported without the UNet's residual-input variant gets it from ``base``, the model the
    package was exported from (checked: the variant with zero residuals must reproduce the package's UNet); its
    tensors point into the existing ``unet.weights``. Atomic: the new files are written beside the package and
    moved in, then the manifest is replaced in one rename (``files``, ``package_hash``, ``parity``, ``memory``
    updated); on any failure the package is as it was. Returns the new manifest."""
    import json
    import os
    import shutil
    import tempfile

    from aigc_bridge.engine.package import MANIFEST_NAME, ModelPackage, package_hash, sha256_file

    from .memory_profile import profile_graphs
    from .onnx_export import _Graph, export_graphs

    root = Path(package_dir)
    package = ModelPackage.load(root)
    manifest = json.loads(json.dumps(package.manifest))
    name = check_name(name or default_name(source))
    label = f"{manifest['model_id']} ({root})"
    existing = manifest.get("controlnets") or {}
    if name in existing:
        raise ExportError(f"{label} already has a controlnet named {name} (from {existing[name]['source']}): "
                          "give another --name", "name")
    model = load_controlnet(source)
    sig = signature(model)
    base_sig = package_signature(manifest)
    if base_sig is None:
        # what the manifest tells of the base anyway: enough to name a controlnet of another family
        check_fits(sig, source, {"cross_attention_dim": sum(int(e["hidden_size"]) for e in manifest["text_encoders"]),
                                 "text_time": bool(manifest["unet"].get("text_time"))}, label)
        if base is None:
            raise ExportError(f"{label} was exported without the UNet's controlnet inputs: give --base SOURCE (the "
                              "model it was exported from), or export it again with --controlnet (or "
                              "--control-inputs, to add controlnets later)", "base")
    fp16, optimize = manifest["precision"] == "fp16", manifest.get("optimization", "none")
    dims = GraphDims.from_manifest(manifest)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.{name}.", dir=root.parent))
    moved: list[Path] = []
    tmp = root / f".{MANIFEST_NAME}.{name}.tmp"
    try:
        graphs, linked = [], set()
        if base_sig is None:
            control_graph, linked = _base_control_graph(base, manifest, root, staging, dims, fp16, optimize, log)
            base_sig = manifest["unet"]["control"]["signature"]
            graphs.append(control_graph)
        check_fits(sig, source, base_sig, label)
        tiles = tuple(manifest["unet"]["control"]["graphs"])
        graph, spec = controlnet_graph(_Graph, name, model, dims, tiles)
        export_graphs([graph], staging, fp16, optimize, log)
        graphs.append(graph)
        new_files = sorted(p.name for p in staging.iterdir() if p.name not in linked)
        clash = [f for f in new_files if f in manifest["files"]]
        if clash:
            raise ExportError(f"{label} already lists {', '.join(clash)}", "name")
        if manifest.get("memory"):
            targets = [(g.files["none"], 1) for g in graphs]
            manifest["memory"]["graphs"].update(profile_graphs(staging, manifest, targets, log))
        manifest.setdefault("controlnets", {})[name] = controlnet_entry(name, source, graph, spec, sig)
        for g in graphs:
            manifest["parity"].update(g.parity)
        for file_name in new_files:
            manifest["files"][file_name] = sha256_file(staging / file_name)
        manifest["package_hash"] = package_hash(manifest["files"])
        for file_name in new_files:
            os.replace(staging / file_name, root / file_name)
            moved.append(root / file_name)
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, root / MANIFEST_NAME)  # the commit point
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"added controlnet {name} to {root} (package {manifest['package_hash'][:12]})")
    return manifest


def _base_control_graph(base: str, manifest: dict, root: Path, staging: Path, dims: GraphDims, fp16: bool,
                        optimize: str, log: Callable[[str], None]) -> tuple:
    """The residual-input UNet exported from ``base`` into ``staging``, its tensors pointing into the package's
    ``unet.weights`` (hard-linked into ``staging``, only read, for the checks: onnxruntime refuses weights outside
    a graph's folder, symbolic links included); fails unless, with zero residuals, it
    gives what the package's own UNet gives (the base is the model the package was exported from)."""
    import os
    import shutil

    import numpy as np

    from aigc_bridge.engine.providers import import_onnxruntime

    from .onnx_export import _Graph, _UNet, export_graphs, index_weights
    from .single_file import load_source

    pipe = load_source(base, log=log).pipe
    pipe.unet.eval()
    unet_graph = _UNet(pipe.unet, dims.text_time, bool(dims.cond_dim))
    graph, layout = unet_control_graph(_Graph, unet_graph, pipe.unet, dims, tuple(manifest["unet"]["graphs"]))
    graph.weights = "unet.control"  # new tensors (none, for the right base) go here; never into unet.weights
    plain = root / manifest["unet"]["graphs"]["none"]
    known = index_weights(plain)
    linked = {loc for loc, _, _ in known.values()}
    for location in linked:
        try:
            os.link(root / location, staging / location)
        except OSError:  # another file system, or no hard links: a copy
            shutil.copyfile(root / location, staging / location)
    export_graphs([graph], staging, fp16, optimize, log, known=known)
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with_res = ort.InferenceSession(str(staging / graph.files["none"]), options, providers=["CPUExecutionProvider"])
    own = ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
    b, h, w = graph.check_shape
    inputs = {n: t.numpy() for n, t in zip(graph.input_names, graph.make_inputs(99, b, h, w))}
    for r in layout:
        inputs[r["name"]] = np.zeros_like(inputs[r["name"]])
    ours = with_res.run(None, inputs)[0]
    theirs = own.run(None, {i.name: inputs[i.name] for i in own.get_inputs()})[0]
    error, limit = float(np.max(np.abs(ours - theirs))), 1e-4 + 1e-3 * float(np.max(np.abs(theirs)))
    if fp16:
        limit = 3e-2 + 3e-2 * float(np.max(np.abs(theirs)))
    if not error <= limit:
        raise ExportError(f"--base {base} is not the model {manifest['model_id']} was exported from: its UNet gives "
                          f"other results (max |diff| {error:.3g}, limit {limit:.3g})", "base")
    extra = staging / "unet.control.weights"
    if extra.exists() and extra.stat().st_size == 0:
        extra.unlink()  # every tensor was the package's own
    manifest["unet"]["control"] = {"graphs": dict(graph.files), "residuals": layout,
                                   "signature": signature(pipe.unet)}
    return graph, linked
