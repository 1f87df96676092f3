"""The generative prior that `aeflow generate` samples: a Gaussian over a codec's latents."""

from __future__ import annotations

import math

import numpy as np
import torch

from aeflow.models import ConvAutoencoder
from aeflow.training.crops import random_crops

GEN_SIZE = 128
PRIOR_COMPONENTS = 64


@torch.no_grad()
def fit_prior(model: ConvAutoencoder, photos: list[np.ndarray], n_crops: int = 2048, seed: int = 0) -> dict:
    """A Gaussian over the latents of GEN_SIZE crops, kept to its top principal components
    (probabilistic PCA): enough for `aeflow generate` to sample plausible latents."""
    rng = np.random.default_rng(seed)
    model.eval()
    ys = []
    per = max(1, n_crops // len(photos))
    for p in photos:
        crops = np.stack(random_crops(p, GEN_SIZE, per, rng))
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
        ys.append(model.encode(x).flatten(1))
    y = torch.cat(ys)
    mean = y.mean(0)
    _, s, vt = torch.linalg.svd(y - mean, full_matrices=False)
    k = min(PRIOR_COMPONENTS, vt.shape[0])
    std = s[:k] / math.sqrt(max(1, y.shape[0] - 1))
    shape = torch.tensor(model.encode(torch.zeros(1, 3, GEN_SIZE, GEN_SIZE)).shape[1:])
    return {"prior_mean": mean, "prior_basis": vt[:k] * std[:, None], "prior_shape": shape.float()}
