import numpy as np
import pytest
import torch

from aeflow import bitstream, codec, entropy_coding, metrics, modelstore
from tests.conftest import CODEC_PSNR_FLOOR


@pytest.fixture(scope="module")
def model():
    return modelstore.load_model(modelstore.DEFAULT_CODEC)


def _symbols(model, level: int, seed: int = 0) -> np.ndarray:
    """Symbols drawn inside each channel's table, plus a few far outside it (escapes)."""
    tables = entropy_coding.tables_of(model)
    rng = np.random.default_rng(seed)
    q = np.stack([tables.lo[level, c] + rng.integers(0, tables.prior(level, c).size - 1, (5, 7))
                  for c in range(tables.channels)])
    q[0, 0, 0], q[3, 2, 1], q[-1, 4, 6] = 10_000, -7_777, tables.lo[level, -1] - 1
    return q


def test_pack_unpack_is_lossless_including_escaped_values(tiny_codec):
    model = tiny_codec  # factorized tables at its first level
    tables = entropy_coding.tables_of(model)
    for level in (0, tables.levels - 1):
        q = _symbols(model, level, seed=level)
        bits = bitstream.pack(q, level, tables, model.fingerprint, 100, 70)
        back, head = bitstream.unpack(bits, tables, model.fingerprint)
        np.testing.assert_array_equal(back, q)
        assert (head["width"], head["height"], head["level"]) == (100, 70, level + 1)
        assert head["fingerprint"] == model.fingerprint and head["mode"] == "RGB"


def test_truncated_or_flipped_bitstream_is_a_clear_error(model, photos):
    bits = codec.encode_images(model, [photos["chelsea"]], quality=3)[0]
    with pytest.raises(bitstream.BitstreamError, match="truncated"):
        codec.decode_bitstream(model, bits[:10])
    with pytest.raises(bitstream.BitstreamError, match="checksum"):
        codec.decode_bitstream(model, bits[:-3])
    for pos in (8, 40, len(bits) // 2, len(bits) - 1):  # header field, mode, payload, last byte
        flipped = bytearray(bits)
        flipped[pos] ^= 0x04
        with pytest.raises(bitstream.BitstreamError, match="checksum"):
            codec.decode_bitstream(model, bytes(flipped))


def test_wrong_magic_version_and_model_refused(model, photos):
    bits = codec.encode_images(model, [photos["chelsea"]], quality=1)[0]
    with pytest.raises(bitstream.BitstreamError, match="magic"):
        codec.decode_bitstream(model, b"XXXX" + bits[4:])
    with pytest.raises(bitstream.BitstreamError, match="version 9"):
        codec.decode_bitstream(model, bits[:4] + bytes([9]) + bits[5:])
    other = modelstore.LoadedModel(model.module, "codec", model.config, "0123456789abcdef", "other",
                                   model.extra, model.meta)
    with pytest.raises(bitstream.BitstreamError, match=f"written by model {model.fingerprint}"):
        codec.decode_bitstream(other, bits)


def test_quality_levels_trade_bytes_for_fidelity_on_unseen_photos(model, photos):
    """Every level reconstructs real photos the model never saw; more bits buy more PSNR."""
    levels = len(model.config["lambdas"])
    assert levels >= 4
    for name, arr in photos.items():
        h, w = arr.shape[:2]
        sizes, scores = [], []
        for q in range(1, levels + 1):
            bits = codec.encode_images(model, [arr], quality=q)[0]
            out = codec.decode_bitstream(model, bits)
            assert out.rgb.shape == arr.shape and out.level == q
            sizes.append(metrics.bpp(len(bits), w, h))
            scores.append(metrics.psnr(arr, out.rgb))
        assert scores[0] > CODEC_PSNR_FLOOR, name
        assert sizes == sorted(sizes) and scores[-1] > scores[0] + 3, (name, sizes, scores)


def test_quality_out_of_range_is_refused(model, photos):
    with pytest.raises(ValueError, match="levels 1.."):
        codec.encode_images(model, [photos["chelsea"]], quality=99)


def test_target_bpp_picks_the_highest_level_that_fits(model, photos):
    arr = photos["coffee"]
    h, w = arr.shape[:2]
    per_level = [len(codec.encode_images(model, [arr], quality=q)[0]) for q in (1, 2, 3, 4, 5)]
    target = (8 * per_level[2] + 8 * per_level[3]) / 2 / (w * h)  # between levels 3 and 4
    bits = codec.encode_images(model, [arr], target_bpp=target)[0]
    assert bitstream.read_header(bits)["level"] == 3 and len(bits) == per_level[2]
    tiny = codec.encode_images(model, [arr], target_bpp=0.001)[0]  # nothing fits: the smallest level
    assert bitstream.read_header(tiny)["level"] == 1


def test_decoding_is_identical_across_runs_and_thread_counts(model, photos):
    arr = photos["astronaut"]
    bits = codec.encode_images(model, [arr], quality=4)[0]
    assert codec.encode_images(model, [arr], quality=4)[0] == bits
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            outs.append(codec.decode_bitstream(model, bits).rgb)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_large_images_code_in_tiles_without_losing_quality(model, photos, monkeypatch):
    """Above TILE + 2 * MARGIN pixels the transforms run tile by tile (bounded memory); the result
    stays as good as coding the whole image at once."""
    arr = np.concatenate([photos["coffee"], photos["coffee"][:, ::-1]], axis=1)[:, :1100]  # 400 x 1100
    tiled = codec.encode_images(model, [arr], quality=5)[0]
    tiled_out = codec.decode_bitstream(model, tiled).rgb
    monkeypatch.setattr(codec, "TILE", 4096)
    whole = codec.encode_images(model, [arr], quality=5)[0]
    whole_out = codec.decode_bitstream(model, whole).rgb
    assert abs(metrics.psnr(arr, tiled_out) - metrics.psnr(arr, whole_out)) < 0.05
    assert abs(len(tiled) - len(whole)) < 0.01 * len(whole)


def test_alpha_and_icc_survive_the_bitstream(model, photos):
    arr = photos["chelsea"]
    h, w = arr.shape[:2]
    alpha = (np.arange(h * w) % 256).astype(np.uint8).reshape(h, w)
    icc = b"fake-icc-profile-bytes" * 10
    bits = codec.encode_images(model, [arr], quality=2, modes=["RGBA"], alphas=[alpha], iccs=[icc])[0]
    out = codec.decode_bitstream(model, bits)
    np.testing.assert_array_equal(out.alpha, alpha)
    assert out.icc == icc and out.mode == "RGBA"


def test_quality_0_is_the_level_trained_nearest_the_default_lambda(model, photos):
    """A codec's default level is chosen by its lambda, so codecs with more or fewer levels default to the same
    trade-off: CompressAI's quality 3 (lambda 0.0067) for the shipped eight."""
    assert codec.default_quality([0.0018, 0.0035, 0.0067, 0.013]) == 3
    assert codec.default_quality([0.0004, 0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025]) == 5
    assert codec.default_quality([0.001, 0.005, 0.02]) == 2
    lambdas = model.config["lambdas"]
    arr = photos["chelsea"][:128, :160]
    default = codec.encode_images(model, [arr])[0]
    assert default == codec.encode_images(model, [arr], quality=codec.default_quality(lambdas))[0]
    assert lambdas[bitstream.read_header(default)["level"] - 1] == 0.0067
    with pytest.raises(ValueError, match=f"levels 1..{len(lambdas)}"):
        codec.encode_images(model, [arr], quality=len(lambdas) + 1)
