"""The one image decoder and encoder of aeflow: bytes <-> uint8 RGB arrays, with clear errors; arrays <->
the float tensors the models take; and the lister of the images under a URI."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from aeflow import storage

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 200_000_000  # larger images are refused as decompression bombs


class ImageError(ValueError):
    """An input that is not a decodable image; the message is the one-line reason."""


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ImageListing:
    """What a URI holds: every file (key relative to `base` -> (size, tag)), its images first among them."""

    fs: object  # the fsspec filesystem of the URI
    base: str  # the folder keys are relative to
    files: dict[str, tuple[int, str]] = field(repr=False)

    @property
    def images(self) -> dict[str, tuple[int, str]]:
        """Image keys -> (size, tag), sorted by key."""
        return {k: v for k, v in self.files.items() if is_image_key(k)}

    @property
    def others(self) -> list[str]:
        """Keys that are not images (a job counts them as skipped)."""
        return [k for k in self.files if not is_image_key(k)]

    def path(self, key: str) -> str:
        """The full path of a key on `fs`."""
        return storage.join(self.base, key)


def list_images(uri: str, options: storage.StorageOptions = storage.StorageOptions(),
                listing: str = "") -> ImageListing:
    """The images under a URI (a folder, a prefix or one file), or those a listing file names there
    (storage.read_listing). FileNotFoundError when there are none."""
    fs, root = storage.filesystem(uri, options)
    if listing:
        found = ImageListing(fs, root, storage.read_listing(listing, options))
    else:
        found = ImageListing(fs, storage.input_root(fs, root), storage.list_files(fs, root))
    if not found.images:
        raise FileNotFoundError(f"no image files under {uri} ({len(found.files)} other files; "
                                f"image extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return found


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


def to_tensor(pixels, device=None) -> torch.Tensor:
    """uint8 pixels, channels last ((H, W, 3) or (N, H, W, 3): an array, a list of same-size arrays, or a
    tensor) -> float32 in [0, 1], channels first, on `device` (moved while still 8-bit: 4x fewer bytes)."""
    import torch

    if isinstance(pixels, (list, tuple)):
        pixels = np.stack(pixels)
    if not isinstance(pixels, torch.Tensor):
        pixels = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"]))
    if device is not None:
        pixels = pixels.to(device)
    return pixels.movedim(-1, -3).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float pixels in [0, 1] ((3, H, W) or (N, 3, H, W), any device) -> uint8 (H, W, 3) or (N, H, W, 3),
    clamped and rounded."""
    return x.detach().clamp(0, 1).mul_(255).round_().byte().movedim(-3, -1).contiguous().cpu().numpy()


def deep_to_tensor(deep: np.ndarray) -> torch.Tensor:
    """16-bit greyscale (H, W) -> (3, H, W) float32 in [0, 1], the grey in every channel."""
    import torch

    return torch.from_numpy(deep.astype(np.float32) / 65535.0)[None].expand(3, -1, -1)


def to_uint16_grey(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float pixels in [0, 1] -> (H, W) uint16 greyscale, the channels' mean, rounded."""
    import torch

    grey = x.detach().clamp(0, 1).mean(dim=0).mul(65535).round()
    return grey.to(torch.int32).cpu().numpy().astype(np.uint16)


def encode_image(arr: np.ndarray, fmt: str = "png", alpha: np.ndarray | None = None,
                 icc: bytes | None = None, exif: bytes | None = None) -> bytes:
    """Encode an (H, W, 3) uint8 array (or (H, W) uint16 greyscale, PNG only), with an alpha plane (PNG,
    WebP; JPEG has none) and an ICC profile and EXIF block when given. PNG: see encode_png."""
    fmt = fmt.lower()
    if arr.dtype == np.uint16 and fmt != "png":
        raise ValueError(f"16-bit output needs --format png, not {fmt}")
    if fmt == "png":
        pixels = arr if alpha is None or arr.ndim != 3 else np.dstack([arr, alpha])
        return encode_png(pixels, icc, exif)
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if alpha is not None and arr.ndim == 3 and fmt not in ("jpeg", "jpg"):
        img = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    kw = {"icc_profile": icc} if icc else {}
    if exif:
        kw["exif"] = exif
    if fmt in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=95, **kw)
    elif fmt == "webp":
        img.save(buf, format="WEBP", lossless=True, **kw)
    else:
        raise ValueError(f"unsupported output format {fmt!r} (png, jpeg, webp)")
    return buf.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: grey, RGB, RGBA
_PNG_AVERAGE = 3  # the row filter type


def encode_png(pixels: np.ndarray, icc: bytes | None = None, exif: bytes | None = None) -> bytes:
    """(H, W[, 1|3|4]) uint8 or (H, W) uint16 pixels -> a PNG file, with iCCP and eXIf chunks when given.

    Every row gets the Average filter (in numpy) and the rows are deflated by libdeflate at level 1
    (imagecodecs): much faster than libpng or Pillow for files a few percent larger, and libdeflate's full
    match search keeps synthetic images (gradients, checkerboards) small where one fixed filter under
    run-length matching blows them up. The writer is the image jobs' largest cost after the model."""
    if pixels.dtype == np.uint16 and pixels.ndim == 2:
        samples, depth = pixels.astype(">u2").view(np.uint8).reshape(pixels.shape[0], -1, 2), 16
        channels = 1
    elif pixels.dtype == np.uint8 and (pixels.ndim == 2 or pixels.shape[2] in (1, 3, 4)):
        samples, depth = pixels.reshape(*pixels.shape[:2], -1), 8
        channels = samples.shape[2]
    else:
        raise ValueError(f"PNG output takes (H, W[, 1|3|4]) uint8 or (H, W) uint16 pixels, not "
                         f"{pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    step = samples.shape[2]  # bytes per pixel: the filter's "left" neighbour is this far back
    x = samples.reshape(h, w * step).astype(np.int16)
    mean = np.zeros_like(x)
    mean[1:] = x[:-1]
    mean[:, step:] += x[:, :-step]
    mean >>= 1
    rows = np.empty((h, w * step + 1), np.uint8)
    rows[:, 0] = _PNG_AVERAGE
    rows[:, 1:] = x - mean  # modulo 256, as PNG filters are
    head = struct.pack(">IIBBBBB", w, h, depth, _PNG_COLOUR[channels], 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", head)]
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    import imagecodecs  # here, not at import: the training path runs where imagecodecs is not installed

    chunks.append(_png_chunk(b"IDAT", imagecodecs.deflate_encode(rows, level=1, raw=False)))
    chunks.append(_png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
