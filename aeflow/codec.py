"""The codec: pixels -> latents -> symbols -> bitstream and back, with the model whose fingerprint the stream
names. The transforms run here (tiled, for bounded memory); the format is aeflow.bitstream and the symbols'
coding aeflow.entropy_coding. No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aeflow.bitstream import FORMAT_VERSION, BitstreamError, alpha_and_icc, pack, read_header, unpack
from aeflow.entropy_coding import tables_of
from aeflow.images import to_tensor, to_uint8
from aeflow.metrics import psnr
from aeflow.models.layers import pad_to_multiple
from aeflow.tiling import images_per_call

# with the format's and the tables' names that aeflow.pipeline and benchmarks/bf16_cost.py reach through codec
__all__ = ["DEFAULT_LAMBDA", "FORMAT_VERSION", "BitstreamError", "Decoded", "analyse", "check_quality",
           "decode_bitstream", "decode_symbols", "default_quality", "encode_images", "read_header",
           "resolve_quality", "symbols", "synthesise", "tables_of"]

DEFAULT_LAMBDA = 0.0067  # --quality 0 picks the level trained nearest this lambda: one trade-off across level sets
TILE = 512  # pixels per tile side for images larger than TILE + 2 * MARGIN: bounded memory
MARGIN = 64  # pixels of context on each side of a tile (beyond the transforms' receptive field)


@dataclass
class Decoded:
    """What a bitstream rebuilds: 8-bit RGB pixels, plus what the input carried beside them."""

    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None  # (H, W) uint8, exact
    icc: bytes | None
    mode: str  # the input file's Pillow mode
    level: int  # 1-based quality level


# --- pixels <-> latents (tiled for bounded memory) --------------------------------------------------

def _tiled(fn, x: torch.Tensor, scale: float, tile: int, margin: int) -> torch.Tensor:
    """Apply a convolutional fn whose output is `scale` times its input's size tile by tile: each tile
    gets `margin` input cells of context on every side, and only its centre is kept. The tile plan
    depends on the size alone, so results are reproducible."""
    h, w = x.shape[-2:]
    if h <= tile + 2 * margin and w <= tile + 2 * margin:
        return fn(x)
    out = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            ya, xa = max(0, y0 - margin), max(0, x0 - margin)
            yb, xb = min(h, y0 + tile + margin), min(w, x0 + tile + margin)
            part = fn(x[..., ya:yb, xa:xb])
            if out is None:
                out = part.new_empty(*part.shape[:2], round(h * scale), round(w * scale))
            ty, tx = round((y0 - ya) * scale), round((x0 - xa) * scale)
            th, tw = round(min(tile, h - y0) * scale), round(min(tile, w - x0) * scale)
            out[..., round(y0 * scale):round(y0 * scale) + th, round(x0 * scale):round(x0 * scale) + tw] = \
                part[..., ty:ty + th, tx:tx + tw]
    return out


def analyse(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] -> continuous latents, in tiles when large."""
    stride = module.config.stride
    x, _ = pad_to_multiple(x, stride)
    return _tiled(module.encoder, x, 1 / stride, TILE, MARGIN)


def synthesise(module: torch.nn.Module, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Latents -> images in [0, 1] (unclamped) cropped to size, in tiles when large. Channels-last, where
    PyTorch's CPU transposed convolutions are faster (benchmarks/RESULTS.md); pixels may differ from the
    default layout's by float rounding."""
    stride = module.config.stride
    y = y.contiguous(memory_format=torch.channels_last)
    x = _tiled(module.decoder, y, stride, TILE // stride, MARGIN // stride)
    return x[..., : size[0], : size[1]]


def symbols(module: torch.nn.Module, y: torch.Tensor, level: int,
            side: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Latents (1, M, h, w) -> level `level`'s (0-based) symbols (M, h, w) and, with side, the hyperprior's
    side information z from the same scaled latents."""
    scaled = y * module._gain(module.log_gain, level)
    q = torch.round(scaled)[0].cpu().numpy()
    z = torch.round(module.hyper.side(scaled))[0].cpu().numpy() if side else None
    return q, z


def decode_symbols(module: torch.nn.Module, q: torch.Tensor, level: int, size: tuple[int, int]) -> np.ndarray:
    """Symbols (M, h, w) of level `level`, integer or not -> (H, W, 3) uint8 pixels: the decoder's path."""
    device = next(module.parameters()).device
    y = module.dequantize(q.float()[None].to(device), level)
    return to_uint8(synthesise(module, y, size)[0].cpu())


# --- the public entry points --------------------------------------------------------------------

@torch.inference_mode()
def encode_images(loaded, arrays: list[np.ndarray], quality: int = 0, target_bpp: float = 0.0,
                  modes: list[str] | None = None, alphas: list | None = None, iccs: list | None = None,
                  target_psnr: float = 0.0) -> list[bytes]:
    """Same-size uint8 HxWx3 images -> one bitstream each, at `quality` (1-based level, 0: the codec's
    default); with target_bpp, at
    the highest level whose stored size is at most target_bpp (the lowest otherwise); with target_psnr, at the
    lowest level whose decoded PSNR (dB, 8-bit RGB) reaches it (the top level otherwise)."""
    module, tables = loaded.module, tables_of(loaded)
    device = next(module.parameters()).device
    h, w = arrays[0].shape[:2]
    per_call = images_per_call(h, w, device)
    y = torch.cat([analyse(module, to_tensor(arrays[i:i + per_call], device))
                   for i in range(0, len(arrays), per_call)])
    y = y.float()  # under a caller's bf16 autocast, the gains and rounding still run in fp32
    n = len(arrays)
    modes, alphas, iccs = modes or ["RGB"] * n, alphas or [None] * n, iccs or [None] * n

    def stream(i: int, level: int) -> bytes:
        q, z = symbols(module, y[i:i + 1], level, side=level in tables.hyper_levels)
        return pack(q, level, tables, loaded.fingerprint, w, h, modes[i], alphas[i], iccs[i], z)

    def decoded_psnr(i: int, level: int) -> float:
        """The PSNR of level `level`'s decode of image i, by decode_bitstream's own arithmetic (fp32)."""
        with torch.autocast(device_type=device.type, enabled=False):
            q, _ = symbols(module, y[i:i + 1], level, side=False)
            return psnr(arrays[i], decode_symbols(module, torch.from_numpy(q), level, (h, w)))

    out = []
    for i in range(n):
        if target_psnr > 0:
            lo, hi = 0, tables.levels - 1
            while lo < hi:  # PSNR grows with the level: binary search for the first level that reaches it
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if decoded_psnr(i, mid) >= target_psnr else (mid + 1, hi)
            out.append(stream(i, lo))
        elif target_bpp > 0:
            lo, hi, best = 0, tables.levels - 1, None
            while lo <= hi:  # bits grow with the level: binary search for the last level that fits
                mid = (lo + hi) // 2
                bits = stream(i, mid)
                fits = 8 * len(bits) <= target_bpp * w * h
                if fits or mid == 0:  # level 1 (searched last) when nothing fits
                    best = bits
                lo, hi = (mid + 1, hi) if fits else (lo, mid - 1)
            out.append(best)
        else:
            out.append(stream(i, resolve_quality(quality, loaded.config["lambdas"]) - 1))
    return out


def default_quality(lambdas: list[float]) -> int:
    """The 1-based level whose lambda is nearest DEFAULT_LAMBDA (in log-lambda)."""
    return 1 + int(np.argmin(np.abs(np.log(np.asarray(lambdas)) - np.log(DEFAULT_LAMBDA))))


def resolve_quality(quality: int, lambdas: list[float]) -> int:
    """--quality as a 1-based level of a codec with these lambdas: 0 is its default level."""
    return check_quality(quality or default_quality(lambdas), len(lambdas))


def check_quality(quality: int, levels: int) -> int:
    if not 1 <= quality <= levels:
        raise ValueError(f"--quality {quality}: this codec has levels 1..{levels}")
    return quality


@torch.inference_mode()
def decode_bitstream(loaded, data: bytes) -> Decoded:
    """Bitstream -> pixels (and alpha, ICC) with the model that wrote it; raises BitstreamError."""
    q, head = unpack(data, tables_of(loaded), loaded.fingerprint)
    rgb = decode_symbols(loaded.module, torch.from_numpy(q), head["level"] - 1, (head["height"], head["width"]))
    alpha, icc = alpha_and_icc(head)
    return Decoded(rgb, alpha, icc, head["mode"], head["level"])
