"""The text-to-image loop: tokenise, encode, denoise with a numpy scheduler, decode, all on onnxruntime.

Run state (step, cancel, progress) is explicit: the caller passes a callback that sees every step and can
stop the run, which is how the sidecar streams progress and honours cancel within one step.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import Cancelled, InvalidRequest
from ..request import MAX_SEED, MAX_SIDE, GenerateRequest
from . import controls, inputs, memory
from .conditioning import InpaintBlend, InpaintChannels, Noise, StepCondition, first_step, sample_posterior
from .families import UNetParts, parts_for
from .latent_space import LatentSpace
from .package import ModelPackage
from .providers import choose_providers, import_onnxruntime, open_session
from .runner import BoundGraphRunner, CudaGraphRunner, GraphRunner
from .schedulers import make_scheduler
from .tokenizer import PromptTokenizer, truncation_message


@dataclass(frozen=True)
class ProgressEvent:
    step: int           # steps done, 1..total
    total: int
    elapsed_s: float
    latents: np.ndarray  # the current latents (batch, C, h, w), for previews


ProgressCallback = Callable[[ProgressEvent], "bool | None"]  # return False to cancel


@dataclass
class GenerationResult:
    images: list[np.ndarray]  # H x W x 3, float32 in [0, 1], sRGB
    seeds: list[int]
    request: GenerateRequest  # the effective request: every default resolved
    model_id: str
    package_hash: str
    provider: str
    timings_ms: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    # what was fused into the model at export: [{name, sha256, weight}] and [{name, sha256, token, vectors}]
    loras: list[dict] = field(default_factory=list)
    embeddings: list[dict] = field(default_factory=list)

    def image_uint8(self, index: int) -> np.ndarray:
        return np.round(self.images[index] * 255.0).astype(np.uint8)

    def metadata(self, index: int) -> dict:
        """What made image ``index``: enough to reproduce it."""
        adapters = {"loras": self.loras, "embeddings": self.embeddings} if self.loras or self.embeddings else {}
        return {**self.request.to_dict(), "seed": self.seeds[index], "count": 1, "model_id": self.model_id,
                "model_hash": self.package_hash, **adapters, "provider": self.provider,
                "timings_ms": self.timings_ms, "tool_version": __version__}


@dataclass(frozen=True)
class ImageInputs:
    """An init at the generation size (H x W x 3, [0, 1]) and its mask (H x W, 1 = repaint, blurred) or None."""

    pixels: np.ndarray
    mask: np.ndarray | None

    def paste_back(self, generated: np.ndarray) -> np.ndarray:
        """The init's own pixels where the mask is 0 (exactly), blended by the mask elsewhere."""
        m = self.mask[..., None]
        return np.where(m > 0, self.pixels * (np.float32(1.0) - m) + generated * m, self.pixels).astype(np.float32)


class Pipeline:
    """A loaded model package, ready to generate. Sessions for the seamless graphs load on first use."""

    def __init__(self, package: ModelPackage, provider: str | None = None, threads: int | None = None,
                 io_binding: bool | None = None, cuda_graph: bool = False, memory_limit: int | None = None) -> None:
        """``io_binding`` (default: on for GPU providers) keeps the conditioning on the device across steps;
        ``cuda_graph`` replays the UNet as a captured CUDA graph for the first shape it sees (CUDA only).
        ``memory_limit`` (bytes; default on the CPU: a share of the memory free now) is what requests may
        take: larger ones are refused before they run, and the CPU arena is capped there."""
        ort = import_onnxruntime()
        # Failures reach the user once, as our errors carrying onnxruntime's text, not also as log spam.
        ort.set_default_logger_severity(4)
        self.package = package
        self.manifest = package.manifest
        self._providers = choose_providers(provider)
        self._requested = provider
        self._upscaler = None
        self._options = ort.SessionOptions()
        on_cpu = self._providers[0] == "CPUExecutionProvider"
        self.memory_budget = memory_limit if memory_limit is not None else (memory.default_budget() if on_cpu
                                                                            else None)
        if on_cpu and self.memory_budget is not None:
            # One arena for every session (stages reuse each other's memory), capped, returned after each
            # generation; memory patterns would hold a second copy of the peak (measured: 352 vs 214 MB RSS
            # for texture-mini at 128 px).
            self.memory_budget = min(self.memory_budget, memory.shared_cpu_arena(self.memory_budget))
            self._options.add_session_config_entry("session.use_env_allocators", "1")
            self._options.enable_mem_pattern = False
        self._shrink = ort.RunOptions()
        if on_cpu:
            self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._options.log_severity_level = 3
        # Spinning pool threads steal the cores the next session (or numpy between steps) needs: measured
        # 22 ms vs 30-40 ms per tiny-UNet step on 2 cores (benchmarks/bench_runtime.py).
        self._options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            self._options.intra_op_num_threads = threads
        self._sessions: dict[str, object] = {}
        self._runners: dict[str, GraphRunner] = {}
        self._cuda_graphs: dict[str, CudaGraphRunner] = {}
        on_gpu = self._providers[0] != "CPUExecutionProvider"
        self._io_binding = on_gpu if io_binding is None else io_binding
        if cuda_graph and self._providers[0] != "CUDAExecutionProvider":
            raise InvalidRequest("CUDA graphs need the CUDA provider", "cuda_graph")
        self._cuda_graph = cuda_graph
        self._encoders = package.text_encoders
        self._tokenizers = [PromptTokenizer(package.path(e.tokenizer), e.max_length, e.pad_token_id,
                                            e.token_expansions) for e in self._encoders]
        self._latent_space = LatentSpace.from_manifest(self.manifest)
        for encoder in self._encoders:
            self._session(encoder.graph)
        self._session(self.manifest["unet"]["graphs"]["none"])
        self._session(self.manifest["vae_decoder"]["graphs"]["none"])

    @classmethod
    def load(cls, model_dir: str | Path, provider: str | None = None, verify: bool = True,
             threads: int | None = None, **options) -> Pipeline:
        return cls(ModelPackage.load(model_dir, verify=verify), provider=provider, threads=threads, **options)

    @property
    def provider(self) -> str:
        session = self._session(self.manifest["unet"]["graphs"]["none"])
        return session.get_providers()[0]

    @property
    def parts(self) -> UNetParts:
        """The model family's parts of the loop (engine/families.py): text encoding, schedule, denoiser call."""
        if getattr(self, "_parts", None) is None:
            self._parts = parts_for(self)
        return self._parts

    @property
    def upscaler(self):
        """The package's own upscaler (``upscaler`` in the manifest: texture-mini's 128 px stage), loaded on first
        use on the same provider; None when the package ships none."""
        if self.manifest.get("upscaler") and self._upscaler is None:
            from ..upscale import Upscaler

            self._upscaler = Upscaler.load(self.package.path(self.manifest["upscaler"]), provider=self._requested)
        return self._upscaler

    def _session(self, graph: str):
        if graph not in self._sessions:
            self._sessions[graph] = open_session(self.package.path(graph), self._options, self._providers, graph)
        return self._sessions[graph]

    def _runner(self, graph: str, constants: dict[str, np.ndarray] | None = None) -> GraphRunner:
        """The runner for ``graph``, prepared with inputs that stay the same for the whole call."""
        constants = constants or {}
        if graph not in self._runners:
            kind = BoundGraphRunner if self._io_binding else GraphRunner
            self._runners[graph] = kind(self._session(graph), graph)
        runner = self._runners[graph]
        runner.prepare(constants)
        return runner

    def _unet_runner(self, graph: str, constants: dict[str, np.ndarray], sample_shape: tuple) -> GraphRunner:
        """With ``cuda_graph``, the captured graph serves every call with the shapes of its first one."""
        if self._cuda_graph:
            runner = self._cuda_graph_runner(graph)
            shapes = {**{k: v.shape for k, v in constants.items()}, "sample": sample_shape,
                      "timestep": sample_shape[:1]}
            if runner.accepts(shapes):
                runner.prepare(constants)
                return runner
        return self._runner(graph, constants)

    def _cuda_graph_runner(self, graph: str) -> CudaGraphRunner:
        if graph not in self._cuda_graphs:
            ort = import_onnxruntime()
            providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
            session = ort.InferenceSession(str(self.package.path(graph)), self._options, providers=providers)
            self._cuda_graphs[graph] = CudaGraphRunner(session, graph)
        return self._cuda_graphs[graph]

    def _run(self, graph: str, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        return self._runner(graph)(feeds, run_options)

    # --- request resolution --------------------------------------------------------------------------

    def resolve(self, request: GenerateRequest) -> GenerateRequest:
        """Fill every default from the model, and check what this model accepts (sizes)."""
        m = self.manifest
        recommended = m["recommended"]
        if request.init is not None and request.kind != "backdrop":  # the init's aspect at the native area
            width, height = inputs.default_size(request.init.width, request.init.height, m["native_size"],
                                                m["size_multiple"], request.width, request.height)
        else:
            width = request.width or m["native_size"][1]
            height = request.height or m["native_size"][0]
        if request.kind == "backdrop" and not (request.width and request.height):
            # equirectangular: 2:1, from whichever side was given (or the native height)
            height = request.height or (request.width // 2 if request.width else height)
            width = 2 * height
        multiple = m["size_multiple"]
        for name, value in (("width", width), ("height", height)):
            if value % multiple:
                lower, upper = max(multiple, value // multiple * multiple), (value // multiple + 1) * multiple
                raise InvalidRequest(
                    f"{name} {value} is not a multiple of {multiple}, which this model needs "
                    f"({self.parts.size_reason()}); try {lower} or {upper}", name)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - request.count)
        tile = request.tile or ("x" if request.kind == "backdrop" else recommended.get("tile", "none"))
        if tile not in m["unet"]["graphs"] or tile not in m["vae_decoder"]["graphs"]:
            raise InvalidRequest(f"tile {tile} is not available: this model package was exported without its "
                                 "seamless graphs (re-export it without --no-seamless)", "tile")
        steps = request.steps or recommended["steps"]
        if request.init is not None and request.steps is None:  # the default runs at least one step (Turbo: 1)
            steps = max(steps, math.ceil(1 / request.effective_strength - 1e-9))
        resolved = dataclasses.replace(
            request, width=width, height=height, seed=seed, steps=steps,
            guidance=request.guidance if request.guidance is not None else recommended["guidance"],
            scheduler=request.scheduler or m["scheduler"]["default"], tile=tile,
            strength=request.effective_strength if request.init is not None else None)
        self.parts.check(resolved)
        self._check_image_conditioning(resolved)
        controls.check_request(m, resolved)
        self._check_memory(resolved)
        return resolved

    def _check_image_conditioning(self, req: GenerateRequest) -> None:
        """What this model needs of an init / mask: an encoder, and at least one step left after the cut."""
        m = self.manifest
        if req.init is None:
            if self._unet_in_channels() == 9:
                raise InvalidRequest(f"{m['model_id']} is an inpainting model (9-channel UNet): it repaints the "
                                     "masked part of an image; give init and mask", "init")
            return
        if not m.get("vae_encoder", {}).get("graphs", {}).get("none"):
            raise InvalidRequest(f"{m['model_id']} has no VAE encoder graph, which image to image and inpainting "
                                 "need (re-export it)", "init")
        kept = min(int(req.steps * req.strength), req.steps)
        if req.scheduler == "lcm":
            self._schedule(req)  # LCM shrinks its schedule instead: its own limit, named there
        elif kept < 1:
            turbo = m.get("distillation") == "turbo"
            need = math.ceil(1 / req.strength - 1e-9)
            raise InvalidRequest(
                f"steps x strength must be at least 1 ({req.steps} x {req.strength} runs no step"
                + ("; a Turbo model samples in few steps, so give more steps" if turbo else "")
                + f"): use steps {need} or more with strength {req.strength}, or a strength of at least "
                f"{1 / req.steps:g} with {req.steps} step{'s' if req.steps > 1 else ''}", "strength")
        if self._unet_in_channels() == 9 and req.mask is None:
            raise InvalidRequest(f"{m['model_id']} is an inpainting model (9-channel UNet): give a mask with the "
                                 "init", "mask")

    def _unet_in_channels(self) -> int:
        return int(self.manifest["unet"].get("in_channels") or self.manifest["latent_channels"])

    def _schedule(self, req: GenerateRequest):
        """The scheduler for a resolved request, and the index of its first step: with an init, diffusers'
        get_timesteps cut (the last int(steps x strength) run), or for LCM a schedule drawn from the
        low-noise part (its img2img pipeline's semantics)."""
        scheduler = make_scheduler(req.scheduler, self.manifest["scheduler"]["config"])
        if req.init is not None and scheduler.schedule_strength:
            scheduler.set_timesteps(req.steps, strength=req.strength)
            return scheduler, 0
        factor = self.manifest["vae_scale_factor"]
        self.parts.set_timesteps(scheduler, req.steps, req.height // factor, req.width // factor)
        start = first_step(req.steps, req.strength) * scheduler.order if req.init is not None else 0
        return scheduler, start

    def denoising_steps(self, req: GenerateRequest) -> int:
        """UNet steps a resolved request runs (its progress total): the steps strength keeps, PNDM's extra one."""
        scheduler, start = self._schedule(req)
        return len(scheduler.timesteps) - start

    def _uses_cfg(self, req: GenerateRequest) -> bool:
        """Classifier-free guidance: the UNet sees [unconditional, conditional], twice the batch."""
        return self.parts.uses_cfg(req)

    def memory_estimate(self, req: GenerateRequest) -> memory.Estimate | None:
        """The peak a resolved request holds, from the package's memory profile (None without one)."""
        if req.target_size:
            out_w, out_h = req.target_size, max(1, round(req.target_size * req.height / req.width))
        else:
            out_w, out_h = req.width, req.height
        kind = "backdrop" if req.kind == "backdrop" else ("pbr" if req.pbr else "texture")
        return memory.estimate(self.manifest, width=req.width, height=req.height,
                               batch=req.count * (2 if self._uses_cfg(req) else 1), output_pixels=out_w * out_h,
                               output_kind=kind, controlnets=tuple(c.name for c in req.controls),
                               encodes=req.init is not None)

    def _check_memory(self, req: GenerateRequest) -> None:
        """Refuse, before anything runs, a request this machine cannot hold: with the estimate, the model's
        own size and the way to a larger texture (generate at that size, resize the output)."""
        budget = self.memory_budget
        need = self.memory_estimate(req) if budget is not None else None
        if need is None or need.bytes <= budget:
            return
        m = self.manifest
        native_h, native_w = m["native_size"]
        images = f" x {req.count} images" if req.count > 1 else ""
        target = min(MAX_SIDE, 1 << max(req.width, req.height, 16).bit_length() - 1)
        one = dataclasses.replace(req, count=1)
        fewer = req.count > 1 and (self.memory_estimate(one).bytes <= budget)
        raise memory.InsufficientMemory(
            f"{req.width} x {req.height}{images} needs about {memory.gigabytes(need.bytes)} ({need.stage}), more "
            f"than the {memory.gigabytes(budget)} this machine can give (estimated from {m['model_id']}'s memory "
            f"profile). {m['model_id']} generates at {native_w} x {native_h}: for a larger texture, generate at "
            f"that size and resize the output: --target-size {target} on the command line, target_size in a "
            f"request or job file, Texture Size in Blender's panel"
            + ("; or ask for fewer images at once (count)" if fewer else ""),
            "count" if fewer else ("width" if req.width >= req.height else "height"))

    # --- the loop ------------------------------------------------------------------------------------

    def generate(self, request: GenerateRequest, callback: ProgressCallback | None = None,
                 noise: Noise | None = None) -> GenerationResult:
        """Image i of a call with seed s is the image seed s + i gives alone (batches, retries and
        resumes reproduce). ``noise`` replaces the seeded draws (tests: the random numbers diffusers drew).

        One loop for every kind of request: text to image starts from noise at the first timestep; an init
        starts at the first timestep ``strength`` keeps, from the init's latents noised there; the per-condition
        pieces (``conditioning.StepCondition``: inpainting now, ControlNet units next) add UNet inputs before
        each step and adjust the latents after it."""
        t0 = time.perf_counter()
        req = self.resolve(request)
        m = self.manifest
        count, factor = req.count, m["vae_scale_factor"]
        h, w = req.height // factor, req.width // factor
        scheduler, start = self._schedule(req)
        seeds = [req.seed + i for i in range(count)]
        rngs = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
        shape = (m["latent_channels"], h, w)
        if noise is None:
            noise = Noise.seeded(rngs, shape, image=req.init is not None)
        noise.check((count, *shape))

        notes: list[str] = []
        cond = self.parts.conditioning(req, notes)
        pieces, image = [], None
        if req.init is None:
            latents = noise.latents.astype(np.float32) * np.float32(scheduler.init_noise_sigma)
        else:
            image = self._image_inputs(req, notes)
            latents, pieces = self._image_start(req, image, scheduler, start, noise, notes)
        t_encoded = time.perf_counter()

        cfg = cond.pop("cfg")
        batch = count * (2 if cfg else 1)
        constants = {k: np.repeat(v, count, axis=0) for k, v in cond.items()}
        unet = self.parts.denoiser(self._unet_runner(m["unet"]["graphs"][req.tile], constants,
                                                     (batch, self._unet_in_channels(), h, w)), req, seeds)
        total = len(scheduler.timesteps) - start
        pieces = self._control_pieces(req, constants, cfg, start, total, notes) + pieces
        control_unet = (self._runner(m["unet"]["control"]["graphs"][req.tile], constants) if req.controls
                        else None)
        for k, i in enumerate(range(start, len(scheduler.timesteps))):
            t = scheduler.timesteps[i]
            model_in = np.concatenate([latents, latents]) if cfg else latents
            model_in = scheduler.scale_model_input(model_in, i)
            feeds = {"sample": model_in.astype(np.float32), "timestep": np.full(batch, t, dtype=np.float32)}
            for piece in pieces:
                feeds = piece.unet_feeds(i, feeds)
            # the residual-input variant when a ControlNet unit is on for this step, else the plain UNet
            noise_pred = (control_unet if "mid_residual" in feeds else unet)(feeds)[0]
            if cfg:
                uncond, text = noise_pred[:count], noise_pred[count:]
                noise_pred = uncond + np.float32(req.guidance) * (text - uncond)
            step_noise = (np.stack([rng.standard_normal(shape, dtype=np.float32) for rng in rngs])
                          if scheduler.stochastic else None)
            latents = scheduler.step(noise_pred, i, latents, noise=step_noise)
            for piece in pieces:
                latents = piece.after_step(i, latents)
            if callback is not None and callback(ProgressEvent(k + 1, total, time.perf_counter() - t0,
                                                               latents)) is False:
                raise Cancelled(f"cancelled after step {k + 1} of {total}")
        t_denoised = time.perf_counter()

        decoder = m["vae_decoder"]["graphs"][req.tile]
        scaled = self._latent_space.to_vae(latents)
        images = []
        for i in range(count):  # one at a time: bounded memory at large sizes, and batch-independent
            last = i == count - 1  # then the arena goes back to the system: an idle sidecar holds no peak
            decoded = self._run(decoder, {"latent": scaled[i:i + 1]}, self._shrink if last else None)[0][0]
            out = np.clip(decoded.transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0).astype(np.float32)
            if image is not None and image.mask is not None and req.keep_unmasked:
                out = image.paste_back(out)
            images.append(out)
        t_done = time.perf_counter()
        timings = {"encode": (t_encoded - t0) * 1e3, "denoise": (t_denoised - t_encoded) * 1e3,
                   "decode": (t_done - t_denoised) * 1e3, "total": (t_done - t0) * 1e3,
                   "per_step": (t_denoised - t_encoded) * 1e3 / max(1, total)}
        return GenerationResult(images, seeds, req, m["model_id"], m["package_hash"], self.provider, timings,
                                notes, loras=list(m.get("loras") or []), embeddings=list(m.get("embeddings") or []))

    # --- image conditioning (docs/conditioning.md) ---------------------------------------------------

    def _control_pieces(self, req: GenerateRequest, constants: dict[str, np.ndarray], cfg: bool, start: int,
                        total: int, notes: list[str]) -> list:
        """The ControlNet units (each controlnet's graph, prepared with the text conditions it takes) and the
        depth channel of SD 2 depth models, as loop pieces (aigc_bridge/engine/controls.py)."""
        m = self.manifest
        pieces: list = []
        if req.controls:
            units = []
            for index, control in enumerate(req.controls):
                entry = m["controlnets"][control.name]
                graph = entry["graphs"][req.tile]
                takes = {i.name for i in self._session(graph).get_inputs()}
                runner = self._runner(graph, {k: v for k, v in constants.items() if k in takes})
                image = controls.control_image(req, index, int(entry.get("conditioning_channels", 3)), req.count,
                                               cfg)
                units.append(controls.ControlUnit(control.name, runner, image, control.scale, control.start,
                                                  control.end, m["latent_channels"]))
            names = [r["name"] for r in m["unet"]["control"]["residuals"]]
            pieces.append(controls.ControlUnits(units, names, start, total))
        if req.depth is not None:
            depth, note = controls.depth_map(req, m["vae_scale_factor"])
            if note:
                notes.append(note)
            pieces.append(controls.DepthChannel(depth))
        return pieces

    def _image_inputs(self, req: GenerateRequest, notes: list[str]) -> ImageInputs:
        """The init (and mask) decoded and fitted to the generation size; what the resize did goes to notes."""
        pixels, note = inputs.fit_to(inputs.decode(req.init, "init"), req.width, req.height, req.tile)
        if note:
            notes.append(f"init {note}")
        mask = None
        if req.mask is not None:
            mask, _ = inputs.fit_to(inputs.decode(req.mask, "mask", grey=True), req.width, req.height, req.tile)
            mask = inputs.blur_mask(mask, req.mask_blur)
        return ImageInputs(pixels, mask)

    def _encode_image(self, pixels: np.ndarray, tile: str, eps: np.ndarray | None, notes: list[str]) -> np.ndarray:
        """[0, 1] pixels -> the denoiser's latents for each draw of ``eps`` (count, C, h, w); ``eps`` None: the
        posterior mean, once. With a tile mode the encoder's circular variant sees the image as periodic."""
        graphs = self.manifest["vae_encoder"]["graphs"]
        graph = graphs.get(tile)
        if graph is None:
            graph = graphs["none"]
            note = (f"this package has no tile_{tile} VAE encoder: the init was encoded without wrapping "
                    "(re-export, or add_encoder_tiles, for a periodic encode)")
            if note not in notes:
                notes.append(note)
        image = (np.float32(2.0) * pixels - np.float32(1.0)).transpose(2, 0, 1)[None].astype(np.float32)
        parameters = self._run(graph, {"image": np.ascontiguousarray(image)})[0]
        return self._latent_space.from_vae(sample_posterior(np.repeat(parameters, 1 if eps is None else len(eps),
                                                                      axis=0), eps))

    def _image_start(self, req: GenerateRequest, image: ImageInputs, scheduler, start: int, noise: Noise,
                     notes: list[str]) -> tuple[np.ndarray, list[StepCondition]]:
        """The starting latents of an image-conditioned call and the loop pieces it needs, as diffusers'
        img2img and inpainting pipelines compute them (same order of operations, float32)."""
        factor = self.manifest["vae_scale_factor"]
        pieces: list[StepCondition] = []
        full_strength = image.mask is not None and req.strength == 1.0
        nine = self._unet_in_channels() == 9
        init_latents = None
        if not (full_strength and nine):
            init_latents = self._encode_image(image.pixels, req.tile, noise.init, notes)
        if full_strength:  # inpainting from pure noise, as diffusers does at strength 1
            latents = noise.latents.astype(np.float32) * np.float32(scheduler.init_noise_sigma)
        else:
            latents = scheduler.add_noise(init_latents, noise.latents, start)
        if image.mask is not None:
            latent_mask = image.mask[::factor, ::factor][None, None]  # nearest, as diffusers' interpolate
            if nine:
                binary = (image.mask >= 0.5).astype(np.float32)
                masked = np.where(binary[..., None] > 0, np.float32(0.5), image.pixels)  # 0 in [-1, 1]
                masked_latents = self._encode_image(masked, req.tile, noise.masked, notes)
                pieces.append(InpaintChannels((latent_mask >= 0.5).astype(np.float32), masked_latents))
            else:
                pieces.append(InpaintBlend(scheduler, latent_mask, init_latents, noise.latents))
        return latents, pieces

    def _conditioning(self, req: GenerateRequest, notes: list[str]) -> dict:
        """UNet inputs that do not change across steps, for one image; ``cfg`` says whether the batch
        is [unconditional, conditional]. Prompts that did not fit add a note to ``notes``."""
        m = self.manifest
        timestep_cond_dim = m["unet"].get("timestep_cond_dim", 0)
        cfg = self._uses_cfg(req)
        hidden, pooled = self._encode(req.prompt, "prompt", notes)
        out: dict = {"cfg": cfg}
        if cfg:
            if not req.negative_prompt and m.get("force_zeros_for_empty_prompt"):
                neg_hidden, neg_pooled = np.zeros_like(hidden), (None if pooled is None else np.zeros_like(pooled))
            else:
                neg_hidden, neg_pooled = self._encode(req.negative_prompt, "negative prompt", notes)
            hidden = np.concatenate([neg_hidden, hidden])
            pooled = None if pooled is None else np.concatenate([neg_pooled, pooled])
        out["encoder_hidden_states"] = hidden
        if m["unet"].get("text_time"):
            rows = hidden.shape[0]
            out["text_embeds"] = pooled
            out["time_ids"] = np.tile(np.array([[req.height, req.width, 0, 0, req.height, req.width]],
                                               dtype=np.float32), (rows, 1))
        if timestep_cond_dim:
            out["timestep_cond"] = guidance_embedding(req.guidance - 1.0, timestep_cond_dim)
        return out

    def _encode(self, text: str, what: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Every text encoder's hidden states, side by side; a truncated text is reported once, however
        many tokenizers cut it (the longest loss)."""
        hidden, pooled, dropped = [], None, ("", 0)
        for encoder, tokenizer in zip(self._encoders, self._tokenizers):
            tokens = tokenizer(text)
            if len(tokens.dropped) > len(dropped[0]):
                dropped = (tokens.dropped, tokenizer.max_length)
            outputs = self._run(encoder.graph, {"input_ids": tokens.ids})
            hidden.append(outputs[0])
            if encoder.pooled:
                pooled = outputs[1]
        if dropped[0]:
            notes.append(truncation_message(what, dropped[1], dropped[0]))
        return np.concatenate(hidden, axis=-1), pooled


def guidance_embedding(w: float, dim: int) -> np.ndarray:
    """The sinusoidal guidance-scale embedding LCM-distilled UNets take as ``timestep_cond``."""
    half = dim // 2
    freqs = np.exp(np.arange(half, dtype=np.float32) * -(np.log(np.float32(10000.0)) / (half - 1)))
    angles = np.float32(w * 1000.0) * freqs[None, :]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)
