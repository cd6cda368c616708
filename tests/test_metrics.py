"""Tests for accel.metrics against brute-force references and closed-form values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from accel.metrics import compare_videos, flicker, psnr, ssim


def _rng_frames(seed: int, shape: tuple[int, ...] = (3, 20, 24, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Brute-force SSIM: explicit 11x11 Gaussian-weighted windows over reflect-101 padded planes."""
    coords = np.arange(11) - 5
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = []
    for fa, fb in zip(a.astype(np.float64), b.astype(np.float64), strict=True):
        per_channel = []
        for c in range(fa.shape[-1]):
            xa = sliding_window_view(np.pad(fa[..., c], 5, mode="reflect"), (11, 11))
            xb = sliding_window_view(np.pad(fb[..., c], 5, mode="reflect"), (11, 11))
            mu_a, mu_b = (xa * w).sum(axis=(-2, -1)), (xb * w).sum(axis=(-2, -1))
            var_a = (w * (xa - mu_a[..., None, None]) ** 2).sum(axis=(-2, -1))
            var_b = (w * (xb - mu_b[..., None, None]) ** 2).sum(axis=(-2, -1))
            cov = (w * (xa - mu_a[..., None, None]) * (xb - mu_b[..., None, None])).sum(axis=(-2, -1))
            s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            per_channel.append(s.mean())
        out.append(np.mean(per_channel))
    return np.array(out)


def test_psnr_constant_offset_known_value() -> None:
    a = _rng_frames(0).clip(0, 254)
    b = a + 1
    np.testing.assert_allclose(psnr(a, b), np.full(3, 20 * math.log10(255)), rtol=1e-12)
    np.testing.assert_allclose(psnr(b, a), psnr(a, b))


def test_psnr_identical_is_inf_and_matches_bruteforce() -> None:
    a, b = _rng_frames(1), _rng_frames(2)
    b[1] = a[1]
    got = psnr(a, b)
    assert got.shape == (3,)
    assert math.isinf(got[1]) and got[1] > 0
    for f in (0, 2):
        mse = sum(float(x) ** 2 for x in (a[f].astype(np.int64) - b[f]).ravel()) / a[f].size
        assert got[f] == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)


def test_psnr_float_data_range() -> None:
    a = np.full((2, 8, 8, 3), 0.5)
    np.testing.assert_allclose(psnr(a, a + 0.1, data_range=1.0), [20.0, 20.0])


def test_ssim_matches_bruteforce_reference() -> None:
    a = _rng_frames(3, (2, 18, 21, 3))
    noise = np.random.default_rng(4).normal(0, 20, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(ssim(a, b), _ssim_reference(a, b), rtol=1e-9, atol=1e-12)


def test_ssim_identical_noise_symmetric() -> None:
    y, x = np.mgrid[0:32, 0:32]
    base = np.stack([np.stack([x * 7, y * 5, (x + y) * 3], -1) for _ in range(2)]).astype(np.uint8)
    np.testing.assert_allclose(ssim(base, base), [1.0, 1.0], atol=1e-12)
    noisy = np.clip(base + np.random.default_rng(5).normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    s = ssim(base, noisy)
    assert np.all(s < 0.95) and np.all(s > 0.0)
    np.testing.assert_allclose(ssim(noisy, base), s, rtol=1e-12)


def test_ssim_constant_images_closed_form() -> None:
    # Zero variance: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = np.full((1, 16, 16, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    np.testing.assert_allclose(ssim(a, b), [expected], rtol=1e-9)


def test_flicker() -> None:
    static = np.repeat(_rng_frames(6, (1, 8, 8, 3)), 4, axis=0)
    assert flicker(static) == 0.0
    alternating = np.zeros((5, 4, 4, 3), np.uint8)
    alternating[1::2] = 10
    assert flicker(alternating) == pytest.approx(10.0)
    ramp = np.stack([np.full((4, 4, 3), 3 * t, np.uint8) for t in range(6)])
    assert flicker(ramp) == pytest.approx(3.0)
    assert flicker(ramp[:1]) == 0.0
    # uint8 must not wrap around: |0 - 255| is 255, not 1.
    assert flicker(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1)) == pytest.approx(255.0)


def test_compare_videos() -> None:
    a = _rng_frames(7)
    b = a.copy()
    b[0] = np.clip(b[0].astype(np.int16) + 3, 0, 255).astype(np.uint8)
    res = compare_videos(a, b)
    assert set(res) >= {"psnr", "ssim", "psnr_mean", "ssim_mean"}
    assert len(res["psnr"]) == 3 and len(res["ssim"]) == 3
    assert math.isinf(res["psnr"][1]) and math.isinf(res["psnr"][2])
    assert res["psnr_mean"] == pytest.approx(res["psnr"][0])
    assert res["ssim"][1] == pytest.approx(1.0)
    assert res["ssim_mean"] == pytest.approx(np.mean(res["ssim"]))

    same = compare_videos(a, a)
    assert math.isinf(same["psnr_mean"])
    assert same["ssim_mean"] == pytest.approx(1.0)


def test_shape_mismatch_message() -> None:
    with pytest.raises(ValueError, match=r"\(3, 20, 24, 3\).*\(2, 20, 24, 3\)"):
        compare_videos(_rng_frames(8), _rng_frames(9, (2, 20, 24, 3)))
    with pytest.raises(ValueError, match="same shape"):
        psnr(_rng_frames(8), _rng_frames(9, (3, 20, 20, 3)))
