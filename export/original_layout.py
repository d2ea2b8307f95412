"""A diffusers pipeline written as one checkpoint file in the original trainers' key layout.

Artists' checkpoints come from the original trainers: CompVis / Stability's ``ldm`` (SD 1.x, 2.x) and ``sgm``
(SDXL), written by Automatic1111, ComfyUI and kohya's scripts in the same layout. No such file can be
downloaded here, so the tests build tiny pipelines from configs and write them with this module, which is
the reverse of diffusers' single-file conversion (``diffusers.loaders.single_file_utils``): UNet under
``model.diffusion_model.`` (``input_blocks`` / ``middle_block`` / ``output_blocks``), VAE under
``first_stage_model.`` (``down.N.block`` / ``mid.block_1``, 1x1-conv attention), the CLIP text encoder under
``cond_stage_model.transformer.`` (SD 1.x) or the OpenCLIP one under ``cond_stage_model.model.`` with fused
``in_proj`` attention (SD 2.x), and SDXL's two under ``conditioner.embedders.0.transformer.`` /
``conditioner.embedders.1.model.``. Every tensor is mapped or the write fails: nothing is dropped silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_module_to_original(name: str, config) -> str:
    """The ldm / sgm name of a diffusers UNet module or tensor (``down_blocks.1.attentions.0.proj_in`` ->
    ``input_blocks.4.1.proj_in``). kohya's SDXL LoRA keys use the same names."""
    per_block = config["layers_per_block"] + 1
    up_has_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    for diffusers, original in _UNET_TOP.items():
        if name == diffusers or name.startswith(diffusers + "."):
            return original + name[len(diffusers):]
    slot = {"resnets": 0, "attentions": 1}
    rules = (  # diffusers block prefix -> ldm block prefix
        (r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)",
         lambda b, kind, i: f"input_blocks.{1 + b * per_block + i}.{slot[kind]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv", lambda b: f"input_blocks.{(b + 1) * per_block}.0.op"),
        (r"mid_block\.(resnets|attentions)\.(\d+)", lambda kind, i: f"middle_block.{2 * i if slot[kind] == 0 else 1}"),
        (r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)",
         lambda b, kind, i: f"output_blocks.{b * per_block + i}.{slot[kind]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv",
         lambda b: f"output_blocks.{b * per_block + per_block - 1}.{2 if up_has_attention[b] else 1}.conv"),
    )
    for pattern, block in rules:
        if m := re.match(pattern + r"(?=\.|$)", name):
            groups = [int(g) if g.isdigit() else g for g in m.groups()]
            rest = name[m.end():]
            if "resnets" in groups:  # ResBlock layers have their own names in ldm
                part, dot, tail = rest[1:].partition(".")
                rest = "." + _UNET_RESNET[part] + dot + tail
            return block(*groups) + rest
    raise KeyError(f"no original-layout name for UNet tensor {name}")


def unet_to_original(state_dict: dict, config) -> dict:
    return {UNET_PREFIX + unet_module_to_original(k, config): v for k, v in state_dict.items()}


def vae_to_original(state_dict: dict, config) -> dict:
    blocks = len(config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        name = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                      lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                      lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample.", name)
        name = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", name)
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", name):
            name = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 2 and m[2] != "group_norm":
                value = value[:, :, None, None]  # ldm's attention projections are 1x1 convolutions
        if "_blocks." in name or "mid_block" in name:
            raise KeyError(f"no original-layout name for VAE tensor {key}")
        out[VAE_PREFIX + name] = value
    return out


def clip_to_original(state_dict: dict, prefix: str) -> dict:
    """transformers' CLIP text model, as ldm / sgm embed it (the transformers layout under a prefix)."""
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in state_dict.items()
            if k != "text_projection.weight"}


def open_clip_to_original(state_dict: dict, prefix: str, unused_layers: int = 0) -> dict:
    """transformers' CLIP text model as OpenCLIP lays it out: fused q/k/v ``in_proj``, ``resblocks``, the
    projection as a matrix applied on the right. ``unused_layers`` appends trailing resblocks the diffusion
    model never reads (SD 2.x takes the penultimate layer of OpenCLIP ViT-H, and its checkpoints keep all 24)."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    width = sd["embeddings.token_embedding.weight"].shape[1]
    out = {prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
           prefix + "ln_final.bias": sd.pop("final_layer_norm.bias")}
    projection = sd.pop("text_projection.weight", None)
    out[prefix + "text_projection"] = (projection.T.contiguous() if projection is not None
                                       else torch.eye(width))
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    generator = torch.Generator().manual_seed(0)
    for i in layers:
        source = f"encoder.layers.{i}."
        layer = {k[len(source):]: sd.pop(k) for k in list(sd) if k.startswith(source)}
        shapes = {k: v.shape for k, v in layer.items()}
        out.update(_open_clip_block(layer, f"{prefix}transformer.resblocks.{i}."))
    for i in range(len(layers), len(layers) + unused_layers):  # random: a converter that read it would show
        layer = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shapes.items()}
        out.update(_open_clip_block(layer, f"{prefix}transformer.resblocks.{i}."))
    leftover = [k for k in sd if k != "embeddings.position_ids"]
    if leftover:
        raise KeyError(f"no OpenCLIP name for {leftover[:5]}")
    return out


def _open_clip_block(layer: dict, block: str) -> dict:
    out = {}
    for kind in ("weight", "bias"):
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([layer.pop(f"self_attn.{p}_proj.{kind}") for p in "qkv"])
        out[f"{block}attn.out_proj.{kind}"] = layer.pop(f"self_attn.out_proj.{kind}")
        out[f"{block}ln_1.{kind}"] = layer.pop(f"layer_norm1.{kind}")
        out[f"{block}ln_2.{kind}"] = layer.pop(f"layer_norm2.{kind}")
        out[f"{block}mlp.c_fc.{kind}"] = layer.pop(f"mlp.fc1.{kind}")
        out[f"{block}mlp.c_proj.{kind}"] = layer.pop(f"mlp.fc2.{kind}")
    if layer:
        raise KeyError(f"no OpenCLIP name for {block}: {sorted(layer)}")
    return out


def pipeline_to_original(pipe) -> dict:
    """The whole pipeline as one original-layout state dict (SD 1.x, SD 2.x, SDXL; inpainting UNets too)."""
    sd2 = pipe.tokenizer.pad_token == "!" and getattr(pipe, "text_encoder_2", None) is None
    out = {**unet_to_original(pipe.unet.state_dict(), pipe.unet.config),
           **vae_to_original(pipe.vae.state_dict(), pipe.vae.config)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.update(clip_to_original(pipe.text_encoder.state_dict(), SDXL_CLIP_PREFIX))
        out.update(open_clip_to_original(pipe.text_encoder_2.state_dict(), SDXL_OPEN_CLIP_PREFIX))
    elif sd2:
        out.update(open_clip_to_original(pipe.text_encoder.state_dict(), SD2_OPEN_CLIP_PREFIX, unused_layers=1))
    else:
        out.update(clip_to_original(pipe.text_encoder.state_dict(), SD1_CLIP_PREFIX))
    return {k: v.detach().contiguous() for k, v in out.items()}


def save_single_file(source, path: str | Path, extra: dict | None = None) -> Path:
    """Write a diffusers pipeline (or its folder) as ``path``: ``.safetensors``, or ``.ckpt`` the way Lightning
    saved SD checkpoints (``{"state_dict": ..., "global_step": ...}``). ``extra`` adds tensors (e.g. ComfyUI's
    ``v_pred`` marker)."""
    from diffusers import DiffusionPipeline

    pipe = source if isinstance(source, DiffusionPipeline) else DiffusionPipeline.from_pretrained(source)
    state_dict = {**pipeline_to_original(pipe), **(extra or {})}
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state_dict, "global_step": 1000}, path)
    return path
