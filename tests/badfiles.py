"""A corpus of broken and awkward inputs, made with Pillow and bytes: what a real archive holds."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (a decompression bomb's header) with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + iend


def bad_files(photo: np.ndarray) -> dict[str, bytes]:
    """name -> bytes of inputs that must each become one error row (stage 'decode')."""
    jpeg = _save(Image.fromarray(photo), "JPEG")
    png = _save(Image.fromarray(photo), "PNG")
    return {
        "bad/zero-bytes.jpg": b"",
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/cut-short.png": png[: len(png) // 2],
        "bad/random-bytes.jpg": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "bad/text.png": b"just some text pretending to be a PNG\n",
        "bad/bomb-40000x40000.png": png_header_only(40000, 40000),
    }


def awkward_files(photo: np.ndarray) -> dict[str, bytes]:
    """name -> bytes of valid but unusual inputs that must be converted and written, not failed."""
    rgb = Image.fromarray(photo)
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [rgb, rgb.transpose(Image.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    tif = io.BytesIO()
    frames[0].save(tif, format="TIFF", save_all=True, append_images=frames[1:])
    return {
        "odd/sixteen-bit.png": _save(gray16, "PNG"),
        "odd/cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "odd/palette-transparent.png": _save(palette, "PNG"),
        "odd/la.png": _save(rgb.convert("LA"), "PNG"),
        "odd/one-bit.png": _save(rgb.convert("1"), "PNG"),
        "odd/exif-rotated.jpg": _save(rgb, "JPEG", exif=exif.tobytes()),
        "odd/animated.gif": gif.getvalue(),
        "odd/multipage.tif": tif.getvalue(),
        "odd/one-pixel.png": _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "odd/one-by-10000.png": _save(Image.new("RGB", (1, 10000), (10, 200, 10)), "PNG"),
    }


def write_all(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
