"""texture-mini's procedural data and the evaluation's rulers: numpy only, fast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.evaluation.colour import colour_name
from aigc_bridge.texture_data import (
    BACKDROPS,
    CAPTION_RE,
    FAMILIES,
    HELD_OUT_COMBOS,
    Spec,
    batch,
    is_held_out_caption,
    render,
    sample,
    vocabulary,
)
from aigc_bridge.texture_data.grammar import COLOURS, SCALES, WEARS
from aigc_bridge.texture_data.patterns import ORIENTATIONS


def _specs():
    for family in FAMILIES:
        for scale in SCALES:
            for wear in WEARS:
                for orientation in ORIENTATIONS if family == "stripes" else (None,):
                    yield Spec("texture", family, "red", scale, wear, orientation)


@pytest.mark.parametrize("size", [32, 64])
def test_every_texture_is_exactly_periodic(size):
    """Drawing two periods gives the one-period image tiled 2x2, bit for bit: tiling is by construction."""
    for i, spec in enumerate(_specs()):
        one = render(spec, np.random.default_rng(i), size)
        two = render(spec, np.random.default_rng(i), size, periods=2)
        assert one.shape == (size, size, 3)
        assert np.array_equal(np.tile(one, (2, 2, 1)), two), spec


def test_backdrops_wrap_horizontally():
    for kind in BACKDROPS:
        one = render(Spec("backdrop", kind), np.random.default_rng(3), 32)
        two = render(Spec("backdrop", kind), np.random.default_rng(3), 32, periods=2)
        assert one.shape == (32, 64, 3)
        assert np.array_equal(np.tile(one, (1, 2, 1)), two), kind


def test_wrap_differences_look_like_interior_differences():
    """The seam statistic the evaluation uses, on real data: about 1 where the seam is not special."""
    for family in ("marble", "grass", "gravel", "stripes"):
        ratios = [seam_ratio(sample(0, i, "any").image, axis) for i in range(60) for axis in (0, 1)
                  if sample(0, i, "any").spec.family == family]
        if ratios:
            assert 0.3 < np.mean(ratios) < 2.0, family
    gradient = np.linspace(0, 1, 32)[None, :, None] * np.ones((32, 32, 3))
    assert seam_ratio(gradient, 1) > 10  # a left-to-right ramp does not tile


def test_captions_follow_the_grammar_and_use_known_words():
    words = set(vocabulary())
    for split in ("train", "heldout_combo", "heldout_caption", "any", "backdrop"):
        for i in range(300):
            caption = sample(1, i, split).caption
            assert CAPTION_RE.match(caption), (split, caption)
            assert set(caption.split()) <= words, caption


def test_held_out_combinations_and_captions_never_reach_training():
    _, captions, specs = batch(0, 0, 3000, "train")
    assert not {(s.colour, s.family) for s in specs} & HELD_OUT_COMBOS
    assert not any(is_held_out_caption(c) for c in captions)
    seen = {(s.colour, s.family) for s in specs if s.colour}
    assert len(seen) == len(COLOURS) * len(FAMILIES) - len(HELD_OUT_COMBOS)  # everything else is trained
    combos = [sample(0, i, "heldout_combo").spec for i in range(50)]
    assert {(s.colour, s.family) for s in combos} <= HELD_OUT_COMBOS
    for i in range(30):
        s = sample(0, i, "heldout_caption")
        assert is_held_out_caption(s.caption) and (s.spec.colour, s.spec.family) not in HELD_OUT_COMBOS


def test_evaluation_prompts_name_the_colour_they_are_scored_on():
    """A training caption may omit the colour ("large bricks"); scoring it against its image's colour would
    count the model wrong for ignoring a word it was never given."""
    from aigc_bridge.evaluation.run import SETS, eval_prompts

    for split in SETS:
        prompts = eval_prompts(split, 40)
        assert len(prompts) == 40
        assert all(spec.colour in caption.split() for caption, spec in prompts), split


def test_held_out_lists_cover_every_colour_once():
    assert sorted(c for c, _ in HELD_OUT_COMBOS) == sorted(COLOURS)
    assert len({f for _, f in HELD_OUT_COMBOS}) == len(HELD_OUT_COMBOS)


def test_samples_are_deterministic_and_independent_of_order():
    a = sample(5, 17)
    b = sample(5, 17)
    assert a.caption == b.caption and np.array_equal(a.image, b.image)
    images, captions, _ = batch(5, 15, 4)
    assert captions[2] == a.caption and np.array_equal(images[2], np.round(a.image * 255).astype(np.uint8))
    assert not np.array_equal(sample(6, 17).image, a.image)


def test_colour_ruler_is_exact_on_real_data_and_prototypes_are_separable():
    samples = [sample(2, i, "any") for i in range(400)]
    assert all(colour_name(s.image) == s.spec.colour for s in samples)


def test_pattern_classifier_reads_real_data():
    from aigc_bridge.evaluation.patterns import PatternClassifier, blur

    classifier = PatternClassifier.fit(per_family=60)
    samples = [sample(3, i, "any") for i in range(240)]
    truth = [s.spec.family for s in samples]
    sharp = np.mean([p == t for p, t in zip(classifier.predict([s.image for s in samples]), truth)])
    soft = np.mean([p == t for p, t in zip(classifier.predict([blur(s.image, 1.0) for s in samples]), truth)])
    assert sharp > 0.9 and soft > 0.8, (sharp, soft)


def test_evaluation_modules_do_not_import_torch():
    code = ("import aigc_bridge.evaluation, aigc_bridge.texture_data, sys; "
            "print(' '.join(sys.modules))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not {"torch", "diffusers", "transformers"} & loaded
