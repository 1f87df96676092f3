"""Restore keeps what users lose elsewhere: 16-bit depth, alpha; inpainting fills transparent holes."""

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from aeflow import cli
from aeflow.models import ResidualUNet, ResidualUNetConfig
from aeflow.modelstore import save_model
from tests.conftest import write_photos


def test_16_bit_greyscale_is_restored_to_16_bit(ray_local, tmp_path, photos):
    grey = photos["coffee"].mean(axis=2) * 257
    rng = np.random.default_rng(0)
    noisy = np.clip(np.round(grey + rng.normal(0, 15 * 257, grey.shape)), 0, 65535).astype(np.uint16)
    write_photos(tmp_path / "in", {"deep": noisy})
    assert cli.main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    out = Image.open(tmp_path / "out" / "deep.png")
    assert out.mode.startswith("I")  # a 16-bit PNG, not 8-bit RGB
    arr = np.asarray(out).astype(np.float64)
    assert arr.shape == grey.shape and np.any(arr.astype(np.int64) % 257 != 0)  # more than 8 bits of levels
    # Closer to the clean image than the input was. (The shipped denoiser was trained on colour noise;
    # greyscale noise, the same in all three channels, is removed less well: a training-data limit.)
    assert np.sqrt(np.mean((arr - grey) ** 2)) < 0.95 * np.sqrt(np.mean((noisy.astype(np.float64) - grey) ** 2))


def test_inpainting_fills_transparent_pixels_and_keeps_the_rest_exactly(ray_local, tmp_path, photos):
    torch.manual_seed(0)
    save_model(ResidualUNet(ResidualUNetConfig(task="inpaint", width=8, in_channels=4)), str(tmp_path / "inpaint"))
    rgb = photos["chelsea"]
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[20:40, 30:60] = 0  # the hole
    write_photos(tmp_path / "in", {"holed": np.dstack([rgb, alpha]), "no-mask": rgb})
    args = ["restore", "--task", "inpaint", "--model", str(tmp_path / "inpaint"), "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "out")]
    assert cli.main(args) == 0
    out = Image.open(tmp_path / "out" / "holed.png")
    assert out.mode == "RGB"  # holes filled: no transparency left
    got = np.asarray(out)
    np.testing.assert_array_equal(got[alpha == 255], rgb[alpha == 255])
    errors = pq.read_table(tmp_path / "out" / "errors.parquet").to_pylist()
    assert [(e["path"], e["stage"]) for e in errors] == [("no-mask.png", "input")]
    assert "transparent" in errors[0]["error"]


def test_strength_scales_the_models_correction(ray_local, tmp_path, photos):
    rng = np.random.default_rng(1)
    clean = photos["astronaut"]
    noisy = np.clip(np.round(clean + rng.normal(0, 20, clean.shape)), 0, 255).astype(np.uint8)
    write_photos(tmp_path / "in", {"a": noisy})
    outs = {}
    for s in ("0", "0.5", "1"):
        args = ["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / s), "--strength", s]
        assert cli.main(args) == 0
        outs[s] = np.asarray(Image.open(tmp_path / s / "a.png")).astype(np.float64)
    np.testing.assert_array_equal(outs["0"], noisy)  # no correction: the input back
    half = np.abs(outs["0.5"] - noisy).mean()
    full = np.abs(outs["1"] - noisy).mean()
    assert 0.4 * full < half < 0.6 * full


def test_exif_and_icc_carry_through_restore(ray_local, tmp_path, photos):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "aeflow-test-camera"  # Make
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    write_photos(tmp_path / "in", {"cam.jpg": photos["coffee"]}, quality=95, exif=exif.tobytes(), icc_profile=icc)
    assert cli.main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    out = Image.open(tmp_path / "out" / "cam.png")
    h, w = photos["coffee"].shape[:2]
    assert out.size == (h, w)  # upright pixels...
    assert out.getexif().get(0x010F) == "aeflow-test-camera"  # ...the camera's EXIF kept...
    assert out.getexif().get(0x0112, 1) == 1  # ...without an orientation that would rotate them again
    assert out.info.get("icc_profile") == icc


def test_sigma_forces_the_noise_level_of_a_noise_map_denoiser(ray_local, tmp_path, photos, capsys):
    """The shipped denoiser takes the noise level as an input: blind by default (the estimate is recorded
    per image), `--sigma` forces it; a larger forced sigma smooths more. A blind model refuses --sigma."""
    rng = np.random.default_rng(3)
    clean = photos["astronaut"].astype(np.float64)
    noisy = np.clip(np.round(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    write_photos(tmp_path / "in", {"a": noisy})
    out = {}
    for name, extra in (("blind", []), *((f"s{v}", ["--sigma", str(v)]) for v in (5, 25, 50))):
        assert cli.main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / name), *extra]) == 0
        out[name] = np.asarray(Image.open(tmp_path / name / "a.png")).astype(np.float64)
        rows = pq.read_table(tmp_path / name / "_progress").to_pylist()
        sigma = rows[0]["noise_sigma"]
        assert (20 < sigma < 30) if name == "blind" else sigma == float(name[1:])
    psnr = {k: 10 * np.log10(255**2 / np.mean((v - clean) ** 2)) for k, v in out.items()}
    assert psnr["s25"] > psnr["s5"] + 1.0  # told too little noise, it leaves noise in
    roughness = {k: np.abs(np.diff(v, axis=1)).mean() for k, v in out.items()}
    assert roughness["s50"] < roughness["s25"] < roughness["s5"]

    torch.manual_seed(0)
    save_model(ResidualUNet(ResidualUNetConfig(width=8)), str(tmp_path / "blind-model"))
    args = ["restore", "--model", str(tmp_path / "blind-model"), "--sigma", "25", "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "refused")]
    assert cli.main(args) == 2
    assert "is blind (it takes no noise level)" in capsys.readouterr().err
