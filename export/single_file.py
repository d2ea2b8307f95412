"""The export's source: a diffusers folder, a hub id, or a single-file checkpoint (``.safetensors`` / ``.ckpt``).

A single file holds weights in the original trainers' layout (CompVis / Stability ``ldm`` and ``sgm`` key
names, as Automatic1111, ComfyUI and model sites ship them) but no configs. The family is read from the
tensors; the configs come from ``--config DIR`` (a diffusers folder of the same family) or from the hub repo
diffusers uses for that family; then diffusers' own ``from_single_file`` converts the weights. Nothing here
runs at generation time: the runtime only ever sees the exported ONNX package.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc_bridge.engine.package import sha256_file

from .errors import ExportError
from .families import FAMILIES, FAMILY_NAMES, Family
from .tensor_files import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, safe_load_context, tensor_shapes

CHECKPOINT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
_UNET = "model.diffusion_model."
_CONV_IN = _UNET + "input_blocks.0.0.weight"
_TEXT_ENCODERS = {  # key prefix -> architecture it implies
    "conditioner.embedders.1.model.": "sdxl",
    "cond_stage_model.model.": "sd2",
    "cond_stage_model.transformer.": "sd1",
}
# diffusers' config files, as from_single_file fetches them from the hub (no weights)
_CONFIG_PATTERNS = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]


@dataclass(frozen=True)
class Layout:
    """What a checkpoint's tensors say about it."""

    architecture: str      # "sd1" | "sd2" | "sdxl"
    inpaint: bool
    context_dim: int       # width of the text features the UNet's cross-attention reads
    scheduler_overrides: dict  # from ComfyUI's markers: v_pred, ztsnr

    @property
    def candidates(self) -> list[str]:
        if self.inpaint:
            return [f"{self.architecture}-inpaint"]
        return ["sd2", "sd2-v"] if self.architecture == "sd2" else [self.architecture]


@dataclass(frozen=True)
class Source:
    pipe: object
    name: str                  # what the manifest's `source` says
    source_file: dict | None   # provenance of a single-file checkpoint


def is_single_file(source: str) -> bool:
    return Path(source).suffix.lower() in CHECKPOINT_SUFFIXES


def load_source(source: str, *, config: str | None = None, family: str | None = None,
                log: Callable[[str], None] = print) -> Source:
    """The pipeline to export, from a diffusers folder, a hub id or a single-file checkpoint."""
    from diffusers import DiffusionPipeline

    if is_single_file(source):
        return _load_single_file(Path(source), config, family, log)
    for given, flag in ((config, "--config"), (family, "--family")):
        if given is not None:
            raise ExportError(f"{flag} applies to single-file checkpoints (.safetensors / .ckpt); {source} is a "
                              "diffusers folder or hub id, which carries its own configs", flag.lstrip("-"))
    log(f"loading {source}")
    try:
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch.float32, **_unused_parts(source))
    except Exception as exc:  # diffusers raises many types for a bad source; report them all the same way
        raise ExportError(f"could not load a diffusers pipeline from {source!r}: {exc}", "source") from None
    return Source(pipe, source, None)


def _unused_parts(source: str) -> dict:
    """Parts of a pipeline the export never uses, not loaded: SD 2 depth's depth estimator (DPT-Hybrid, 0.5 GB;
    requests give the depth map)."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(source)
    except Exception:  # from_pretrained reports a bad source
        return {}
    if index.get("_class_name") == "StableDiffusionDepth2ImgPipeline":
        return {"depth_estimator": None, "feature_extractor": None}
    return {}


def is_diffusion_checkpoint(path: Path) -> bool:
    """Whether one weights file holds a Stable Diffusion UNet in the original layout (else it may be an
    upscaler): read from its tensor names alone (weights-only: a pickle that would run code is refused here,
    whatever the file turns out to be)."""
    return _CONV_IN in tensor_shapes(path, "source")


def detect_layout(shapes: dict[str, tuple[int, ...]], name: str) -> Layout:
    """The family's evidence in the tensors, or an error that says what the file holds instead."""
    if _CONV_IN not in shapes:
        raise ExportError(f"{name} is not a Stable Diffusion checkpoint in the original layout (no {_CONV_IN}); "
                          f"it holds {_summary(shapes)}{_hint(shapes)}", "source")
    architecture = next((arch for prefix, arch in _TEXT_ENCODERS.items()
                         if any(k.startswith(prefix) for k in shapes)), None)
    if architecture == "sdxl" and not any(k.startswith("conditioner.embedders.0.transformer.") for k in shapes):
        architecture = None
    if architecture is None:
        if any(k.startswith("conditioner.embedders.0.model.") for k in shapes):
            raise ExportError(f"{name} is an SDXL refiner (one OpenCLIP text encoder, image-to-image only); "
                              "export the SDXL base model instead", "source")
        raise ExportError(f"{name} has a UNet but no text encoder this exporter knows (looked for "
                          f"{', '.join(p + '*' for p in _TEXT_ENCODERS)}); it holds {_summary(shapes)}", "source")
    if architecture != "sdxl" and _UNET + "label_emb.0.0.weight" in shapes:
        raise ExportError(f"{name} is an SD 2.x unCLIP / image-variation model (its UNet takes an image "
                          "embedding); not supported", "source")
    channels = shapes[_CONV_IN][1]
    if channels not in (4, 9):
        kind = {7: "an x4 upscaler", 8: "an instruct-pix2pix model"}.get(channels, "not a text-to-image model")
        raise ExportError(f"{name}'s UNet takes {channels} input channels ({kind}); text-to-image (4) and "
                          "inpainting (9) checkpoints are supported", "source")
    if not any(k.startswith("first_stage_model.") for k in shapes):
        raise ExportError(f"{name} has no VAE (first_stage_model.*): export a checkpoint that includes one",
                          "source")
    overrides = {}
    if "v_pred" in shapes:
        overrides["prediction_type"] = "v_prediction"
    if "ztsnr" in shapes:
        overrides["rescale_betas_zero_snr"] = True
    context = next((shape[1] for key, shape in sorted(shapes.items())
                    if key.startswith(_UNET) and key.endswith("attn2.to_k.weight")), None)
    if context is None:
        raise ExportError(f"{name}'s UNet has no cross-attention (attn2.to_k): not a text-to-image model",
                          "source")
    return Layout(architecture, channels == 9, int(context), overrides)


def _summary(shapes: dict) -> str:
    groups = Counter(".".join(k.split(".")[:2]) if "." in k else k[:24] for k in shapes)
    top = ", ".join(f"{prefix}* ({n})" for prefix, n in groups.most_common(4))
    return f"{len(shapes)} tensors: {top}" if shapes else "no tensors"


def _hint(shapes: dict) -> str:
    keys = list(shapes)
    if any(k.startswith(("lora_unet_", "lora_te", "unet.", "text_encoder.")) and "lora" in k for k in keys):
        return " — a LoRA: pass it with --lora FILE[:WEIGHT] on top of a base model"
    if any("string_to_param" in k or k in ("emb_params", "clip_l", "clip_g") for k in keys):
        return " — a textual-inversion embedding: pass it with --embedding FILE[:TOKEN]"
    if any(k.startswith(("down_blocks.", "mid_block.")) for k in keys):
        return " — one diffusers component: pass the whole diffusers pipeline folder instead"
    if any("joint_blocks" in k or "double_blocks" in k for k in keys):
        return " — a DiT (SD3 / Flux) checkpoint: only UNet models (SD 1.x, 2.x, SDXL) are supported"
    return ""


def choose_family(layout: Layout, family: str | None, have_config: bool, name: str) -> Family | None:
    """The family to load as: ``family`` when it fits the tensors, the only candidate, or None when a config
    folder decides (SD 2.x epsilon vs v). An SD 2.x file with neither is refused: the tensors cannot say."""
    if family is not None:
        if family not in FAMILIES:
            raise ExportError(f"--family {family!r} is not one of {', '.join(FAMILY_NAMES)}", "family")
        if family not in layout.candidates:
            raise ExportError(f"--family {family} does not fit {name}: its tensors are "
                              f"{' or '.join(FAMILIES[c].title for c in layout.candidates)} "
                              f"(--family {' / '.join(layout.candidates)})", "family")
        return FAMILIES[family]
    if len(layout.candidates) == 1:
        return FAMILIES[layout.candidates[0]]
    if have_config or "prediction_type" in layout.scheduler_overrides:
        return None  # the config (or the file's own v_pred marker) says which
    raise ExportError(f"{name} is an SD 2.x checkpoint, and its tensors do not say whether it predicts noise "
                      "(the 512 px base models: --family sd2) or v (the 768 px models and most fine-tunes of "
                      "them: --family sd2-v); pass --family, or --config DIR with a diffusers folder of the same "
                      "kind", "family")


def _load_single_file(path: Path, config: str | None, family: str | None, log: Callable[[str], None]) -> Source:
    import diffusers

    if not path.is_file():
        raise ExportError(f"{path} does not exist (or is not a file)", "source")
    log(f"reading {path.name}")
    shapes = tensor_shapes(path, "source")
    layout = detect_layout(shapes, path.name)
    chosen = choose_family(layout, family, config is not None, path.name)
    v_marked = layout.scheduler_overrides.get("prediction_type") == "v_prediction"
    kind = chosen or FAMILIES["sd2-v" if v_marked else "sd2"]  # None: SD 2.x, the config or marker decides
    config_dir, config_name = _config_dir(kind, config, layout, path.name)
    pipeline_class = getattr(diffusers, kind.pipeline)
    log(f"converting {path.name} ({kind.title if chosen else 'SD 2.x'}; configs from {config_name})")
    allowlist = contextlib.nullcontext() if path.suffix.lower() == SAFETENSORS_SUFFIX else safe_load_context()
    try:
        with allowlist:
            pipe = pipeline_class.from_single_file(str(path), config=str(config_dir), torch_dtype=torch.float32,
                                                   local_files_only=True)
    except Exception as exc:  # diffusers' conversion raises many types; each names what did not fit
        raise ExportError(f"could not convert {path.name} with the configs from {config_name}: {exc}",
                          "source") from None
    overrides = dict(layout.scheduler_overrides)
    if chosen is not None and chosen.prediction_type is not None:
        overrides["prediction_type"] = chosen.prediction_type
    if overrides:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    resolved = chosen.name if chosen else ("sd2-v" if prediction == "v_prediction" else "sd2")
    source_file = {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                   "format": "safetensors" if path.suffix.lower() == SAFETENSORS_SUFFIX else "pickle (weights-only)",
                   "family": resolved, "config": config_name}
    return Source(pipe, str(path), source_file)


def _config_dir(kind: Family, config: str | None, layout: Layout, name: str) -> tuple[Path, str]:
    """A local folder with the family's diffusers configs: ``config``, or the hub repo's configs (cached)."""
    if config is None:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(kind.hub_config, allow_patterns=_CONFIG_PATTERNS)), kind.hub_config
        except Exception as exc:  # offline, unreachable, or not in the cache: all say the same to the user
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ExportError(
                f"{name} is {kind.title}; its configs come from --config DIR (a diffusers folder of that family, "
                f"e.g. one saved with save_pretrained) or the hub ({kind.hub_config}), and neither is available: "
                f"no --config was given and the hub configs are not in the local cache and could not be fetched "
                f"({reason})", "config") from None
    root = Path(config)
    if not root.is_dir():
        raise ExportError(f"--config {config} is not a folder (it must be a diffusers pipeline folder of the "
                          "checkpoint's family, holding model_index.json and each component's config)", "config")
    needed = ["model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json",
              "text_encoder/config.json", "tokenizer"]
    if layout.architecture == "sdxl":
        needed += ["text_encoder_2/config.json", "tokenizer_2"]
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise ExportError(f"--config {config} lacks {', '.join(missing)}: it must be a diffusers pipeline folder "
                          f"of the checkpoint's family ({kind.title})", "config")
    unet = json.loads((root / "unet/config.json").read_text(encoding="utf-8"))
    width, channels = unet.get("cross_attention_dim"), unet.get("in_channels")
    width = width[0] if isinstance(width, list) else width
    if width != layout.context_dim or channels != (9 if layout.inpaint else 4):
        raise ExportError(
            f"--config {config} does not fit {name}: its UNet takes {channels} channels and {width}-wide text "
            f"features, the checkpoint's takes {9 if layout.inpaint else 4} and {layout.context_dim} "
            f"({kind.title}); pass a diffusers folder of the same family", "config")
    return root, str(root)

