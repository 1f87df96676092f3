"""The step loop: bf16 and fp32 both learn, EMA weights are what gets saved, a hyperprior codes every
level of a codec trained with it, and a campaign's checkpoint resumes its moving average."""

import numpy as np
import pytest
import torch

from aeflow import bitstream, codec, entropy_coding, modelstore
from aeflow.training import TrainConfig, make_optimizer, new_model, train, train_epoch
from aeflow.training.loop import Ema, prepare
from aeflow.training.start import initial_model


def _fixed_batches(photo: np.ndarray, n: int, size: int = 64):
    crop = torch.from_numpy(np.ascontiguousarray(photo[:size * 2:2, :size * 2:2]))
    return (crop[None].repeat(4, 1, 1, 1) for _ in range(n))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_loop_trains_to_finite_decreasing_losses_in_both_precisions(precision, photos):
    torch.manual_seed(0)
    cfg = TrainConfig(task="codec", channels=16, latent_channels=8, lmbda=(0.01, 0.05), precision=precision,
                      warmup=1, lr=1e-3, ema=0.9)
    model = prepare(new_model(cfg), torch.device("cpu"))
    optimizer = make_optimizer(cfg, model)
    ema = Ema(model, cfg.ema)
    losses, step = [], 0
    for _ in range(4):
        step, metrics = train_epoch(cfg, model, optimizer, ema, _fixed_batches(photos["chelsea"], 8), step,
                                    torch.device("cpu"), cfg.lr)
        losses.append(metrics["loss"])
        assert metrics["precision"] == precision
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    averaged = ema.state_dict(model)
    assert any(not torch.equal(averaged[n], p) for n, p in model.named_parameters())


def test_a_codec_trained_with_a_hyperprior_codes_every_level_exactly(tmp_path, photos):
    """Every level's stream carries side information, decodes to the same symbols, and the same
    pixels on one thread and on two."""
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    for name, arr in photos.items():
        Image.fromarray(arr).save(data / f"{name}.png")
    result = train(TrainConfig(task="codec", data=str(data), out=str(tmp_path / "model"),
                               storage=str(tmp_path / "ckpt"), name="h", no_ray=True, epochs=2, steps_per_epoch=3,
                               batch_size=2, crop=64, channels=8, latent_channels=8, lmbda=(0.01, 0.03, 0.1),
                               scale_min=0.5))
    loaded = modelstore.load_model(str(tmp_path / "model"))
    assert loaded.fingerprint == result["fingerprint"] and loaded.config["hyperprior_levels"] == "all"
    tables = entropy_coding.tables_of(loaded)
    assert tables.hyper_levels == {0, 1, 2} and not tables.factorized
    arr = photos["coffee"][:70, :90]
    threads = torch.get_num_threads()
    try:
        for quality in (1, 2, 3):
            bits = codec.encode_images(loaded, [arr], quality=quality)[0]
            assert bitstream.read_header(bits)["coder"] == bitstream.CODER_RANGE_HYPER
            q, _ = bitstream.unpack(bits, tables, loaded.fingerprint)
            y = loaded.module.encode(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)
            np.testing.assert_array_equal(q, loaded.module.quantize(y, quality - 1)[0].detach().numpy())
            torch.set_num_threads(1)
            one = codec.decode_bitstream(loaded, bits).rgb
            torch.set_num_threads(2)
            np.testing.assert_array_equal(one, codec.decode_bitstream(loaded, bits).rgb)
            torch.set_num_threads(threads)
    finally:
        torch.set_num_threads(threads)


def test_resumed_run_keeps_its_moving_average(tmp_path, photos, capsys):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photos["chelsea"]).save(data / "chelsea.png")
    base = dict(task="denoise", data=str(data), out=str(tmp_path / "m"), storage=str(tmp_path / "c"), name="r",
                no_ray=True, steps_per_epoch=2, batch_size=2, crop=32, width=8, ema=0.99)
    train(TrainConfig(**base, epochs=1))
    second = train(TrainConfig(**base, epochs=2))
    assert "resuming r from epoch 1, step 2" in capsys.readouterr().out and second["step"] == 4
    ckpt = tmp_path / "c" / "r" / "plain-checkpoint"
    assert (ckpt / "ema.safetensors").exists()
    from safetensors.torch import load_file

    saved = modelstore.load_model(str(tmp_path / "m")).module.state_dict()
    averaged = load_file(str(ckpt / "ema.safetensors"))
    for name, value in saved.items():  # the model written is the average (fp16-rounded), not the raw weights
        torch.testing.assert_close(value, averaged[name].to(torch.float16).float())


def test_plain_training_runs_without_ray_constriction_or_imagecodecs(tmp_path, photos):
    """A lent GPU machine has neither Ray nor the coders' wheels: the --no-ray loop must not need them."""
    import subprocess
    import sys

    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photos["chelsea"]).save(data / "chelsea.png")
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'constriction', 'imagecodecs'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from aeflow.training import TrainConfig, train\n"
        f"r = train(TrainConfig(task='codec', data={str(data)!r}, out={str(tmp_path / 'm')!r}, no_ray=True,\n"
        "                       epochs=1, steps_per_epoch=2, batch_size=2, crop=32, channels=8, latent_channels=4))\n"
        "print('fingerprint', r['fingerprint'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fingerprint" in out.stdout


def test_a_magnitude_hyperprior_grows_into_a_signed_one_with_the_same_side_information(photos, tiny_codec):
    older = tiny_codec.module  # its hyperprior's analysis sees magnitudes only
    grown = initial_model(TrainConfig(task="codec", init=tiny_codec.source, channels=8, latent_channels=8,
                                      lmbda=(0.01, 0.05)))
    assert grown.config.hyperprior_signed and not older.config.hyperprior_signed
    with torch.no_grad():
        y = older.encode(torch.from_numpy(photos["astronaut"]).permute(2, 0, 1)[None].float() / 255) * 4
        assert torch.allclose(grown.hyper.side(y), older.hyper.side(y), atol=1e-4)  # the signs start unused
    m = older.config.latent_channels
    assert grown.hyper.h_a[0].weight.shape[1] == 2 * m and not grown.hyper.h_a[0].weight[:, m:].any()
