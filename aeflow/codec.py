"""The bitstream: every byte needed to rebuild an image, given the model whose fingerprint it names.
No Ray here.

Layout, format version 2 (big-endian header, then length-prefixed sections):
    magic b"AEFL" 4 | version u8 | coder u8 | level u8 | flags u8 | width u32 | height u32
    | latent channels, rows, cols u16 x3 | model fingerprint 8 bytes | crc32 u32
    | mode: u8 length + ASCII (the input's Pillow mode, e.g. RGB, RGBA, I;16)
    | aeflow version: u8 length + ASCII
    | section latents: u32 length + range-coded 32-bit words (little-endian)
    | section escapes: u32 length + int32 values outside their channel's table (little-endian)
    | section alpha:   u32 length + zlib of the 8-bit alpha plane (flags bit 0), lossless
    | section icc:     u32 length + the ICC profile bytes (flags bit 1)
The crc32 covers every byte of the stream with its own field zeroed, so any flipped or missing byte
is caught before decoding. Symbols are range coded (constriction) with the model's integer frequency
tables, fixed when the model was exported: the decoder reproduces the encoder's symbols exactly on any
machine and thread count.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

import aeflow
from aeflow.images import to_tensor, to_uint8
from aeflow.models.entropy import TABLE_BITS
from aeflow.models.hyperprior import LAYERS as _HS_LAYERS
from aeflow.models.hyperprior import scales_and_means
from aeflow.models.layers import pad_to_multiple
from aeflow.tiling import images_per_call

_LAST_HS = _HS_LAYERS[-1][0]
MAGIC = b"AEFL"
FORMAT_VERSION = 2
CODER_RANGE_FACTORIZED = 3  # range coder, one factorized-prior table per channel
CODER_RANGE_HYPER = 4  # range coder, side information z, then each symbol less its mean under a Gaussian, both from z
DEFAULT_QUALITY = 3
FLAG_ALPHA, FLAG_ICC = 1, 2
_HEADER = struct.Struct(">4sBBBBIIHHH8sI")
_CRC_OFFSET = _HEADER.size - 4
TILE = 512  # pixels per tile side for images larger than TILE + 2 * MARGIN: bounded memory
MARGIN = 64  # pixels of context on each side of a tile (beyond the transforms' receptive field)


class BitstreamError(ValueError):
    """A bitstream that cannot be decoded (truncated, corrupted, unknown version, wrong model)."""


@dataclass
class Decoded:
    """What a bitstream rebuilds: 8-bit RGB pixels, plus what the input carried beside them."""

    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None  # (H, W) uint8, exact
    icc: bytes | None
    mode: str  # the input file's Pillow mode
    level: int  # 1-based quality level


# --- integer tables and their range-coder models -------------------------------------------------

def _split(extra: dict[str, torch.Tensor], name: str) -> list[np.ndarray]:
    """Flattened integer tables (`name`.offsets, `name`.freqs) -> probabilities, exact in float64."""
    offsets = extra[f"{name}.offsets"].numpy().astype(np.int64)
    freqs = extra[f"{name}.freqs"].numpy().astype(np.float64) / (1 << TABLE_BITS)
    return [freqs[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


class _Table:
    """One integer table: values lo .. lo + size - 2, then the escape symbol for anything else."""

    def __init__(self, probs: np.ndarray, lo: int):
        self.lo, self.size, self.probs = int(lo), len(probs), probs
        import constriction  # here, not at import: the training path runs where constriction is not installed

        self.model = constriction.stream.model.Categorical(probs, perfect=False)


class Tables:
    """A codec model's integer frequency tables as range-coder models: one per (level, channel) of the
    factorized priors; with a hyperprior, one per channel of z (per level where it codes every level)
    and one per Gaussian scale."""

    def __init__(self, extra: dict[str, torch.Tensor]):
        self._tables: dict[tuple, _Table] = {}
        self.hyper = "hyper.g.freqs" in extra
        self.factorized = "coder.lo" in extra  # a factorized prior per level (a top-level hyperprior beside them)
        if self.factorized:
            self.lo = extra["coder.lo"].numpy().astype(np.int64)  # (levels, channels)
            self.levels, self.channels = self.lo.shape
            self._probs = _split(extra, "coder")
        elif self.hyper:  # the hyperprior codes every level
            self.levels = extra["hyper.z.lo"].shape[0] if extra["hyper.z.lo"].dim() == 2 else 1
            self.channels = extra[f"hyper.{_LAST_HS}.weight"].shape[0] // 2
        else:
            raise BitstreamError("this codec model has no entropy-coder tables (re-export it with aeflow train)")
        self.hyper_levels: frozenset[int] = frozenset()
        if self.hyper:
            self.extra = extra
            self.z_lo = extra["hyper.z.lo"].numpy().astype(np.int64).reshape(-1, extra["hyper.z.lo"].shape[-1])
            self.z_channels = self.z_lo.shape[1]
            every = self.z_lo.shape[0] > 1 or not self.factorized
            self.hyper_levels = frozenset(range(self.levels)) if every else frozenset({self.levels - 1})
            self._z_probs, self._g_probs = _split(extra, "hyper.z"), _split(extra, "hyper.g")

    def prior(self, level: int, channel: int) -> _Table:
        key = ("prior", level, channel)
        if key not in self._tables:
            self._tables[key] = _Table(self._probs[level * self.channels + channel], self.lo[level, channel])
        return self._tables[key]

    def side(self, level: int, channel: int) -> _Table:
        row = level if self.z_lo.shape[0] > 1 else 0  # one z prior per level, or one for the top level
        key = ("z", row, channel)
        if key not in self._tables:
            self._tables[key] = _Table(self._z_probs[row * self.z_channels + channel], self.z_lo[row, channel])
        return self._tables[key]

    def gaussian(self, index: int) -> _Table:
        key = ("g", index)
        if key not in self._tables:
            probs = self._g_probs[index]
            self._tables[key] = _Table(probs, -((len(probs) - 2) // 2))
        return self._tables[key]


_TABLES: dict[str, Tables] = {}


def tables_of(loaded) -> Tables:
    """The Tables of a modelstore.LoadedModel, built once per process."""
    if loaded.fingerprint not in _TABLES:
        _TABLES[loaded.fingerprint] = Tables(loaded.extra)
    return _TABLES[loaded.fingerprint]


# --- symbols <-> bytes ----------------------------------------------------------------------------

def _section(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _put(encoder, values: np.ndarray, table: _Table, escapes: list[np.ndarray]) -> None:
    """Range-code integer values (1-D) with a table; values outside it go as the escape symbol, and
    their raw value to `escapes`."""
    sym = values - table.lo
    esc = table.size - 1
    out = (sym < 0) | (sym >= esc)
    if out.any():
        escapes.append(values[out])
        sym = np.where(out, esc, sym)
    encoder.encode(sym.astype(np.int32), table.model)


def _get(decoder, n: int, table: _Table, escapes: np.ndarray, used: int) -> tuple[np.ndarray, int]:
    """The inverse of _put for n values; returns them and how many escaped values are now used."""
    values = decoder.decode(table.model, n).astype(np.int64)
    out = values == table.size - 1
    values += table.lo
    k = int(out.sum())
    if k:
        if used + k > len(escapes):
            raise BitstreamError("malformed bitstream: fewer escaped values than escape symbols")
        values[out] = escapes[used:used + k]
    return values, used + k


def pack(q: np.ndarray, level: int, tables: Tables, fingerprint: str, width: int, height: int,
         mode: str = "RGB", alpha: np.ndarray | None = None, icc: bytes | None = None,
         z: np.ndarray | None = None) -> bytes:
    """Integer symbols (C, h, w) of quality level `level` (0-based) -> bitstream bytes. With side
    information z (a level coded under the hyperprior) each symbol's table is picked from z."""
    q = np.asarray(q, np.int64)
    c, h, w = q.shape
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    escapes: list[np.ndarray] = []
    if z is not None:
        if level not in tables.hyper_levels:
            raise ValueError(f"level {level + 1} of this codec is not coded under a hyperprior")
        z = np.asarray(z, np.int64)
        for ch in range(z.shape[0]):
            _put(encoder, z[ch].ravel(), tables.side(level, ch), escapes)
        index, mean = scales_and_means(tables.extra, z, (h, w))
        residual = q - mean
        for k in np.unique(index).tolist():
            _put(encoder, residual[index == k], tables.gaussian(k), escapes)
    else:
        for ch in range(c):
            _put(encoder, q[ch].ravel(), tables.prior(level, ch), escapes)
    words = encoder.get_compressed().astype("<u4").tobytes()
    esc_bytes = np.concatenate(escapes).astype("<i4").tobytes() if escapes else b""
    flags = (FLAG_ALPHA if alpha is not None else 0) | (FLAG_ICC if icc else 0)
    alpha_bytes = zlib.compress(np.ascontiguousarray(alpha, np.uint8).tobytes(), 6) if alpha is not None else b""
    fp = bytes.fromhex(fingerprint)
    coder = CODER_RANGE_HYPER if z is not None else CODER_RANGE_FACTORIZED
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, coder, level + 1, flags, width, height, c, h, w, fp, 0)
    mode_b, version_b = mode.encode("ascii"), aeflow.__version__.encode("ascii")
    body = (bytes([len(mode_b)]) + mode_b + bytes([len(version_b)]) + version_b
            + _section(words) + _section(esc_bytes) + _section(alpha_bytes) + _section(icc or b""))
    crc = zlib.crc32(head + body)
    return head[:_CRC_OFFSET] + struct.pack(">I", crc) + body


def read_header(data: bytes) -> dict:
    """The fixed header and the variable fields, checked against the crc32."""
    if len(data) < _HEADER.size:
        raise BitstreamError(f"truncated bitstream: {len(data)} bytes, the header alone needs {_HEADER.size}")
    magic, version, coder, level, flags, width, height, c, h, w, fp, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError("not an aeflow bitstream (bad magic)")
    if version != FORMAT_VERSION:
        raise BitstreamError(
            f"bitstream format version {version} is not supported (this aeflow reads {FORMAT_VERSION})")
    if zlib.crc32(data[:_CRC_OFFSET] + b"\0\0\0\0" + data[_HEADER.size:]) != crc:
        raise BitstreamError("checksum mismatch: the bitstream is corrupted or truncated")
    if coder not in (CODER_RANGE_FACTORIZED, CODER_RANGE_HYPER):
        raise BitstreamError(f"unknown coder id {coder}")
    pos = _HEADER.size
    fields = []
    for _ in range(2):
        n = data[pos]
        fields.append(data[pos + 1:pos + 1 + n].decode("ascii"))
        pos += 1 + n
    sections = []
    for _ in range(4):
        (n,) = struct.unpack_from(">I", data, pos)
        sections.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return {"coder": coder, "level": level, "crc32": crc, "flags": flags, "width": width, "height": height,
            "shape": (c, h, w), "fingerprint": fp.hex(), "mode": fields[0], "aeflow_version": fields[1],
            "sections": sections}


def unpack(data: bytes, tables: Tables, fingerprint: str) -> tuple[np.ndarray, dict]:
    """Bitstream -> (integer symbols (C, h, w), header); raises BitstreamError."""
    try:
        head = read_header(data)
    except (IndexError, struct.error, UnicodeDecodeError):
        raise BitstreamError("malformed bitstream: its sections run past the end") from None
    if head["fingerprint"] != fingerprint:
        raise BitstreamError(f"bitstream was written by model {head['fingerprint']}, not {fingerprint}")
    level = head["level"] - 1
    c, h, w = head["shape"]
    if not 0 <= level < tables.levels or c != tables.channels:
        raise BitstreamError(f"level {level + 1} / {c} channels do not match the model")
    words, esc_bytes = head["sections"][:2]
    if len(words) % 4 or len(esc_bytes) % 4:
        raise BitstreamError("malformed bitstream: section lengths are not whole 32-bit words")
    import constriction

    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, "<u4").astype(np.uint32))
    escapes = np.frombuffer(esc_bytes, "<i4").astype(np.int64)
    q = np.empty((c, h, w), np.int64)
    used = 0
    if head["coder"] == CODER_RANGE_HYPER:
        if level not in tables.hyper_levels:
            raise BitstreamError(f"level {level + 1} was coded with a hyperprior that this model does not have")
        zc, zh, zw = tables.z_channels, -(-h // 4), -(-w // 4)
        z = np.empty((zc, zh * zw), np.int64)
        for ch in range(zc):
            z[ch], used = _get(decoder, zh * zw, tables.side(level, ch), escapes, used)
        index, mean = scales_and_means(tables.extra, z.reshape(zc, zh, zw), (h, w))
        for k in np.unique(index).tolist():
            where = index == k
            residual, used = _get(decoder, int(where.sum()), tables.gaussian(k), escapes, used)
            q[where] = residual + mean[where]
    else:
        if not tables.factorized:
            raise BitstreamError(f"level {level + 1}: this model has no factorized tables, only its hyperprior")
        for ch in range(c):
            values, used = _get(decoder, h * w, tables.prior(level, ch), escapes, used)
            q[ch] = values.reshape(h, w)
    if used != len(escapes):
        raise BitstreamError("malformed bitstream: escaped values left over")
    return q, head


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
    """Latents -> images in [0, 1] (unclamped) cropped to size, in tiles when large. Channels-last:
    PyTorch's CPU transposed convolutions ran a 512x384 synthesis in 79-87 ms that way against 105-134 ms
    (one thread; benchmarks/RESULTS.md); pixels may differ from the default layout's by float rounding."""
    stride = module.config.stride
    y = y.contiguous(memory_format=torch.channels_last)
    x = _tiled(module.decoder, y, stride, TILE // stride, MARGIN // stride)
    return x[..., : size[0], : size[1]]


# --- the public entry points --------------------------------------------------------------------

@torch.inference_mode()
def encode_images(loaded, arrays: list[np.ndarray], quality: int = DEFAULT_QUALITY, target_bpp: float = 0.0,
                  modes: list[str] | None = None, alphas: list | None = None, iccs: list | None = None) -> list[bytes]:
    """Same-size uint8 HxWx3 images -> one bitstream each, at `quality` (1-based level) or, with
    target_bpp, at the highest level whose stored size is at most target_bpp (the lowest otherwise)."""
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
        q = module.quantize(y[i:i + 1], level)[0].cpu().numpy()
        z = None
        if level in tables.hyper_levels:  # side information from the scaled latents
            z = torch.round(module.hyper.side(y[i:i + 1] * module._gain(module.log_gain, level)))[0].cpu().numpy()
        return pack(q, level, tables, loaded.fingerprint, w, h, modes[i], alphas[i], iccs[i], z)

    out = []
    for i in range(n):
        if target_bpp > 0:
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
            out.append(stream(i, check_quality(quality, tables.levels) - 1))
    return out


def check_quality(quality: int, levels: int) -> int:
    if not 1 <= quality <= levels:
        raise ValueError(f"--quality {quality}: this codec has levels 1..{levels}")
    return quality


@torch.inference_mode()
def decode_bitstream(loaded, data: bytes) -> Decoded:
    """Bitstream -> pixels (and alpha, ICC) with the model that wrote it; raises BitstreamError."""
    q, head = unpack(data, tables_of(loaded), loaded.fingerprint)
    module = loaded.module
    device = next(module.parameters()).device
    level = head["level"] - 1
    y = module.dequantize(torch.from_numpy(q).float()[None].to(device), level)
    rgb = to_uint8(synthesise(module, y, (head["height"], head["width"]))[0].cpu())
    alpha = None
    if head["flags"] & FLAG_ALPHA:
        try:
            alpha = np.frombuffer(zlib.decompress(head["sections"][2]), np.uint8)
            alpha = alpha.reshape(head["height"], head["width"])
        except (zlib.error, ValueError):
            raise BitstreamError("alpha section does not decompress to the image size") from None
    icc = head["sections"][3] if head["flags"] & FLAG_ICC else None
    return Decoded(rgb, alpha, icc, head["mode"], head["level"])

