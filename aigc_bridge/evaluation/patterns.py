"""Pattern adherence: a k-nearest-neighbour classifier of the material families on colour-blind
spectral and intensity features, fitted at evaluation time on ``texture_data`` images (numpy only).

Features are computed on normalised luminance, so colour cannot leak into the pattern score: the
power spectrum in (radius x orientation) bins, how concentrated it is (periodic patterns have line spectra,
noise-like materials spread out), intensity moments and gradient balance. References include blurred
copies, because a small model's outputs are softer than the data; the evaluation reports the classifier's
accuracy on fresh real images too, so its numbers can be read against its own ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..texture_data import FAMILIES, sample

_RADII = (0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0, 14.0, 64.0)
_ANGLES = 4


def luminance(image: np.ndarray) -> np.ndarray:
    lum = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return (lum - lum.mean()) / (lum.std() + 1e-3)


def features(image: np.ndarray) -> np.ndarray:
    """A fixed-length feature vector of an (H, W, 3) image in [0, 1]."""
    lum = luminance(image)
    h, w = lum.shape
    power = np.abs(np.fft.fft2(lum)) ** 2
    power[0, 0] = 0.0
    power /= power.sum() + 1e-12
    fy = np.fft.fftfreq(h)[:, None] * h
    fx = np.fft.fftfreq(w)[None, :] * w
    radius = np.sqrt(fy * fy + fx * fx)
    angle = np.mod(np.arctan2(fy, fx) + np.pi / (2 * _ANGLES), np.pi) // (np.pi / _ANGLES)
    bins = np.zeros((len(_RADII) - 1, _ANGLES))
    ring = np.digitize(radius, _RADII) - 1
    valid = (ring >= 0) & (ring < len(_RADII) - 1)
    np.add.at(bins, (ring[valid], angle[valid].astype(int) % _ANGLES), power[valid])
    radial = bins.sum(axis=1)
    orient = bins.sum(axis=0)
    top = np.sort(power.ravel())[::-1]
    gx = np.abs(lum - np.roll(lum, 1, axis=1)).mean()
    gy = np.abs(lum - np.roll(lum, 1, axis=0)).mean()
    flat = lum.ravel()
    stats = [np.mean(flat ** 3), np.log(np.mean(flat ** 4) + 1e-6), np.mean(flat > 1.0), np.mean(flat < -1.0),
             np.log(gx + 1e-3), np.log(gy + 1e-3), (gx - gy) / (gx + gy + 1e-6),
             top[:2].sum(), top[:8].sum(), top[:32].sum(), np.sort(orient)[-1] - np.sort(orient)[0]]
    return np.concatenate([np.log(bins.ravel() + 1e-4), np.log(radial + 1e-4), np.asarray(stats)])


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian blur (FFT), so blurred references still tile."""
    if sigma <= 0:
        return image
    h, w = image.shape[:2]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy * fy + fx * fx))
    return np.real(np.fft.ifft2(np.fft.fft2(image, axes=(0, 1)) * kernel[..., None], axes=(0, 1)))


@dataclass
class PatternClassifier:
    """k-NN on standardised features; ``families`` names the label indices."""

    refs: np.ndarray
    labels: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    families: tuple[str, ...]
    k: int = 5

    @classmethod
    def fit(cls, size: int = 32, per_family: int = 150, seed: int = 12345,
            blurs: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.4, 0.9), (0.9, 1.5))) -> PatternClassifier:
        """References from the generator's "any" split (every colour, incl. held-out combinations: the
        classifier is a ruler, not the model), each at several blur levels (sigma drawn from each range,
        in pixels at 32 px), so that no single blur level is privileged."""
        rng = np.random.default_rng(seed)
        families = tuple(FAMILIES)
        counts = dict.fromkeys(families, 0)
        feats, labels = [], []
        index = 0
        while min(counts.values()) < per_family:
            s = sample(seed, index, "any", size)
            index += 1
            if counts[s.spec.family] >= per_family:
                continue
            counts[s.spec.family] += 1
            for lo, hi in blurs:
                feats.append(features(blur(s.image, rng.uniform(lo, hi) * size / 32)))
                labels.append(families.index(s.spec.family))
        refs = np.asarray(feats)
        mean, scale = refs.mean(axis=0), refs.std(axis=0) + 1e-6
        return cls((refs - mean) / scale, np.asarray(labels), mean, scale, families)

    def predict(self, images: list[np.ndarray]) -> list[str]:
        out = []
        for image in images:
            f = (features(image) - self.mean) / self.scale
            dist = np.sum((self.refs - f) ** 2, axis=1)
            nearest = self.labels[np.argsort(dist)[: self.k]]
            votes = np.bincount(nearest, minlength=len(self.families))
            out.append(self.families[int(np.argmax(votes))])
        return out
