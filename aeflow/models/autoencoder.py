"""The codec: GDN analysis transform -> latent grid -> per-level gain -> integer symbols under a
factorized prior -> inverse gain -> GDN synthesis transform.

One model serves every quality level (Cui et al., CVPR 2021, "asymmetric gained" variable rate): level
l scales the latents by a learned per-channel gain before rounding (finer steps = more bits) and
undoes it with a learned inverse gain before decoding; each level has its own factorized prior.
Training draws a level per crop and minimises bits + lambda_l * 255^2 * MSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from aeflow.models.entropy import FactorizedPrior
from aeflow.models.hyperprior import ScaleHyperprior
from aeflow.models.layers import GDN, Fp32Conv2d, Fp32ConvTranspose2d, pad_to_multiple

# CompressAI's lambdas for its MSE-trained quality levels 1..8 (loss = bits/pixel + lambda * 255^2 * MSE).
DEFAULT_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


@dataclass(frozen=True)
class ConvAutoencoderConfig:
    """Shape of the codec. Saved as config.json beside the weights."""

    kind: str = "codec"
    channels: int = 64  # width of the hidden layers
    latent_channels: int = 128  # channels of the latent grid (one value per 16x16 pixels each)
    stride: int = 16  # total downsampling; fixed by the 4 stride-2 layers
    lambdas: tuple[float, ...] = field(default=DEFAULT_LAMBDAS)  # one quality level per lambda, low to high
    hyperprior: bool = False  # symbols are coded under a mean-scale hyperprior (models/hyperprior.py)
    hyperprior_levels: str = "top"  # with hyperprior: "top" (the top level only) or "all" (every level)
    hyperprior_signed: bool = False  # the hyperprior's analysis sees the latents' signs, not only magnitudes

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))


class ConvAutoencoder(nn.Module):
    """`encode` gives continuous latents in the decoder's units; `quantize`/`dequantize` move them to
    and from a level's integer symbols; `decode` maps latents back to pixels."""

    def __init__(self, config: ConvAutoencoderConfig = ConvAutoencoderConfig()):
        super().__init__()
        self.config = config
        n, m, levels = config.channels, config.latent_channels, len(config.lambdas)

        def down(cin: int, cout: int, conv=nn.Conv2d) -> nn.Conv2d:
            return conv(cin, cout, 5, stride=2, padding=2)

        def up(cin: int, cout: int, conv=nn.ConvTranspose2d) -> nn.ConvTranspose2d:
            return conv(cin, cout, 5, stride=2, padding=2, output_padding=1)

        # The first and last layer of each transform stay fp32 under autocast (models/layers.py).
        self.encoder = nn.Sequential(
            down(3, n, Fp32Conv2d), GDN(n), down(n, n), GDN(n), down(n, n), GDN(n), down(n, m, Fp32Conv2d)
        )
        self.decoder = nn.Sequential(
            up(m, n, Fp32ConvTranspose2d), GDN(n, inverse=True), up(n, n), GDN(n, inverse=True),
            up(n, n), GDN(n, inverse=True), up(n, 3, Fp32ConvTranspose2d),
        )
        # Log-gains start spread over 8x so that the levels differ from the first step.
        start = torch.linspace(-1.0, 2.0, levels).view(levels, 1).expand(levels, m) if levels > 1 else torch.zeros(1, m)
        self.log_gain = nn.Parameter(start.clone())
        self.log_inv_gain = nn.Parameter(-start.clone())
        if config.hyperprior_levels not in ("top", "all"):
            raise ValueError(f"hyperprior_levels {config.hyperprior_levels!r}: 'top' or 'all'")
        every = config.hyperprior and config.hyperprior_levels == "all"
        self.priors = nn.ModuleList(FactorizedPrior(m) for _ in range(0 if every else levels))
        self.hyper = None
        if config.hyperprior:
            self.hyper = ScaleHyperprior(m, levels=levels if every else 1, signed=config.hyperprior_signed)

    @property
    def levels(self) -> int:
        return len(self.config.lambdas)

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

    def _gain(self, params: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        g = torch.exp(params[level])
        return g.view(-1, g.shape[-1], 1, 1) if g.dim() == 2 else g.view(1, -1, 1, 1)

    def quantize(self, y: torch.Tensor, level: int) -> torch.Tensor:
        """Latents -> integer symbols of quality level `level` (0-based), as float tensor."""
        return torch.round(y * self._gain(self.log_gain, level))

    def dequantize(self, q: torch.Tensor, level: int) -> torch.Tensor:
        return q * self._gain(self.log_inv_gain, level)

    def forward(self, x: torch.Tensor, levels: torch.Tensor,
                decode: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Training pass for one level per image -> (reconstruction, or None without decode, bits per image).

        Mixed quantization: the rate is measured on noisy latents (a differentiable stand-in for
        rounding, Balle 2017) while the decoder sees rounded ones with a straight-through gradient,
        so it trains on exactly what it will decode."""
        y = self.encode(x) * self._gain(self.log_gain, levels)
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        rounded = y + (torch.round(y) - y).detach()
        x_hat = self.decode(rounded * self._gain(self.log_inv_gain, levels), x.shape[-2:]) if decode else None
        if self.hyper is not None and self.hyper.z_levels > 1:  # every level: one batched pass, no host sync
            return x_hat, self.hyper.bits(y, levels)
        bits = torch.zeros(x.shape[0], device=x.device)
        for level in levels.unique().tolist():
            idx = levels == level
            if self.hyper is not None and level == self.levels - 1:
                bits[idx] = self.hyper.bits(y[idx])
                continue
            lik = self.priors[level].likelihood(noisy[idx].float())
            bits[idx] = -torch.log2(lik).sum(dim=(1, 2, 3))
        return x_hat, bits
