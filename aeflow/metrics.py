"""Image quality and size measures."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (RGB, peak 255)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def bpp(n_bytes: int, width: int, height: int) -> float:
    """Bits per pixel counted from stored bytes."""
    return 8.0 * n_bytes / (width * height)


_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli, Bovik 2003


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM of two uint8 (H, W, 3) images, per channel then averaged, with an 11x11
    Gaussian window (sigma 1.5, valid region) at up to five scales; images too small for five use
    fewer scales (the weights renormalised), so small images still get a score."""
    from scipy.ndimage import correlate1d

    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def blur(t: np.ndarray) -> np.ndarray:  # separable Gaussian window, valid region only
        return correlate1d(correlate1d(t, g, axis=0), g, axis=1)[5:-5, 5:-5]

    def halve(t: np.ndarray) -> np.ndarray:  # 2x2 average pooling
        h, w = t.shape[0] // 2 * 2, t.shape[1] // 2 * 2
        return t[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scales = 1
    while scales < 5 and min(a.shape[:2]) // 2**scales >= 11:
        scales += 1
    weights = np.asarray(_MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    values = []
    for s in range(scales):
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        if s == scales - 1:
            values.append((((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs).mean(axis=(0, 1)))
        else:
            values.append(cs.mean(axis=(0, 1)))
            x, y = halve(x), halve(y)
    stacked = np.maximum(np.stack(values), 1e-12)  # (scales, 3)
    return float(np.prod(stacked ** weights[:, None], axis=0).mean())


def interp_at(rate: float, rates: list[float], values: list[float]) -> float:
    """A classic codec's quality at `rate`, linear between its measured (rate, value) points; nan
    outside the measured range (no extrapolation)."""
    order = np.argsort(rates)
    r, v = np.asarray(rates, float)[order], np.asarray(values, float)[order]
    if rate < r[0] or rate > r[-1]:
        return float("nan")
    return float(np.interp(rate, r, v))


def bd_rate(rate_a: list[float], psnr_a: list[float], rate_b: list[float], psnr_b: list[float]) -> float:
    """Bjontegaard delta rate (percent) of codec B against anchor A: the mean bit-rate change at equal
    PSNR over the overlapping PSNR range (cubic fit of log-rate against PSNR, VCEG-M33). Negative
    means B needs fewer bits. nan when the curves do not overlap."""
    lo = max(min(psnr_a), min(psnr_b))
    hi = min(max(psnr_a), max(psnr_b))
    if hi <= lo or len(rate_a) < 4 or len(rate_b) < 4:
        return float("nan")
    fa = np.polyint(np.polyfit(psnr_a, np.log(rate_a), 3))
    fb = np.polyint(np.polyfit(psnr_b, np.log(rate_b), 3))
    mean_a = (np.polyval(fa, hi) - np.polyval(fa, lo)) / (hi - lo)
    mean_b = (np.polyval(fb, hi) - np.polyval(fb, lo)) / (hi - lo)
    return float((np.exp(mean_b - mean_a) - 1) * 100)


def bd_psnr(rate_a: list[float], psnr_a: list[float], rate_b: list[float], psnr_b: list[float],
            lo: float = 0.25, hi: float = 1.0) -> float:
    """Mean PSNR gain (dB) of curve B over anchor A across the bit rates [lo, hi] that both curves
    reach: each curve linear in log-rate between its points, averaged over log-rate (BD-PSNR's
    measure, without its cubic fit, which swings on a few points). nan when they share no rates there."""
    ra, pa = _sorted(rate_a, psnr_a)
    rb, pb = _sorted(rate_b, psnr_b)
    lo_, hi_ = max(lo, ra[0], rb[0]), min(hi, ra[-1], rb[-1])
    if not hi_ > lo_:
        return float("nan")
    grid = np.linspace(np.log(lo_), np.log(hi_), 256)
    return float(np.mean(np.interp(grid, np.log(rb), pb) - np.interp(grid, np.log(ra), pa)))


def _sorted(rates: list[float], values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rates)
    return np.asarray(rates, float)[order], np.asarray(values, float)[order]


def noise_sigma(rgb: np.ndarray) -> float:
    """Blind estimate of white Gaussian noise std (0-255 scale, per channel, averaged), Immerkaer 1996
    ("Fast noise variance estimation"): a Laplacian-difference filter cancels smooth image structure.
    Texture reads as a little noise, so clean detailed photos give a few units, not zero."""
    planes = rgb.reshape(*rgb.shape[:2], -1).astype(np.float32)  # exact: |filter output| <= 16 * 65535
    h, w = planes.shape[:2]
    if h < 3 or w < 3:
        return 0.0
    # The 3x3 filter [[1,-2,1],[-2,4,-2],[1,-2,1]] is [1,-2,1] across then down: two slicing passes.
    d = planes[:, :-2] - 2 * planes[:, 1:-1] + planes[:, 2:]
    d = d[:-2] - 2 * d[1:-1] + d[2:]
    sigmas = np.abs(d).sum(axis=(0, 1), dtype=np.float64)
    return float(np.sqrt(np.pi / 2) * np.mean(sigmas) / (6 * (w - 2) * (h - 2)))
