"""How much memory a request needs, from the model's manifest, and how much this machine can give.

A diffusion model's working memory grows with the square of the latent area (self-attention), so a size
that is fine at 512 px can need hundreds of gigabytes at 4096 px; onnxruntime would then grow its arena
until the machine swaps or the kernel kills the process. The exporter measures each graph's arena peak at
a few sizes (``memory`` in model.json, docs/model-package.md); here a request's need is read off that
table before anything runs, and a request over the budget is refused at once. The budget is also the
limit of the one CPU arena every session shares, so an estimate that is too low still ends in a clear
error, never in swapping.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass

from ..errors import AigcError

# Of what the machine has free when a model loads, what a pipeline may take: the rest is left to the
# operating system, Blender and whatever else the artist runs.
AVAILABLE_SHARE = 0.85
# Measured arena peaks are exact at the profiled sizes; between and beyond them the planner's peak wanders
# (texture-mini's UNet, profiled up to 128 px: at 160, 192 and 256 px the extrapolation is 0.60x, 0.64x and
# 0.95x the measured peak, as two attention-sized buffers are alive at some sizes and one at others), and
# numpy copies, arena fragmentation and per-thread scratch buffers come on top.
SAFETY = 1.75
# Output files per output pixel (float32 copies, PNG encoding, PBR maps, cube faces), measured with
# build_outputs at 1024 and 2048 px (39, 98 and 164 bytes per pixel), with headroom.
OUTPUT_BYTES_PER_PIXEL = {"texture": 48, "pbr": 120, "backdrop": 200}
GIB = 1024**3


class InsufficientMemory(AigcError):
    """A request needs more memory than this machine can give: refused before it runs, or stopped by the
    arena's limit. The sidecar answers it like any other error and keeps serving."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__("insufficient_memory", message, field)


# What onnxruntime's messages say when an allocation fails (BFC arena limit, malloc).
_ALLOCATION_FAILURES = ("available memory of", "failed to allocate", "bad_alloc", "bfcarena", "bfc_arena")


def is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc).casefold()
    return any(marker in text for marker in _ALLOCATION_FAILURES)


@dataclass(frozen=True)
class GraphProfile:
    """A graph's measured arena peak (bytes, batch 1) at increasing latent areas (latent height x width)."""

    areas: tuple[float, ...]
    peaks: tuple[float, ...]
    batch2_ratio: float  # peak at batch 2 / peak at batch 1, at the largest area

    @classmethod
    def from_manifest(cls, entry: dict) -> GraphProfile:
        return cls(tuple(float(a) for a in entry["latent_areas"]), tuple(float(p) for p in entry["peak_bytes"]),
                   float(entry.get("batch2_ratio", 2.0)))

    def peak(self, area: float, batch: int) -> float:
        """Log-log interpolation between measured areas; beyond the largest, a linear (convolutions) plus
        quadratic (self-attention) term through the last two measurements: no part grows faster."""
        areas, peaks = self.areas, self.peaks
        if area <= areas[0]:
            one = peaks[0]
        elif area >= areas[-1]:
            one = _extrapolate(areas[-2:], peaks[-2:], area)
        else:
            k = next(i for i in range(1, len(areas)) if area <= areas[i])
            t = math.log(area / areas[k - 1]) / math.log(areas[k] / areas[k - 1])
            one = math.exp(math.log(peaks[k - 1]) + t * (math.log(peaks[k]) - math.log(peaks[k - 1])))
        return one * (1.0 + (batch - 1) * max(self.batch2_ratio - 1.0, 0.0))


def _extrapolate(areas: tuple[float, ...], peaks: tuple[float, ...], area: float) -> float:
    """peak = a * A + c * A**2 through the last two points, with a, c >= 0."""
    if len(areas) < 2:
        return peaks[-1] * (area / areas[-1]) ** 2
    (a1, a2), (p1, p2) = areas, peaks
    c = (p2 / a2 - p1 / a1) / (a2 - a1)
    if c <= 0:
        return p2 * area / a2
    a = p1 / a1 - c * a1
    if a < 0:
        return p2 * (area / a2) ** 2
    return a * area + c * area * area


@dataclass(frozen=True)
class Estimate:
    """The most a request holds at once (bytes), and which stage that is."""

    bytes: float
    stage: str
    parts: dict[str, float]


def estimate(manifest: dict, *, width: int, height: int, batch: int, output_pixels: int,
             output_kind: str, controlnets: tuple[str, ...] = (), encodes: bool = False) -> Estimate | None:
    """The request's peak: the largest of its stages (they run one after the other and share the arena).
    ``controlnets``: the names of the request's ControlNet units; ``encodes``: an init image goes through the
    VAE encoder first (image to image, inpainting). None when the package carries no memory profile (exported
    before profiles existed)."""
    graphs = (manifest.get("memory") or {}).get("graphs")
    if not graphs:
        return None
    factor = manifest["vae_scale_factor"]
    area = (height // factor) * (width // factor)
    parts: dict[str, float] = {}
    unet = graphs.get(manifest["unet"]["graphs"]["none"])
    if unet is not None:
        parts["denoising"] = GraphProfile.from_manifest(unet).peak(area, batch) * SAFETY
    if controlnets and manifest["unet"].get("control"):
        parts["denoising"] = _control_peak(manifest, graphs, controlnets, area, batch, parts.get("denoising", 0.0))
    decoder = graphs.get(manifest["vae_decoder"]["graphs"]["none"])
    if decoder is not None:  # images are decoded one at a time
        parts["decoding"] = GraphProfile.from_manifest(decoder).peak(area, 1) * SAFETY
    encoder = graphs.get(manifest.get("vae_encoder", {}).get("graphs", {}).get("none", "")) if encodes else None
    if encoder is not None:  # once per call (twice for 9-channel inpainting, one after the other)
        parts["encoding"] = GraphProfile.from_manifest(encoder).peak(area, 1) * SAFETY
    parts["outputs"] = float(output_pixels * OUTPUT_BYTES_PER_PIXEL[output_kind])
    stage = max(parts, key=parts.get)
    return Estimate(parts[stage], stage, parts)


def _control_peak(manifest: dict, graphs: dict, controlnets: tuple[str, ...], area: float, batch: int,
                  plain: float) -> float:
    """With ControlNet units a step runs each controlnet, then the residual-input UNet, one after the other
    in the shared arena; their residuals (each unit's, scaled, and the running sum) live in numpy meanwhile."""
    control = manifest["unet"]["control"]
    peaks = [plain]
    for graph in [control["graphs"]["none"]] + [manifest["controlnets"][n]["graphs"]["none"] for n in controlnets]:
        if graph in graphs:
            peaks.append(GraphProfile.from_manifest(graphs[graph]).peak(area, batch) * SAFETY)
    residual_floats = sum(r["channels"] * area / (r["downscale"] ** 2) for r in control["residuals"])
    return max(peaks) + 3 * batch * residual_floats * 4


def available_bytes() -> int | None:
    """Memory the machine can give right now without swapping (None where we cannot tell)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    if sys.platform == "win32":
        class _Status(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total_phys", ctypes.c_ulonglong),
                        ("avail_phys", ctypes.c_ulonglong), ("total_page", ctypes.c_ulonglong),
                        ("avail_page", ctypes.c_ulonglong), ("total_virtual", ctypes.c_ulonglong),
                        ("avail_virtual", ctypes.c_ulonglong), ("avail_extended", ctypes.c_ulonglong)]

        status = _Status()
        status.length = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.avail_phys)
        return None
    try:  # macOS and other Unixes: no cheap "available" figure (compressed memory, caches): a share of RAM
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(total * 0.7)


def default_budget() -> int | None:
    """What a pipeline loaded now may use: a share of the memory available at this moment."""
    free = available_bytes()
    return None if free is None else int(free * AVAILABLE_SHARE)


def gigabytes(n: float) -> str:
    if n >= 1024 * GIB:
        return f"{n / (1024 * GIB):,.0f} TB"
    return f"{n / GIB:.1f} GB" if n >= 0.1 * GIB else f"{n / 2**20:.0f} MB"


_ARENA_LIMIT: int | None = None


def shared_cpu_arena(limit: int) -> int:
    """Register the process-wide CPU arena every session uses (``session.use_env_allocators``), capped at
    ``limit`` bytes; it grows by what is asked (not by powers of two) and is shrunk after each generation.
    onnxruntime keeps one per process: the first limit stays, and is returned (a later, smaller budget
    is still what its pipeline checks requests against)."""
    global _ARENA_LIMIT
    if _ARENA_LIMIT is None:
        from .providers import import_onnxruntime

        ort = import_onnxruntime()
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # max_mem, arena_extend_strategy 1 = kSameAsRequested, initial chunk and dead bytes: defaults
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(int(limit), 1, -1, -1))
        _ARENA_LIMIT = int(limit)
    return _ARENA_LIMIT
