"""`aigc-bridge bench`: our ONNX runtime against diffusers' torch pipeline on the real architectures.

The models are built from the published configs with random weights (timing does not depend on the weights),
saved once, exported with our exporter, and then each side runs in its own process (thread pools and GPU
memory stay separate) on the same device, precision, size, steps and batch. The table reports ms per step,
ms and images/s per image at each batch, the ratio to diffusers, and the fraction of the physical floor:
FLOPs (counted with torch's FlopCounterMode) over the device's measured matmul peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ARCHS = ("tiny", "sd-turbo", "sd15", "sdxl", "sd35-medium", "flux-schnell")
DITS = ("sd35-medium", "flux-schnell")
# On a CPU the DiTs keep their real widths, attention heads and text encoders' widths but only a few blocks (the
# full SD 3.5 Medium is 2.5 B parameters plus a 4.7 B T5-XXL, FLUX.1 schnell 12 B: no room on a shared 24 GB
# machine); the GPU script builds them whole (--depth full).
DIT_CPU_DEPTH = {"sd35-medium": 2, "flux-schnell": 1}


@dataclass(frozen=True)
class Workload:
    arch: str
    size: int
    steps: int
    guidance: float


def default_workloads(device: str) -> list[Workload]:
    """On a GPU the issue's workloads; on a CPU the same architectures at a size a 2-core machine can time."""
    if device == "cuda":
        return [Workload("sd-turbo", 512, 1, 0.0), Workload("sd15", 512, 25, 7.5),
                Workload("sd35-medium", 1024, 28, 4.5), Workload("flux-schnell", 1024, 4, 0.0)]
    return [Workload("sd-turbo", 128, 1, 0.0), Workload("sd15", 128, 2, 7.5), Workload("sd35-medium", 128, 2, 4.5),
            Workload("flux-schnell", 128, 2, 0.0)]


# --- models from configs --------------------------------------------------------------------------------------

def _clip_config(vocab: int, hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=intermediate, hidden_act=act, projection_dim=projection,
                          max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _vae(scaling: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=512, scaling_factor=scaling)


def _build_dit(arch: str, out: Path, depth: int | None) -> Path:
    """SD 3.5 Medium / FLUX.1 schnell from their published configs (random weights); ``depth`` transformer blocks
    (and text-encoder layers) instead of all of them, where memory is short."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from .tiny import prompt_corpus, train_clip_tokenizer, train_t5_tokenizer

    torch.manual_seed(0)
    layers = (lambda full: full) if depth is None else (lambda full: min(full, depth))
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=layers(24),
                                 num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    tokenizer_3 = train_t5_tokenizer(prompt_corpus())
    clip_l = _clip_config(49408, 768, layers(12), 12, 3072, "quick_gelu", 768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=1.5305 if arch == "sd35-medium" else 0.3611,
                        shift_factor=0.0609 if arch == "sd35-medium" else 0.1159)
    if arch == "sd35-medium":
        n = layers(24)
        transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=n,
                                            attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                            caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                            pos_embed_max_size=384, dual_attention_layers=tuple(range(min(n, 13))),
                                            qk_norm="rms_norm")
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=CLIPTextModelWithProjection(clip_l), tokenizer=train_clip_tokenizer(prompt_corpus()),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(49408, 1280, layers(32), 20, 5120, "gelu", 1280)),
            tokenizer_2=train_clip_tokenizer(prompt_corpus(), pad_token="!"), text_encoder_3=t5,
            tokenizer_3=tokenizer_3)
    else:
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers(19),
                                             num_single_layers=layers(38), attention_head_dim=128,
                                             num_attention_heads=24, joint_attention_dim=4096,
                                             pooled_projection_dim=768, guidance_embeds=False,
                                             axes_dims_rope=(16, 56, 56))
        pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae,
                            text_encoder=CLIPTextModel(clip_l), tokenizer=train_clip_tokenizer(prompt_corpus()),
                            text_encoder_2=t5, tokenizer_2=tokenizer_3)
    pipe.save_pretrained(out)
    return out


def build_arch(arch: str, out: Path, depth: int | None = None) -> Path:
    """Save a random-weight pipeline of ``arch`` (real layer sizes) with ``save_pretrained``."""
    if arch in DITS:
        return _build_dit(arch, out, depth)
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .tiny import build_tiny_sd, prompt_corpus, train_clip_tokenizer

    if arch == "tiny":
        return build_tiny_sd(out)
    torch.manual_seed(0)
    tokenizer = train_clip_tokenizer(prompt_corpus())
    euler = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    if arch == "sd15":
        text = CLIPTextModel(_clip_config(49408, 768, 12, 12, 3072, "quick_gelu", 768))
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), down_block_types=down,
                                    up_block_types=up, cross_attention_dim=768, attention_head_dim=8)
        pipe = StableDiffusionPipeline(vae=_vae(0.18215), text_encoder=text, tokenizer=tokenizer, unet=unet,
                                       scheduler=EulerDiscreteScheduler(**euler, timestep_spacing="leading"),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif arch == "sd-turbo":
        text = CLIPTextModel(_clip_config(49408, 1024, 23, 16, 4096, "gelu", 1024))
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), down_block_types=down,
                                    up_block_types=up, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                    use_linear_projection=True)
        pipe = StableDiffusionPipeline(vae=_vae(0.18215), text_encoder=text, tokenizer=tokenizer, unet=unet,
                                       scheduler=EulerDiscreteScheduler(**euler, timestep_spacing="trailing"),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif arch == "sdxl":
        tokenizer_2 = train_clip_tokenizer(prompt_corpus(), pad_token="!")
        text = CLIPTextModel(_clip_config(49408, 768, 12, 12, 3072, "quick_gelu", 768))
        text_2 = CLIPTextModelWithProjection(_clip_config(49408, 1280, 32, 20, 5120, "gelu", 1280))
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        pipe = StableDiffusionXLPipeline(vae=_vae(0.13025), text_encoder=text, text_encoder_2=text_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                         scheduler=EulerDiscreteScheduler(**euler, timestep_spacing="trailing"))
    else:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    pipe.save_pretrained(out)
    return out


# --- FLOPs and the device's peak -----------------------------------------------------------------------------

def count_flops(src: Path, w: Workload, batch: int) -> float:
    """FLOPs of one image, every part counted on its own call: the text encoder(s) once (with the negative
    prompt under CFG), the UNet once per step (both halves of the CFG batch), the VAE decoder once.

    One step is traced under FlopCounterMode; its UNet share, read off the per-module counts, is what every
    further step adds (the text encoders run once per call, not once per step)."""
    import torch
    from diffusers import DiffusionPipeline
    from torch.utils.flop_counter import FlopCounterMode

    pipe = DiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe("x", num_inference_steps=1, guidance_scale=w.guidance, height=w.size, width=w.size, output_type="np")
    counts = counter.get_flop_counts()
    one_step = sum(counts["Global"].values())
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    unet = sum(counts[type(denoiser).__name__].values())
    return float(one_step + unet * (w.steps - 1))


def device_peak_flops(device: str, reps: int = 5) -> float:
    """The device's dense matmul peak: the best of ``reps`` large products on every thread, through torch
    and (on the CPU) through onnxruntime's own GEMM, whichever is faster. fp16 on CUDA, fp32 on the CPU.

    A floor must be a true peak: our runtime is onnxruntime, so a torch-only figure could be beaten."""
    import os

    import torch

    if device == "cuda":
        n, dtype = 8192, torch.float16
    else:
        n, dtype = 4096, torch.float32
        torch.set_num_threads(os.cpu_count() or 1)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    if device == "cpu":
        best = min(best, _onnxruntime_matmul_seconds(a.numpy(), b.numpy(), reps))
    return 2 * n**3 / best


def _onnxruntime_matmul_seconds(a, b, reps: int) -> float:
    """The best time of one MatMul node in onnxruntime (all intra-op threads), on the same operands."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = a.shape[0]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"a": a, "b": b}
    session.run(None, feeds)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return best


# --- the two sides, each in its own process --------------------------------------------------------------------

def _worker(ns: argparse.Namespace) -> None:
    w = Workload(ns.arch[0] if isinstance(ns.arch, list) else ns.arch, ns.size, ns.steps, ns.guidance)
    times: list[float] = []
    step_times: list[float] = []
    if ns.side == "ours":
        from aigc_bridge.engine import Pipeline
        from aigc_bridge.request import GenerateRequest

        pipe = Pipeline.load(ns.model, provider=ns.device if ns.device == "cuda" else "cpu", verify=False,
                             threads=ns.threads or None, cuda_graph=ns.cuda_graph)
        req = GenerateRequest("red brick wall", steps=w.steps, guidance=w.guidance, seed=0, width=w.size,
                              height=w.size, count=ns.batch, scheduler=None if w.arch in DITS else "euler")
        for i in range(ns.reps + 1):
            result = pipe.generate(req)
            if i:
                times.append(result.timings_ms["total"] / 1e3)
                step_times.append(result.timings_ms["per_step"] / 1e3)
    else:
        import torch
        from diffusers import DiffusionPipeline

        dtype = torch.float16 if ns.precision == "fp16" else torch.float32
        if ns.device == "cpu" and ns.threads:
            torch.set_num_threads(ns.threads)
        pipe = DiffusionPipeline.from_pretrained(ns.source, torch_dtype=dtype).to(ns.device)
        pipe.set_progress_bar_config(disable=True)
        sync = torch.cuda.synchronize if ns.device == "cuda" else (lambda: None)
        for i in range(ns.reps + 1):
            marks: list[float] = []

            def on_step(_pipe, _i, _t, kwargs, marks=marks):
                sync()
                marks.append(time.perf_counter())
                return kwargs

            sync()
            start = time.perf_counter()
            with torch.inference_mode():
                pipe("red brick wall", num_inference_steps=w.steps, guidance_scale=w.guidance, height=w.size,
                     width=w.size, num_images_per_prompt=ns.batch, output_type="np", callback_on_step_end=on_step)
            sync()
            if i:
                times.append(time.perf_counter() - start)
                steps = [b - a for a, b in zip(marks, marks[1:])]
                step_times.append(statistics.median(steps) if steps else marks[0] - start)
    print(json.dumps({"total_s": statistics.median(times), "step_s": statistics.median(step_times)}))


def _side(side: str, w: Workload, batch: int, ns: argparse.Namespace, source: Path, model: Path) -> dict:
    cmd = [sys.executable, "-m", "aigc_bridge_export.bench", "--worker", side, "--arch", w.arch, "--size", str(w.size),
           "--steps", str(w.steps), "--guidance", str(w.guidance), "--batch", str(batch), "--reps", str(ns.reps),
           "--device", ns.device, "--precision", ns.precision, "--source", str(source), "--model", str(model),
           "--threads", str(ns.threads or 0)] + (["--cuda-graph"] if ns.cuda_graph else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ns: argparse.Namespace) -> str:
    """Build, export and time every workload; returns the table (Markdown)."""
    from .onnx_export import export_pipeline

    work = Path(ns.work)
    work.mkdir(parents=True, exist_ok=True)
    # FLUX.1 schnell takes no guidance (the runtime refuses it): 0 whatever --guidance says
    workloads = ([Workload(a, ns.size, ns.steps, 0.0 if a == "flux-schnell" else ns.guidance) for a in ns.arch]
                 if ns.arch
                 else default_workloads(ns.device))
    # The floor's peak is the best matmul rate seen over the whole run (measured before and after every row): on a
    # shared machine one measurement can land in a busy moment, and a floor the run then beats is not a floor.
    peak = device_peak_flops(ns.device)
    rows: list[tuple[str, float, dict]] = []  # (cells up to the speed-up, FLOPs per image, our timing)
    for w in workloads:
        depth = None if ns.depth == "full" or w.arch not in DITS else (
            int(ns.depth) if ns.depth else DIT_CPU_DEPTH[w.arch] if ns.device == "cpu" else None)
        source = work / (f"{w.arch}-diffusers" + (f"-depth{depth}" if depth else ""))
        if not (source / "model_index.json").exists():
            print(f"building {w.arch} from configs" + (f" ({depth} blocks)" if depth else "") + " ...", file=sys.stderr)
            build_arch(w.arch, source, depth)
        model = work / f"{source.name.replace('-diffusers', '')}-onnx-{ns.precision}-{ns.optimize}"
        if not (model / "model.json").exists():
            print(f"exporting {w.arch} ({ns.precision}, optimize {ns.optimize}) ...", file=sys.stderr)
            export_pipeline(source, model, overwrite=True, fp16=ns.precision == "fp16", optimize=ns.optimize,
                            seamless=False, log=lambda m: print(m, file=sys.stderr), memory_profile=w.arch not in DITS)
        flops = count_flops(source, w, 1)
        for batch in ns.batch:
            ours = _side("ours", w, batch, ns, source, model)
            theirs = _side("diffusers", w, batch, ns, source, model)
            cells = []
            for r in (ours, theirs):
                if "error" in r:
                    cells += [r["error"][:40], "-", "-"]
                else:
                    per_img = r["total_s"] / batch
                    cells += [f"{r['step_s'] * 1e3:.1f}", f"{per_img * 1e3:.1f}", f"{1 / per_img:.2f}"]
            ratio = (f"{theirs['total_s'] / ours['total_s']:.2f}x" if "error" not in ours and "error" not in theirs
                     else "-")
            label = w.arch + (f" ({depth} blocks)" if depth else "")
            row = (f"| {label} | {w.size} | {w.steps} | {'yes' if w.guidance > 1 else 'no'} | {batch} | "
                   + " | ".join(cells) + f" | {ratio} |")
            rows.append((row, flops, {**ours, "batch": batch}))
            print(row, file=sys.stderr)
            peak = max(peak, device_peak_flops(ns.device, reps=3))
    side = 4096 if ns.device == "cpu" else 8192
    lines = [f"device {ns.device}, {ns.precision}, peak {peak / 1e12:.2f} TFLOP/s (the best {side}^3 matmul on all "
             "threads, torch and onnxruntime, of those run before and after every row), "
             f"{ns.reps} timed calls after a warm-up, each side in its own process", "",
             "| model | size | steps | CFG | batch | ours ms/step | ours ms/img | ours img/s | diffusers ms/step "
             "| diffusers ms/img | diffusers img/s | speed-up | of floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, flops, ours in rows:
        of_floor = f"{flops / peak / (ours['total_s'] / ours['batch']):.1%}" if "error" not in ours else "-"
        lines.append(f"{row} {of_floor} |")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="aigc-bridge bench", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", choices=ARCHS, help="architectures (default: SD-Turbo and SD 1.5)")
    parser.add_argument("--size", type=int, default=128, help="with --arch: image size in pixels")
    parser.add_argument("--steps", type=int, default=2, help="with --arch: denoising steps")
    parser.add_argument("--guidance", type=float, default=7.5, help="with --arch: guidance (> 1: CFG)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="images per call")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per side after a warm-up")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--optimize", choices=("none", "cpu", "gpu"), default="none",
                        help="onnxruntime fusions applied at export")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per side (0: all cores)")
    parser.add_argument("--cuda-graph", action="store_true", help="ours: replay the UNet as a CUDA graph")
    parser.add_argument("--depth", help="DiTs: transformer blocks and text-encoder layers to build ('full', or a "
                        "number; default: full on CUDA, a few on the CPU)")
    parser.add_argument("--work", default=".cache/bench", help="where models are built and exported (reused)")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    # internal: one side of one measurement, run in its own process
    parser.add_argument("--worker", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.worker:
        ns.side, ns.batch = ns.worker, ns.batch[0]
        _worker(ns)
        return 0
    return report(ns)


def report(ns: argparse.Namespace) -> int:
    """Run, print the table, and write it to ``--out`` when asked."""
    table = run(ns)
    print(table)
    if ns.out:
        ns.out.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
