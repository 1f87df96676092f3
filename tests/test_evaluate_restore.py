"""`aeflow eval --task denoise`: fixed-seed degradations, aeflow against classical denoisers."""

import json

from PIL import Image

from aeflow import cli
from tests.conftest import write_photos


def test_denoise_eval_reports_aeflow_and_the_classical_baselines(tmp_path, photos):
    src = write_photos(tmp_path / "clean", {name: photos[name] for name in ("chelsea", "coffee")})
    args = ["eval", "--task", "denoise", "--level", "25", "--input", str(src), "--output", str(tmp_path / "ev")]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    mean = report["mean"]
    assert set(mean) >= {"degraded", "aeflow", "nl_means", "wavelet", "tv", "cbm3d"}
    assert mean["aeflow"]["psnr"] > mean["degraded"]["psnr"] + 5  # a real denoiser, not an identity
    assert 0 < mean["aeflow"]["ssim"] <= 1 and report["images"] == 2
    assert Image.open(tmp_path / "ev" / "grid.png").size[0] == 4 * 160
    assert cli.main(args) == 0  # fixed seed: the same figures again
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())["mean"]
    assert again["degraded"] == mean["degraded"] and again["aeflow"] == mean["aeflow"]


def test_eval_of_a_restore_task_with_a_codec_model_says_so(tmp_path, photos, capsys):
    write_photos(tmp_path, {"c": photos["coffee"]})
    args = ["eval", "--task", "deblock", "--model", "codec-default", "--input", str(tmp_path), "--output",
            str(tmp_path / "e")]
    assert cli.main(args) == 2
    assert "a codec model, restoration eval needs a restorer" in capsys.readouterr().err


def test_inpaint_eval_masks_with_a_fixed_seed_and_compares_with_biharmonic(tmp_path, photos):
    import torch

    from aeflow.models import ResidualUNet, ResidualUNetConfig
    from aeflow.modelstore import save_model

    torch.manual_seed(0)
    save_model(ResidualUNet(ResidualUNetConfig(task="inpaint", width=8, in_channels=4)), str(tmp_path / "m"))
    write_photos(tmp_path, {"c": photos["coffee"]})
    args = ["eval", "--task", "inpaint", "--model", str(tmp_path / "m"), "--input", str(tmp_path),
            "--output", str(tmp_path / "e")]
    assert cli.main(args) == 0
    mean = json.loads((tmp_path / "e" / "eval.json").read_text())["mean"]
    assert set(mean) == {"degraded", "aeflow", "biharmonic", "push_pull"}
    assert mean["biharmonic"]["psnr"] > mean["degraded"]["psnr"]  # filling holes beats grey holes
