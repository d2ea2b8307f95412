"""Tiny diffusers pipelines built from configs, with random weights and a locally trained tokenizer.

No weights can be downloaded on our machines, so tests, the demo and the benchmarks build these (as
diffusers' own tests do), save them with ``save_pretrained`` and go through the real loading, export and
inference code. The architectures are the real ones (CLIP, UNet2DConditionModel, AutoencoderKL), only small.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch

# A small synthetic prompt corpus: enough words for a byte-level BPE to learn useful merges.
_COLOURS = ["red", "blue", "green", "white", "black", "grey", "brown", "yellow", "orange", "purple"]
_MATERIALS = ["brick wall", "wooden planks", "hexagon tiles", "marble", "grass", "gravel", "fabric",
              "stone floor", "metal plate", "sand", "sky", "clouds", "rust", "moss", "concrete"]
_ADJECTIVES = ["weathered", "small", "large", "old", "clean", "rough", "polished", "mossy", "dark", "bright"]


def prompt_corpus() -> list[str]:
    return [f"{a} {c} {m}" for a, c, m in itertools.product(_ADJECTIVES, _COLOURS, _MATERIALS)]


def train_clip_tokenizer(corpus: Iterable[str], vocab_size: int = 1000, pad_token: str = "<|endoftext|>"):
    """A CLIP-compatible byte-level BPE tokenizer trained on ``corpus``.

    SD 1.x pads with the end token; SD 2.x and SDXL's second tokenizer pad with "!" (pass ``pad_token="!"``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # Reuse CLIP's normaliser and pre-tokeniser so the learned merges fit CLIPTokenizer's pipeline.
    template = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[])
    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    backend.normalizer = template.backend_tokenizer.normalizer
    backend.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(list(corpus), trainer)
    vocab = dict(backend.get_vocab())
    for ch in sorted(alphabet):  # every byte, alone and word-final, so no input is ever unknown
        for piece in (ch, ch + "</w>"):
            vocab.setdefault(piece, len(vocab))
    merges = _merges_of(backend)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def _merges_of(backend) -> list[tuple[str, str]]:
    import json

    merges = json.loads(backend.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def _text_config(vocab_size: int, hidden: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          vocab_size=vocab_size, max_position_embeddings=77, projection_dim=32,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu")


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4,
                         sample_size=64, norm_num_groups=32)


def _scheduler_config() -> dict:
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                timestep_spacing="leading", steps_offset=1, prediction_type="epsilon")


def build_tiny_sd(out_dir: str | Path, seed: int = 0, lcm: bool = False, *, sd2: bool = False,
                  prediction_type: str = "epsilon", inpaint: bool = False) -> Path:
    """A tiny SD 1.x-like pipeline (64x64 images, VAE factor 2), saved with ``save_pretrained``.

    With ``lcm=True`` the UNet takes a guidance embedding (``time_cond_proj_dim``), as LCM-distilled
    models do, and the pipeline is a LatentConsistencyModelPipeline. ``sd2=True`` makes it SD 2.x-like
    (an OpenCLIP-style text encoder whose tokenizer pads with "!", linear attention projections);
    ``inpaint=True`` gives the 9-channel UNet (latents, mask, masked-image latents) of inpainting models.
    """
    from diffusers import (
        EulerDiscreteScheduler,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(prompt_corpus(), pad_token="!" if sd2 else "<|endoftext|>")
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    sd2_attention = {"attention_head_dim": (2, 4), "use_linear_projection": True} if sd2 else {}
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
                                in_channels=9 if inpaint else 4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32, time_cond_proj_dim=32 if lcm else None, **sd2_attention)
    vae = _vae()
    scheduler_config = {**_scheduler_config(), "prediction_type": prediction_type}
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, safety_checker=None,
                 feature_extractor=None, requires_safety_checker=False)
    if lcm:
        pipe = LatentConsistencyModelPipeline(scheduler=LCMScheduler(**scheduler_config), **parts)
    elif inpaint:
        pipe = StableDiffusionInpaintPipeline(scheduler=EulerDiscreteScheduler(**scheduler_config), **parts)
    else:
        pipe = StableDiffusionPipeline(scheduler=EulerDiscreteScheduler(**scheduler_config), **parts)
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0, text_width_2: int = 32, inpaint: bool = False) -> Path:
    """A tiny SDXL-like pipeline: two text encoders (the second with projection and "!" padding),
    pooled embeddings and time ids. ``text_width_2`` other than 32 gives the encoders different widths,
    as in the real model (768 and 1280): single-file conversion tells them apart by width. ``inpaint=True``
    gives the 9-channel UNet of SDXL inpainting, saved as a StableDiffusionXLInpaintPipeline."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    corpus = prompt_corpus()
    tokenizer = train_clip_tokenizer(corpus)
    tokenizer_2 = train_clip_tokenizer(corpus, pad_token="!")
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer_2), hidden=text_width_2))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
                                in_channels=9 if inpaint else 4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=32 + text_width_2,
                                norm_num_groups=32)
    kind = StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline
    pipe = kind(vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler(**_scheduler_config()))
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build_tiny_controlnet(base_dir: str | Path, out_dir: str | Path, seed: int = 0,
                          conditioning_channels: int = 3) -> Path:
    """A ControlNetModel for the tiny pipeline in ``base_dir`` (its UNet's architecture, SD or SDXL), with random
    weights everywhere: diffusers zero-initialises the output convolutions, which would hide every mistake."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(base_dir) / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32),
                                           conditioning_channels=conditioning_channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in controlnet.parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    out = Path(out_dir)
    controlnet.save_pretrained(out)
    return out


def build_tiny_depth(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny SD 2 depth-like pipeline (StableDiffusionDepth2ImgPipeline): a 5-channel UNet (latents + depth),
    SD 2 text encoder; no depth estimator (requests give the depth map)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionDepth2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(prompt_corpus(), pad_token="!")
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=5,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32, attention_head_dim=(2, 4), use_linear_projection=True)
    pipe = StableDiffusionDepth2ImgPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config(len(tokenizer))),
                                            tokenizer=tokenizer, unet=unet,
                                            scheduler=EulerDiscreteScheduler(**_scheduler_config()),
                                            depth_estimator=None, feature_extractor=None)
    out = Path(out_dir)
    pipe.save_pretrained(out)  # without the absent depth estimator: load with depth_estimator=None
    return out


def train_t5_tokenizer(corpus: Iterable[str]):
    """A T5-style tokenizer (sentencepiece Unigram, "▁" word marks; pad 0, eos 1, unk 2, as T5's) for ``corpus``:
    every corpus word is one piece, any other text falls back to single characters. SD 3 and FLUX.1 use T5 v1.1
    XXL's; no download is possible here. (Unigram training on so small a corpus learns few whole words.)"""
    from transformers import T5TokenizerFast

    words = sorted({word for line in corpus for word in line.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -3.0 - 0.01 * i) for i, word in enumerate(words)]
    vocab += [(ch, -8.0) for ch in _ALPHABET] + [("\u2581" + ch, -7.0) for ch in _ALPHABET]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.;:!?'-"


def _t5(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                   is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _flow_vae(scaling: float, shift: float):
    """A tiny VAE with the flow models' 16 latent channels and no quant convs (SD 3 / FLUX.1 VAEs)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=16,
                         sample_size=64, norm_num_groups=32, scaling_factor=scaling, shift_factor=shift,
                         use_quant_conv=False, use_post_quant_conv=False)


def build_tiny_sd3(out_dir: str | Path, seed: int = 0, t5: bool = True, layers: int = 1) -> Path:
    """A tiny SD 3 / 3.5-like pipeline: MMDiT (patch 2, 16 latent channels), two CLIP encoders with projection
    (the second pads with "!"), a T5 encoder (left out with ``t5=False``), flow-matching Euler with shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    corpus = prompt_corpus()
    tokenizer, tokenizer_2 = train_clip_tokenizer(corpus), train_clip_tokenizer(corpus, pad_token="!")
    text_encoder = CLIPTextModelWithProjection(_text_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer_2)))
    tokenizer_3 = train_t5_tokenizer(corpus) if t5 else None
    text_encoder_3 = _t5(len(tokenizer_3), 64) if t5 else None
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16,
                                        num_layers=layers, attention_head_dim=8, num_attention_heads=4,
                                        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
                                        pos_embed_max_size=64)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_flow_vae(1.5305, 0.0609), text_encoder=text_encoder, tokenizer=tokenizer,
                                    text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build_tiny_flux(out_dir: str | Path, seed: int = 0, dev: bool = False, layers: int = 1) -> Path:
    """A tiny FLUX.1-like pipeline: the Flux transformer (packed 2x2 latents, RoPE over image and text ids; a
    guidance embedding with ``dev=True``, none for schnell), CLIP (pooled) + T5, the dev or schnell scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    corpus = prompt_corpus()
    tokenizer = train_clip_tokenizer(corpus)
    tokenizer_2 = train_t5_tokenizer(corpus)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    text_encoder_2 = _t5(len(tokenizer_2), 32)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, out_channels=None, num_layers=layers,
                                         num_single_layers=layers, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=dev,
                                         axes_dims_rope=(4, 6, 6))
    if dev:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_flow_vae(0.3611, 0.1159),
                        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2)
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def _lora_targets(pipe) -> dict[str, dict[str, torch.nn.Module]]:
    """The layers kohya's trainer puts a LoRA on: every linear (and 1x1 conv) inside the UNet's transformer
    blocks, and the text encoders' attention and MLP projections."""
    parts = {"unet": {n: m for n, m in pipe.unet.named_modules() if ".attentions." in n and (
        isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)))}}
    for part in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, part, None)
        if encoder is not None:
            parts[part] = {n.removeprefix("text_model."): m for n, m in encoder.named_modules()
                           if n.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))}
    return parts


def write_tiny_lora(pipe, path: str | Path, fmt: str = "kohya", rank: int = 4, alpha: float = 2.0,
                    seed: int = 0) -> Path:
    """A LoRA with random low-rank weights for ``pipe``, saved as ``fmt``: "kohya" (Automatic1111 / kohya
    sd-scripts: ``lora_unet_*`` / ``lora_te*_*`` names, ``lora_down`` / ``lora_up`` / ``alpha``; SDXL UNet
    layers under their sgm names) or "peft" (diffusers' ``unet.*.lora_A.weight``, scale 1)."""
    from safetensors.torch import save_file

    from .original_layout import unet_module_to_original

    g = torch.Generator().manual_seed(seed)
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    tensors = {}
    for part, modules in _lora_targets(pipe).items():
        for name, module in sorted(modules.items()):
            conv = isinstance(module, torch.nn.Conv2d)
            fan_in = module.in_channels if conv else module.in_features
            fan_out = module.out_channels if conv else module.out_features
            down = torch.randn(rank, fan_in, generator=g) * 0.1
            up = torch.randn(fan_out, rank, generator=g) * 0.1
            if conv:
                down, up = down[:, :, None, None], up[:, :, None, None]
            if fmt == "peft":
                key = f"{part}.{'' if part == 'unet' else 'text_model.'}{name}"
                tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = down, up
                continue
            if part == "unet":
                layer = unet_module_to_original(name, pipe.unet.config) if sdxl else name
                key = "lora_unet_" + layer.replace(".", "_")
            else:
                te = {"text_encoder": "te1" if sdxl else "te", "text_encoder_2": "te2"}[part]
                key = f"lora_{te}_text_model_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    path = Path(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_tiny_embedding(pipe, path: str | Path, vectors: int = 3, seed: int = 0) -> Path:
    """A textual-inversion embedding with random vectors for ``pipe``: Automatic1111's ``.pt`` layout
    (``string_to_param``) for SD, or ``clip_l`` / ``clip_g`` in a ``.safetensors`` for SDXL."""
    g = torch.Generator().manual_seed(seed)
    path = Path(path)

    def rows(encoder):
        return torch.randn(vectors, encoder.config.hidden_size, generator=g) * 0.05

    if getattr(pipe, "text_encoder_2", None) is not None:
        from safetensors.torch import save_file

        save_file({"clip_l": rows(pipe.text_encoder), "clip_g": rows(pipe.text_encoder_2)}, str(path))
    else:
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": rows(pipe.text_encoder)},
                    "name": path.stem, "step": 1000, "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny"}, path)
    return path

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="build a tiny random-weight diffusers pipeline from configs")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", choices=("sd", "sdxl", "lcm", "sd3", "flux-schnell", "flux-dev"), default="sd")
    args = parser.parse_args()
    if args.family == "sdxl":
        build_tiny_sdxl(args.out_dir)
    elif args.family == "sd3":
        build_tiny_sd3(args.out_dir)
    elif args.family.startswith("flux"):
        build_tiny_flux(args.out_dir, dev=args.family == "flux-dev")
    else:
        build_tiny_sd(args.out_dir, lcm=args.family == "lcm")
    print(args.out_dir)
