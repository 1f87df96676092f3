"""Degradations are seeded (same seed, same pixels) and each does what its name says."""

import numpy as np
import torch

from aeflow import degrade, images, metrics


def _x(photos, name="coffee"):
    return images.to_tensor(photos[name])[None]


def test_same_seed_same_degradation_for_every_task(photos):
    x = _x(photos)
    for task in degrade.TASKS:
        ta, a = degrade.sample(task, x, torch.Generator().manual_seed(7))
        tb, b = degrade.sample(task, x, torch.Generator().manual_seed(7))
        _, c = degrade.sample(task, x, torch.Generator().manual_seed(8))
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ta, tb)
        channels = 4 if task == "inpaint" else 3
        assert ta.shape == x.shape and a.shape == (1, channels, *x.shape[-2:]) and not torch.equal(a, c), task


def test_greyscale_denoise_crops_have_grey_targets_and_noise_alike_in_rgb(photos):
    x = _x(photos).repeat(64, 1, 1, 1)
    target, noisy = degrade.sample("denoise", x, torch.Generator().manual_seed(0))
    grey = (target[:, 0] == target[:, 1]).flatten(1).all(dim=1) & (target[:, 1] == target[:, 2]).flatten(1).all(dim=1)
    assert 3 <= int(grey.sum()) <= 30  # about a fifth
    assert torch.equal(noisy[grey][:, 0], noisy[grey][:, 1])


def test_noise_level_matches_sigma(photos):
    x = _x(photos).repeat(2, 1, 1, 1)
    noisy = degrade.gaussian_noise(x, torch.tensor([10.0, 40.0]), torch.Generator().manual_seed(0), quantize=False)
    stds = ((noisy - x) * 255).flatten(1).std(dim=1)
    assert abs(stds[0] - 10) < 0.5 and abs(stds[1] - 40) < 1.5


def test_jpeg_blur_and_holes_damage_the_photo_as_expected(photos):
    x = _x(photos)
    clean = photos["coffee"]
    q10, q60 = images.to_uint8(degrade.jpeg(x, 10)[0]), images.to_uint8(degrade.jpeg(x, 60)[0])
    assert metrics.psnr(clean, q10) < metrics.psnr(clean, q60) - 2
    soft, motion = degrade.gaussian_blur(x, 2.5), degrade.motion_blur(x, 12, 30)
    for blurred in (soft, motion):  # blur removes high frequencies but keeps the mean
        assert abs(float(blurred.mean() - x.mean())) < 2e-3
        assert float(blurred.diff(dim=-1).abs().mean()) < 0.7 * float(x.diff(dim=-1).abs().mean())
    assert torch.isclose(degrade.motion_kernel(9, 45).sum(), torch.tensor(1.0))
    mask = degrade.hole_mask((64, 80), 3, torch.Generator().manual_seed(1))
    assert mask.shape == (64, 80) and 0 < mask.float().mean() < 0.5


def test_poisson_gaussian_noise_grows_with_brightness():
    dark, bright = torch.full((1, 3, 64, 64), 0.05), torch.full((1, 3, 64, 64), 0.5)
    g = torch.Generator().manual_seed(0)
    sd = [float((degrade.poisson_gaussian(v, 200, 0, g) - v).std()) for v in (dark, bright)]
    assert sd[1] > 2 * sd[0]
    np.testing.assert_allclose(sd[1], np.sqrt(0.5 / 200), rtol=0.1)  # shot noise: variance = signal / photons
