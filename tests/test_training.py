"""Training on Ray Train (2 workers) and as plain PyTorch: checkpoints every epoch, re-runs resume."""

import os

import pytest

from aeflow import images, modelstore
from aeflow.training import TrainConfig, train
from tests.conftest import write_photos


@pytest.fixture
def tiny_data(tmp_path, photos):
    return write_photos(tmp_path / "data", photos)


def _cfg(tmp_path, data, **kw):
    base = dict(task="codec", data=str(data), out=str(tmp_path / "model"), storage=str(tmp_path / "ckpt"),
                name="t", epochs=1, batch_size=2, crop=32, crops_per_image=4, channels=8, latent_channels=4)
    return TrainConfig(**{**base, **kw})  # kw wins, e.g. s3:// data, out and storage


def test_ray_train_two_workers_resumes_from_checkpoint(ray_local, tmp_path, tiny_data):
    first = train(_cfg(tmp_path, tiny_data, workers=2))
    assert first["epoch"] == 1 and first["start_epoch"] == 0 and first["step"] > 0
    second = train(_cfg(tmp_path, tiny_data, workers=2, epochs=2))
    assert second["start_epoch"] == 1 and second["epoch"] == 2
    assert second["step"] > first["step"]
    loaded = modelstore.load_model(str(tmp_path / "model"))
    assert loaded.kind == "codec" and loaded.fingerprint == second["fingerprint"]
    assert "hyper.g.freqs" in loaded.extra  # the hyperprior's coding tables, fixed at export
    assert os.path.exists(tmp_path / "ckpt" / "t")


def test_plain_pytorch_loop_resumes_too(tmp_path, tiny_data, capsys):
    first = train(_cfg(tmp_path, tiny_data, no_ray=True, task="denoise", width=8))
    second = train(_cfg(tmp_path, tiny_data, no_ray=True, task="denoise", width=8, epochs=3))
    assert "resuming t from epoch 1" in capsys.readouterr().out
    assert second["start_epoch"] == 1 and second["step"] == 3 * first["step"]
    assert modelstore.load_model(str(tmp_path / "model")).kind == "restore"


def test_checkpoints_and_model_on_s3(ray_local, s3, tmp_path, tiny_data):
    for f in tiny_data.iterdir():
        s3.put(str(f), f"photos/train/{f.name}")
    cfg = dict(out="s3://photos/models/tiny", storage="s3://photos/ckpt", workers=1)
    first = train(_cfg(tmp_path, "s3://photos/train", **cfg))
    second = train(_cfg(tmp_path, "s3://photos/train", **cfg, epochs=2))
    assert second["start_epoch"] == 1 and second["step"] > first["step"]
    assert s3.find("photos/ckpt/t"), "no checkpoint objects written to S3"
    assert modelstore.load_model("s3://photos/models/tiny").fingerprint == second["fingerprint"]


def test_init_from_a_narrower_codec_grows_it_without_changing_its_output(tmp_path, photos):
    """--init with more latent channels or levels than the saved codec: copied weights plus zero-weight
    new channels, so training starts from the old model's pictures rather than from noise."""
    import torch

    from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig
    from aeflow.training import initial_model

    torch.manual_seed(0)
    small = ConvAutoencoder(ConvAutoencoderConfig(channels=8, latent_channels=4, lambdas=(0.01, 0.02)))
    modelstore.save_model(small, str(tmp_path / "small"))
    small = modelstore.load_model(str(tmp_path / "small")).module  # the fp16-rounded weights it ships
    grown = initial_model(TrainConfig(task="codec", init=str(tmp_path / "small"), channels=8, latent_channels=12,
                                      lmbda=(0.01, 0.02, 0.04)))
    assert grown.config.latent_channels == 12 and grown.levels == 3
    x = images.to_tensor(photos["chelsea"])[None]
    with torch.no_grad():
        torch.testing.assert_close(grown.decode(grown.encode(x)), small.decode(small.encode(x)))


def test_a_wider_codec_grown_from_a_narrow_one_codes_the_same_pictures_at_first(tmp_path, photos):
    """--channels above the --init codec's (the width a campaign may move to): the added hidden channels
    start with zero weight into the old ones, so latents, side information and pixels are the old model's."""
    import torch

    from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig
    from aeflow.training import initial_model

    torch.manual_seed(0)
    narrow = ConvAutoencoder(ConvAutoencoderConfig(channels=8, latent_channels=6, lambdas=(0.01, 0.05),
                                                   hyperprior=True, hyperprior_levels="all", hyperprior_signed=True))
    modelstore.save_model(narrow, str(tmp_path / "narrow"))
    narrow = modelstore.load_model(str(tmp_path / "narrow")).module
    wide = initial_model(TrainConfig(task="codec", init=str(tmp_path / "narrow"), channels=12, latent_channels=6,
                                     lmbda=(0.01, 0.05)))
    assert wide.config.channels == 12 and wide.encoder[0].weight.shape[0] == 12
    assert wide.encoder[2].weight[8:].abs().sum() > 0  # the added channels are not dead: they have inputs
    x = images.to_tensor(photos["chelsea"])[None]
    with torch.no_grad():
        y_wide, y_narrow = wide.encode(x), narrow.encode(x)
        torch.testing.assert_close(y_wide, y_narrow)
        torch.testing.assert_close(wide.decode(y_wide), narrow.decode(y_narrow))
        for level in (0, 1):
            q = wide.quantize(y_wide, level)
            torch.testing.assert_close(wide.hyper.side(q), narrow.hyper.side(q))


def test_new_quality_levels_start_between_the_old_ones_and_keep_the_matching_levels(tmp_path, photos):
    """--lmbda with a wider range than the --init codec's: a level whose lambda the codec has codes the same
    symbols at the same rate as before; one between two old levels quantizes between them, one beyond the
    ends beyond them."""
    import torch

    from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig
    from aeflow.training import initial_model

    torch.manual_seed(0)
    old = ConvAutoencoder(ConvAutoencoderConfig(channels=8, latent_channels=6, lambdas=(0.01, 0.04),
                                                hyperprior=True, hyperprior_levels="all", hyperprior_signed=True))
    with torch.no_grad():
        old.log_gain[1] += 1.0  # two levels far apart, as trained ones are
    modelstore.save_model(old, str(tmp_path / "old"))
    old = modelstore.load_model(str(tmp_path / "old")).module
    new = initial_model(TrainConfig(task="codec", init=str(tmp_path / "old"), channels=8, latent_channels=6,
                                    lmbda=(0.005, 0.01, 0.02, 0.04, 0.08)))
    assert new.levels == 5
    x = images.to_tensor(photos["chelsea"])[None]
    with torch.no_grad():
        y = new.encode(x)
        torch.testing.assert_close(new.quantize(y, 1), old.quantize(y, 0))
        torch.testing.assert_close(new.quantize(y, 3), old.quantize(y, 1))
        for level, before in ((1, 0), (3, 1)):
            q = new.quantize(y, level)
            bits = []
            for model, index in ((new, level), (old, before)):
                torch.manual_seed(1)  # the same noisy stand-ins for rounding
                bits.append(model.hyper.bits(q, torch.tensor([index])))
            torch.testing.assert_close(*bits)
    steps = new.log_gain.mean(dim=1).tolist()  # finer quantization steps level by level, none repeated
    assert steps == sorted(steps) and len(set(steps)) == 5, steps


def test_a_blind_denoiser_grows_a_noise_map_input_without_changing_its_output(tmp_path, photos):
    """--noise-map --init <blind denoiser>: the new sigma channel starts with zero weights, so training
    begins at the blind model's pixels, whatever sigma it is told; after growth the input has 4 channels."""
    import torch

    from aeflow.models import ResidualUNet, ResidualUNetConfig
    from aeflow.models.restorer import with_noise_map
    from aeflow.training import initial_model

    torch.manual_seed(0)
    modelstore.save_model(ResidualUNet(ResidualUNetConfig(width=8)), str(tmp_path / "blind"))
    blind = modelstore.load_model(str(tmp_path / "blind")).module
    grown = initial_model(TrainConfig(task="denoise", init=str(tmp_path / "blind"), width=8, noise_map=True))
    assert grown.config.noise_map and grown.config.in_channels == 4
    x = images.to_tensor(photos["chelsea"])[None]
    with torch.no_grad():
        for sigma in (0.0, 25.0, 50.0):
            torch.testing.assert_close(grown(with_noise_map(x, sigma)), blind(x))
