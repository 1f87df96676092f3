"""Generation from a codec's own mean-scale hyperprior: variations of real images, interpolation between two,
and unconditional samples. No Ray here: the generate job (aeflow.pipeline) and `aeflow generate
--interpolate` call these.

Given its side information z, the hyperprior holds for every latent symbol a Gaussian: a mean and a scale
sigma(z). A variation keeps an image's own symbols q and z and draws q + T * sigma(z) * eps (eps standard
normal, T the temperature) before the synthesis transform: at T = 0 it is the image's own decode; as T grows
the detail that the hyperprior is unsure of changes while the layout, which z carries, stays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from aeflow import codec
from aeflow.entropy_coding import tables_of
from aeflow.images import to_tensor
from aeflow.models.hyperprior import SCALES, scales_and_means

Z_STRIDE = 4  # z's grid is 4x coarser than the latents'


@dataclass
class Anchor:
    """An image as the codec sees it at one level: its symbols q and, from its side information z, every
    symbol's hyperprior scale (both (M, h, w), symbol units), and its pixel size (H, W)."""

    q: torch.Tensor
    sigma: torch.Tensor
    level: int  # 0-based
    size: tuple[int, int]


def check_level(loaded, quality: int) -> int:
    """The 0-based level for a 1-based --quality, which must be coded under a hyperprior. 0: the codec's default
    level, or its top one where only the top level has a hyperprior (older codecs)."""
    tables = tables_of(loaded)
    level = (quality or codec.default_quality(loaded.config["lambdas"])) - 1
    if not quality and level not in tables.hyper_levels and tables.hyper_levels:
        level = max(tables.hyper_levels)
    codec.check_quality(level + 1, tables.levels)
    if level not in tables.hyper_levels:
        have = ", ".join(str(lv + 1) for lv in sorted(tables.hyper_levels)) or "none"
        raise ValueError(f"--quality {level + 1}: this codec has no hyperprior at that level (levels with one: "
                         f"{have}); generation samples the hyperprior")
    return level


def image_seed(seed: int, key: str) -> int:
    """The seed of an image's variations (variation v draws with seed + v): fixed by --seed and the key alone,
    so a re-run, or the same image in another job, gives the same pixels."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") >> 1


@torch.inference_mode()
def anchor(loaded, rgb: np.ndarray, level: int) -> Anchor:
    """An (H, W, 3) uint8 image -> its symbols and scales at `level` (the encoder's own arithmetic)."""
    module = loaded.module
    device = next(module.parameters()).device
    q, z = codec.symbols(module, codec.analyse(module, to_tensor(rgb, device)[None]).float(), level, side=True)
    index, _ = scales_and_means(loaded.extra, z.astype(np.int64), q.shape[-2:])
    return Anchor(torch.from_numpy(q), torch.from_numpy(SCALES[index]).float(), level, rgb.shape[:2])


@torch.inference_mode()
def variation(loaded, a: Anchor, temperature: float, seed: int) -> np.ndarray:
    """One variation of an anchored image: q + T * sigma(z) * eps, decoded."""
    eps = torch.randn(a.q.shape, generator=torch.Generator().manual_seed(seed))
    return codec.decode_symbols(loaded.module, a.q + temperature * a.sigma * eps, a.level, a.size)


@torch.inference_mode()
def interpolate(loaded, a: np.ndarray, b: np.ndarray, steps: int, level: int) -> list[np.ndarray]:
    """`steps` images along the straight line from a's symbols to b's (b resized to a's size first), both
    ends included."""
    if steps < 2:
        raise ValueError("--steps must be at least 2 (both ends are included)")
    if b.shape != a.shape:
        b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.LANCZOS))
    qa, qb = anchor(loaded, a, level).q, anchor(loaded, b, level).q
    return [codec.decode_symbols(loaded.module, (1 - t) * qa + t * qb, level, a.shape[:2])
            for t in np.linspace(0.0, 1.0, steps).tolist()]


@torch.inference_mode()
def sample(loaded, size: tuple[int, int], level: int, temperature: float, seed: int) -> np.ndarray:
    """An unconditional sample of size (H, W): every z symbol drawn from its own factorized prior, then each
    latent symbol from the Gaussian that z gives it (its mean plus T * sigma * eps), decoded."""
    tables = tables_of(loaded)
    rng = np.random.default_rng(seed)
    stride = loaded.module.config.stride
    h, w = -(-size[0] // stride), -(-size[1] // stride)
    zh, zw = -(-h // Z_STRIDE), -(-w // Z_STRIDE)
    z = np.empty((tables.z_channels, zh, zw), np.int64)
    for ch in range(tables.z_channels):
        table = tables.side(level, ch)
        probs = np.asarray(table.probs[:-1], np.float64)  # the escape symbol (rare tails) is not drawn
        z[ch] = table.lo + rng.choice(len(probs), size=(zh, zw), p=probs / probs.sum())
    index, mean = scales_and_means(loaded.extra, z, (h, w))
    eps = torch.from_numpy(rng.standard_normal(mean.shape)).float()
    q = torch.from_numpy(mean).float() + temperature * torch.from_numpy(SCALES[index]).float() * eps
    return codec.decode_symbols(loaded.module, q, level, size)
