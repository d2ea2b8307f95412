"""The worker thread: the only thread that runs the engine. It takes jobs from the board, runs them with a
step callback (progress, previews, cancel within one step) and posts what to send to the socket loop,
which alone owns the ROUTER socket (zmq sockets are not thread-safe).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

import zmq

from ..assets.outputs import build_outputs
from ..errors import AigcError, Cancelled
from ..protocol import error_content
from ..seamless import run_request
from ..upscale import own_upscaler
from .jobs import Job, JobBoard
from .preview import latent_preview

log = logging.getLogger("aigc_bridge.server")
_STEM = "image"  # output files are named stem + suffix; the client picks its own stem
_IN_REQUEST = ("prompt", "negative_prompt")  # left out of per-image metadata; clients copy them back


@dataclass(frozen=True)
class Outgoing:
    """A message for the socket loop to encode and send to ``job``'s newest attempt. ``final`` marks
    the job's last message (result or error)."""

    job: Job
    msg_type: str
    content: dict
    buffers: tuple[bytes, ...] = ()
    final: bool = False


class Worker(threading.Thread):
    """Runs jobs one at a time. ``wake_endpoint``: the loop's inproc PULL socket; each posted message is
    put on ``outbox`` and announced there, so the loop wakes without polling."""

    def __init__(self, pipeline, board: JobBoard, context: zmq.Context, wake_endpoint: str,
                 preview_interval_s: float | None = 0.5) -> None:
        super().__init__(name="aigc-bridge-worker", daemon=True)
        self.pipeline = pipeline
        self.board = board
        self.outbox: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        self._context = context
        self._wake_endpoint = wake_endpoint
        self._wake: zmq.Socket | None = None
        self._preview_interval_s = preview_interval_s
        self._family = pipeline.manifest.get("family", "") if pipeline is not None else ""

    def run(self) -> None:
        self._wake = self._context.socket(zmq.PUSH)
        self._wake.linger = 0
        self._wake.connect(self._wake_endpoint)
        try:
            while (job := self.board.take()) is not None:
                self._run(job)
        finally:
            self._post(None)  # tells the loop the worker is gone
            self._wake.close()

    def _post(self, item: Outgoing | None) -> None:
        if item is not None:
            self.outbox.put(item)
        with contextlib.suppress(zmq.Again):  # wake-ups are pending already: the loop will drain
            self._wake.send(b"", flags=zmq.NOBLOCK)  # type: ignore[union-attr]

    def _run(self, job: Job) -> None:
        if job.project is not None:
            self._run_project(job)
            return
        req = job.resolved
        last_preview = time.monotonic()

        def on_step(event) -> bool:
            nonlocal last_preview
            job.step = event.step
            if job.cancel.is_set():
                return False
            job.stage = "decoding" if event.step == event.total else "denoising"
            content = {"step": event.step, "total": event.total, "count": req.count, "stage": "denoising",
                       "elapsed_s": round(event.elapsed_s, 6)}
            buffers: tuple[bytes, ...] = ()
            now = time.monotonic()
            if self._preview_interval_s is not None and now - last_preview >= self._preview_interval_s:
                preview = latent_preview(event.latents, self._family)
                if preview is not None:
                    last_preview = now
                    content["buffers"] = [{"index": 0, "mime": "image/png", "role": "preview"}]
                    buffers = (preview,)
            self._post(Outgoing(job, "progress", content, buffers))
            return True

        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started")
            job.stage = "denoising"
            result = run_request(self.pipeline, req, callback=on_step)
            if job.cancel.is_set():  # flagged after the last step: the client was told it is cancelled
                raise Cancelled(f"cancelled after step {job.step} of {req.steps}")
            job.stage = "writing"
            self._post(self._result(job, result))
        except AigcError as exc:
            extra = {"step": job.step} if isinstance(exc, Cancelled) else {}
            self._post(Outgoing(job, "error", error_content(exc, **extra), final=True))
        except Exception as exc:  # an engine bug must not kill the worker: the job fails, the next runs
            log.exception("job %s failed", job.request_key[:8])
            err = AigcError("internal", f"the server failed on this job ({type(exc).__name__}: {exc})")
            self._post(Outgoing(job, "error", error_content(err), final=True))

    def _result(self, job: Job, result) -> Outgoing:
        t0 = time.perf_counter()
        req = result.request
        # The prompts travel once, in "request": 16 copies of a 100k-character prompt would not fit.
        metadata = [{k: v for k, v in result.metadata(i).items() if k not in _IN_REQUEST}
                    for i in range(len(result.seeds))]
        upscaler = own_upscaler(self.pipeline, req)
        files = [build_outputs(image, result.metadata(i), _STEM, kind=req.kind, pbr=req.pbr,
                               target_size=req.target_size, normal_convention=req.normal_convention,
                               bit_depth=req.bit_depth, exr=req.format == "exr", upscaler=upscaler)
                 for i, image in enumerate(result.images)]
        png_s = time.perf_counter() - t0
        t = result.timings_ms
        timings = {"queue_s": round((job.started or job.submitted) - job.submitted, 6),
                   "encode_s": t["encode"] / 1e3, "denoise_s": t["denoise"] / 1e3,
                   "decode_s": t["decode"] / 1e3, "png_s": round(png_s, 6), "total_s": t["total"] / 1e3}
        buffers: list[bytes] = []
        descriptors: list[dict] = []
        images = []
        for i, outputs in enumerate(files):
            entry = {"seed": result.seeds[i], "model_id": result.model_id, "model_hash": result.package_hash,
                     "provider": result.provider, "timings": timings, "metadata": metadata[i], "outputs": []}
            for out in outputs:
                index = len(buffers)
                buffers.append(out.data)
                size = {"width": out.width, "height": out.height} if out.width else {}
                descriptors.append({"index": index, "mime": out.mime, "role": out.role, **size})
                if out.role == "image":
                    entry["buffer"] = index
                else:
                    entry["outputs"].append({"buffer": index, "role": out.role,
                                             "suffix": out.filename[len(_STEM):], "colour_space": out.colour_space})
            images.append(entry)
        content = {
            "images": images,
            "request": req.to_dict(),
            "composed_prompt": {"prompt": req.prompt, "negative_prompt": req.negative_prompt,
                                "truncated": any("truncated" in w for w in result.warnings)},
            "warnings": [w[:1024] for w in result.warnings[:32]],
            "buffers": descriptors,
        }
        return Outgoing(job, "result", content, tuple(buffers), final=True)

    # --- project: texture meshes from their shape ----------------------------------------------------------

    def _run_project(self, job: Job) -> None:
        """The multi-view loop on this worker's pipeline: progress per view stage, cancel between views (and
        between the steps of a view's generation), the textures as PNG buffers."""
        from ..projection import service
        from ..projection.loop import LoopState

        prepared = job.project
        state = LoopState(total=len(prepared.cameras))
        started = time.perf_counter()

        def on_progress(s: LoopState) -> None:
            job.step, job.stage = s.done, s.stage
            if job.cancel.is_set():
                s.cancel()
            content = {"step": s.done, "total": s.total, "stage": s.stage,
                       "elapsed_s": round(time.perf_counter() - started, 6)}
            self._post(Outgoing(job, "progress", content))

        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started")
            baked = service.run(prepared, self.pipeline, state=state, on_progress=on_progress)
            self._post(self._project_result(job, baked, time.perf_counter() - started))
        except AigcError as exc:
            extra = {"step": job.step} if isinstance(exc, Cancelled) else {}
            self._post(Outgoing(job, "error", error_content(exc, **extra), final=True))
        except Exception as exc:
            log.exception("project job %s failed", job.request_key[:8])
            err = AigcError("internal", f"the server failed on this job ({type(exc).__name__}: {exc})")
            self._post(Outgoing(job, "error", error_content(err), final=True))

    def _project_result(self, job: Job, baked, total_s: float) -> Outgoing:
        result = baked.result
        size = job.project.options.texture_size
        textures = [{"mesh": mesh.name, "buffer": i, "coverage": round(min(1.0, cov), 6), "width": size,
                     "height": size}
                    for i, (mesh, cov) in enumerate(zip(job.project.meshes, result.coverage))]
        views = [{"name": v.name, "generated": v.generated, "repainted": int(v.repainted),
                  "coverage": round(min(1.0, v.coverage), 6), "generate_s": round(v.generate_s, 6),
                  "bake_s": round(v.bake_s, 6)} for v in result.views]
        m = self.pipeline.manifest
        content = {"textures": textures, "views": views, "mode": baked.mode, "mode_text": baked.mode_text,
                   "warnings": [w[:4000] for w in result.warnings[:256]],
                   "timings": {"total_s": round(total_s, 6),
                               "generate_s": round(sum(v.generate_s for v in result.views), 6),
                               "bake_s": round(sum(v.bake_s for v in result.views), 6)},
                   "model_id": m["model_id"], "model_hash": m["package_hash"],
                   "buffers": [{"index": i, "mime": "image/png", "role": "texture", "width": size, "height": size}
                               for i in range(len(baked.pngs))]}
        return Outgoing(job, "project_result", content, tuple(baked.pngs), final=True)
