"""Tiled inference for fully convolutional models: any image size at the memory of one tile.

Overlapping tiles are blended with linear ramps, so seams vanish: tiles start on the network's stride
grid, and the default 48 px overlap covers most of the restoration U-Net's receptive field. No Ray, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def images_per_call(h: int, w: int, device: torch.device) -> int:
    """How many h x w images to pass a model at once: on CPU at most 2^18 pixels (activations that stay in
    cache run faster than a large batch); a GPU wants large batches."""
    budget = 1 << 18 if device.type == "cpu" else 1 << 23
    return max(1, budget // (h * w))


def _starts(length: int, tile: int, step: int, align: int) -> list[int]:
    """Tile origins covering [0, length), each a multiple of `align` (so a strided network sees the
    same sampling grid as on the whole image), the last tile reaching the end."""
    if length <= tile:
        return [0]
    step = max(align, step // align * align)
    last = -(-(length - tile) // align) * align  # rounded up: its tile ends at `length`, size <= tile
    return list(range(0, last, step)) + [last]


def _ramp(n: int, overlap: int, device: torch.device) -> torch.Tensor:
    """Weights along one side of a tile: rising over `overlap` pixels at both ends, 1 inside."""
    w = torch.ones(n, device=device)
    k = min(overlap, n // 2)
    if k:
        edge = torch.arange(1, k + 1, device=device, dtype=torch.float32) / (k + 1)
        w[:k] = edge
        w[n - k:] = edge.flip(0)
    return w


@torch.inference_mode()
def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int = 512,
          overlap: int = 48, align: int = 4) -> torch.Tensor:
    """Apply fn (N, C, h, w) -> (N, C', h, w) over x in overlapping tiles of at most tile x tile and
    blend them; an image that fits one tile is passed through whole (one call of fn). Images go
    through fn images_per_call() at a time, channels-last (the restoration U-Net's faster layout on CPU)."""
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    per_call = images_per_call(h, w, x.device)
    if n > per_call:
        return torch.cat([tiled(fn, x[i:i + per_call], tile, overlap, align) for i in range(0, n, per_call)])
    if h <= tile and w <= tile:
        return fn(x)
    step = max(1, tile - 2 * overlap)
    out = None
    weight = torch.zeros((1, 1, h, w), device=x.device, dtype=torch.float32)
    for y0 in _starts(h, tile, step, align):
        for x0 in _starts(w, tile, step, align):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            patch = fn(x[..., y0:y1, x0:x1]).float()
            if out is None:
                out = torch.zeros((n, patch.shape[1], h, w), device=x.device, dtype=torch.float32)
            wy = _ramp(y1 - y0, overlap, x.device)
            wx = _ramp(x1 - x0, overlap, x.device)
            mask = (wy[:, None] * wx[None, :])[None, None]
            out[..., y0:y1, x0:x1] += patch * mask
            weight[..., y0:y1, x0:x1] += mask
    return out / weight
