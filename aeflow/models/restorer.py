"""The restoration autoencoder: a small residual U-Net (DnCNN's residual learning, U-Net's skips)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aeflow.models.layers import pad_to_multiple


@dataclass(frozen=True)
class ResidualUNetConfig:
    """Shape of a restorer. Saved as config.json beside the weights."""

    kind: str = "restore"
    task: str = "denoise"
    width: int = 32
    depth: int = 2  # number of stride-2 levels; the input is padded to a multiple of 2**depth
    in_channels: int = 3  # 4 for inpainting (RGB with the holes grey, plus the mask: 1 = missing) or a noise map
    noise_map: bool = False  # denoise: the 4th input channel is the noise std (FFDNet), see with_noise_map


NOISE_MAP_SCALE = 50.0  # a noise-map channel holds sigma / 50 (sigma on the 0-255 scale)


def with_noise_map(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """RGB (B, 3, H, W) -> (B, 4, H, W) with the noise std of each image (0-255 scale) as a constant
    plane: a noise-map denoiser is told how strong the noise is (given by the user, or estimated)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1) / NOISE_MAP_SCALE
    return torch.cat([x, s.expand(x.shape[0], 1, *x.shape[-2:])], dim=1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
    )


class ResidualUNet(nn.Module):
    """Predicts the degradation (noise, blocks, blur, holes) and subtracts it from the input's RGB:
    out = x[:, :3] - f(x)."""

    def __init__(self, config: ResidualUNetConfig = ResidualUNetConfig()):
        super().__init__()
        self.config = config
        w = config.width
        widths = [w * 2**i for i in range(config.depth + 1)]
        self.head = _block(config.in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 2, stride=2), _block(b, b)) for a, b in zip(widths, widths[1:])
        )
        self.ups = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths, widths[1:]))
        self.merges = nn.ModuleList(_block(a, a) for a in widths[:-1])
        self.tail = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) in [0, 1], any H, W -> restored RGB, same size (not clamped)."""
        padded, (h, w) = pad_to_multiple(x, 2**self.config.depth)
        skips = []
        f = self.head(padded)
        for down in self.downs:
            skips.append(f)
            f = down(f)
        for up, merge, skip in zip(reversed(self.ups), reversed(self.merges), reversed(skips)):
            f = merge(up(f) + skip)
        return (padded[:, :3] - self.tail(f))[..., :h, :w]
