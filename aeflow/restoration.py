"""Restoration inference, as `aeflow restore` runs it and `aeflow eval` measures it: the model's extra input
planes (holes, noise level), tiles for any image size, and how much of its correction to keep. No Ray, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aeflow import degrade, precision
from aeflow.models.restorer import with_noise_map
from aeflow.tiling import tiled


def takes_noise_level(module: torch.nn.Module) -> bool:
    """A noise-map denoiser: told each image's noise std as a fourth input plane."""
    return bool(module.config.noise_map)


def fills_holes(module: torch.nn.Module) -> bool:
    """An inpainter: its fourth input plane marks the missing pixels."""
    return module.config.in_channels == 4 and not module.config.noise_map


def model_input(module: torch.nn.Module, x: torch.Tensor, sigma: float | Sequence[float] | None = None,
                holes: torch.Tensor | None = None) -> torch.Tensor:
    """RGB (N, 3, H, W) in [0, 1] -> what `module` takes, image by image: for an inpainter, the holes
    ((N, 1, H, W), 1 = missing) filled smoothly plus the mask; for a noise-map denoiser, the noise std of
    each image (0-255) as a plane."""
    if fills_holes(module) and holes is None:
        raise ValueError("inpainting needs the missing pixels marked (holes)")
    if takes_noise_level(module) and sigma is None:
        raise ValueError("a noise-map denoiser needs each image's noise level (sigma)")
    sigmas = [sigma] * len(x) if isinstance(sigma, (int, float)) else sigma
    parts = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        if fills_holes(module):
            xi = degrade.with_holes(xi, holes[i:i + 1])
        if takes_noise_level(module):
            xi = with_noise_map(xi, float(sigmas[i]))
        parts.append(xi)
    return torch.cat(parts)


@torch.inference_mode()
def restore(module: torch.nn.Module, x: torch.Tensor, sigma: float | Sequence[float] | None = None,
            holes: torch.Tensor | None = None, tile: int = 512, strength: float = 1.0,
            bf16: bool | None = None) -> torch.Tensor:
    """Restore RGB (N, 3, H, W) in [0, 1] on the model's device -> (N, 3, H, W) float32, not clamped.

    Images larger than `tile` run in blended tiles (bounded memory); `strength` scales the model's
    correction (output = input + strength * (restored - input)); an inpainter's output keeps every known
    pixel. The network runs in bf16 where the device computes it natively (bf16=None), or as bf16 says."""
    inputs = model_input(module, x, sigma, holes)
    if bf16 is None:
        bf16 = precision.use_bf16("auto", inputs.device)
    with precision.autocast(bf16, inputs.device):
        y = tiled(module, inputs, tile=tile).float()
    if strength != 1.0:  # less (or, above 1, more) of the model's correction
        y = inputs[:, :3] + strength * (y - inputs[:, :3])
    if fills_holes(module):
        y = torch.where(inputs[:, 3:] > 0.5, y, inputs[:, :3])
    return y
