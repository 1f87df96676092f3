"""What each task minimises, on a batch of clean crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aeflow import degrade
from aeflow.models.restorer import with_noise_map
from aeflow.training.config import TrainConfig


def compute_loss(cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """x: clean crops (B, 3, H, W) in [0, 1] -> (loss, metrics as 0-d tensors, not yet read)."""
    bare = model.module if hasattr(model, "module") else model
    if cfg.task == "hyperprior":  # the top level only, rate only: the transforms (so the distortion) are fixed
        levels = torch.full((x.shape[0],), bare.levels - 1, device=x.device)
        _, bits = model(x, levels, decode=False)
        bpp = bits / (x.shape[-1] * x.shape[-2])
        return bpp.mean(), {"mse": torch.zeros((), device=x.device), "bpp": bpp.mean().detach()}
    if cfg.task == "codec":  # one level per crop: every step trains several rates
        levels = torch.randint(0, bare.levels, (x.shape[0],), device=x.device)
        x_hat, bits = model(x, levels)
        per_image = (x_hat.float() - x).pow(2).mean(dim=(1, 2, 3))
        lmbda = torch.tensor(bare.config.lambdas, device=x.device)[levels]
        bpp = bits / (x.shape[-1] * x.shape[-2])
        loss = (bpp + lmbda * 255**2 * per_image).mean()
        return loss, {"mse": per_image.mean().detach(), "bpp": bpp.mean().detach()}
    x, degraded = degrade.sample(cfg.task, x, sigma_max=cfg.sigma_max)
    if bare.config.noise_map:  # the noise each crop really got (sensor noise included), 0-255
        degraded = with_noise_map(degraded, (degraded - x).std(dim=(1, 2, 3)) * 255)
    out = model(degraded).float()
    mse = F.mse_loss(out, x)
    loss = mse
    if cfg.task == "inpaint":  # known pixels are easy: weight the holes 10x
        loss = ((out - x) ** 2 * (1 + 9 * degraded[:, 3:])).mean()
    return loss, {"mse": mse.detach()}
