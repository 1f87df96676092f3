import numpy as np
import pytest

from aeflow import codec, modelstore
from tests.conftest import CODEC_PSNR_FLOOR, psnr


def test_pack_unpack_is_lossless_for_rounded_latents():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 5, (48, 3, 4)).astype(np.float32)
    bits = codec.pack(y, 61, 45)
    back, w, h = codec.unpack(bits)
    assert (w, h) == (61, 45)
    np.testing.assert_array_equal(back, np.round(y))


def test_large_latents_use_16_bit_coder():
    y = np.array([[[300.0, -1000.0]]], dtype=np.float32)
    assert codec.read_header(codec.pack(y, 32, 16))["coder"] == codec.CODER_ZLIB_INT16
    np.testing.assert_array_equal(codec.unpack(codec.pack(y, 32, 16))[0], y)


def test_truncated_bitstream_is_a_clear_error():
    bits = codec.pack(np.zeros((4, 2, 2), np.float32), 30, 30)
    with pytest.raises(codec.BitstreamError, match="truncated"):
        codec.unpack(bits[:10])
    with pytest.raises(codec.BitstreamError, match="checksum"):
        codec.unpack(bits[:-3])


def test_flipped_bit_is_caught_by_checksum():
    bits = bytearray(codec.pack(np.ones((4, 2, 2), np.float32), 30, 30))
    bits[-2] ^= 0x10
    with pytest.raises(codec.BitstreamError, match="checksum"):
        codec.unpack(bytes(bits))


def test_wrong_magic_and_version_refused():
    bits = codec.pack(np.zeros((4, 2, 2), np.float32), 30, 30)
    with pytest.raises(codec.BitstreamError, match="magic"):
        codec.unpack(b"XXXX" + bits[4:])
    with pytest.raises(codec.BitstreamError, match="version 9"):
        codec.unpack(bits[:4] + bytes([9]) + bits[5:])


def test_shipped_codec_round_trip_beats_a_broken_model(photos):
    """The shipped weights reconstruct real, unseen photos far better than an untrained net would."""
    model = modelstore.load_model(modelstore.DEFAULT_CODEC)
    for arr in photos.values():
        bits = codec.encode_images(model.module, [arr])[0]
        latents, w, h = codec.unpack(bits)
        out = codec.decode_latents(model.module, latents, w, h)
        assert out.shape == arr.shape
        assert psnr(arr, out) > CODEC_PSNR_FLOOR
        assert 8 * len(bits) / (w * h) < 2.0


def test_decoding_is_deterministic_across_thread_counts(photos):
    import torch

    model = modelstore.load_model(modelstore.DEFAULT_CODEC)
    arr = photos["astronaut"]
    bits = codec.encode_images(model.module, [arr])[0]
    latents, w, h = codec.unpack(bits)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs.append(codec.decode_latents(model.module, latents, w, h))
    np.testing.assert_array_equal(outs[0], outs[1])
