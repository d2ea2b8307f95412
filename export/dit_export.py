"""Transformer (DiT) families -> model package: SD 3 / 3.5 (MMDiT) and FLUX.1.

The denoiser graph takes the same inputs as a UNet's (``sample`` NCHW latents, ``timestep`` in 0..1000,
``encoder_hidden_states``) plus ``pooled_projections`` and, for guidance-distilled FLUX.1 dev, ``guidance``. FLUX's
2x2 latent packing, its image / text position ids and the /1000 of its timestep live inside the graph, so the
runtime's loop, scheduler step and latent tiling see plain NCHW latents for every family. The transformer has
no padding to make circular, so its three tile entries name one graph: the runtime makes DiTs tile in latent
space (aigc_bridge/engine/families.py); the VAE decoder gets circular variants as for UNets.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

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

from .errors import ExportError
from .memory_profile import profile_package

# Family defaults where the model card recommends them (diffusers' model cards / BFL's reference code).
RECOMMENDED = {
    ("sd3", "none"): {"steps": 28, "guidance": 5.0},    # SD 3 medium 28 / 7.0, SD 3.5 medium 40 / 4.5, large 28 / 3.5
    ("sd3", "turbo"): {"steps": 4, "guidance": 0.0},    # SD 3.5 large turbo
    ("flux", "none"): {"steps": 28, "guidance": 3.5},   # FLUX.1 dev (embedded guidance)
    ("flux", "turbo"): {"steps": 4, "guidance": 0.0},   # FLUX.1 schnell (timestep-distilled, no guidance)
}
T5_LENGTH = {"sd3": 256, "flux": 512}  # diffusers' max_sequence_length defaults (schnell is trained with 256)


class _SD3Denoiser(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections):
        return self.transformer(hidden_states=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                                pooled_projections=pooled_projections, return_dict=False)[0]


class _FluxDenoiser(nn.Module):
    """NCHW latents in and out: packs 2x2 patches into tokens, builds the position ids, unpacks the result."""

    def __init__(self, transformer: nn.Module, guidance: bool) -> None:
        super().__init__()
        self.transformer, self.guidance = transformer, guidance

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections, guidance=None):
        b, c, h, w = sample.shape
        tokens = sample.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(b, (h // 2) * (w // 2), c * 4)
        # int64 ranges, cast: a float Range would be turned fp16 by the fp16 converter, which Range does not take
        rows = torch.arange(h // 2)[:, None].expand(h // 2, w // 2).to(torch.float32)
        cols = torch.arange(w // 2)[None, :].expand(h // 2, w // 2).to(torch.float32)
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
        txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3, dtype=torch.float32)
        out = self.transformer(hidden_states=tokens, timestep=timestep / 1000, guidance=guidance,
                               pooled_projections=pooled_projections, encoder_hidden_states=encoder_hidden_states,
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@contextlib.contextmanager
def _exportable(module: nn.Module) -> Iterator[None]:
    """Two things the TorchScript exporter gets wrong in FLUX, replaced while exporting by the same arithmetic:
    torch.nn.RMSNorm (its q/k norms) has no opset-17 lowering, so each computes x * rsqrt(mean(x^2) + eps) *
    weight from primitive ops; ``Tensor.unflatten`` is lowered with static sizes, so it becomes a reshape."""
    patched = []

    def manual(norm: nn.RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps

        def forward(x: torch.Tensor) -> torch.Tensor:
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            return y * norm.weight if norm.weight is not None else y

        return forward

    original_unflatten = torch.Tensor.unflatten

    def unflatten(x: torch.Tensor, dim: int, sizes) -> torch.Tensor:
        # the exporter lowers unflatten with the trace's static sizes, which freezes batch and sequence length
        dim = dim % x.dim()
        return x.reshape(*x.shape[:dim], *sizes, *x.shape[dim + 1:])

    try:
        for norm in module.modules():
            if isinstance(norm, nn.RMSNorm):
                norm.forward = manual(norm)
                patched.append(norm)
        torch.Tensor.unflatten = unflatten
        yield
    finally:
        torch.Tensor.unflatten = original_unflatten
        for norm in patched:
            norm.__dict__.pop("forward", None)


def dit_family(pipe) -> str | None:
    """"sd3" / "flux" for the transformer pipelines we export, None for anything else."""
    name = type(getattr(pipe, "transformer", None)).__name__
    return {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}.get(name)


def _distillation(family: str, pipe, source: str, given: str | None) -> str:
    if given is not None:
        return given
    if family == "flux":
        return "none" if pipe.transformer.config.guidance_embeds else "turbo"  # schnell: no guidance embedding
    return "turbo" if "turbo" in source.lower() else "none"


def export_dit(pipe, source: str, root: Path, opts, log: Callable[[str], None], provenance: dict) -> dict:
    """Write a DiT package into ``root`` (the staging folder); returns the manifest."""
    from .onnx_export import OPSET, _Graph, _TextEncoder, _VaeDecoder, _VaeEncoder, export_graphs

    family = dit_family(pipe)
    distillation = _distillation(family, pipe, source, opts.distillation)
    tcfg, vae_cfg = pipe.transformer.config, pipe.vae.config
    patch = int(tcfg.patch_size) if family == "sd3" else 2  # FLUX packs 2x2 latent pixels per token
    vae_factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
    channels = int(tcfg.in_channels) if family == "sd3" else int(tcfg.in_channels) // 4
    t5_length = opts.t5_max_length or T5_LENGTH[family]
    tiles = TILE_GRAPHS if opts.seamless else ("none",)

    if family == "sd3":
        parts = [("text_encoder", "tokenizer", "clip_l", True, True),
                 ("text_encoder_2", "tokenizer_2", "clip_g", True, True),
                 ("text_encoder_3", "tokenizer_3", "t5", False, False)]
    else:
        parts = [("text_encoder", "tokenizer", "clip_l", False, True),
                 ("text_encoder_2", "tokenizer_2", "t5", False, False)]
    graphs, specs = [], []
    for attr, tok_attr, role, penultimate, pooled in parts:
        encoder, tokenizer = getattr(pipe, attr, None), getattr(pipe, tok_attr, None)
        if role == "t5" and family == "sd3" and (encoder is None or not opts.t5):
            log("  no T5 encoder" + (" in the source" if encoder is None else " (--no-t5)") + ": the package runs "
                "SD 3 without it (zeros for its tokens, as diffusers does)")
            continue
        if encoder is None:
            raise ExportError(f"{source} has no {attr}", attr)
        encoder.eval()
        t5 = role == "t5"
        length = t5_length if t5 else min(int(tokenizer.model_max_length),
                                          int(encoder.config.max_position_embeddings))
        vocab = int(encoder.config.vocab_size)

        def ids(seed, batch, _h, _w, length=length, vocab=vocab):
            g = torch.Generator().manual_seed(seed)
            return (torch.randint(0, vocab, (batch, length), generator=g),)

        outputs = ["hidden_states"] + (["pooled"] if pooled else [])
        # T5's feed-forward outputs overflow fp16 (transformers keeps its "wo" layers fp32 for that reason); keeping
        # only those fp32 trips onnxruntime's fp16 converter (MatMul type mismatch), so all of T5 stays fp32
        graphs.append(_Graph(attr, _TextEncoder(encoder, penultimate=penultimate, pooled=pooled), ids, ["input_ids"],
                             outputs, {name: {0: "batch"} for name in ["input_ids", *outputs]}, (1, 0, 0), (3, 0, 0),
                             fp32=t5))
        tok_dir = root / tok_attr
        tok_dir.mkdir()
        tokenizer.backend_tokenizer.save(str(tok_dir / "tokenizer.json"))
        hidden = int(encoder.config.d_model if t5 else encoder.config.hidden_size)
        specs.append({"graph": f"{attr}.onnx", "tokenizer": f"{tok_attr}/tokenizer.json", "max_length": int(length),
                      "pad_token_id": int(tokenizer.pad_token_id), "hidden_size": hidden, "pooled": pooled,
                      "role": role, "optional": t5 and family == "sd3"})

    joint_dim = int(tcfg.joint_attention_dim)
    pooled_dim = int(tcfg.pooled_projection_dim)
    guidance_embeds = family == "flux" and bool(tcfg.guidance_embeds)
    text_tokens = (specs[0]["max_length"] + t5_length) if family == "sd3" else t5_length

    def denoiser_inputs(seed, batch, h, w):
        g = torch.Generator().manual_seed(seed)
        args = [torch.randn(batch, channels, h, w, generator=g), torch.rand(batch, generator=g) * 999,
                torch.randn(batch, text_tokens, joint_dim, generator=g), torch.randn(batch, pooled_dim, generator=g)]
        if guidance_embeds:
            args.append(torch.rand(batch, generator=g) * 5)
        return tuple(args)

    names = ["sample", "timestep", "encoder_hidden_states", "pooled_projections"]
    names += ["guidance"] if guidance_embeds else []
    axes = {name: {0: "batch"} for name in names}
    axes["sample"] = axes["out_sample"] = {0: "batch", 2: "height", 3: "width"}
    module = _SD3Denoiser(pipe.transformer) if family == "sd3" else _FluxDenoiser(pipe.transformer, guidance_embeds)
    pipe.transformer.eval()
    p = patch
    graphs.append(_Graph("transformer", module, denoiser_inputs, names, ["out_sample"], axes, (1, 4 * p, 4 * p),
                         (2, 3 * p, 5 * p)))

    def latents(seed, batch, h, w):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, vae_cfg.latent_channels, h, w, generator=g),)

    def images(seed, batch, h, w):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(batch, 3, h * vae_factor, w * vae_factor, generator=g) * 2 - 1,)

    pipe.vae.eval()
    image_axes = {0: "batch", 2: "height", 3: "width"}
    graphs.append(_Graph("vae_decoder", _VaeDecoder(pipe.vae), latents, ["latent"], ["sample"],
                         {"latent": image_axes, "sample": image_axes}, (1, 4, 4), (2, 6, 8),
                         seamless_target=pipe.vae, tiles=tiles))
    graphs.append(_Graph("vae_encoder", _VaeEncoder(pipe.vae), images, ["image"], ["latent_parameters"],
                         {"image": image_axes, "latent_parameters": image_axes}, (1, 4, 4), (2, 6, 8)))
    with _exportable(pipe.transformer):
        export_graphs(graphs, root, opts.fp16, opts.optimize, log)
    by_name = {graph.name: graph for graph in graphs}
    transformer_file = by_name["transformer"].files["none"]

    scheduler_config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    scheduler_config["_class_name"] = type(pipe.scheduler).__name__
    if scheduler_config["_class_name"] != "FlowMatchEulerDiscreteScheduler":
        raise ExportError(f"{source}'s scheduler is {scheduler_config['_class_name']}; the runtime runs DiTs with "
                          "FlowMatchEulerDiscreteScheduler only", "scheduler")
    sample_size = tcfg.sample_size if family == "sd3" else 128  # FluxPipeline's default_sample_size
    native = int(sample_size) * vae_factor
    recommended = {**RECOMMENDED[(family, distillation)], **(opts.recommended or {})}
    guidance_kind = "embedded" if guidance_embeds else ("none" if family == "flux" else "cfg")
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_id": opts.model_id, "source": source,
        "family": family, "denoiser": "mmdit" if family == "sd3" else "flux", "guidance_kind": guidance_kind,
        "distillation": distillation, "precision": "fp16" if opts.fp16 else "fp32",
        "precision_overrides": {g.name: "fp32" for g in graphs if g.fp32} if opts.fp16 else {},
        "optimization": opts.optimize, "opset": OPSET, "latent_channels": channels, "vae_scale_factor": vae_factor,
        "vae_scaling_factor": float(vae_cfg.scaling_factor), "vae_shift_factor": float(vae_cfg.shift_factor or 0.0),
        "vae_latents_mean": None, "vae_latents_std": None,
        "patch_size": patch, "size_multiple": vae_factor * patch, "native_size": [native, native],
        "prediction_type": "flow",
        "scheduler": {"default": "flow_euler", "config": scheduler_config},
        "recommended": recommended, "force_zeros_for_empty_prompt": False,
        "text_encoders": specs,
        "unet": {"graphs": {tile: transformer_file for tile in tiles}, "joint_attention_dim": joint_dim,
                 "pooled_dim": pooled_dim, "text_tokens": text_tokens, "t5_max_length": t5_length,
                 "guidance_embeds": guidance_embeds, "text_time": False, "timestep_cond_dim": 0},
        "vae_decoder": {"graphs": by_name["vae_decoder"].files},
        "vae_encoder": {"graphs": by_name["vae_encoder"].files},
        "parity": {name: numbers for graph in graphs for name, numbers in graph.parity.items()},
        **provenance,
    }
    manifest["memory"] = profile_package(root, manifest, log) if opts.memory_profile else None
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest["files"] = files
    manifest["package_hash"] = package_hash(files)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
