"""compress / decompress / restore / generate through the real Ray Data pipeline on local files."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray.data
from PIL import Image

from aeflow import cli, images, pipeline
from tests.conftest import CODEC_PSNR_FLOOR, encoded, psnr, write_photos


@pytest.fixture
def mixed_input(tmp_path, photos):
    """Good photos (one nested), a truncated JPEG, a text file named .png, and a non-image file."""
    src = write_photos(tmp_path / "in", {"astronaut.png": photos["astronaut"], "coffee.png": photos["coffee"],
                                         "nested/deeper/chelsea.jpg": photos["chelsea"]})
    (src / "truncated.jpg").write_bytes(encoded(photos["coffee"], "JPEG")[:300])
    (src / "notes.png").write_text("this is text, not a PNG")
    (src / "README.txt").write_text("not an image")
    return src


def test_bad_inputs_are_recorded_and_good_ones_all_written(ray_local, mixed_input, tmp_path, photos):
    out = tmp_path / "latents"
    summary = pipeline.compress(pipeline.JobConfig(input=str(mixed_input), output=str(out)))
    assert (summary.inputs, summary.written, summary.failed, summary.skipped) == (5, 3, 2, 1)
    table = pq.read_table(out / "latents-00000.parquet")
    assert sorted(table.column("path").to_pylist()) == ["astronaut.png", "coffee.png", "nested/deeper/chelsea.jpg"]
    for r in table.to_pylist():
        assert r["bpp"] == pytest.approx(8 * len(r["bitstream"]) / (r["width"] * r["height"]))
        assert r["bytes"] == len(r["bitstream"])
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [(e["path"], e["stage"]) for e in errors] == [("notes.png", "decode"), ("truncated.jpg", "decode")]
    assert "not a recognised image" in errors[0]["error"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 5, "done_before": 0, "written": 3, "failed": 2, "skipped": 1,
                                  "duplicates_dropped": 0, "unaccounted": 0}
    assert manifest["skipped_sample"] == ["README.txt"]
    assert 0 < manifest["first_result_seconds"] <= manifest["seconds"]  # the job's start-up, apart

    dec = tmp_path / "decoded"
    footer_readers_before = ray_local.actors_started("FooterReader")
    summary = pipeline.decompress(pipeline.JobConfig(input=str(out), output=str(dec)))
    assert summary.written == 3 and summary.failed == 0
    # Ray Data's default reader would start 32 footer-reading actors (about 2 s of CPU each here) for this file
    assert ray_local.actors_started("FooterReader") - footer_readers_before == 0
    assert ray.data.DataContext.get_current().use_datasource_v2  # the reader choice was scoped to the read
    got = images.decode_image((dec / "nested/deeper/chelsea.png").read_bytes())[0]
    assert got.shape == photos["chelsea"].shape
    assert psnr(photos["chelsea"], got) > CODEC_PSNR_FLOOR


def test_decompress_refuses_rows_of_another_model(ray_local, tmp_path, photos, capsys):
    from aeflow.models import ConvAutoencoder
    from aeflow.modelstore import save_model

    src = write_photos(tmp_path / "in", {"a": photos["coffee"]})
    other = tmp_path / "other-model"
    other_fp = save_model(ConvAutoencoder(), str(other))
    assert cli.main(["compress", "--input", str(src), "--output", str(tmp_path / "lat")]) == 0
    code = cli.main(["decompress", "--input", str(tmp_path / "lat"), "--output", str(tmp_path / "dec"),
                     "--model", str(other)])
    assert code == 1
    err = capsys.readouterr().err
    assert other_fp in err and "refusing to decode" in err
    assert not (tmp_path / "dec" / "a.png").exists()


def test_restore_denoises_and_records_collisions(ray_local, tmp_path, photos):
    rng = np.random.default_rng(0)
    clean = photos["astronaut"]
    noisy = np.clip(np.round(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    src = write_photos(tmp_path / "noisy", {"astro.png": noisy, "astro.tif": noisy})  # one output name: astro.png
    summary = pipeline.restore(pipeline.JobConfig(input=str(src), output=str(tmp_path / "out"), task="denoise"))
    assert (summary.written, summary.failed) == (1, 1)
    assert summary.errors[0]["path"] == "astro.tif" and "collides" in summary.errors[0]["error"]
    out = images.decode_image((tmp_path / "out" / "astro.png").read_bytes())[0]
    assert psnr(clean, out) > psnr(clean, noisy) + 3.0
    progress = pq.read_table(tmp_path / "out" / "_progress").to_pylist()
    assert [r["path"] for r in progress] == ["astro.png"] and 20 < progress[0]["noise_sigma"] < 30  # sigma 25


def test_generate_writes_distinct_images(ray_local, tmp_path):
    summary = pipeline.generate(pipeline.JobConfig(input="", output=str(tmp_path / "gen"), count=3, size=(96, 64)))
    assert summary.written == 3
    arrs = [images.decode_image((tmp_path / "gen" / f"generated-{i:06d}.png").read_bytes())[0] for i in range(3)]
    assert all(a.shape == (64, 96, 3) and a.std() > 5 for a in arrs)
    assert np.abs(arrs[0].astype(int) - arrs[1]).mean() > 3


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert cli.main(["compress", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "a.txt").write_text("x")
    assert cli.main(["compress", "--input", str(tmp_path / "only-text"), "--output", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_eval_with_a_trained_model_of_ones_own(ray_local, tmp_path, photos):
    from aeflow.models import ConvAutoencoder
    from aeflow.modelstore import save_model

    src = write_photos(tmp_path / "in", photos)
    from aeflow.models import ConvAutoencoderConfig

    fp = save_model(ConvAutoencoder(ConvAutoencoderConfig(lambdas=(0.01, 0.02, 0.04, 0.08))), str(tmp_path / "mine"))
    args = ["eval", "--input", str(src), "--output", str(tmp_path / "ev"), "--model", str(tmp_path / "mine")]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["model"]["fingerprint"] == fp and report["images"] == 3
    for row in report["per_image"]:
        assert [lv["quality"] for lv in row["levels"]] == [1, 2, 3, 4]
        assert all(lv["bpp"] > 0 and 0 < lv["ms_ssim"] <= 1 for lv in row["levels"])
        assert len(row["classic"]["JPEG"]) == len(row["classic"]["WEBP"]) > 10
    assert len(report["mean"]["levels"]) == 4 and report["mean"]["decode_s_per_megapixel"] > 0
    for png in ("rd-psnr.png", "rd-msssim.png"):
        assert Image.open(tmp_path / "ev" / png).size == (720, 480)


def test_restore_runs_large_images_in_tiles(ray_local, tmp_path):
    import skimage.data

    clean = np.asarray(Image.fromarray(skimage.data.coffee()).resize((900, 601)))
    noisy = np.clip(np.round(clean + np.random.default_rng(3).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    write_photos(tmp_path / "in", {"big": noisy})
    args = ["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--tile", "256"]
    assert cli.main(args) == 0
    out = images.decode_image((tmp_path / "out" / "big.png").read_bytes())[0]
    assert out.shape == clean.shape
    assert psnr(clean, out) > psnr(clean, noisy) + 3.0
