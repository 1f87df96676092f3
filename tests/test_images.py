import io

import numpy as np
import pytest
from PIL import Image

from aeflow import images


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_grayscale_rgba_palette_and_16bit_become_rgb():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    arr, mode = images.decode_image(_png(gray))
    assert arr.shape == (8, 8, 3) and mode == "L"
    assert (arr[..., 0] == np.arange(64).reshape(8, 8)).all()
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 128))
    arr, mode = images.decode_image(_png(rgba))
    assert mode == "RGBA" and arr.shape == (4, 5, 3) and tuple(arr[0, 0]) == (10, 20, 30)
    deep = Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16))
    arr, _ = images.decode_image(_png(deep))
    assert arr.dtype == np.uint8 and arr.max() == 255
    pal = Image.new("P", (4, 4), 3)
    assert images.decode_image(_png(pal))[0].shape == (4, 4, 3)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    arr, _ = images.decode_image(_png(img, format="JPEG", exif=exif.tobytes()))
    assert arr.shape == (40, 20, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, I am text", "not a recognised image"),
])
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(images.ImageError, match=reason):
        images.decode_image(data)


def test_truncated_jpeg_is_an_error():
    data = _png(Image.new("RGB", (64, 64), (1, 2, 3)), format="JPEG")
    with pytest.raises(images.ImageError, match="cannot decode"):
        images.decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused():
    data = _png(Image.new("1", (3000, 3000)))
    with pytest.raises(images.ImageError, match="pixel limit"):
        images.decode_image(data, max_pixels=1_000_000)


def _patterns(photos) -> dict[str, np.ndarray]:
    h, w = 96, 128
    ramp = np.linspace(0, 255, w).astype(np.uint8)
    return {**photos,
            "horizontal gradient": np.tile(ramp[None, :, None], (h, 1, 3)),
            "checkerboard": (((np.indices((h, w)) // 8).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2),
            "noise": np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)}


def test_png_output_is_lossless_and_near_pillows_size(photos):
    """The jobs' PNG writer (one fixed row filter and libdeflate's fastest level, for speed) gives back every
    pixel and alpha value, in files close to Pillow's own per-row filter choice at zlib level 1: 2-4% larger on
    whole photos (benchmarks/RESULTS.md), at most 18% on these small crops, and no blow-up on the patterns where
    a fixed filter costs most (an Average filter under zlib's run-length matching made a gradient 60x larger)."""
    for name, arr in _patterns(photos).items():
        alpha = (np.arange(arr.shape[0] * arr.shape[1]) % 256).astype(np.uint8).reshape(arr.shape[:2])
        for a in (None, alpha):
            data = images.encode_image(arr, "png", a)
            back = np.asarray(Image.open(io.BytesIO(data)))
            assert np.array_equal(back[..., :3], arr), name
            if a is not None:
                assert np.array_equal(back[..., 3], a), name
            pil = Image.fromarray(arr) if a is None else Image.fromarray(np.dstack([arr, a]), "RGBA")
            reference = len(_png(pil, compress_level=1, compress_type=3))
            assert len(data) <= 1.2 * reference + 500, (name, len(data), reference)


def test_png_output_keeps_the_icc_profile(photos):
    icc = b"\0" * 128 + b"acsp" + b"\0" * 64  # the bytes are carried, not interpreted
    data = images.encode_image(photos["coffee"], "png", icc=icc)
    img = Image.open(io.BytesIO(data))
    assert img.info.get("icc_profile") == icc and np.array_equal(np.asarray(img), photos["coffee"])


def test_png_output_of_one_pixel_and_one_row_images_from_a_permuted_tensor():
    """Pixels from the models arrive as permuted tensor views; size-1 dimensions keep odd strides there (a 1x1
    restore failed with 'invalid data shape, strides, or dtype' at the write)."""
    import torch

    for h, w in [(1, 1), (1, 7), (7, 1)]:
        arr = images.to_uint8(torch.rand(3, h, w))
        back = np.asarray(Image.open(io.BytesIO(images.encode_image(arr, "png"))))
        assert np.array_equal(back, arr), (h, w)
