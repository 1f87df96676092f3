"""The bitstream: every byte needed to rebuild an image, given the model that wrote it. No Ray here.

Layout (big-endian), format version 1:
    magic  b"AEFL"            4 bytes
    version                   u8   (FORMAT_VERSION)
    coder                     u8   (CODER_ZLIB_INT8 | CODER_ZLIB_INT16)
    reserved                  u16
    width, height             u32, u32   original image size in pixels
    channels, lat_h, lat_w    u16, u16, u16   latent grid shape
    crc32 of payload          u32
    payload                   the coder's bytes
Version 1 codes the rounded latents losslessly with zlib; the learned entropy coder arrives as a new
`coder` value behind the same header, so old rows keep decoding.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

MAGIC = b"AEFL"
FORMAT_VERSION = 1
CODER_ZLIB_INT8 = 1
CODER_ZLIB_INT16 = 2
_HEADER = struct.Struct(">4sBBHIIHHHI")
HEADER_SIZE = _HEADER.size


class BitstreamError(ValueError):
    """A bitstream that cannot be decoded (truncated, corrupted, unknown version)."""


def pack(latents: np.ndarray, width: int, height: int) -> bytes:
    """Rounded latents (C, h, w) -> bitstream bytes."""
    q = np.round(latents).astype(np.int32)
    if q.min(initial=0) >= -128 and q.max(initial=0) <= 127:
        coder, raw = CODER_ZLIB_INT8, q.astype(np.int8).tobytes()
    else:
        coder, raw = CODER_ZLIB_INT16, np.clip(q, -32768, 32767).astype(">i2").tobytes()
    payload = zlib.compress(raw, 9)
    c, h, w = q.shape
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, coder, 0, width, height, c, h, w, zlib.crc32(payload))
    return header + payload


def read_header(data: bytes) -> dict:
    if len(data) < HEADER_SIZE:
        raise BitstreamError(f"truncated bitstream: {len(data)} bytes, header needs {HEADER_SIZE}")
    magic, version, coder, _, width, height, c, h, w, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError("not an aeflow bitstream (bad magic)")
    if version != FORMAT_VERSION:
        raise BitstreamError(
            f"bitstream format version {version} is not supported (this aeflow reads {FORMAT_VERSION})")
    return {"coder": coder, "width": width, "height": height, "shape": (c, h, w), "crc32": crc}


def unpack(data: bytes) -> tuple[np.ndarray, int, int]:
    """Bitstream -> (latents float32 (C, h, w), width, height); raises BitstreamError."""
    head = read_header(data)
    payload = data[HEADER_SIZE:]
    if zlib.crc32(payload) != head["crc32"]:
        raise BitstreamError("checksum mismatch: the bitstream is corrupted or truncated")
    try:
        raw = zlib.decompress(payload)
    except zlib.error as e:
        raise BitstreamError(f"payload does not decompress: {e}") from None
    dtype = {CODER_ZLIB_INT8: np.int8, CODER_ZLIB_INT16: np.dtype(">i2")}.get(head["coder"])
    if dtype is None:
        raise BitstreamError(f"unknown coder id {head['coder']}")
    shape = head["shape"]
    if len(raw) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise BitstreamError(f"payload holds {len(raw)} bytes, latent grid {shape} needs more or fewer")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float32), head["width"], head["height"]


@torch.inference_mode()
def encode_images(model: torch.nn.Module, arrays: list[np.ndarray]) -> list[bytes]:
    """Same-size uint8 HxWx3 images -> one bitstream each (one batched encoder call)."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    y = model.encode(x).numpy()
    h, w = arrays[0].shape[:2]
    return [pack(yi, w, h) for yi in y]


@torch.inference_mode()
def decode_latents(model: torch.nn.Module, latents: np.ndarray, width: int, height: int) -> np.ndarray:
    """Latents (C, h, w) -> uint8 HxWx3 image."""
    x = model.decode(torch.from_numpy(latents)[None], (height, width))[0]
    return to_uint8(x)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded."""
    return x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).contiguous().numpy()
