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


def build_tiny_sd(out_dir: str | Path, seed: int = 0, lcm: bool = False) -> Path:
    """A tiny SD 1.x-like pipeline (64x64 images, VAE factor 2), saved with ``save_pretrained``.

    With ``lcm=True`` the UNet takes a guidance embedding (``time_cond_proj_dim``), as LCM-distilled
    models do, and the pipeline is a LatentConsistencyModelPipeline.
    """
    from diffusers import (
        EulerDiscreteScheduler,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(prompt_corpus())
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32, time_cond_proj_dim=32 if lcm else None)
    vae = _vae()
    if lcm:
        pipe = LatentConsistencyModelPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                              scheduler=LCMScheduler(**_scheduler_config()), safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=EulerDiscreteScheduler(**_scheduler_config()), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny SDXL-like pipeline: two text encoders (the second with projection and "!" padding),
    pooled embeddings and time ids."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    corpus = prompt_corpus()
    tokenizer = train_clip_tokenizer(corpus)
    tokenizer_2 = train_clip_tokenizer(corpus, pad_token="!")
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer_2)))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                                norm_num_groups=32)
    pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=EulerDiscreteScheduler(**_scheduler_config()))
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="build a tiny random-weight diffusers pipeline from configs")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", choices=("sd", "sdxl", "lcm"), default="sd")
    args = parser.parse_args()
    if args.family == "sdxl":
        build_tiny_sdxl(args.out_dir)
    else:
        build_tiny_sd(args.out_dir, lcm=args.family == "lcm")
    print(args.out_dir)
