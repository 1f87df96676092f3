"""The learned codec through the real compress/decompress jobs: self-describing Parquet rows, exact
pixels, quality levels and rate control, alpha and ICC, damaged rows."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from aeflow import bitstream, cli, codec, images, modelstore, precision
from aeflow.metrics import psnr
from tests.conftest import write_photos


def test_rows_are_plain_arrow_and_decode_to_the_same_pixels_as_the_library(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", photos)
    assert cli.main(["compress", "--input", str(src), "--output", str(tmp_path / "lat"), "--quality", "2"]) == 0
    table = pq.read_table(tmp_path / "lat" / "latents-00000.parquet")
    for f in table.schema:  # readable by any Arrow/Parquet reader: no Ray extension types
        assert not isinstance(f.type, pa.ExtensionType), f
    assert table.schema.field("bitstream").type == pa.binary()
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    for r in table.to_pylist():
        head = bitstream.read_header(r["bitstream"])
        assert r["bytes"] == len(r["bitstream"]) and r["quality"] == head["level"] == 2
        assert (r["model"], r["crc32"], r["mode"]) == (head["fingerprint"], head["crc32"], head["mode"])
        assert r["aeflow_version"] == head["aeflow_version"] and not r["has_alpha"]
    outs = []
    for run in ("dec1", "dec2"):
        assert cli.main(["decompress", "--input", str(tmp_path / "lat"), "--output", str(tmp_path / run)]) == 0
        outs.append({r["path"]: images.decode_image((tmp_path / run / r["path"]).read_bytes())[0]
                     for r in table.to_pylist()})
    for r in table.to_pylist():
        expected = codec.decode_bitstream(loaded, r["bitstream"]).rgb
        np.testing.assert_array_equal(outs[0][r["path"]], expected)
        np.testing.assert_array_equal(outs[1][r["path"]], expected)


def test_quality_and_target_bpp_choose_the_level(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", {"coffee": photos["coffee"]})
    sizes = {}
    for q in (1, 5):
        args = ["compress", "--input", str(src), "--output", str(tmp_path / f"q{q}"), "--quality", str(q)]
        assert cli.main(args) == 0
        sizes[q] = pq.read_table(tmp_path / f"q{q}" / "latents-00000.parquet").to_pylist()[0]
    assert sizes[5]["bytes"] > sizes[1]["bytes"]
    target = (sizes[1]["bpp"] + sizes[5]["bpp"]) / 2
    args = ["compress", "--input", str(src), "--output", str(tmp_path / "t"), "--target-bpp", str(target)]
    assert cli.main(args) == 0
    row = pq.read_table(tmp_path / "t" / "latents-00000.parquet").to_pylist()[0]
    assert row["bpp"] <= target and 1 <= row["quality"] < 5
    assert cli.main(["compress", "--input", str(src), "--output", str(tmp_path / "bad"), "--quality", "99"]) == 2


def test_target_psnr_picks_the_lowest_level_that_reaches_it_and_records_what_it_reached(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", {"coffee": photos["coffee"], "cat": photos["chelsea"]})
    target = 31.0
    args = ["compress", "--input", str(src), "--output", str(tmp_path / "p"), "--target-psnr", str(target)]
    assert cli.main(args) == 0
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    rows = pq.read_table(tmp_path / "p" / "latents-00000.parquet").to_pylist()
    assert len(rows) == 2
    for r in rows:
        photo = photos["coffee" if r["path"] == "coffee.png" else "chelsea"]
        assert r["psnr"] == psnr(photo, codec.decode_bitstream(loaded, r["bitstream"]).rgb)  # its own decode
        if r["target_psnr_reached"]:
            assert r["psnr"] >= target
            if r["quality"] > 1:  # the level below falls short (encoded as the job encodes: bf16 where native)
                cpu = torch.device("cpu")
                with precision.autocast(precision.use_bf16("auto", cpu), cpu):
                    lower = codec.encode_images(loaded, [photo], r["quality"] - 1)[0]
                assert psnr(photo, codec.decode_bitstream(loaded, lower).rgb) < target
        else:
            assert r["psnr"] < target and r["quality"] == codec.tables_of(loaded).levels
    args = ["compress", "--input", str(src), "--output", str(tmp_path / "high"), "--target-psnr", "60"]
    assert cli.main(args) == 0  # out of reach: the top level, and the rows say so
    rows = pq.read_table(tmp_path / "high" / "latents-00000.parquet").to_pylist()
    assert all(r["quality"] == codec.tables_of(loaded).levels and not r["target_psnr_reached"] for r in rows)


def test_alpha_and_icc_profile_survive_compress_and_decompress(ray_local, tmp_path, photos):
    rgb = photos["chelsea"]
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    write_photos(tmp_path / "in", {"cat": np.dstack([rgb, alpha])}, icc_profile=icc)
    assert cli.main(["compress", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "lat")]) == 0
    row = pq.read_table(tmp_path / "lat" / "latents-00000.parquet").to_pylist()[0]
    assert row["mode"] == "RGBA" and row["has_alpha"] and row["has_icc"]
    assert cli.main(["decompress", "--input", str(tmp_path / "lat"), "--output", str(tmp_path / "dec")]) == 0
    out = Image.open(tmp_path / "dec" / "cat.png")
    assert out.mode == "RGBA" and out.info.get("icc_profile") == icc
    np.testing.assert_array_equal(np.asarray(out)[..., 3], alpha)


def test_damaged_rows_are_errors_and_the_rest_decode(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", photos)
    assert cli.main(["compress", "--input", str(src), "--output", str(tmp_path / "lat")]) == 0
    path = tmp_path / "lat" / "latents-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows.sort(key=lambda r: r["path"])
    rows[0]["bitstream"] = rows[0]["bitstream"][: len(rows[0]["bitstream"]) // 2]  # truncated
    flipped = bytearray(rows[1]["bitstream"])
    flipped[len(flipped) // 2] ^= 0x01
    rows[1]["bitstream"] = bytes(flipped)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    assert cli.main(["decompress", "--input", str(tmp_path / "lat"), "--output", str(tmp_path / "dec")]) == 0
    errors = {e["path"]: e for e in pq.read_table(tmp_path / "dec" / "errors.parquet").to_pylist()}
    assert set(errors) == {rows[0]["path"], rows[1]["path"]}
    assert all(e["stage"] == "bitstream" and "checksum" in e["error"] for e in errors.values())
    assert (tmp_path / "dec" / rows[2]["path"]).exists()
    assert not (tmp_path / "dec" / rows[0]["path"]).exists()


def test_a_16_bit_input_records_its_mode(ray_local, tmp_path, photos):
    gray16 = (photos["coffee"][..., 0].astype(np.uint16) * 257)
    write_photos(tmp_path / "in", {"deep": gray16})
    assert cli.main(["compress", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "lat")]) == 0
    row = pq.read_table(tmp_path / "lat" / "latents-00000.parquet").to_pylist()[0]
    assert row["mode"].startswith("I") and bitstream.read_header(row["bitstream"])["mode"] == row["mode"]


def test_rows_of_the_previous_codec_still_decode_exactly_and_a_retired_codec_is_named(ray_local, tmp_path, photos):
    """A release ships the current codec and the one before it: rows the previous codec wrote decode by
    fingerprint to the library's pixels; a row of a retired codec is refused, naming it and its version."""
    src = write_photos(tmp_path / "in", {"coffee": photos["coffee"]})
    previous = modelstore.load_model("codec-e1318b0f")
    for quality in ("3", "11"):  # a low and the top level
        out = tmp_path / f"old-{quality}"
        assert cli.main(["compress", "--input", str(src), "--output", str(out), "--quality", quality,
                         "--model", "codec-e1318b0f"]) == 0
        row = pq.read_table(out / "latents-00000.parquet").to_pylist()[0]
        assert row["model"] == previous.fingerprint != modelstore.load_model(modelstore.DEFAULT_CODEC).fingerprint
        assert cli.main(["decompress", "--input", str(out), "--output", str(tmp_path / f"old-{quality}-out")]) == 0
        pixels = images.decode_image((tmp_path / f"old-{quality}-out" / "coffee.png").read_bytes())[0]
        np.testing.assert_array_equal(pixels, codec.decode_bitstream(previous, row["bitstream"]).rgb)
    table = pq.read_table(tmp_path / "old-3" / "latents-00000.parquet")
    retired = tmp_path / "retired"
    retired.mkdir()
    column = table.schema.get_field_index("model")
    pq.write_table(table.set_column(column, "model", pa.array(["07637277a5f4dc06"])), retired / "latents-00000.parquet")
    assert cli.main(["decompress", "--input", str(retired), "--output", str(tmp_path / "retired-out")]) != 0
    errors = pq.read_table(tmp_path / "retired-out" / "errors.parquet").to_pylist()
    assert len(errors) == 1 and "07637277a5f4dc06" in errors[0]["error"] and "aeflow 0.1.0" in errors[0]["error"]
    assert not (tmp_path / "retired-out" / "coffee.png").exists()
