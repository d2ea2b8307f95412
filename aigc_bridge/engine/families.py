"""Per-family parts of the one denoising loop: how a family encodes text, schedules its steps and calls its
denoiser. The loop itself (pipeline.py) is the same for all.

- UNet families (SD 1.x / 2.x, SDXL, LCM, Turbo): the pipeline's own encoding; circular padding tiles them.
- SD 3 / 3.5 (MMDiT): two CLIP encoders (penultimate hidden states side by side, padded to the T5 width, then
  T5's tokens after them; pooled = both CLIP projections) and classifier-free guidance. T5 is optional: left
  out, its tokens are zeros, as diffusers' StableDiffusion3Pipeline does with ``text_encoder_3=None``.
- FLUX.1: CLIP's pooled embedding + T5's tokens, no CFG; dev embeds the guidance scale, schnell takes none.

Both DiTs run flow-matching Euler. A transformer has no padding to make circular, so they tile in latent
space: before every denoiser call each image's latents are rolled by a fresh random offset (and the velocity
rolled back), so no latent position is an edge for more than one step; the VAE decodes circularly as for UNets
(measured against overlapping windows in benchmarks/bench_dit_tiling.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InvalidRequest
from ..request import FLOW_SCHEDULERS, SCHEDULERS, GenerateRequest
from .flow_match import FlowMatchEulerScheduler
from .package import DIT_FAMILIES
from .tokenizer import truncation_message

ENCODER_NAMES = {"clip": "CLIP", "clip_l": "CLIP-L", "clip_g": "CLIP-G (OpenCLIP bigG)", "t5": "T5"}
ROLL_SALT = 0x7E11  # offsets come from their own stream, so they never change the seed's initial noise


class UNetParts:
    """The UNet families: the pipeline's own encoding and schedule; tiling by circular padding alone."""

    kind = "unet"

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.manifest = pipeline.manifest

    def size_reason(self) -> str:
        m = self.manifest
        halvings = int(np.log2(m["size_multiple"] // m["vae_scale_factor"]))
        return f"its latents are 1/{m['vae_scale_factor']} of the image and its UNet halves them {halvings} times"

    def limits(self) -> dict:
        return model_limits(self.manifest)

    def check(self, req: GenerateRequest) -> None:
        if req.scheduler in FLOW_SCHEDULERS:
            raise InvalidRequest(f"{req.scheduler} is for flow-matching models (SD 3, FLUX.1); this model takes "
                                 f"{', '.join(SCHEDULERS)}", "scheduler")

    def uses_cfg(self, req: GenerateRequest) -> bool:
        return req.guidance > 1.0 and not self.manifest["unet"].get("timestep_cond_dim", 0)

    def set_timesteps(self, scheduler, steps: int, h: int, w: int) -> None:
        scheduler.set_timesteps(steps)

    def conditioning(self, req: GenerateRequest, notes: list[str]) -> dict:
        return self.pipeline._conditioning(req, notes)

    def denoiser(self, runner: Callable, req: GenerateRequest, seeds: list[int]) -> Callable:
        return runner


class _DiTParts(UNetParts):
    """What SD 3 and FLUX.1 share: flow matching, token limits that are errors, latent-roll tiling."""

    def __init__(self, pipeline) -> None:
        super().__init__(pipeline)
        self._counters: dict[str, object] = {}

    @property
    def encoders(self) -> dict:
        """role -> (spec, tokenizer); read when first needed (request checks run on the manifest alone)."""
        p = self.pipeline
        return {e.role: (e, tok) for e, tok in zip(p._encoders, p._tokenizers)}

    def size_reason(self) -> str:
        m = self.manifest
        return (f"its latents are 1/{m['vae_scale_factor']} of the image and its transformer takes "
                f"{m['patch_size']}x{m['patch_size']} latent patches")

    def check(self, req: GenerateRequest) -> None:
        for name in ("init", "mask", "depth"):
            if getattr(req, name) is not None:
                raise InvalidRequest(f"{name}: image conditioning is not available for {self.manifest['family']} "
                                     "models yet (text to image only)", name)
        if req.controls:
            raise InvalidRequest(f"ControlNet is not available for {self.manifest['family']} models yet", "controls")
        if req.scheduler not in FLOW_SCHEDULERS:
            raise InvalidRequest(f"{self.manifest['model_id']} is a flow-matching model ({self.manifest['family']}): "
                                 f"it takes {', '.join(FLOW_SCHEDULERS)}, not {req.scheduler}", "scheduler")

    def uses_cfg(self, req: GenerateRequest) -> bool:
        return self.manifest.get("guidance_kind") == "cfg" and req.guidance > 1.0

    def _seq_len(self, h: int, w: int) -> int:
        patch = self.manifest["patch_size"]
        return (h // patch) * (w // patch)

    def denoiser(self, runner: Callable, req: GenerateRequest, seeds: list[int]) -> Callable:
        if req.tile in (None, "none"):
            return runner
        return RolledDenoiser(runner, seeds, req.tile, self.manifest["patch_size"])

    # --- text -------------------------------------------------------------------------------------------

    def _token_count(self, role: str, text: str) -> int:
        """Tokens the encoder would need for all of ``text`` (special tokens included)."""
        from tokenizers import Tokenizer

        if role not in self._counters:
            spec = self.encoders[role][0]
            self._counters[role] = Tokenizer.from_file(str(self.pipeline.package.path(spec.tokenizer)))
        return len(self._counters[role].encode(text).ids)

    def _tokens(self, role: str, text: str, what: str, notes: list[str], carrier: str):
        """Token ids for one encoder. The text must fit the encoder that reads the most of it (``carrier``):
        over that limit is an error naming the encoder and both counts; a CLIP cut that T5 still reads is a
        note."""
        spec, tokenizer = self.encoders[role]
        tokens = tokenizer(text)
        if tokens.dropped:
            name = ENCODER_NAMES.get(role, role)
            if role == carrier:
                count = self._token_count(role, text)
                field = "prompt" if what == "prompt" else "negative_prompt"
                raise InvalidRequest(
                    f"{what} is {count} tokens for the {name} text encoder, which reads at most {spec.max_length} "
                    f"(its start and end tokens included): shorten it by about {count - spec.max_length} tokens "
                    f"(\"{tokens.dropped[:80]}\" does not fit)", field)
            notes.append(truncation_message(f"{what} (for {name})", spec.max_length, tokens.dropped)
                         + f"; {ENCODER_NAMES[carrier]} reads all of it")
        return tokens.ids

    def _run(self, role: str, ids: np.ndarray) -> list[np.ndarray]:
        return self.pipeline._run(self.encoders[role][0].graph, {"input_ids": ids})

    def _carrier(self) -> str:
        """The encoder whose tokens carry the prompt: T5 where present (CLIP gives the pooled vector and, for
        SD 3, 77 tokens beside it), else CLIP-L."""
        return "t5" if "t5" in self.encoders else "clip_l"


class SD3Parts(_DiTParts):
    kind = "mmdit"

    def set_timesteps(self, scheduler: FlowMatchEulerScheduler, steps: int, h: int, w: int) -> None:
        # StableDiffusion3Pipeline passes mu only when the config shifts dynamically (SD 3.5 does not)
        mu = scheduler.mu_for(self._seq_len(h, w)) if scheduler.dynamic else None
        scheduler.set_timesteps(steps, mu=mu)

    def _encode(self, text: str, what: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        unet = self.manifest["unet"]
        carrier = self._carrier()
        hidden, pooled = [], []
        for role in ("clip_l", "clip_g"):
            h, p = self._run(role, self._tokens(role, text, what, notes, carrier))[:2]
            hidden.append(h)
            pooled.append(p)
        clip = np.concatenate(hidden, axis=-1)
        joint = unet["joint_attention_dim"]
        clip = np.pad(clip, ((0, 0), (0, 0), (0, joint - clip.shape[-1])))
        if "t5" in self.encoders:
            t5 = self._run("t5", self._tokens("t5", text, what, notes, carrier))[0]
        else:
            t5 = np.zeros((1, unet["t5_max_length"], joint), dtype=np.float32)
        return np.concatenate([clip, t5.astype(np.float32)], axis=1), np.concatenate(pooled, axis=-1)

    def conditioning(self, req: GenerateRequest, notes: list[str]) -> dict:
        hidden, pooled = self._encode(req.prompt, "prompt", notes)
        cfg = self.uses_cfg(req)
        if cfg:  # SD 3 encodes the (empty) negative prompt: no zeroing as SDXL's force_zeros
            neg_hidden, neg_pooled = self._encode(req.negative_prompt, "negative prompt", notes)
            hidden, pooled = np.concatenate([neg_hidden, hidden]), np.concatenate([neg_pooled, pooled])
        return {"cfg": cfg, "encoder_hidden_states": hidden, "pooled_projections": pooled}


class FluxParts(_DiTParts):
    kind = "flux"

    def check(self, req: GenerateRequest) -> None:
        super().check(req)
        if self.manifest.get("guidance_kind") == "none" and req.guidance:
            raise InvalidRequest(
                f"{self.manifest['model_id']} is a FLUX.1 schnell-type model: it is timestep-distilled and takes no "
                f"guidance (got {req.guidance}); leave guidance out (or 0), or use a FLUX.1 dev-type model, which "
                "embeds it", "guidance")

    def set_timesteps(self, scheduler: FlowMatchEulerScheduler, steps: int, h: int, w: int) -> None:
        # FluxPipeline: sigmas linspace(1, 1/n, n), mu from the packed token count (used when dynamic)
        scheduler.set_timesteps(steps, mu=scheduler.mu_for(self._seq_len(h, w)),
                                sigmas=np.linspace(1.0, 1 / steps, steps))

    def conditioning(self, req: GenerateRequest, notes: list[str]) -> dict:
        carrier = self._carrier()
        pooled = self._run("clip_l", self._tokens("clip_l", req.prompt, "prompt", notes, carrier))[1]
        hidden = self._run("t5", self._tokens("t5", req.prompt, "prompt", notes, carrier))[0]
        out = {"cfg": False, "encoder_hidden_states": hidden, "pooled_projections": pooled}
        if self.manifest["unet"].get("guidance_embeds"):
            out["guidance"] = np.full(1, req.guidance, dtype=np.float32)
        return out


class RolledDenoiser:
    """Latent-space tiling for transformers: each call rolls every image's latents by a fresh random offset
    (per image, from its own seed, so image i of a batch is the image seed + i gives alone) and rolls the
    prediction back. ``tile`` "x" rolls on x only (panoramas wrap horizontally, not vertically)."""

    def __init__(self, runner: Callable, seeds: list[int], tile: str, patch: int) -> None:
        self.runner, self.tile = runner, tile
        self.rngs = [np.random.Generator(np.random.PCG64([seed, ROLL_SALT])) for seed in seeds]
        self.patch = patch

    def _offsets(self) -> list[tuple[int, int]]:
        return [(0 if self.tile == "x" else int(rng.integers(1 << 30)), int(rng.integers(1 << 30)))
                for rng in self.rngs]

    def __call__(self, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        sample = feeds["sample"]
        count = len(self.rngs)
        h, w = sample.shape[-2:]
        offsets = [(dy % h, dx % w) for dy, dx in self._offsets()]
        per_row = [offsets[i % count] for i in range(sample.shape[0])]  # CFG rows repeat the images
        rolled = np.stack([np.roll(x, o, axis=(-2, -1)) for x, o in zip(sample, per_row)])
        out = self.runner({**feeds, "sample": rolled}, run_options)
        back = np.stack([np.roll(x, (-o[0], -o[1]), axis=(-2, -1)) for x, o in zip(out[0], per_row)])
        return [back, *out[1:]]


def model_limits(m: dict) -> dict:
    """What a client may ask of this model by family, advertised in list_models (docs/protocol.md): the family,
    its guidance kind, the token limit of each text encoder and the schedulers it takes."""
    return {"family": m["family"], "size_multiple": m["size_multiple"],
            "guidance": m.get("guidance_kind") or ("embedded" if m["unet"].get("timestep_cond_dim") else "cfg"),
            "max_tokens": {e.get("role") or f"clip{i + 1}": e["max_length"] for i, e in enumerate(m["text_encoders"])},
            "schedulers": list(FLOW_SCHEDULERS if m["family"] in DIT_FAMILIES else SCHEDULERS)}


def parts_for(pipeline) -> UNetParts:
    family = pipeline.manifest["family"]
    if family not in DIT_FAMILIES:
        return UNetParts(pipeline)
    return SD3Parts(pipeline) if family == "sd3" else FluxParts(pipeline)
