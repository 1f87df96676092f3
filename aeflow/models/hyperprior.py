"""A mean-scale hyperprior (Balle et al. 2018, with Minnen et al.'s predicted means) for the codec's levels.

Beside the latent symbols q, the encoder sends side information z = round(h_a(|y|)), a grid 4x coarser,
coded under its own factorized prior. From z both sides compute, for every symbol, an integer mean and
the index of a discretized Gaussian (64 scales, log-spaced) whose integer table codes q - mean: where
the image is busy the tables are wide, where it is flat they are narrow, which a single table per
channel cannot do.

Means and indices must come out the same in the encoder and in every decoder. So at export the synthesis network
h_s is turned into integers (fixed-point weights, activations floored to 8 fractional bits) and run in
float64 on the CPU: every product and sum is then an integer below 2**53, exact in any order, on any
machine and thread count. Training uses the float network; the exported one is what codes.

h_a sees the latents' magnitudes, and with `signed` their signed values beside them (Minnen et al.'s h_a
sees y): from magnitudes alone z cannot say a latent's sign, so the predicted means can only be near 0.
One h_a / h_s serves every level it codes: they see the level's gain-scaled latents, so the gains carry
the level. Only z's factorized prior is per level (z's magnitudes grow with the level's gain).
The hyperprior runs in fp32 even under a bf16 autocast: its scales and likelihoods need the mantissa.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aeflow.models.entropy import TAIL_MASS, FactorizedPrior, flatten_tables, quantize_pmf

SCALES = np.exp(np.linspace(math.log(0.11), math.log(256.0), 64))  # CompressAI's scale table
_STEP = math.log(SCALES[1] / SCALES[0])
WEIGHT_BITS = 14  # fixed-point fraction bits of the exported weights
ACT_BITS = 8  # fraction bits kept of each hidden activation
LAYERS = (("s0", True), ("s2", True), ("s4", False))  # h_s layers (name, transposed) as in the Sequential


class ScaleHyperprior(nn.Module):
    """h_a: |latents| (and, signed, the latents) -> z (1/4 size); h_s: z -> per latent, a scale index (in index
    units) and a mean."""

    def __init__(self, latent_channels: int, channels: int = 64, levels: int = 1, signed: bool = False):
        super().__init__()
        m, n = latent_channels, channels
        self.z_levels, self.signed = levels, signed
        self.h_a = nn.Sequential(
            nn.Conv2d(2 * m if signed else m, n, 3, padding=1), nn.ReLU(),
            nn.Conv2d(n, n, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(n, n, 5, stride=2, padding=2),
        )
        self.h_s = nn.Sequential(
            nn.ConvTranspose2d(n, n, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(n, n, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
            nn.Conv2d(n, 2 * m, 3, padding=1),
        )
        with torch.no_grad():  # start at sigma = 1.5 and mean 0 everywhere, and learn from there
            self.h_s[-1].weight[m:] = 0.0
            self.h_s[-1].bias[:m] = 24.0
            self.h_s[-1].bias[m:] = 0.0
        self.z_prior = FactorizedPrior(n * levels)  # level l's density for z channel c is channel l * n + c

    def side(self, y: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, M, h, w) -> continuous side information (B, N, ceil(h/4), ceil(w/4)), from
        their magnitudes (and, signed, their values: magnitudes first, so a magnitude-only h_a grows into it)."""
        h, w = y.shape[-2:]
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = y.float()
            x = torch.cat([y.abs(), y], dim=1) if self.signed else y.abs()
            return self.h_a(F.pad(x, (0, -w % 4, 0, -h % 4)))

    def bits(self, y: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """Training rate of scaled latents y (B, M, h, w) (continuous): bits per image, side info included.
        Noisy stand-ins for rounding give the likelihoods; h_s sees rounded z (straight through).
        `levels` (B,) picks each image's z prior when there is one per level."""
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = y.float()
            z = self.side(y)
            z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            z_hat = z + (torch.round(z) - z).detach()
            t, mean = self.h_s(z_hat)[..., : y.shape[-2], : y.shape[-1]].chunk(2, dim=1)
            sigma = torch.exp(math.log(SCALES[0]) + t.clamp(0, len(SCALES) - 1) * _STEP)
            y_noisy = (y + torch.empty_like(y).uniform_(-0.5, 0.5) - mean).abs()
            p = _phi((0.5 - y_noisy) / sigma) - _phi((-0.5 - y_noisy) / sigma)
            bits_y = -torch.log2(p.clamp_min(1e-9)).sum(dim=(1, 2, 3))
            return bits_y + self._z_bits(z_noisy, levels)

    def _z_bits(self, z: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
        if self.z_levels == 1:
            return -torch.log2(self.z_prior.likelihood(z)).sum(dim=(1, 2, 3))
        b, n = z.shape[:2]
        lik = self.z_prior.likelihood(z.repeat(1, self.z_levels, 1, 1))  # every level's density: z is small
        lik = lik.view(b, self.z_levels, n, *z.shape[2:])[torch.arange(b, device=z.device), levels]
        return -torch.log2(lik).sum(dim=(1, 2, 3))

    @torch.no_grad()
    def export(self) -> dict[str, torch.Tensor]:
        """Integer tensors that code: z's tables, the Gaussian tables, and h_s in fixed point."""
        out = {}
        lo, tables = self.z_prior.integer_tables()  # per level, level-major, when there is one per level
        out["hyper.z.lo"] = torch.from_numpy(lo if self.z_levels == 1 else lo.reshape(self.z_levels, -1))
        out["hyper.z.offsets"], out["hyper.z.freqs"] = flatten_tables(tables)
        out["hyper.g.offsets"], out["hyper.g.freqs"] = flatten_tables(gaussian_tables())
        scale_in = 0  # fraction bits of the layer's input: z is integer, hidden activations have ACT_BITS
        for name, _ in LAYERS:
            layer = self.h_s[int(name[1:])]
            w = torch.round(layer.weight.double() * 2**WEIGHT_BITS)
            if w.abs().max() >= 2**24:
                raise ValueError(f"hyperprior layer {name}: weights too large for exact integer evaluation")
            out[f"hyper.{name}.weight"] = w.to(torch.int32)
            out[f"hyper.{name}.bias"] = torch.round(layer.bias.double() * 2 ** (WEIGHT_BITS + scale_in)).to(torch.int64)
            scale_in = ACT_BITS
        return out


def _phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-(2**-0.5) * x)


def gaussian_tables() -> list[np.ndarray]:
    """For each scale of SCALES: integer frequencies of the values -K..K (K covering all but TAIL_MASS
    of the mass) and an escape symbol last; the range -K..K is len(table) // 2 on each side."""
    tables = []
    for s in SCALES:
        k = int(math.ceil(s * 5.0)) + 1  # Phi(-5) ~ 3e-7 < TAIL_MASS / 2
        v = np.arange(-k, k + 1, dtype=np.float64)
        upper = 0.5 * np.array([math.erfc(-(x + 0.5) / s / math.sqrt(2)) for x in v])
        lower = 0.5 * np.array([math.erfc(-(x - 0.5) / s / math.sqrt(2)) for x in v])
        pmf = upper - lower
        tables.append(quantize_pmf(np.append(pmf, max(TAIL_MASS, 1.0 - pmf.sum()))))
    return tables


def scales_and_means(extra: dict[str, torch.Tensor], z: np.ndarray,
                     shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer side information z (N, h/4, w/4) -> per latent symbol (M, h, w), the Gaussian table
    index and the integer mean, with the exported fixed-point h_s in float64 on the CPU: exact, so
    identical in every decoder."""
    x = torch.from_numpy(np.asarray(z, np.float64))[None]
    scale_in = 0
    for name, transposed in LAYERS:
        w = extra[f"hyper.{name}.weight"].to(torch.float64)
        b = extra[f"hyper.{name}.bias"].to(torch.float64)
        if transposed:
            x = F.conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1)
        else:
            x = F.conv2d(x, w, b, padding=1)
        if name != LAYERS[-1][0]:  # ReLU, then keep ACT_BITS fraction bits: floor of an exact quotient
            x = torch.floor(x.clamp_min(0) / 2 ** (WEIGHT_BITS + scale_in - ACT_BITS))
            scale_in = ACT_BITS
    t, mean = (x[0, :, : shape[0], : shape[1]] / 2 ** (WEIGHT_BITS + scale_in)).chunk(2)  # exact: a power of 2
    index = torch.floor(t + 0.5).clamp(0, len(SCALES) - 1).to(torch.int64)
    return index.numpy(), torch.floor(mean + 0.5).to(torch.int64).numpy()
