"""Synthetic degradations, seeded and composable, shared by training and evaluation.

Every function takes images x (B, 3, H, W) in [0, 1] and returns the degraded images, same shape;
parameters are floats or one value per image; randomness comes only from the generator passed in,
so an evaluation with a fixed seed degrades the same images the same way every time. `sample`
draws one task's degradation per image over the range its restorer is trained for.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aeflow import images

TASKS = ("denoise", "deblock", "deblur", "inpaint")


def _per_image(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(value):
        value = torch.full((x.shape[0],), float(value))
    return value.to(x.device, x.dtype).view(-1, 1, 1, 1)


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits, as a saved image would be."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


def gaussian_noise(x: torch.Tensor, sigma: torch.Tensor | float, generator: torch.Generator | None = None,
                   quantize: bool = True) -> torch.Tensor:
    """Add white Gaussian noise of std `sigma` on the 0-255 scale (a float or one per image) to
    x in [0, 1]; by default round to 8 bits as a saved noisy photo would be."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x + noise * _per_image(sigma, x) / 255.0
    return to_8bit(y) if quantize else y


def poisson_gaussian(x: torch.Tensor, photons: torch.Tensor | float, sigma: torch.Tensor | float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Sensor noise: shot noise of a signal of `photons` at full scale (Poisson, here its Gaussian
    approximation, variance proportional to the signal) plus read noise of std `sigma` (0-255 scale)."""
    peak = _per_image(photons, x)
    shot = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    shot = shot * torch.sqrt(x.clamp_min(0) / peak)
    return gaussian_noise(x + shot, sigma, generator)


def jpeg(x: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """Round trip through Pillow's JPEG encoder at `quality` (1-95), per image: real blocking and ringing."""
    qualities = _per_image(quality, x).flatten().round().int().tolist()
    out = []
    for img, q in zip(x, qualities):
        buf = io.BytesIO()
        Image.fromarray(images.to_uint8(img)).save(buf, format="JPEG", quality=int(q))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return images.to_tensor(out, x.device).to(x.dtype)


def _blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each image with its own (k, k) kernel, edges reflected."""
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    padded = F.pad(x.reshape(1, b * c, h, w), (k // 2,) * 4, mode="reflect")
    weight = kernels.to(x.dtype).repeat_interleave(c, 0).unsqueeze(1)  # (b*c, 1, k, k)
    return F.conv2d(padded, weight, groups=b * c).reshape(b, c, h, w)


def gaussian_kernel(sigma: float, size: int = 21) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r**2) / (2 * max(sigma, 1e-3) ** 2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def motion_kernel(length: float, angle_deg: float, size: int = 21) -> torch.Tensor:
    """A straight motion streak of `length` pixels at `angle_deg`, anti-aliased by supersampling."""
    k = torch.zeros(size, size, dtype=torch.float64)
    c = size // 2
    steps = max(2, int(length * 8))
    a = math.radians(angle_deg)
    for t in torch.linspace(-length / 2, length / 2, steps):
        px, py = c + float(t) * math.cos(a), c + float(t) * math.sin(a)
        x0, y0 = int(math.floor(px)), int(math.floor(py))
        fx, fy = px - x0, py - y0
        corners = ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy))
        for dx, dy, wgt in corners:
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                k[y0 + dy, x0 + dx] += wgt
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    sigmas = _per_image(sigma, x).flatten().tolist()
    return _blur(x, torch.stack([gaussian_kernel(s) for s in sigmas]).to(x.device))


def motion_blur(x: torch.Tensor, length: torch.Tensor | float, angle: torch.Tensor | float) -> torch.Tensor:
    lengths, angles = _per_image(length, x).flatten().tolist(), _per_image(angle, x).flatten().tolist()
    return _blur(x, torch.stack([motion_kernel(n, a) for n, a in zip(lengths, angles)]).to(x.device))


def hole_mask(shape: tuple[int, int], n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(H, W) bool mask of `n` random rectangles and strokes (True = missing), each up to 1/4 of a side."""
    h, w = shape
    mask = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(n):
        r = torch.rand(4, generator=generator).tolist()
        mh, mw = max(1, int(r[0] * h / 4)), max(1, int(r[1] * w / 4))
        y0, x0 = int(r[2] * (h - mh)), int(r[3] * (w - mw))
        mask[y0:y0 + mh, x0:x0 + mw] = True
    return mask


def smooth_fill(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill missing pixels (mask 1) from their surroundings, coarse to fine ("push-pull"): average the
    known pixels down an image pyramid, then at each finer level keep what is known and take the rest
    from the level below. Fast at any size; known pixels come back unchanged."""
    known = 1 - mask
    num, den = x * known, known
    levels = []
    while min(num.shape[-2:]) > 1:
        levels.append((num, den))
        num = F.avg_pool2d(num, 2, ceil_mode=True)
        den = F.avg_pool2d(den, 2, ceil_mode=True)
    fill = torch.where(den > 0, num / den.clamp_min(1e-6), torch.full_like(num, 0.5))
    for num, den in reversed(levels):
        up = F.interpolate(fill, size=num.shape[-2:], mode="bilinear", align_corners=False)
        fill = num + (1 - den) * up
    return torch.where(mask > 0.5, fill, x)


def with_holes(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpainting input: RGB with missing pixels (mask (B, 1, H, W), 1 = missing) filled smoothly
    from their surroundings, and the mask as a fourth channel; the model refines the fill."""
    return torch.cat([smooth_fill(x, mask), mask], dim=1)


def sample(task: str, x: torch.Tensor, generator: torch.Generator | None = None,
           **limits: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One random degradation per image for `task`, over the range its shipped restorer covers:
    denoise: Gaussian sigma 0-sigma_max (half the images: Poisson-Gaussian sensor noise; a fifth of
    them greyscale, with the same noise in all three channels, as a grey photo decodes);
    deblock: JPEG quality 10-60; deblur: Gaussian sigma 0.5-3 or motion length 3-15 px, then
    sigma-2 noise and 8-bit rounding (a real blurry photo is never noise-free); inpaint: 1-4 random
    rectangles missing (the 4-channel input of `with_holes`). Returns (target, degraded): the target
    is x, except for the images turned greyscale."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator)
    if task == "denoise":
        grey = (u[:, 3] < 0.2).view(-1, 1, 1, 1).to(x.device)  # a fifth of them greyscale, noise alike in RGB
        sigma = u[:, 0] * limits.get("sigma_max", 50.0)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        noise = torch.where(grey, noise[:, :1].expand_as(noise), noise)
        x = torch.where(grey, x.mean(dim=1, keepdim=True).expand_as(x), x)
        noisy = to_8bit(x + noise * _per_image(sigma, x) / 255.0)
        sensor = poisson_gaussian(x, 20 + 400 * u[:, 1], sigma / 4, generator)
        pick = ((u[:, 2] < 0.5).view(-1, 1, 1, 1).to(x.device)) & ~grey
        return x, torch.where(pick, sensor, noisy)
    if task == "deblock":
        return x, jpeg(x, 10 + 50 * u[:, 0])
    if task == "deblur":
        gauss = gaussian_blur(x, 0.5 + 2.5 * u[:, 0])
        motion = motion_blur(x, 3 + 12 * u[:, 1], 180 * u[:, 2])
        pick = (u[:, 3] < 0.5).view(-1, 1, 1, 1).to(x.device)
        return x, gaussian_noise(torch.where(pick, gauss, motion), 2.0, generator)
    if task == "inpaint":
        h, w = x.shape[-2:]
        counts = (1 + 4 * u[:, 0]).int().tolist()
        masks = torch.stack([hole_mask((h, w), n, generator) for n in counts])[:, None].to(x.device, x.dtype)
        return x, with_holes(x, masks)
    raise ValueError(f"unknown degradation task {task!r}: one of {', '.join(TASKS)}")
