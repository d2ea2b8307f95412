"""Run the texture-mini evaluation against a model package, through the runtime only (no torch).

Prompt sets: held-out captions (trained colour x family pairs, caption strings never trained), held-out
combinations (colour x family pairs never trained), and, for reference, trained captions. Every image
is generated with tile "both" at the model's native size and recommended steps and guidance.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..assets.seams import seam_ratio
from ..texture_data import COLOURS, FAMILIES, HELD_OUT_COMBOS, Spec, caption_for, render, sample
from .colour import colour_name
from .metrics import pairwise_distance
from .patterns import PatternClassifier, blur

TARGETS = {"colour": 0.85, "pattern": 0.50}  # issue 4's bar, on held-out prompts
SETS = ("heldout_caption", "heldout_combo", "train")
BACKDROP_PROMPTS = ("sky at sunset", "night sky", "overcast sky", "clear blue sky")


def eval_prompts(split: str, count: int, seed: int = 0) -> list[tuple[str, Spec]]:
    """``count`` distinct (caption, spec) pairs of a split; held-out combinations are cycled evenly."""
    rng = np.random.default_rng([seed, 99])
    out: dict[str, Spec] = {}
    index = 0
    combos = sorted(HELD_OUT_COMBOS)
    while len(out) < count and index < 100 * count:
        if split == "heldout_combo":
            colour, family = combos[index % len(combos)]
            spec = Spec("texture", family, colour, ("small", "medium", "large")[rng.integers(3)],
                        ("clean", "plain", "weathered")[rng.integers(3)],
                        ("horizontal", "vertical", "diagonal")[rng.integers(3)] if family == "stripes" else None)
            caption = caption_for(spec, rng)
        else:
            s = sample(seed + 1000, index, split)
            caption, spec = s.caption, s.spec
        index += 1
        if spec.colour is not None and spec.colour in caption.split() and caption not in out:  # scorable
            out[caption] = spec
    return list(out.items())


def run_eval(model_dir: str | Path, *, seed: int = 0, prompts_per_set: int = 16, seeds_per_prompt: int = 4,
             steps: int | None = None, guidance: float | None = None, provider: str = "cpu",
             threads: int | None = None, references: int = 240, classifier_per_family: int = 150,
             log: Callable[[str], None] | None = None) -> dict:
    """Generate, score and summarise; returns a JSON-ready dict (``format_report`` prints it).

    ``references`` real images measure the rulers (and the VAE's ceiling); ``classifier_per_family``
    sizes the pattern classifier's reference set (tests shrink both)."""
    from ..engine import Pipeline
    from ..request import GenerateRequest

    log = log or (lambda _msg: None)
    t0 = time.perf_counter()
    pipe = Pipeline.load(model_dir, provider=provider, threads=threads)
    m = pipe.manifest
    size = tuple(m["native_size"])
    log(f"fitting the pattern classifier on {size[0]}px references")
    classifier = PatternClassifier.fit(size=size[0], per_family=classifier_per_family)
    report: dict = {"model_id": m["model_id"], "package_hash": m["package_hash"], "native_size": list(size),
                    "seeds_per_prompt": seeds_per_prompt, "sets": {}}
    images_by_set: dict[str, list[tuple[str, Spec, list[np.ndarray]]]] = {}
    generated = 0
    t_gen = 0.0
    for split in SETS:
        rows = []
        for k, (prompt, spec) in enumerate(eval_prompts(split, prompts_per_set, seed)):
            req = GenerateRequest(prompt, steps=steps, guidance=guidance, seed=seed * 10_000 + k * 100,
                                  count=seeds_per_prompt, tile="both")
            t = time.perf_counter()
            result = pipe.generate(req)
            t_gen += time.perf_counter() - t
            generated += len(result.images)
            report.setdefault("settings", {"steps": result.request.steps, "guidance": result.request.guidance,
                                           "scheduler": result.request.scheduler})
            rows.append((prompt, spec, result.images))
        images_by_set[split] = rows
        report["sets"][split] = _score(rows, classifier)
        log(f"{split}: colour {report['sets'][split]['colour']:.0%}, "
            f"pattern {report['sets'][split]['pattern']:.0%}")
    held = [row for split in ("heldout_caption", "heldout_combo") for row in images_by_set[split]]
    report["heldout"] = _score(held, classifier)
    report["meets_targets"] = {k: report["heldout"][k] >= v for k, v in TARGETS.items()}
    all_rows = [row for rows in images_by_set.values() for row in rows]
    report["tileability"] = _tileability(pipe, all_rows, seed)
    report["diversity"] = _diversity(all_rows, seed)
    report["references"] = _references(pipe, classifier, size[0], seed, references)
    report["backdrops"] = _backdrops(pipe, size, seed)
    if pipe.upscaler is not None:
        log(f"scoring the upscaled held-out images (x{pipe.upscaler.scale})")
        report["upscaled"] = score_upscaled(pipe.upscaler, held, seed, classifier_per_family, references,
                                            roundtrip=lambda images: _vae_roundtrip(pipe, images, "both"))
    report["timing"] = {"total_s": round(time.perf_counter() - t0, 1),
                        "per_image_ms": round(1000 * t_gen / max(1, generated), 1), "images": generated}
    return report


def _score(rows: list[tuple[str, Spec, list[np.ndarray]]], classifier: PatternClassifier) -> dict:
    colour_hits, pattern_hits = [], []
    per_colour: dict[str, list[bool]] = defaultdict(list)
    per_family: dict[str, list[bool]] = defaultdict(list)
    confusions: Counter = Counter()
    for _prompt, spec, images in rows:
        patterns = classifier.predict(images)
        for image, pattern in zip(images, patterns):
            colour = colour_name(image)
            colour_hits.append(colour == spec.colour)
            pattern_hits.append(pattern == spec.family)
            per_colour[spec.colour].append(colour == spec.colour)
            per_family[spec.family].append(pattern == spec.family)
            if pattern != spec.family:
                confusions[f"{spec.family}->{pattern}"] += 1
    return {"prompts": len(rows), "images": len(colour_hits),
            "colour": float(np.mean(colour_hits)) if colour_hits else 0.0,
            "pattern": float(np.mean(pattern_hits)) if pattern_hits else 0.0,
            "per_colour": {k: round(float(np.mean(v)), 3) for k, v in sorted(per_colour.items())},
            "per_family": {k: round(float(np.mean(v)), 3) for k, v in sorted(per_family.items())},
            "top_confusions": dict(confusions.most_common(5))}


def _tileability(pipe, rows, seed: int) -> dict:
    """Seam / interior difference ratios of the tile "both" images; of real images of the same specs, rolled
    by a random offset (periodic by construction, so this is the ruler's own spread: a stripe or grid edge
    that happens to fall on the wrap scores high without any seam; unrolled, the data's grids start at the
    border); and of a few tile "none" images of the same prompts for contrast."""
    from ..request import GenerateRequest

    both = [seam_ratio(img, axis) for _p, _s, images in rows for img in images for axis in (0, 1)]
    rng = np.random.default_rng([seed, 11])
    real = []
    for _p, spec, images in rows:
        for img in images:
            rolled = np.roll(render(spec, rng, img.shape[0]), tuple(rng.integers(img.shape[:2])), axis=(0, 1))
            real += [seam_ratio(rolled, axis) for axis in (0, 1)]
    none = []
    for prompt, _spec, _images in rows[:: max(1, len(rows) // 8)]:
        result = pipe.generate(GenerateRequest(prompt, seed=seed, count=2, tile="none"))
        none += [seam_ratio(img, axis) for img in result.images for axis in (0, 1)]
    return {"both": _summary(both), "real": _summary(real), "none": _summary(none)}


def _summary(values: list[float]) -> dict:
    arr = np.asarray(values)
    return {"mean": round(float(arr.mean()), 3), "p95": round(float(np.percentile(arr, 95)), 3),
            "max": round(float(arr.max()), 3)} if len(arr) else {}


def _diversity(rows, seed: int) -> dict:
    """Pairwise differences between the seeds of one prompt, next to the same measure on real images of
    the same specs (the data's own variety)."""
    generated = [d for _p, _s, images in rows for d in pairwise_distance(images)]
    rng = np.random.default_rng([seed, 7])
    real = []
    for _prompt, spec, images in rows:
        real += pairwise_distance([render(spec, rng, images[0].shape[0]) for _ in images])
    return {"mean_pairwise_l1": round(float(np.mean(generated)), 4),
            "distinct_pairs": round(float(np.mean(np.asarray(generated) > 0.01)), 3),
            "real_mean_pairwise_l1": round(float(np.mean(real)), 4)}


def _references(pipe, classifier: PatternClassifier, size: int, seed: int, count: int = 240) -> dict:
    """The rulers on real data: classifier and colour accuracy on fresh images, blurred images, and images
    sent through the package's own VAE (encoder mean -> decoder): the VAE caps what the model can reach."""
    samples = [sample(seed + 2000, i, "any", size) for i in range(count)]
    truth = [s.spec.family for s in samples]
    real = [s.image for s in samples]

    def acc(images):
        return round(float(np.mean([p == t for p, t in zip(classifier.predict(images), truth)])), 3)

    out = {"pattern_real": acc(real), "pattern_real_blur1": acc([blur(x, 1.0) for x in real]),
           "colour_real": round(float(np.mean([colour_name(s.image) == s.spec.colour for s in samples])), 3)}
    roundtrip = _vae_roundtrip(pipe, real)
    if roundtrip is not None:
        out["pattern_vae_roundtrip"] = acc(roundtrip)
        out["colour_vae_roundtrip"] = round(float(np.mean(
            [colour_name(x) == s.spec.colour for x, s in zip(roundtrip, samples)])), 3)
        out["psnr_vae_roundtrip_db"] = round(float(np.mean(
            [10 * np.log10(1 / max(np.mean((x - y) ** 2), 1e-10)) for x, y in zip(roundtrip, real)])), 2)
    return out


def score_upscaled(upscaler, rows, seed: int, classifier_per_family: int = 150, references: int = 240,
                   roundtrip: Callable[[list[np.ndarray]], list[np.ndarray] | None] | None = None) -> dict:
    """The package's upscaler on the held-out images (tile both), next to the same images resampled (Lanczos-3)
    to the same size: colour and pattern adherence (a classifier fitted at the upscaled size), the wrap seam
    ratio (with real data at that size rolled at random: the ruler's spread), sharpness, the high-frequency
    energy above the small image's Nyquist frequency relative to real renders of the same specs, and the block
    ratio (steps at input-pixel borders over steps within them).

    With ``roundtrip`` (the base package's VAE), ``from_real`` gives the pattern adherence the upscaler reaches
    from real images of the same specs, area-reduced and sent through that VAE: what it makes of inputs that
    carry the right pattern, which separates its share from the base model's."""
    from ..assets.resize import box_reduce, resize
    from .sharpness import block_ratio, sharpness_ratio

    small = rows[0][2][0].shape[0]
    size = small * upscaler.scale
    classifier = PatternClassifier.fit(size=size, per_family=classifier_per_family)
    rng = np.random.default_rng([seed, 13])
    upscaled, resampled, real, scored = [], [], [], []
    for _prompt, spec, images in rows:
        for image in images:
            upscaled.append(upscaler(image, "both"))
            resampled.append(np.clip(resize(image, size, size, "both"), 0.0, 1.0))
            real.append(render(spec, rng, size))
            scored.append((_prompt, spec, [None]))

    def adherence(images):
        return _score([(p, s, [x]) for (p, s, _), x in zip(scored, images)], classifier)

    rolled = [np.roll(x, tuple(rng.integers(size, size=2)), axis=(0, 1)) for x in real]
    cutoff = small / 2
    out = {"size": size, "upscaler": upscaler.describe() if hasattr(upscaler, "describe") else upscaler.name}
    for name, images in (("upscaled", upscaled), ("resampled", resampled)):
        s = adherence(images)
        out[name] = {"colour": s["colour"], "pattern": s["pattern"], "per_family": s["per_family"],
                     "top_confusions": s["top_confusions"],
                     "sharpness": round(sharpness_ratio(images, real, cutoff), 3),
                     "seam": _summary([seam_ratio(x, axis) for x in images for axis in (0, 1)]),
                     "block_ratio": round(block_ratio(images, upscaler.scale), 3)}
    out["real_seam"] = _summary([seam_ratio(x, axis) for x in rolled for axis in (0, 1)])
    out["real_block_ratio"] = round(block_ratio(real, upscaler.scale), 3)
    through_vae = roundtrip([box_reduce(x, upscaler.scale) for x in real]) if roundtrip is not None else None
    if through_vae is not None:
        out["from_real"] = {
            "upscaled": adherence([upscaler(x, "both") for x in through_vae])["pattern"],
            "resampled": adherence([np.clip(resize(x, size, size, "both"), 0.0, 1.0) for x in through_vae])["pattern"]}
    samples = [sample(seed + 2000, i, "any", size) for i in range(references)]
    out["pattern_real"] = round(float(np.mean([p == s.spec.family for p, s in
                                               zip(classifier.predict([s.image for s in samples]), samples)])), 3)
    return out


def _vae_roundtrip(pipe, images: list[np.ndarray], encoder_tile: str = "none") -> list[np.ndarray] | None:
    import onnxruntime as ort

    m = pipe.manifest
    graphs = m.get("vae_encoder", {}).get("graphs", {})
    encoder = graphs.get(encoder_tile, graphs.get("none"))
    if encoder is None:
        return None
    decoder = m["vae_decoder"]["graphs"].get("both", m["vae_decoder"]["graphs"]["none"])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    enc = ort.InferenceSession(str(pipe.package.path(encoder)), options, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(pipe.package.path(decoder)), options, providers=["CPUExecutionProvider"])
    batch = (np.stack(images).transpose(0, 3, 1, 2) * 2 - 1).astype(np.float32)
    moments = enc.run(None, {"image": batch})[0]
    mean = moments[:, : m["latent_channels"]]
    decoded = dec.run(None, {"latent": mean.astype(np.float32)})[0]
    return list(np.clip(decoded.transpose(0, 2, 3, 1) / 2 + 0.5, 0, 1))


def _backdrops(pipe, size: tuple[int, int], seed: int) -> dict:
    """Panorama prompts with tile "x": the horizontal wrap should be seamless; the vertical one need not."""
    from ..request import GenerateRequest

    xs, ys = [], []
    for prompt in BACKDROP_PROMPTS:
        result = pipe.generate(GenerateRequest(prompt, seed=seed, count=2, tile="x", height=size[0],
                                               width=2 * size[1]))
        xs += [seam_ratio(img, 1) for img in result.images]
        ys += [seam_ratio(img, 0) for img in result.images]
    return {"x_seam_ratio": _summary(xs), "y_seam_ratio": _summary(ys)}


def format_report(r: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.0f} %"

    lines = [f"texture evaluation of {r['model_id']} ({r['package_hash'][:12]}), "
             f"{r['native_size'][0]}x{r['native_size'][1]}, {r['settings']['steps']} steps, guidance "
             f"{r['settings']['guidance']}, {r['seeds_per_prompt']} seeds per prompt", ""]
    lines.append(f"{'prompt set':<22}{'prompts':>8}{'images':>8}{'colour':>9}{'pattern':>9}")
    for name, s in list(r["sets"].items()) + [("held-out (both sets)", r["heldout"])]:
        lines.append(f"{name:<22}{s['prompts']:>8}{s['images']:>8}{pct(s['colour']):>9}{pct(s['pattern']):>9}")
    met = {k: "met" if v else "NOT met" for k, v in r["meets_targets"].items()}
    lines.append(f"targets on held-out prompts: colour >= {pct(TARGETS['colour'])} ({met['colour']}), "
                 f"pattern >= {pct(TARGETS['pattern'])} ({met['pattern']}); chance: colour "
                 f"{pct(1 / len(COLOURS))}, pattern {pct(1 / len(FAMILIES))}")
    h = r["heldout"]
    lines.append("held-out colour by word: " + ", ".join(f"{k} {pct(v)}" for k, v in h["per_colour"].items()))
    lines.append("held-out pattern by family: " + ", ".join(f"{k} {pct(v)}" for k, v in h["per_family"].items()))
    if h["top_confusions"]:
        lines.append("most confused: " + ", ".join(f"{k} ({v})" for k, v in h["top_confusions"].items()))
    t = r["tileability"]
    lines.append(f"tileability (seam / interior difference, 1 = no seam): tile both mean {t['both']['mean']} "
                 f"(p95 {t['both']['p95']}); real data at a random offset mean {t['real']['mean']} "
                 f"(p95 {t['real']['p95']}); "
                 f"tile none mean {t['none'].get('mean')} (p95 {t['none'].get('p95')})")
    b = r["backdrops"]
    lines.append(f"panoramas (tile x): x seam {b['x_seam_ratio']['mean']}, y (not wrapped) "
                 f"{b['y_seam_ratio']['mean']}")
    d = r["diversity"]
    lines.append(f"diversity across seeds: mean pairwise L1 {d['mean_pairwise_l1']} (real data "
                 f"{d['real_mean_pairwise_l1']}), distinct pairs {pct(d['distinct_pairs'])}")
    ref = r["references"]
    lines.append("rulers on real data: " + ", ".join(f"{k} {v}" for k, v in ref.items()))
    if "upscaled" in r:
        u = r["upscaled"]
        lines.append(f"held-out images at {u['size']} px (x{u['upscaler']['scale']}), sharpness = high-frequency "
                     f"energy / real data's, seam = wrap seam ratio (real data rolled: {u['real_seam']['mean']}):")
        for name in ("upscaled", "resampled"):
            s = u[name]
            lines.append(f"  {name:<10} colour {pct(s['colour'])}, pattern {pct(s['pattern'])}, sharpness "
                         f"{s['sharpness']}, seam {s['seam']['mean']}, block ratio {s['block_ratio']}")
        lines.append(f"  classifier at {u['size']} px on real images: {pct(u['pattern_real'])}; block ratio of real "
                     f"data {u['real_block_ratio']}")
        if "from_real" in u:
            f = u["from_real"]
            lines.append(f"  from real images reduced to {u['size'] // u['upscaler']['scale']} px and through the VAE: "
                         f"pattern {pct(f['upscaled'])} upscaled, {pct(f['resampled'])} resampled")
    lines.append(f"time: {r['timing']['total_s']} s, {r['timing']['per_image_ms']} ms per image")
    return "\n".join(lines)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="aigc-bridge eval", description="evaluate a texture model package")
    p.add_argument("--model", type=Path, required=True, help="model package folder")
    p.add_argument("--prompts", type=int, default=16, help="prompts per set (default 16)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's recommendation)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's recommendation)")
    p.add_argument("--threads", type=int, help="onnxruntime threads")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    return p


def report(args: argparse.Namespace) -> int:
    """Print the report; ``--json`` also writes it."""
    result = run_eval(args.model, seed=args.seed, prompts_per_set=args.prompts, seeds_per_prompt=args.seeds,
                      steps=args.steps, guidance=args.guidance, threads=args.threads, log=print)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``aigc-bridge eval --model DIR`` (also ``python -m aigc_bridge.evaluation.run``)."""
    return report(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
