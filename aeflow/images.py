"""The one image decoder and encoder of aeflow: bytes <-> uint8 RGB arrays, with clear errors."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 200_000_000  # larger images are refused as decompression bombs


class ImageError(ValueError):
    """An input that is not a decodable image; the message is the one-line reason."""


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Picture:
    """A decoded image: the RGB pixels the models see, and what a user expects to get back."""

    rgb: np.ndarray  # (H, W, 3) uint8
    mode: str  # the file's original Pillow mode (e.g. RGB, RGBA, L, P, I;16, CMYK)
    alpha: np.ndarray | None = None  # (H, W) uint8 when the file has transparency
    icc: bytes | None = None  # the embedded ICC profile, if any
    deep: np.ndarray | None = None  # (H, W) uint16 when the file is 16-bit greyscale (Pillow's I;16 modes)
    exif: bytes | None = None  # the EXIF block, its orientation reset since the pixels are upright


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode image bytes to an (H, W, 3) uint8 RGB array and the file's original Pillow mode."""
    pic = decode_picture(data, max_pixels)
    return pic.rgb, pic.mode


def decode_picture(data: bytes, max_pixels: int = MAX_PIXELS) -> Picture:
    """Decode image bytes to a Picture.

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images are converted to 8-bit
    RGB; transparency (RGBA, LA, palette with transparency) comes back as a separate 8-bit alpha plane
    and the ICC profile as bytes. Animated or multi-page files give their first frame. Raises
    ImageError with the reason.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageError(f"{img.width}x{img.height} exceeds the {max_pixels}-pixel limit")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"decompression bomb refused: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a recognised image format (Pillow cannot identify it)") from None
    except Exception as e:  # Pillow raises many types for broken files
        raise ImageError(f"cannot decode image: {type(e).__name__}: {e}") from None
    mode = img.mode
    icc = img.info.get("icc_profile") or None
    img = ImageOps.exif_transpose(img)
    exif = img.info.get("exif") or None  # exif_transpose drops the orientation tag from it
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.uint8)
    deep = None
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        if top == 65535.0:
            deep = np.clip(arr, 0, 65535).astype(np.uint16)
        img = Image.fromarray(np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return Picture(np.asarray(img, dtype=np.uint8), mode, alpha, icc, deep, exif)


def encode_image(arr: np.ndarray, fmt: str = "png", alpha: np.ndarray | None = None,
                 icc: bytes | None = None, exif: bytes | None = None) -> bytes:
    """Encode an (H, W, 3) uint8 array (or (H, W) uint16 greyscale, PNG only), with an alpha plane (PNG,
    WebP; JPEG has none) and an ICC profile when given. PNG uses zlib level 1 with the run-length
    strategy (Z_RLE): on 512x384 photos 3-4x faster than Pillow's default (level 6) for files 1-6% larger.
    8-bit PNGs without ICC or EXIF (what the jobs write) go through libpng (imagecodecs) with the Paeth
    filter on every row: 2.5x faster than Pillow's adaptive filter choice (4.3 against 10.7 ms a 512x384
    photo) for files within 1% of its size (benchmarks/RESULTS.md); a fifth of a decompress actor's CPU
    went into Pillow's PNG writer on a fast CPU."""
    fmt = fmt.lower()
    if arr.dtype == np.uint16 and fmt != "png":
        raise ValueError(f"16-bit output needs --format png, not {fmt}")
    if fmt == "png" and arr.dtype == np.uint8 and arr.ndim == 3 and not icc and not exif:
        # a fresh C-order array: libpng's wrapper refuses the odd strides that a size-1 dimension can keep
        # through a "contiguous" view (a 1x1 image from a permuted tensor), which ascontiguousarray leaves be
        pixels = np.array(arr, order="C") if alpha is None else np.dstack([arr, alpha])
        return imagecodecs.png_encode(pixels, level=1, strategy=imagecodecs.PNG.STRATEGY.RLE,
                                      filter=imagecodecs.PNG.FILTER.PAETH)
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if alpha is not None and arr.ndim == 3 and fmt not in ("jpeg", "jpg"):
        img = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    kw = {"icc_profile": icc} if icc else {}
    if exif:
        kw["exif"] = exif
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1, compress_type=3, **kw)  # 3 = Z_RLE
    elif fmt in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=95, **kw)
    elif fmt == "webp":
        img.save(buf, format="WEBP", lossless=True, **kw)
    else:
        raise ValueError(f"unsupported output format {fmt!r} (png, jpeg, webp)")
    return buf.getvalue()
