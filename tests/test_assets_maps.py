"""PBR maps, periodic resampling and mip chains: every map of a tileable albedo tiles, normals match
an analytic height field, and power-of-two mip levels keep the wrap."""

from __future__ import annotations

import numpy as np
import pytest

from aigc_bridge.assets.pbr import normal_from_height, normal_vectors, pbr_maps
from aigc_bridge.assets.resize import mip_chain, resize
from aigc_bridge.assets.seams import seam_ratio, tile_2x2
from aigc_bridge.errors import InvalidRequest
from aigc_bridge.request import check_target_size

SEAMLESS = 1.5    # seam / interior step ratio a tileable map stays under (measured 0.8-1.2)
SEAM = 2.5        # ... and a map that does not tile goes over (measured 3-20)


def periodic_noise(size: int, seed: int, smooth: float = 6.0, channels: int = 3) -> np.ndarray:
    """A tileable colour texture: band-limited noise built in the Fourier domain, in [0, 1]."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    gain = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) * (size / smooth) ** 2)[..., None]
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size, channels)), axes=(0, 1)) * gain,
                                 axes=(0, 1)))
    noise = (noise - noise.mean()) / (noise.std() * 6) + 0.5
    return np.clip(noise, 0.0, 1.0).astype(np.float32)


def bricks(size: int = 64) -> np.ndarray:
    """A tileable brick wall, shifted so that the tile border runs through the middle of bricks (a seam
    metric compares one border step with average steps: a mortar edge on the border would be a real edge)."""
    y, x = np.mgrid[0:size, 0:size] / size
    row = np.floor(y * 8)
    xs, ys = (x * 4 + 0.5 * (row % 2)) % 1.0, (y * 8) % 1.0
    mortar = (np.minimum(xs, 1 - xs) < 0.05) | (np.minimum(ys, 1 - ys) < 0.1)
    colour = np.where(mortar[..., None], [0.7, 0.68, 0.64], [0.55, 0.22, 0.15])
    texture = colour * (0.85 + 0.3 * periodic_noise(size, 3, smooth=8.0, channels=1))
    return np.roll(np.clip(texture, 0, 1), (size // 16, size // 16), axis=(0, 1)).astype(np.float32)


def all_maps(albedo: np.ndarray, tile: str = "both") -> dict[str, np.ndarray]:
    maps = pbr_maps(albedo, tile=tile)
    return {"albedo": albedo, "height": maps.height, "normal": maps.normal, "roughness": maps.roughness,
            "ao": maps.ao, "orm": maps.orm}


@pytest.mark.parametrize("albedo", [periodic_noise(128, 1), bricks(128)], ids=["noise", "bricks"])
def test_every_map_of_a_tileable_albedo_tiles(albedo):
    for name, image in all_maps(albedo).items():
        for axis in (0, 1):
            ratio = seam_ratio(image, axis)
            assert ratio < SEAMLESS, f"{name} axis {axis}: seam ratio {ratio:.2f}"


def test_maps_of_a_shifted_albedo_are_the_shifted_maps():
    """Exact periodicity: no filter knows where the tile starts."""
    albedo = bricks(64)
    plain, shifted = all_maps(albedo), all_maps(np.roll(albedo, (13, 29), axis=(0, 1)))
    for name in ("normal", "roughness", "ao"):
        assert np.abs(np.roll(plain[name], (13, 29), axis=(0, 1)) - shifted[name]).max() < 1e-4, name


def test_the_seam_metric_sees_a_seam_when_there_is_one():
    crop = periodic_noise(192, 2)[:128, :128]  # a window of a larger tile: its edges do not meet
    assert seam_ratio(crop, 0) > SEAM and seam_ratio(crop, 1) > SEAM
    for name, image in all_maps(crop, tile="none").items():  # mirror extension keeps maps defined, not tiling
        assert max(seam_ratio(image, 0), seam_ratio(image, 1)) > SEAMLESS, name
    tiled = tile_2x2(periodic_noise(64, 2))
    assert tiled.shape == (128, 128, 3) and np.array_equal(tiled[64:, 64:], tiled[:64, :64])


def analytic_height(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h = 0.5 + sum of integer-frequency sinusoids (periodic), with its exact derivatives per pixel."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:size, 0:size].astype(np.float64)
    h, dr, dc = np.full((size, size), 0.5), np.zeros((size, size)), np.zeros((size, size))
    for fy, fx in ((1, 0), (0, 2), (3, 1), (2, -4), (4, 3)):
        a, phase = rng.uniform(0.03, 0.08), rng.uniform(0, 2 * np.pi)
        arg = 2 * np.pi * (fx * c + fy * r) / size + phase
        h += a * np.sin(arg)
        dc += a * np.cos(arg) * 2 * np.pi * fx / size
        dr += a * np.cos(arg) * 2 * np.pi * fy / size
    return h.astype(np.float32), dr, dc


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)))


NORMAL_TOLERANCE_DEG = 0.25  # central differences: slope error (sin k / k) < 0.7% up to 4 cycles per 128 px


def test_normals_match_an_analytic_height_field():
    h, dr, dc = analytic_height()
    depth = 0.1
    s = depth * h.shape[1]
    exact = np.stack([-s * dc, s * dr, np.ones_like(dc)], axis=-1)  # OpenGL: +Y up = -row direction
    err = angles_deg(normal_vectors(h, tile="both", depth=depth), exact)
    assert np.degrees(np.arctan(np.abs(s * dc).max())) > 10  # the field is not nearly flat
    assert err.max() < NORMAL_TOLERANCE_DEG, f"max {err.max():.3f} deg, mean {err.mean():.3f} deg"
    encoded = normal_from_height(h, tile="both", depth=depth)  # the map as written: n * 0.5 + 0.5
    for bits, tolerance in ((8, 0.8), (16, NORMAL_TOLERANCE_DEG)):
        top = 2**bits - 1
        stored = np.round(encoded * top) / top * 2.0 - 1.0
        assert angles_deg(stored, exact).max() < tolerance, bits
    directx = normal_from_height(h, tile="both", depth=depth, convention="directx")
    assert np.allclose(directx[..., 1], 1.0 - encoded[..., 1], atol=1e-6)
    assert np.array_equal(directx[..., [0, 2]], encoded[..., [0, 2]])


def test_a_bump_lights_like_blender_expects():
    """OpenGL +Y: the upper flank of a bump (smaller row index) faces up, i.e. green > 0.5."""
    r, c = np.mgrid[0:64, 0:64]
    bump = np.exp(-((r - 32) ** 2 + (c - 32) ** 2) / 50.0).astype(np.float32)
    n = normal_from_height(bump, tile="none", depth=0.1)
    assert n[26, 32, 1] > 0.55 and n[38, 32, 1] < 0.45  # upper flank up, lower flank down
    assert n[32, 38, 0] > 0.55 and n[32, 26, 0] < 0.45  # right flank faces right
    assert (n[..., 2] > 0.5).all()


def test_edges_that_do_not_wrap_get_no_wrap_around_slope():
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    wrapped, mirrored = normal_vectors(ramp, tile="both"), normal_vectors(ramp, tile="none")
    assert wrapped[:, 0, 0].mean() > 0  # the wrap sees the 1 -> 0 cliff: slope flips sign at the edge
    assert (mirrored[..., 0] <= 0).all()  # every pixel leans the same way, edges included


def test_orm_packs_occlusion_roughness_metallic():
    maps = pbr_maps(bricks(64))
    assert np.array_equal(maps.orm[..., 0], maps.ao)
    assert np.array_equal(maps.orm[..., 1], maps.roughness)
    assert np.array_equal(maps.orm[..., 2], maps.metallic) and not maps.metallic.any()
    for image in (maps.height, maps.roughness, maps.ao, maps.normal):
        assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
    assert maps.height.std() > 0.1 and maps.roughness.std() > 0.02 and maps.ao.min() < 0.9


def test_periodic_resampling_keeps_the_wrap():
    tile = periodic_noise(64, 5)
    big = resize(tile, 256, 256, "both")
    assert big.shape == (256, 256, 3)
    shifted = resize(np.roll(tile, (3, 7), axis=(0, 1)), 256, 256, "both")
    assert np.abs(np.roll(big, (12, 28), axis=(0, 1)) - shifted).max() < 1e-5  # exactly periodic
    assert max(seam_ratio(big, 0), seam_ratio(big, 1)) < SEAMLESS
    assert np.abs(resize(big, 64, 64, "both") - tile).mean() < 0.02  # down again: close to the original
    odd = resize(tile, 128, 64, "x")  # any size; y mirrored, x wrapped
    assert odd.shape == (64, 128, 3) and seam_ratio(odd, 1) < SEAMLESS


def test_mip_chain_of_a_tileable_map_still_tiles():
    base = resize(periodic_noise(64, 4), 512, 512, "both")
    levels = mip_chain(base)
    assert [lv.shape[0] for lv in levels] == [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    tiled_levels = mip_chain(tile_2x2(base))
    for level, tiled in zip(levels, tiled_levels):  # the mip of the tiling is the tiling of the mip
        assert np.abs(tile_2x2(level) - tiled).max() < 1e-5
    for level in levels[:6]:  # down to 16 px, where a ratio of neighbour steps still means something
        assert max(seam_ratio(level, 0), seam_ratio(level, 1)) < SEAMLESS, level.shape
    with pytest.raises(InvalidRequest):
        mip_chain(np.zeros((96, 96), np.float32))  # 96 -> 48 -> 24 -> 12 -> 6 -> 3: cannot halve


@pytest.mark.parametrize("size", [0, 100, 1000, 3 * 512, 8192, 8, "512", 512.0, True])
def test_engine_sizes_must_be_powers_of_two(size):
    with pytest.raises(InvalidRequest) as err:
        check_target_size(size)
    assert err.value.field == "target_size" and err.value.code == "invalid_request"


def test_engine_sizes_accepted():
    assert [check_target_size(1 << k) for k in range(4, 13)] == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
