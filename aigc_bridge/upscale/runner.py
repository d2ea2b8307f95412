"""Running an upscaler: the whole image in one call when it fits the memory bound, else tiles with overlap.

Tiles: the image is cut into squares of ``tile_size`` input pixels; each runs with ``context`` pixels of its
neighbourhood on every side (taken around the wrap on the axes that wrap, so tiled output of a tileable image
tiles too; cut off at the border on the others, where the whole-image graph would zero-pad as well) and only its
own square of the output is kept. Away from the context's reach the result equals whole-image inference; there is
no blending, so there is no grid of blended bands either.

Tileable output without tiles: the package's circular-padding graph (exact, for architectures whose every
padding is a convolution's) or, where the exporter left that out, the plain graph on the image with wrapped
context around it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..assets.periodic import wrap_axes
from ..errors import AigcError, Cancelled, InvalidRequest
from .package import UpscalerPackage

DEFAULT_MEMORY_LIMIT = 2 * 2**30  # bytes: 1024 -> 4096 px fits (the bound)
MIN_TILE = 32
UPSCALER_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")

Progress = Callable[[int, int], "bool | None"]  # (tiles done, tiles in all) -> False to cancel


class Upscaler:
    """A loaded upscaler. ``tile_size``: None = whole image when it fits ``memory_limit`` (bytes), else the
    largest tiles that fit; 0 = never tile (an image over the bound is refused, with the advice to tile);
    N = tiles of N input pixels."""

    def __init__(self, package: UpscalerPackage, provider: str | None = None, threads: int | None = None,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT, tile_size: int | None = None) -> None:
        from ..engine.providers import choose_providers, import_onnxruntime

        if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, int)
                                      or (tile_size and tile_size < MIN_TILE)):
            raise InvalidRequest(f"tile_size must be 0 (no tiling) or at least {MIN_TILE} pixels, got {tile_size}",
                                 "tile_size")
        if not isinstance(memory_limit, (int, float)) or memory_limit <= 0:
            raise InvalidRequest(f"memory_limit must be a positive number of bytes, got {memory_limit}",
                                 "memory_limit")
        ort = import_onnxruntime()
        self.package = package
        self.manifest = package.manifest
        self.memory_limit = int(memory_limit)
        self.tile_size = tile_size
        self.progress: Progress | None = None  # the default for calls that pass none (a CLI's progress bar)
        self._providers = choose_providers(provider)
        self._options = ort.SessionOptions()
        self._options.log_severity_level = 3
        self._options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._options.enable_mem_pattern = False  # as the memory profile was measured (and the engine runs)
        if threads:
            self._options.intra_op_num_threads = threads
        self._release = ort.RunOptions()  # hand the arena's memory back after each call (tile)
        if self._providers[0] == "CPUExecutionProvider":
            self._release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._sessions: dict[str, object] = {}
        req = self.manifest["size_requirements"]
        self._multiple = max(1, int(req.get("multiple_of", 1)))
        self._minimum = max(int(req.get("minimum", 0)), self._multiple)

    @classmethod
    def load(cls, path: str | Path, **options) -> Upscaler:
        return cls(UpscalerPackage.load(path), **options)

    @property
    def scale(self) -> int:
        return self.package.scale

    @property
    def name(self) -> str:
        return self.package.model_id

    def describe(self) -> dict:
        """For provenance: which upscaler, exactly."""
        return {"model_id": self.name, "architecture": self.manifest["architecture"], "scale": self.scale,
                "package_hash": self.package.package_hash}

    # --- memory ---------------------------------------------------------------------------------------

    def estimate_bytes(self, height: int, width: int) -> int:
        """Peak memory of one graph call on a ``height`` x ``width`` input: the weights, the arena peak the
        exporter measured (interpolated, with the engine's safety factor: aigc_bridge.engine.memory), and the
        call's input and output arrays."""
        from ..engine.memory import SAFETY, GraphProfile

        mem = self.manifest["memory"]
        profile = GraphProfile.from_manifest(mem["graphs"][self.manifest["graphs"]["none"]])
        arrays = 4 * 3 * height * width * (1 + self.scale * self.scale)
        return int(mem["weights_bytes"] + SAFETY * profile.peak(height * width, 1) + arrays)

    def plan(self, height: int, width: int) -> int | None:
        """The tile size for an image (None: the whole image in one call); refuses what cannot fit."""
        s = self.scale
        result_bytes = 4 * 3 * height * width * (1 + s * s)  # the input and the assembled output
        context = self.manifest["context"]
        whole = self.estimate_bytes(height + 2 * context, width + 2 * context) + result_bytes
        gib = 2**30
        if self.tile_size == 0:
            if whole > self.memory_limit:
                raise InvalidRequest(
                    f"upscaling {width}x{height} in one piece needs about {whole / gib:.1f} GB, over the memory "
                    f"bound of {self.memory_limit / gib:.1f} GB: let it tile (leave out --tile-size 0, or pass "
                    "--tile-size 256) or raise --memory-limit", "tile_size")
            return None
        if self.tile_size is None and whole <= self.memory_limit:
            return None
        if self.tile_size:
            tile = self.tile_size
        else:  # the largest tile whose window fits: the estimate grows with the area, so halve until it does
            tile = max(height, width)
            while tile > MIN_TILE and (self.estimate_bytes(tile + 2 * context, tile + 2 * context) + result_bytes
                                       > self.memory_limit):
                tile = max(MIN_TILE, int(tile / 1.25))
            tile = max(MIN_TILE, tile // self._multiple * self._multiple)
        needed = self.estimate_bytes(tile + 2 * context, tile + 2 * context) + result_bytes
        if tile < MIN_TILE or needed > self.memory_limit:
            raise InvalidRequest(
                f"upscaling {width}x{height} needs about {needed / gib:.2f} GB even in {max(tile, MIN_TILE)} px "
                f"tiles (the {width * s}x{height * s} result alone is {result_bytes / gib:.2f} GB): over the "
                f"memory bound of {self.memory_limit / gib:.1f} GB; raise --memory-limit", "memory_limit")
        return tile if tile < max(height, width) else None

    # --- running --------------------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, tile: str = "none", progress: Progress | None = None) -> np.ndarray:
        """Upscale an H x W x 3 float image in [0, 1]; ``tile`` (both, x, none) says which axes wrap."""
        image = _check_image(image)
        progress = progress or self.progress
        wrap_y, wrap_x = wrap_axes(tile)
        h, w = image.shape[:2]
        size = self.plan(h, w)
        graphs = self.manifest["graphs"]
        if size is None:
            aligned = h % self._multiple == 0 and w % self._multiple == 0 and min(h, w) >= self._minimum
            if tile == "none" or (tile in graphs and aligned):
                out = self._run(graphs[tile] if tile in graphs else graphs["none"], image)
                if progress is not None and progress(1, 1) is False:
                    raise Cancelled("upscaling cancelled")
                return out
            size = max(h, w)  # one tile holding the whole image, with wrapped context round it
        return self._tiled(image, size, wrap_y, wrap_x, progress)

    def _tiled(self, image: np.ndarray, size: int, wrap_y: bool, wrap_x: bool, progress: Progress | None):
        h, w = image.shape[:2]
        s, c = self.scale, self.manifest["context"]
        out = np.empty((h * s, w * s, 3), dtype=np.float32)
        boxes = [(y, x) for y in range(0, h, size) for x in range(0, w, size)]
        for done, (y0, x0) in enumerate(boxes, 1):
            y1, x1 = min(y0 + size, h), min(x0 + size, w)
            rows, top = _window(y0, y1, h, c, wrap_y)
            cols, left = _window(x0, x1, w, c, wrap_x)
            window = image[rows][:, cols]
            result = self._run(self.manifest["graphs"]["none"], window)
            out[y0 * s:y1 * s, x0 * s:x1 * s] = result[top * s:(top + y1 - y0) * s, left * s:(left + x1 - x0) * s]
            if progress is not None and progress(done, len(boxes)) is False:
                raise Cancelled(f"upscaling cancelled after tile {done} of {len(boxes)}")
        return out

    def _run(self, graph: str, image: np.ndarray) -> np.ndarray:
        """One graph call; pads the bottom and right edges up to the architecture's size multiple."""
        h, w = image.shape[:2]
        ph = max(self._minimum, -(-h // self._multiple) * self._multiple) - h
        pw = max(self._minimum, -(-w // self._multiple) * self._multiple) - w
        x = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else image
        try:
            y = self._session(graph).run(None, {"image": np.ascontiguousarray(x.transpose(2, 0, 1)[None])},
                                         self._release)[0]
        except AigcError:
            raise
        except Exception as exc:  # onnxruntime's errors are untyped; name the graph and the size
            raise AigcError("inference_failed", f"{graph} failed on a {w}x{h} input: {exc}", graph) from None
        s = self.scale
        return np.clip(y[0, :, : h * s, : w * s].transpose(1, 2, 0), 0.0, 1.0).astype(np.float32)

    def _session(self, graph: str):
        if graph not in self._sessions:
            from ..engine.providers import open_session

            self._sessions[graph] = open_session(self.package.path(graph), self._options, self._providers, graph)
        return self._sessions[graph]


def _window(start: int, stop: int, length: int, context: int, wrap: bool) -> tuple[np.ndarray, int]:
    """Indices of a tile's span plus ``context`` each side (wrapped, or cut at the border), and where the span
    starts inside them."""
    if wrap:
        context = min(context, length)  # more context than the image would repeat it, to no purpose
        return np.arange(start - context, stop + context) % length, context
    lo, hi = max(0, start - context), min(length, stop + context)
    return np.arange(lo, hi), start - lo


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidRequest(f"the image to upscale must be H x W x 3, got "
                             f"{getattr(image, 'shape', type(image).__name__)}", "image")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise InvalidRequest("the image to upscale has NaN or infinite pixels", "image")
    return np.clip(image, 0.0, 1.0)


def load_upscaler(path: str | Path, **options) -> Upscaler:
    """An upscaler from a folder: an upscaler package, or a text-to-image package that ships one (texture-mini).
    A PyTorch file is refused with the command that exports it."""
    from ..engine.package import read_manifest

    path = Path(path)
    if path.suffix.lower() in UPSCALER_SUFFIXES and path.is_file():
        raise InvalidRequest(f"{path.name} is a PyTorch file: export it once with `aigc-bridge export {path} "
                             f"{path.with_suffix('')}` (needs the export extra), then pass that folder", "upscale")
    manifest = read_manifest(path)
    if manifest.get("format") == "aigc-bridge-model":
        if not manifest.get("upscaler"):
            raise InvalidRequest(f"{path} is a text-to-image model without an upscaler of its own", "upscale")
        path = path / manifest["upscaler"]
    return Upscaler.load(path, **options)


def wants_own_upscaler(manifest: dict, request) -> bool:
    """Whether a request gets the model's own upscaler without asking: a texture with an engine size, from a
    package that ships one. Backdrops are resampled: the model's stage was trained on materials, not skies."""
    return bool(manifest.get("upscaler")) and request.target_size is not None and request.kind == "texture"


def own_upscaler(pipeline, request):
    """``pipeline.upscaler`` where ``wants_own_upscaler``, else None."""
    return pipeline.upscaler if wants_own_upscaler(pipeline.manifest, request) else None
