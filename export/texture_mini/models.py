"""The texture-mini components, in the standard Stable Diffusion architecture (so the exporter and the
runtime serve it like any SD 1.x model): a word-level CLIP tokenizer, CLIPTextModel, AutoencoderKL,
UNet2DConditionModel with cross-attention, and the linear-beta noise schedule it is trained with.
"""

from __future__ import annotations

from aigc_bridge.texture_data import vocabulary

from .config import TrainConfig

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def build_tokenizer(config: TrainConfig):
    """A word-level tokenizer over the caption grammar's words, padded with the end token like SD 1.x.

    Word-level rather than byte-level BPE: the grammar has ~80 words, so every caption word is one token
    and prompts stay short (16 positions instead of 77), which makes the text encoder and cross-attention
    cheap. Unknown words become one unknown token; the runtime reads it all from tokenizer.json.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {BOS: 0, EOS: 1, UNK: 2}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z0-9]+"), " ")])
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                                   unk_token=UNK, model_max_length=config.text_length)


def tokenize(tokenizer, captions: list[str], length: int):
    """Token ids exactly as the runtime makes them (pad with the end token to ``length``, truncate)."""
    import torch

    ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True).input_ids
    return torch.tensor(ids, dtype=torch.long)


def build_text_encoder(config: TrainConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=config.text_hidden, intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=config.text_length, projection_dim=config.text_hidden,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="quick_gelu"))


def build_vae(config: TrainConfig):
    """No attention in the VAE's mid block: global attention costs time and the textures need none."""
    from diffusers import AutoencoderKL

    n = len(config.vae_blocks)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=config.vae_blocks, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=config.vae_latent_channels, norm_num_groups=min(16, config.vae_blocks[0]),
        sample_size=config.image_size, mid_block_add_attention=False)


def build_unet(config: TrainConfig):
    """Cross-attention only at the lowest resolution and in the mid block: attention at 16x16 latents
    cost 2.6x per step in the calibration run."""
    from diffusers import UNet2DConditionModel

    n = len(config.unet_blocks)
    down = ("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",)
    up = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=config.latent_size, in_channels=config.vae_latent_channels,
        out_channels=config.vae_latent_channels, block_out_channels=config.unet_blocks,
        layers_per_block=config.unet_layers_per_block, down_block_types=down, up_block_types=up,
        cross_attention_dim=config.text_hidden, attention_head_dim=config.unet_attention_heads,
        norm_num_groups=min(16, config.unet_blocks[0]))


def scheduler_config(config: TrainConfig) -> dict:
    """The sampling scheduler the package ships: Euler over the training betas, starting at t = T - 1
    ("trailing"), where the linear schedule's signal is ~0 (what the model was trained to start from).
    steps_offset is ignored by trailing spacing; 1 keeps diffusers from warning about an "outdated" config."""
    return dict(num_train_timesteps=config.train_timesteps, beta_start=config.beta_start,
                beta_end=config.beta_end, beta_schedule="linear", prediction_type=config.prediction_type,
                timestep_spacing="trailing", steps_offset=1)
