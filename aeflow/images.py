"""The one image decoder and encoder of aeflow: bytes <-> uint8 RGB arrays, with clear errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 200_000_000  # larger images are refused as decompression bombs


class ImageError(ValueError):
    """An input that is not a decodable image; the message is the one-line reason."""


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode image bytes to an (H, W, 3) uint8 RGB array and the file's original Pillow mode.

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images are converted to 8-bit
    RGB; an alpha channel is dropped (documented: restored and decompressed outputs are RGB).
    Animated or multi-page files give their first frame. Raises ImageError with the reason.
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
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8), mode


def encode_image(arr: np.ndarray, fmt: str = "png") -> bytes:
    """Encode an (H, W, 3) uint8 array. PNG uses compress_level=1: ~4x faster than the default."""
    buf = io.BytesIO()
    fmt = fmt.lower()
    img = Image.fromarray(arr)
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=95)
    elif fmt == "webp":
        img.save(buf, format="WEBP", lossless=True)
    else:
        raise ValueError(f"unsupported output format {fmt!r} (png, jpeg, webp)")
    return buf.getvalue()
