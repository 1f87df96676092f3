"""Synthetic degradations, seeded, shared by training and evaluation."""

from __future__ import annotations

import torch


def gaussian_noise(x: torch.Tensor, sigma: torch.Tensor | float, generator: torch.Generator | None = None,
                   quantize: bool = True) -> torch.Tensor:
    """Add white Gaussian noise of std `sigma` on the 0-255 scale (a float or one per image) to
    x in [0, 1]; by default round to 8 bits as a saved noisy photo would be."""
    if not torch.is_tensor(sigma):
        sigma = torch.full((x.shape[0],), float(sigma), device=x.device)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x + noise * (sigma.view(-1, 1, 1, 1).to(x.dtype) / 255.0)
    if quantize:
        y = torch.round(y.clamp(0, 1) * 255.0) / 255.0
    return y
