"""The codec autoencoder: conv encoder -> latent grid -> transposed-conv decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aeflow.models.layers import GDN, pad_to_multiple


@dataclass(frozen=True)
class ConvAutoencoderConfig:
    """Shape of the codec. Saved as config.json beside the weights."""

    kind: str = "codec"
    channels: int = 64  # width of the hidden layers
    latent_channels: int = 48  # channels of the latent grid (one value per 16x16 pixels each)
    stride: int = 16  # total downsampling; fixed by the 4 stride-2 layers


class ConvAutoencoder(nn.Module):
    """Balle-style analysis/synthesis transforms with GDN. `encode` returns continuous latents;
    quantization (rounding) and lossless coding happen outside, in aeflow.codec."""

    def __init__(self, config: ConvAutoencoderConfig = ConvAutoencoderConfig()):
        super().__init__()
        self.config = config
        n, m = config.channels, config.latent_channels

        def down(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 5, stride=2, padding=2)

        def up(cin: int, cout: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)

        self.encoder = nn.Sequential(
            down(3, n), GDN(n), down(n, n), GDN(n), down(n, n), GDN(n), down(n, m)
        )
        self.decoder = nn.Sequential(
            up(m, n), GDN(n, inverse=True), up(n, n), GDN(n, inverse=True),
            up(n, n), GDN(n, inverse=True), up(n, 3),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1], any H, W -> latents (B, M, ceil(H/16), ceil(W/16))."""
        x, _ = pad_to_multiple(x, self.config.stride)
        return self.encoder(x)

    def decode(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Latents -> image in [0, 1] (not clamped), cropped to `size` (H, W) when given."""
        x = self.decoder(y)
        if size is not None:
            x = x[..., : size[0], : size[1]]
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: uniform noise stands in for rounding so gradients flow (Balle 2017)."""
        y = self.encode(x)
        y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else torch.round(y)
        return self.decode(y_hat, x.shape[-2:]), y
