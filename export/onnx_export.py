"""diffusers pipeline -> aigc-bridge model package (docs/model-package.md).

Graphs are exported with the TorchScript exporter at opset 17: it is ~10x faster than dynamo and lowers
circular padding to Slice+Concat, which every execution provider runs (opset-19 ``Pad(wrap)`` has no CUDA
kernel in onnxruntime; shared notes, onnx-export.md sections 3 and 5). The seamless variants of the UNet and
VAE decoder share one weights file with the plain graph, so tiling costs no disk. Every graph is checked
against torch at a shape other than the export sample; a package that fails is never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import torch
from torch import nn

from aigc_bridge.engine.package import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    TILE_GRAPHS,
    package_hash,
    sha256_file,
)
from aigc_bridge.engine.schedulers import scheduler_for_class

from .adapters import token_expansions
from .errors import ExportError
from .memory_profile import profile_package
from .seamless import seamless

OPSET = 17
_INLINE_LIMIT = 1024  # tensors smaller than this stay inside the graph file
_ALIGN = 4096


# --- torch wrappers: one forward signature per graph, outputs named as the runtime expects ----------------

class _TextEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, penultimate: bool, pooled: bool) -> None:
        super().__init__()
        self.encoder, self.penultimate, self.pooled = encoder, penultimate, pooled

    def forward(self, input_ids: torch.Tensor):
        out = self.encoder(input_ids, output_hidden_states=self.penultimate)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        if self.pooled:
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
            return hidden, pooled
        return hidden


class _UNet(nn.Module):
    def __init__(self, unet: nn.Module, text_time: bool, timestep_cond: bool) -> None:
        super().__init__()
        self.unet, self.text_time, self.timestep_cond = unet, text_time, timestep_cond

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        extra = list(extra)
        added = None
        if self.text_time:
            added = {"text_embeds": extra.pop(0), "time_ids": extra.pop(0)}
        cond = extra.pop(0) if self.timestep_cond else None
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=cond,
                         added_cond_kwargs=added, return_dict=False)[0]


class _VaeDecoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


class _VaeEncoder(nn.Module):
    """Returns the latent distribution's parameters (mean and log-variance, stacked on channels)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image):
        moments = self.vae.encoder(image)
        if getattr(self.vae, "quant_conv", None) is not None:
            moments = self.vae.quant_conv(moments)
        return moments


@dataclass
class _Graph:
    name: str                      # file stem, e.g. "unet"
    module: nn.Module
    make_inputs: Callable[[int, int, int, int], tuple]   # (seed, batch, height, width) -> torch inputs
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    export_shape: tuple[int, int, int]    # batch, height, width of the trace sample
    check_shape: tuple[int, int, int]     # a different shape for the parity check
    seamless_target: nn.Module | None = None   # module whose convs take circular padding
    tiles: Sequence[str] = ("none",)
    fp32: bool = False             # keep fp32 even in an fp16 package (e.g. the SDXL VAE)
    weights: str | None = None     # the weights file stem it shares (default: its own name)
    files: dict[str, str] = field(default_factory=dict)   # tile -> graph file
    parity: dict[str, dict] = field(default_factory=dict)  # graph file -> the parity check's numbers


def _detect(pipe, source: str, distillation: str | None) -> tuple[str, str]:
    family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
    if distillation is None:
        if pipe.unet.config.get("time_cond_proj_dim") or type(pipe.scheduler).__name__ == "LCMScheduler":
            distillation = "lcm"
        elif "turbo" in source.lower():
            distillation = "turbo"
        else:
            distillation = "none"
    return family, distillation


def _recommended(family: str, distillation: str, timestep_cond: bool) -> dict:
    if distillation == "turbo":
        return {"steps": 1, "guidance": 0.0}
    if distillation == "lcm":
        return {"steps": 4, "guidance": 8.0 if timestep_cond else 1.0}
    return {"steps": 25, "guidance": 5.0 if family == "sdxl" else 7.5}


def _scheduler_config(scheduler, distillation: str) -> dict:
    """The source scheduler's config, with the record of which values diffusers filled in itself
    (``_use_default_values``): a swap to another scheduler must give those keys the target's defaults, as
    ``TargetClass.from_config`` does (SD 2.1's DDIM config leaves timestep_spacing out: DDIM's "leading", but
    Euler's "linspace")."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    defaulted = set(scheduler.config.get("_use_default_values") or ())
    if distillation == "turbo":
        config["timestep_spacing"] = "trailing"  # one-step turbo sampling starts at t=999, whatever the class
        defaulted.discard("timestep_spacing")
    if defaulted & set(config):
        config["_use_default_values"] = sorted(defaulted & set(config))
    config["_class_name"] = type(scheduler).__name__
    return config


def _default_scheduler(config: dict, distillation: str, log: Callable[[str], None]) -> str:
    """What the model runs with when a request names none: its own scheduler, as diffusers' pipeline does
    (LCM-distilled UNets need LCM steps whatever config they were saved with)."""
    if distillation == "lcm":
        return "lcm"
    own = scheduler_for_class(config["_class_name"], config)
    if own is None:
        log(f"  the model's own scheduler, {config['_class_name']}, has no port in the runtime: it runs with "
            "euler unless a request names another")
        return "euler"
    return own


def _vae_latent_stats(family: str, vae_cfg) -> dict:
    """How latents map to the VAE's space, as the family's diffusers pipeline reads the VAE config: SDXL
    pipelines use per-channel ``latents_mean`` / ``latents_std`` when the config has both (Playground-style
    VAEs); the SD and SDXL pipelines ignore ``shift_factor`` (a flow-model VAE key), so it is 0 here."""
    stats = {"vae_shift_factor": 0.0, "vae_latents_mean": None, "vae_latents_std": None}
    mean, std = vae_cfg.get("latents_mean"), vae_cfg.get("latents_std")
    if family == "sdxl" and mean is not None and std is not None:
        stats.update(vae_latents_mean=[float(v) for v in mean], vae_latents_std=[float(v) for v in std])
    return stats


OPTIMIZE_TARGETS = ("none", "cpu", "gpu")


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``recommended`` overrides the manifest's recommended settings (steps, guidance,
    scheduler, tile) for a model whose author knows better than the family defaults."""

    model_id: str | None = None
    fp16: bool = False
    distillation: str | None = None
    seamless: bool = True       # also export the tile_both / tile_x variants (they share the weights)
    optimize: str = "none"      # onnxruntime transformer-optimizer fusions for the CPU or the (CUDA) GPU
    recommended: dict | None = None
    memory_profile: bool = True  # measure each graph's working memory (the runtime refuses what cannot fit)

    def __post_init__(self) -> None:
        if self.optimize not in OPTIMIZE_TARGETS:
            raise ExportError(f"optimize must be one of {', '.join(OPTIMIZE_TARGETS)}, got {self.optimize!r}",
                              "optimize")


def export_pipeline(source, out_dir: str | Path, *, overwrite: bool = False, log: Callable[[str], None] = print,
                    config: str | None = None, family: str | None = None, loras: Sequence = (),
                    embeddings: Sequence = (), controlnets: Sequence[str] = (), control_inputs: bool = False,
                    **options) -> Path:
    """Export ``source`` (a diffusers folder, a hub id, a single-file ``.safetensors`` / ``.ckpt`` checkpoint,
    or a loaded DiffusionPipeline) to a verified model package in ``out_dir``. ``config`` and ``family`` steer
    single-file conversion (docs/use-your-own-models.md); ``loras`` ("FILE[:WEIGHT]") are fused and
    ``embeddings`` ("FILE[:TOKEN]") added before export. ``controlnets`` ("ID_OR_PATH[=NAME]") are exported
    beside the model, with the UNet's residual-input variant; ``control_inputs`` adds that variant alone, so
    controlnets can be added later (``add_controlnet``). ``options`` are the fields of :class:`ExportOptions`."""
    from diffusers import DiffusionPipeline

    from .adapters import add_embeddings, fuse_loras
    from .single_file import load_source

    opts = ExportOptions(**options)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)", "out_dir")
    if isinstance(source, DiffusionPipeline):
        if config is not None or family is not None:
            raise ExportError("config and family apply to single-file checkpoints, not a loaded pipeline", "config")
        pipe, source, source_file = source, opts.model_id or getattr(source, "name_or_path", None) or "pipeline", None
    else:
        loaded = load_source(str(source), config=config, family=family, log=log)
        pipe, source, source_file = loaded.pipe, loaded.name, loaded.source_file
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
        raise ExportError(f"{source} is not a UNet text-to-image pipeline ({type(pipe).__name__})", "source")
    provenance = {"source_file": source_file, "loras": fuse_loras(pipe, loras, log),
                  "embeddings": add_embeddings(pipe, embeddings, log)}
    if opts.distillation is None and any("lcm" in lora["name"].lower() for lora in provenance["loras"]):
        log("an LCM-LoRA is fused: exporting as LCM-distilled (override with --distillation)")
        opts = dataclasses.replace(opts, distillation="lcm")
    family, distillation = _detect(pipe, source, opts.distillation)
    for part in ("text_encoder", "text_encoder_2", "unet", "vae"):
        if getattr(pipe, part, None) is not None:
            getattr(pipe, part).eval()
    control = _load_controlnets(pipe, controlnets, opts.model_id or _default_model_id(source), log)
    if control_inputs or control:
        provenance["control"] = control

    with staged(out_dir) as staging:
        opts = dataclasses.replace(opts, model_id=opts.model_id or _default_model_id(source))
        manifest = _export_into(pipe, source, staging, family, distillation, opts, log, provenance)
    log(f"wrote {out_dir} ({manifest['model_id']}, package {manifest['package_hash'][:12]})")
    return out_dir


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir``, renamed into place when the block completes and removed on any
    error: a package is there whole or not at all."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _default_model_id(source: str) -> str:
    path = Path(source.rstrip("/"))
    if path.is_file():  # a single-file checkpoint: its name without the suffix
        return path.stem
    return path.name if path.exists() else source


def _load_controlnets(pipe, specs: Sequence[str], model_label: str, log: Callable[[str], None]) -> list:
    """(source, name, model) for each ``ID_OR_PATH[=NAME]``, each checked against the UNet before any export."""
    from . import controlnet as cn

    out, names = [], set()
    for spec in specs:
        source, name = cn.parse_spec(spec)
        if name in names:
            raise ExportError(f"two controlnets are named {name}: give one another name (ID_OR_PATH=NAME)", "name")
        names.add(name)
        log(f"loading controlnet {source} as {name!r}")
        model = cn.load_controlnet(source)
        cn.check_fits(cn.signature(model), source, cn.signature(pipe.unet), model_label)
        out.append((source, name, model))
    return out


def _export_into(pipe, source: str, root: Path, family: str, distillation: str, opts: ExportOptions,
                 log: Callable[[str], None], provenance: dict | None = None) -> dict:
    provenance = dict(provenance or {})
    control = provenance.pop("control", None)  # None: no residual-input UNet; else [(source, name, model)]
    fp16 = opts.fp16
    tiles = TILE_GRAPHS if opts.seamless else ("none",)
    unet_cfg, vae_cfg = pipe.unet.config, pipe.vae.config
    vae_factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
    latent_multiple = 2 ** (len(unet_cfg.block_out_channels) - 1)
    latent_channels = int(vae_cfg.latent_channels)
    # 9 for inpainting UNets (latents, mask, masked-image latents), 5 for SD 2 depth (latents, depth)
    unet_channels = int(unet_cfg.in_channels)
    timestep_cond = bool(unet_cfg.get("time_cond_proj_dim"))
    text_time = unet_cfg.get("addition_embed_type") == "text_time"

    graphs: list[_Graph] = []
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    encoder_specs = []
    for i, (encoder, tokenizer) in enumerate(zip(encoders, tokenizers)):
        suffix = "" if i == 0 else f"_{i + 1}"
        pooled = family == "sdxl" and i == 1
        length = min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))
        vocab = int(encoder.config.vocab_size)

        def ids(seed, batch, _h, _w, length=length, vocab=vocab):
            g = torch.Generator().manual_seed(seed)
            return (torch.randint(0, vocab, (batch, length), generator=g),)

        graphs.append(_Graph(
            f"text_encoder{suffix}", _TextEncoder(encoder, penultimate=family == "sdxl", pooled=pooled), ids,
            ["input_ids"], ["hidden_states"] + (["pooled"] if pooled else []),
            {"input_ids": {0: "batch"}, "hidden_states": {0: "batch"}, **({"pooled": {0: "batch"}} if pooled else {})},
            (1, 0, 0), (3, 0, 0)))
        tok_dir = root / f"tokenizer{suffix}"
        tok_dir.mkdir()
        tokenizer.backend_tokenizer.save(str(tok_dir / "tokenizer.json"))
        encoder_specs.append({
            "graph": f"text_encoder{suffix}.onnx", "tokenizer": f"tokenizer{suffix}/tokenizer.json",
            "max_length": length, "pad_token_id": int(tokenizer.pad_token_id),
            "hidden_size": int(encoder.config.hidden_size), "pooled": pooled,
        })
        if expansions := token_expansions(tokenizer):  # multi-vector embeddings (absent otherwise)
            encoder_specs[-1]["token_expansions"] = expansions

    context_dim = sum(spec["hidden_size"] for spec in encoder_specs)
    text_length = encoder_specs[0]["max_length"]  # the graph's sequence axis is fixed: trace the real one
    pooled_dim = int(pipe.text_encoder_2.config.projection_dim) if family == "sdxl" else 0
    cond_dim = int(unet_cfg.get("time_cond_proj_dim") or 0)

    def unet_inputs(seed, batch, h, w):
        g = torch.Generator().manual_seed(seed)
        args = [torch.randn(batch, unet_channels, h, w, generator=g),
                torch.rand(batch, generator=g) * 999,
                torch.randn(batch, text_length, context_dim, generator=g)]
        if text_time:
            args += [torch.randn(batch, pooled_dim, generator=g),
                     torch.tensor([[h * vae_factor, w * vae_factor, 0, 0, h * vae_factor, w * vae_factor]] * batch,
                                  dtype=torch.float32)]
        if timestep_cond:
            args.append(torch.randn(batch, cond_dim, generator=g))
        return tuple(args)

    unet_names = ["sample", "timestep", "encoder_hidden_states"]
    unet_names += ["text_embeds", "time_ids"] if text_time else []
    unet_names += ["timestep_cond"] if timestep_cond else []
    unet_axes = {name: {0: "batch"} for name in unet_names}
    unet_axes["sample"] = {0: "batch", 2: "height", 3: "width"}
    unet_axes["out_sample"] = {0: "batch", 2: "height", 3: "width"}
    m = latent_multiple
    unet_graph = _UNet(pipe.unet, text_time, timestep_cond)
    graphs.append(_Graph("unet", unet_graph, unet_inputs, unet_names, ["out_sample"], unet_axes, (2, 2 * m, 2 * m),
                         (3, 3 * m, 4 * m), seamless_target=pipe.unet, tiles=tiles))
    control_specs = []
    if control is not None:
        from . import controlnet as cn

        dims = cn.GraphDims(unet_channels, text_length, context_dim, pooled_dim, cond_dim, text_time, vae_factor, m)
        control_unet, layout = cn.unet_control_graph(_Graph, unet_graph, pipe.unet, dims, tiles)
        graphs.append(control_unet)
        for cn_source, cn_name, model in control:
            graph, spec = cn.controlnet_graph(_Graph, cn_name, model, dims, tiles)
            graphs.append(graph)
            control_specs.append((cn_name, cn_source, graph, spec, cn.signature(model)))

    def latents(seed, batch, h, w):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, vae_cfg.latent_channels, h, w, generator=g),)

    def images(seed, batch, h, w):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(batch, 3, h * vae_factor, w * vae_factor, generator=g) * 2 - 1,)

    image_axes = {0: "batch", 2: "height", 3: "width"}
    keep_vae_fp32 = family == "sdxl"  # the SDXL VAE overflows in fp16 (NaN / black images)
    graphs.append(_Graph("vae_decoder", _VaeDecoder(pipe.vae), latents, ["latent"], ["sample"],
                         {"latent": image_axes, "sample": image_axes}, (1, 2 * m, 2 * m), (2, 3 * m, 4 * m),
                         seamless_target=pipe.vae, tiles=tiles, fp32=keep_vae_fp32))
    graphs.append(_Graph("vae_encoder", _VaeEncoder(pipe.vae), images, ["image"], ["latent_parameters"],
                         {"image": image_axes, "latent_parameters": image_axes}, (1, 2 * m, 2 * m),
                         (2, 3 * m, 4 * m), seamless_target=pipe.vae, tiles=tiles, fp32=keep_vae_fp32))

    by_name = {graph.name: graph for graph in graphs}
    export_graphs(graphs, root, fp16, opts.optimize, log)

    scheduler_config = _scheduler_config(pipe.scheduler, distillation)
    sample_size = unet_cfg.sample_size
    sample_size = sample_size if isinstance(sample_size, (list, tuple)) else (sample_size, sample_size)
    recommended = {**_recommended(family, distillation, timestep_cond),
                   "scheduler": _default_scheduler(scheduler_config, distillation, log), **(opts.recommended or {})}
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_id": opts.model_id, "source": source,
        "family": family, "distillation": distillation,
        "precision": "fp16" if fp16 else "fp32",
        "precision_overrides": {"vae_decoder": "fp32", "vae_encoder": "fp32"} if fp16 and keep_vae_fp32 else {},
        "optimization": opts.optimize, "opset": OPSET, "latent_channels": int(latent_channels),
        "vae_scale_factor": vae_factor,
        "vae_scaling_factor": float(vae_cfg.scaling_factor),
        **_vae_latent_stats(family, vae_cfg),
        "size_multiple": vae_factor * latent_multiple,
        "native_size": [int(sample_size[0]) * vae_factor, int(sample_size[1]) * vae_factor],
        "prediction_type": scheduler_config.get("prediction_type", "epsilon"),
        "scheduler": {"default": recommended.pop("scheduler"), "config": scheduler_config},
        "recommended": recommended,
        "force_zeros_for_empty_prompt": bool(pipe.config.get("force_zeros_for_empty_prompt", False)),
        "text_encoders": encoder_specs,
        "unet": {"graphs": by_name["unet"].files, "in_channels": unet_channels, "text_time": text_time,
                 "conditioning": {latent_channels + 1: "depth",
                                  latent_channels + 5: "inpaint"}.get(unet_channels, "none"),
                 "pooled_dim": pooled_dim, "timestep_cond_dim": cond_dim},
        "vae_decoder": {"graphs": by_name["vae_decoder"].files},
        "vae_encoder": {"graphs": by_name["vae_encoder"].files},
        "parity": {name: numbers for graph in graphs for name, numbers in graph.parity.items()},
        **provenance,
    }
    if control is not None:
        from . import controlnet as cn

        manifest["unet"]["control"] = {"graphs": by_name["unet.control"].files, "residuals": layout,
                                       "signature": cn.signature(pipe.unet)}
        manifest["controlnets"] = {name: cn.controlnet_entry(name, src, graph, spec, sig)
                                   for name, src, graph, spec, sig in control_specs}
    if opts.memory_profile:
        manifest["memory"] = profile_package(root, manifest, log)
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest["files"] = files
    manifest["package_hash"] = package_hash(files)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def export_graphs(graphs: Sequence[_Graph], root: Path, fp16: bool, optimize: str, log: Callable[[str], None],
                  known: dict[str, tuple[str, int, int]] | None = None) -> None:
    """Export each graph's variants into ``root``; graphs naming the same ``weights`` stem share one file.
    Tensors in ``known`` (:func:`index_weights` of a graph already in the package) are pointed to, not written."""
    weights: dict[str, _SharedWeights] = {}
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as files:
        for graph in graphs:
            stem = graph.weights or graph.name
            if stem not in weights:
                weights[stem] = _SharedWeights(files.enter_context(open(root / f"{stem}.weights", "wb")), known)
            for tile in graph.tiles:
                _export_variant(graph, tile, weights[stem], root, Path(scratch), fp16 and not graph.fp32, optimize,
                                log)


def _export_variant(graph: _Graph, tile: str, weights: _SharedWeights, root: Path, scratch: Path, fp16: bool,
                    optimize: str, log: Callable[[str], None]) -> None:
    file_name = graph.name + ("" if tile == "none" else f".tile_{tile}") + ".onnx"
    log(f"exporting {file_name}")
    target = graph.seamless_target if graph.seamless_target is not None else graph.module
    with seamless(target, tile), torch.no_grad():
        traced = scratch / file_name
        b, h, w = graph.export_shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph.module, graph.make_inputs(0, b, h, w), str(traced), dynamo=False,
                              opset_version=OPSET, input_names=graph.input_names,
                              output_names=graph.output_names, dynamic_axes=graph.dynamic_axes,
                              do_constant_folding=True)
        model = onnx.load(str(traced))
        if optimize != "none":
            model = optimize_graph(model, graph.name, optimize, log)
        if fp16:
            from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

            model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                             op_block_list=DEFAULT_OP_BLOCK_LIST)
            _restore_fp32_resize_scales(model.graph)
        weights.save(model, root / file_name)
        graph.files[tile] = file_name
        graph.parity[file_name] = _check_parity(graph, root / file_name, fp16, optimize)
    log(f"  parity {file_name}: max |onnx - torch| = {graph.parity[file_name]['max_abs_error']:.2e} "
        f"(limit {graph.parity[file_name]['limit']:.2e}, {graph.parity[file_name]['provider']})")


_MODEL_TYPES = {"unet": "unet", "unet.control": "unet", "vae_decoder": "vae", "vae_encoder": "vae",
                "text_encoder": "clip", "text_encoder_2": "clip"}
# Fusions whose contrib ops have CUDA kernels only (onnxruntime 1.2x); a CPU-optimised graph leaves them out.
_GPU_ONLY_FUSIONS = ("enable_group_norm", "enable_skip_group_norm", "enable_nhwc_conv", "enable_bias_splitgelu",
                     "enable_bias_add", "enable_packed_qkv", "enable_packed_kv")


def optimize_graph(model: onnx.ModelProto, name: str, target: str, log: Callable[[str], None]) -> onnx.ModelProto:
    """onnxruntime's transformer-optimizer fusions (attention, LayerNorm, GELU, GroupNorm, ...) for one graph,
    as its stable-diffusion ``optimize_pipeline`` applies them, restricted to CPU kernels when ``target`` is
    "cpu"."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = _MODEL_TYPES.get(name) or ("unet" if name.startswith("controlnet.") else None)
    if model_type is None:
        return model
    options = FusionOptions(model_type)
    if target == "cpu":
        for flag in _GPU_ONLY_FUSIONS:
            setattr(options, flag, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(model, model_type=model_type, num_heads=0, hidden_size=0, opt_level=0,
                                   optimization_options=options, use_gpu=target == "gpu")
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    log(f"  {name}: fused {fused or 'nothing'}")
    return optimized.model


def _restore_fp32_resize_scales(graph: onnx.GraphProto) -> None:
    """Resize takes roi and scales in fp32 only; the fp16 converter turns their constants to fp16."""
    producers = {out: node for node in graph.node if node.op_type == "Constant" for out in node.output}
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        for name in node.input[1:3]:
            constant = producers.get(name)
            if constant is None:
                continue
            for attr in constant.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT16:
                    value = onnx.numpy_helper.to_array(attr.t).astype(np.float32)
                    attr.t.CopyFrom(onnx.numpy_helper.from_array(value, attr.t.name))


class _SharedWeights:
    """One external-data file for several graphs: identical tensors are stored once (by content hash).
    ``known`` (sha256 -> (file, offset, length), from :func:`index_weights`) are tensors already stored in
    another file of the package, pointed to rather than written again."""

    def __init__(self, file: BinaryIO, known: dict[str, tuple[str, int, int]] | None = None) -> None:
        self.name = Path(file.name).name
        self._file = file
        self._offsets: dict[str, tuple[str, int, int]] = dict(known or {})

    def save(self, model: onnx.ModelProto, graph_path: Path) -> None:
        for tensor in _initializers(model.graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise ExportError(f"{graph_path.name}: tensor {tensor.name} was not loaded", "weights")
            if not tensor.HasField("raw_data"):
                array = onnx.numpy_helper.to_array(tensor)
                if array.nbytes < _INLINE_LIMIT:
                    continue
                tensor.raw_data = array.tobytes()
                for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(name)
            data = tensor.raw_data
            if len(data) < _INLINE_LIMIT:
                continue
            digest = hashlib.sha256(data).hexdigest()
            location, offset, length = self._offsets.get(digest, (self.name, None, len(data)))
            if offset is None:
                offset = -self._file.tell() % _ALIGN + self._file.tell()
                self._file.seek(offset)
                self._file.write(data)
                self._offsets[digest] = (location, offset, length)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        self._file.flush()
        onnx.save(model, str(graph_path))


def index_weights(graph_path: Path) -> dict[str, tuple[str, int, int]]:
    """sha256 -> (weights file, offset, length) of every external tensor ``graph_path`` points to."""
    model = onnx.load(str(graph_path), load_external_data=False)
    index: dict[str, tuple[str, int, int]] = {}
    handles: dict[str, BinaryIO] = {}
    try:
        for tensor in _initializers(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            location, offset, length = info["location"], int(info.get("offset", 0)), int(info["length"])
            if location not in handles:
                handles[location] = open(graph_path.parent / location, "rb")  # noqa: SIM115 (closed below)
            handles[location].seek(offset)
            index[hashlib.sha256(handles[location].read(length)).hexdigest()] = (location, offset, length)
    finally:
        for handle in handles.values():
            handle.close()
    return index


def _initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _initializers(attr.g)


def _check_parity(graph: _Graph, path: Path, fp16: bool, optimize: str = "none") -> dict:
    """onnxruntime against torch on fresh random inputs at a shape other than the export sample, on the CPU,
    or on CUDA for GPU-optimised graphs (their fused kernels exist only there)."""
    import onnxruntime as ort

    b, h, w = graph.check_shape
    inputs = graph.make_inputs(1234, b, h, w)
    expected = graph.module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        provider = "CUDAExecutionProvider" if optimize == "gpu" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise ExportError("GPU-optimised graphs are verified on CUDA: install onnxruntime-gpu and run the "
                              "export on an NVIDIA GPU, or export with --optimize cpu / none", "optimize")
        session = ort.InferenceSession(str(path), options, providers=[provider])
        feeds = {name: t.numpy() for name, t in zip(graph.input_names, inputs)}
        actual = session.run(graph.output_names, feeds)
    except Exception as exc:
        raise ExportError(f"{path.name} does not run in onnxruntime: {exc}", path.name) from None
    atol, rtol = (3e-2, 3e-2) if fp16 else (1e-4, 1e-3)
    worst = {"max_abs_error": 0.0, "limit": 0.0, "provider": provider, "shape": list(graph.check_shape)}
    for name, ref, got in zip(graph.output_names, expected, actual):
        ref = ref.detach().numpy()
        err = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        limit = atol + rtol * float(np.max(np.abs(ref)))
        if got.shape != ref.shape or not err <= limit:
            raise ExportError(
                f"parity check failed for {path.name} output {name}: max |onnx - torch| = {err:.3g} "
                f"(limit {limit:.3g}) at shape {tuple(ref.shape)}; the package was not written", path.name)
        if err >= worst["max_abs_error"]:
            worst.update(max_abs_error=err, limit=limit)
    return worst
