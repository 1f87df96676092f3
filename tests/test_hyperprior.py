"""The top level's scale hyperprior: side information picks each symbol's table, exactly, in every decoder."""

import numpy as np
import pytest
import torch

from aeflow import bitstream, codec, entropy_coding, images, modelstore
from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig
from aeflow.models.hyperprior import scales_and_means
from tests.conftest import write_photos


@pytest.fixture(scope="module")
def tiny(tiny_codec):
    return tiny_codec


def test_top_level_is_coded_with_the_hyperprior_and_decodes_to_the_same_symbols(tiny, photos):
    arr = photos["chelsea"][:90, :130]  # not a multiple of 16 or 64: padding on both grids
    y = tiny.module.encode(images.to_tensor(arr)[None])
    for quality, coder in ((1, bitstream.CODER_RANGE_FACTORIZED), (2, bitstream.CODER_RANGE_HYPER)):
        bits = codec.encode_images(tiny, [arr], quality=quality)[0]
        head = bitstream.read_header(bits)
        assert head["coder"] == coder
        q, _ = bitstream.unpack(bits, entropy_coding.tables_of(tiny), tiny.fingerprint)
        np.testing.assert_array_equal(q, tiny.module.quantize(y, quality - 1)[0].detach().numpy())
        assert codec.decode_bitstream(tiny, bits).rgb.shape == arr.shape


def test_scales_and_means_are_exact_integers_whatever_the_thread_count(tiny):
    rng = np.random.default_rng(0)
    z = rng.integers(-20, 21, (64, 7, 9))
    got = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        got.append(scales_and_means(tiny.extra, z, (27, 33)))
    torch.set_num_threads(2)
    index, mean = got[0]
    assert index.shape == mean.shape == (8, 27, 33) and index.dtype == mean.dtype == np.int64
    assert 0 <= index.min() and index.max() < 64 and len(np.unique(index)) > 1
    for other in got[1:]:
        np.testing.assert_array_equal(other[0], index)
        np.testing.assert_array_equal(other[1], mean)


def test_hyperprior_training_moves_only_the_hyperprior(tmp_path, photos):
    """--task hyperprior: the codec's transforms, gains and lower levels stay as they were."""
    from aeflow.training import TrainConfig, train

    torch.manual_seed(0)
    base = ConvAutoencoder(ConvAutoencoderConfig(channels=8, latent_channels=8, lambdas=(0.01, 0.05)))
    modelstore.save_model(base, str(tmp_path / "base"))
    write_photos(tmp_path / "data", photos)
    cfg = TrainConfig(task="hyperprior", data=str(tmp_path / "data"), out=str(tmp_path / "hyper"),
                      init=str(tmp_path / "base"), storage=str(tmp_path / "ckpt"), name="h", epochs=1, batch_size=2,
                      crop=64, crops_per_image=2, no_ray=True, warmup=1)
    train(cfg)
    before, after = modelstore.load_model(str(tmp_path / "base")), modelstore.load_model(str(tmp_path / "hyper"))
    assert after.config["hyperprior"] and "hyper.g.freqs" in after.extra
    old = before.module.state_dict()
    for name, value in after.module.state_dict().items():
        if not name.startswith("hyper."):
            torch.testing.assert_close(value, old[name])
