"""The whole round trip against a real S3 endpoint (moto's server on 127.0.0.1)."""

import json

import numpy as np
import pyarrow.parquet as pq

from aeflow import bitstream, codec, images, modelstore, pipeline
from tests.conftest import CODEC_PSNR_FLOOR, encoded, psnr


def test_s3_compress_decompress_restore_round_trip(ray_local, s3, photos):
    for name, arr in photos.items():
        s3.pipe(f"photos/archive/2024/{name}.png", encoded(arr))
    s3.pipe("photos/archive/corrupt.jpg", b"\xff\xd8\xff\xe0 broken")

    comp = pipeline.compress(pipeline.JobConfig(input="s3://photos/archive", output="s3://photos/latents"))
    assert (comp.written, comp.failed) == (3, 1)
    with s3.open("photos/latents/latents-00000.parquet", "rb") as f:
        table = pq.read_table(f)
    assert sorted(table.column("path").to_pylist()) == [f"2024/{n}.png" for n in sorted(photos)]
    rows = {r["path"]: r for r in table.to_pylist()}
    for r in rows.values():  # sizes in the table are the stored bytes, which say their own length and checksum
        assert r["bytes"] == len(r["bitstream"]) and r["bpp"] == 8 * r["bytes"] / (r["width"] * r["height"])
        assert bitstream.read_header(r["bitstream"])["crc32"] == r["crc32"]
    errors = pq.read_table(s3.open("photos/latents/errors.parquet", "rb")).to_pylist()
    assert errors[0]["path"] == "corrupt.jpg" and errors[0]["stage"] == "decode"
    assert json.loads(s3.cat("photos/latents/manifest.json"))["counts"]["unaccounted"] == 0

    dec = pipeline.decompress(pipeline.JobConfig(input="s3://photos/latents", output="s3://photos/decoded"))
    assert dec.written == 3
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    for name, arr in photos.items():
        got, _ = images.decode_image(s3.cat(f"photos/decoded/2024/{name}.png"))
        assert got.shape == arr.shape
        assert psnr(arr, got) > CODEC_PSNR_FLOOR, name
        # the pixels those stored bytes decode to, read back from S3: the same as decoding them here
        np.testing.assert_array_equal(got, codec.decode_bitstream(loaded, rows[f"2024/{name}.png"]["bitstream"]).rgb)

    res = pipeline.restore(pipeline.JobConfig(input="s3://photos/archive", output="s3://photos/restored"))
    assert (res.written, res.failed) == (3, 1)
    assert sorted(s3.find("photos/restored/2024")) == [f"photos/restored/2024/{n}.png" for n in sorted(photos)]
    assert "testing-secret" not in s3.cat("photos/restored/manifest.json").decode()
