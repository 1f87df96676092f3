"""The bitstream: every byte needed to rebuild an image, given the model whose fingerprint it names.
No Ray here; the payload's symbols are coded by aeflow.entropy_coding.

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
is caught before decoding.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

import aeflow
from aeflow import entropy_coding
from aeflow.entropy_coding import BitstreamError, Tables

MAGIC = b"AEFL"
FORMAT_VERSION = 2
CODER_RANGE_FACTORIZED = 3  # range coder, one factorized-prior table per channel
CODER_RANGE_HYPER = 4  # range coder, side information z, then each symbol less its mean under a Gaussian, both from z
FLAG_ALPHA, FLAG_ICC = 1, 2
_HEADER = struct.Struct(">4sBBBBIIHHH8sI")
_CRC_OFFSET = _HEADER.size - 4


def _section(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def pack(q: np.ndarray, level: int, tables: Tables, fingerprint: str, width: int, height: int,
         mode: str = "RGB", alpha: np.ndarray | None = None, icc: bytes | None = None,
         z: np.ndarray | None = None) -> bytes:
    """Integer symbols (C, h, w) of quality level `level` (0-based) -> bitstream bytes. With side
    information z (a level coded under the hyperprior) each symbol's table is picked from z."""
    c, h, w = np.shape(q)
    if z is not None:
        words, esc_bytes = entropy_coding.encode_hyper(q, z, level, tables)
    else:
        words, esc_bytes = entropy_coding.encode_factorized(q, level, tables)
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
    decode = entropy_coding.decode_hyper if head["coder"] == CODER_RANGE_HYPER else entropy_coding.decode_factorized
    return decode(words, esc_bytes, (c, h, w), level, tables), head


def alpha_and_icc(head: dict) -> tuple[np.ndarray | None, bytes | None]:
    """A read header's alpha plane (H, W) uint8, exact, and ICC profile, each None where the input had none."""
    alpha = None
    if head["flags"] & FLAG_ALPHA:
        try:
            alpha = np.frombuffer(zlib.decompress(head["sections"][2]), np.uint8)
            alpha = alpha.reshape(head["height"], head["width"])
        except (zlib.error, ValueError):
            raise BitstreamError("alpha section does not decompress to the image size") from None
    icc = head["sections"][3] if head["flags"] & FLAG_ICC else None
    return alpha, icc
