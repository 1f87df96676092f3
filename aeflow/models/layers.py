"""Small building blocks shared by the autoencoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016), the standard nonlinearity of
    learned image codecs: y = x / sqrt(beta + gamma * x^2), or its inverse for the decoder. It runs in
    fp32 under a bf16 autocast: the squares and the root lose too much in an 8-bit mantissa."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            c = x.shape[1]
            beta = self.beta.abs() + 1e-6
            gamma = self.gamma.abs().view(c, c, 1, 1)
            norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
            return x * norm if self.inverse else x / norm


class Fp32Conv2d(nn.Conv2d):
    """A convolution that stays fp32 under a bf16 autocast: for a transform's first and last layers,
    whose outputs are the latents to be rounded and the pixels to be scored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float())


class Fp32ConvTranspose2d(nn.ConvTranspose2d):
    """The transposed convolution of Fp32Conv2d."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float(), output_size)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (replicating edges) up to a multiple of the network's stride; returns the
    padded tensor and the original (H, W) so the caller can crop back."""
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph or pw:
        mode = "replicate" if min(h, w) > 1 else "constant"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
