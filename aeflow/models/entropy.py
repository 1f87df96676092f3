"""The factorized prior of Balle et al. 2018 ("Variational image compression with a scale hyperprior",
appendix 6.1): one learned, flexible density per latent channel, shared across positions.

Training uses its likelihoods of noisy latents as the rate. For coding, `integer_tables` turns each
channel's density into a fixed table of integer frequencies once, at export; the range coder only ever
sees those integers, so decoding cannot drift with float rounding on another machine or thread count.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TABLE_BITS = 16  # each channel's frequencies sum to 2**TABLE_BITS
TAIL_MASS = 1e-6  # probability left outside a table's range; such values are coded as escapes
_SEARCH = 4096  # symbols searched on each side of zero when building tables


class FactorizedPrior(nn.Module):
    """Per-channel cumulative density c(y) = sigmoid(f(y)), f a small monotone MLP per channel;
    the likelihood of an integer-rounded value is c(y + 0.5) - c(y - 0.5)."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cumulative(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, N) -> logits of the cumulative density at v, (C, 1, N)."""
        for i, matrix in enumerate(self.matrices):
            v = torch.matmul(F.softplus(matrix), v) + self.biases[i]
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit interval around each value of y (B, C, H, W)."""
        b, c, h, w = y.shape
        v = y.transpose(0, 1).reshape(c, 1, -1)
        lower = self.logits_cumulative(v - 0.5)
        upper = self.logits_cumulative(v + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the tail where sigmoid is accurate
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return p.clamp_min(1e-9).reshape(c, b, h, w).transpose(0, 1)

    @torch.no_grad()
    def integer_tables(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Per channel: the lowest coded value and integer frequencies (summing to 2**TABLE_BITS)
        of the values lo..hi, followed by one escape symbol for values outside that range."""
        c = self.matrices[0].shape[0]
        grid = torch.arange(-_SEARCH, _SEARCH + 1, dtype=torch.float64)
        edges = (torch.cat([grid - 0.5, grid[-1:] + 0.5])).view(1, 1, -1).expand(c, 1, -1)
        cdf = torch.sigmoid(copy.deepcopy(self).cpu().double().logits_cumulative(edges))[:, 0, :]  # (C, 2S+2)
        los, tables = np.zeros(c, np.int32), []
        for ch in range(c):
            cum = cdf[ch].numpy()
            first = int(np.searchsorted(cum, TAIL_MASS / 2))  # first edge above the lower tail
            last = int(np.searchsorted(cum, 1 - TAIL_MASS / 2))
            first = max(0, min(first - 1, 2 * _SEARCH))
            last = max(first + 1, min(last, 2 * _SEARCH + 1))
            pmf = np.diff(cum[first:last + 1])
            escape = max(0.0, 1.0 - float(pmf.sum()))
            los[ch] = int(grid[first])
            tables.append(quantize_pmf(np.append(pmf, escape)))
        return los, tables


def quantize_pmf(pmf: np.ndarray, bits: int = TABLE_BITS) -> np.ndarray:
    """Float probabilities -> int32 frequencies, each >= 1, summing exactly to 2**bits."""
    total = 1 << bits
    pmf = np.maximum(np.asarray(pmf, np.float64), 0)
    free = total - len(pmf)
    if free < 0:
        raise ValueError(f"{len(pmf)} symbols do not fit a {bits}-bit table")
    counts = 1 + np.floor(pmf / max(pmf.sum(), 1e-300) * free).astype(np.int64)
    counts[int(np.argmax(counts))] += total - int(counts.sum())
    return counts.astype(np.int32)


def flatten_tables(tables: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables of different lengths -> (offsets, one array of all frequencies), int32 for safetensors."""
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tables])]).astype(np.int32)
    return torch.from_numpy(offsets), torch.from_numpy(np.concatenate(tables).astype(np.int32))


def export_tables(priors: list[FactorizedPrior]) -> dict[str, torch.Tensor]:
    """Integer tables of every level's prior, flattened for safetensors: coder.lo (levels, channels),
    coder.offsets (levels * channels + 1) into coder.freqs."""
    los, freqs = [], []
    for prior in priors:
        lo, tables = prior.integer_tables()
        los.append(lo)
        freqs.extend(tables)
    offsets, flat = flatten_tables(freqs)
    return {"coder.lo": torch.from_numpy(np.stack(los)), "coder.offsets": offsets, "coder.freqs": flat}
