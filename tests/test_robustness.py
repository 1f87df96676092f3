"""Bad data never stops a job; every input is accounted for; re-runs resume and never duplicate."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from aeflow import images, pipeline
from tests.badfiles import awkward_files, bad_files, write_all
from tests.conftest import write_photos


@pytest.fixture
def archive(tmp_path, photos):
    src = write_photos(tmp_path / "archive", {f"good/{name}": arr for name, arr in photos.items()})
    write_all(src, bad_files(photos["coffee"]))
    write_all(src, awkward_files(photos["chelsea"]))
    return src


def test_awkward_inputs_decode_to_documented_rgb(photos):
    for name, data in awkward_files(photos["chelsea"]).items():
        arr, _ = images.decode_image(data)
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8, name
    h, w = photos["chelsea"].shape[:2]
    rotated, _ = images.decode_image(awkward_files(photos["chelsea"])["odd/exif-rotated.jpg"])
    assert rotated.shape[:2] == (w, h)  # EXIF orientation 6 applied


def test_every_bad_kind_is_one_error_row_and_every_good_image_is_written(ray_local, archive, tmp_path, photos):
    bad = bad_files(photos["coffee"])
    good = 3 + len(awkward_files(photos["chelsea"]))
    out = tmp_path / "restored"
    s = pipeline.restore(pipeline.JobConfig(input=str(archive), output=str(out)))
    assert (s.inputs, s.written, s.failed) == (good + len(bad), good, len(bad))
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert sorted(e["path"] for e in errors) == sorted(bad)
    assert all(e["stage"] == "decode" and e["error"] for e in errors)
    bomb = next(e for e in errors if "bomb" in e["path"])
    assert "decompression bomb" in bomb["error"] or "pixel limit" in bomb["error"]
    tall = images.decode_image((out / "odd/one-by-10000.png").read_bytes())[0]
    assert tall.shape == (10000, 1, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["unaccounted"] == 0 and manifest["errors_by_stage"] == {"decode": len(bad)}

    lat = tmp_path / "latents"
    s = pipeline.compress(pipeline.JobConfig(input=str(archive), output=str(lat)))
    assert (s.written, s.failed) == (good, len(bad))
    rows = pq.read_table(lat / "latents-00000.parquet", columns=["path", "width", "height"]).to_pylist()
    assert {"path": "odd/one-pixel.png", "width": 1, "height": 1} in rows


def test_max_errors_turns_too_many_failures_into_a_failed_job(ray_local, archive, tmp_path):
    with pytest.raises(pipeline.JobFailed, match=r"6 of 19 inputs failed"):
        pipeline.compress(pipeline.JobConfig(input=str(archive), output=str(tmp_path / "o"), max_errors=5))
    # the job still wrote every good image and its accounting before failing
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 13 and manifest["counts"]["failed"] == 6
    pipeline.compress(pipeline.JobConfig(input=str(archive), output=str(tmp_path / "p"), max_errors=0.5))


def test_rerun_skips_finished_work_and_redoes_changed_inputs(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", photos)
    out = tmp_path / "lat"
    job = pipeline.JobConfig(input=str(src), output=str(out), flush_rows=1, batch_size=1)
    first = pipeline.compress(job)
    assert (first.written, first.done_before) == (3, 0)
    assert len(list(out.glob("latents-*.parquet"))) == 3  # flushed one row at a time

    again = pipeline.compress(job)
    assert (again.written, again.done_before) == (0, 3)
    assert again.manifest["first_result_seconds"] is None  # nothing to do: no model actor was started

    write_photos(src, {"coffee": photos["coffee"][::-1].copy(), "new": photos["chelsea"]})  # a changed input, a new one
    third = pipeline.compress(job)
    assert (third.written, third.done_before) == (2, 2)
    table = pq.ParquetDataset(sorted(str(p) for p in out.glob("latents-*.parquet"))).read(
        columns=["path", "source_bytes"])
    paths = table.column("path").to_pylist()
    assert sorted(paths) == ["astronaut.png", "chelsea.png", "coffee.png", "new.png"]  # each exactly once
    sizes = dict(zip(paths, table.column("source_bytes").to_pylist()))
    assert sizes["coffee.png"] == (src / "coffee.png").stat().st_size

    dec = pipeline.decompress(pipeline.JobConfig(input=str(out), output=str(tmp_path / "dec")))
    assert dec.written == 4
    flipped = images.decode_image((tmp_path / "dec" / "coffee.png").read_bytes())[0]
    assert np.abs(flipped.astype(int) - photos["coffee"][::-1]).mean() < 20

    redo = pipeline.compress(pipeline.JobConfig(input=str(src), output=str(out), resume=False))
    assert (redo.written, redo.done_before) == (4, 0)
    assert pq.ParquetDataset(sorted(str(p) for p in out.glob("latents-*.parquet"))).read().num_rows == 4


def test_changed_settings_redo_the_work(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", {"a": photos["astronaut"]})
    out = tmp_path / "out"
    assert pipeline.restore(pipeline.JobConfig(input=str(src), output=str(out))).written == 1
    assert pipeline.restore(pipeline.JobConfig(input=str(src), output=str(out))).done_before == 1
    webp = pipeline.restore(pipeline.JobConfig(input=str(src), output=str(out), format="webp"))
    assert (webp.written, webp.done_before) == (1, 0) and (out / "a.webp").exists()


def test_latents_of_a_wrong_schema_or_version_are_refused(tmp_path):
    import pyarrow as pa

    (tmp_path / "lat").mkdir()
    pq.write_table(pa.table({"path": ["a.png"], "pixels": [b"x"]}), tmp_path / "lat" / "latents-00000.parquet")
    with pytest.raises(ValueError, match="not an aeflow latents table"):
        pipeline.decompress(pipeline.JobConfig(input=str(tmp_path / "lat"), output=str(tmp_path / "o")))
    row = {f.name: None for f in pipeline.LATENTS_SCHEMA}
    row.update(path="a.png", width=1, height=1, model="x", bitstream=b"", bytes=0, format_version=7)
    pq.write_table(pa.Table.from_pylist([row], schema=pipeline.LATENTS_SCHEMA),
                   tmp_path / "lat" / "latents-00000.parquet")
    with pytest.raises(ValueError, match=r"format version \[7\] is not supported"):
        pipeline.decompress(pipeline.JobConfig(input=str(tmp_path / "lat"), output=str(tmp_path / "o")))


def test_a_listing_file_replaces_listing_the_prefix(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", photos)
    first = pipeline.compress(pipeline.JobConfig(input=str(src), output=str(tmp_path / "a")))
    saved = pq.read_table(tmp_path / "a" / "_listing.parquet").to_pylist()
    assert [r["path"] for r in saved] == ["astronaut.png", "chelsea.png", "coffee.png"] and first.written == 3
    assert all(r["size"] == (src / r["path"]).stat().st_size for r in saved)

    (tmp_path / "keys.txt").write_text("coffee.png\nchelsea.png\n")
    some = pipeline.compress(pipeline.JobConfig(input=str(src), output=str(tmp_path / "b"),
                                                listing=str(tmp_path / "keys.txt")))
    assert (some.inputs, some.written) == (2, 2)
    again = pipeline.compress(pipeline.JobConfig(input=str(src), output=str(tmp_path / "a"),
                                                 listing=str(tmp_path / "a" / "_listing.parquet")))
    assert (again.done_before, again.written) == (3, 0)  # the saved listing keeps sizes and tags: resume works

    # A listed key that is gone by the time it is read is one "read" error naming it; a key with glob
    # characters is read literally.
    (src / "coffee.png").rename(src / "coffee [1].png")
    (tmp_path / "keys2.txt").write_text("coffee [1].png\ngone.png\nchelsea.png\n")
    with pytest.raises(pipeline.JobFailed) as failed:
        pipeline.compress(pipeline.JobConfig(input=str(src), output=str(tmp_path / "c"), max_errors=0,
                                             listing=str(tmp_path / "keys2.txt")))
    s = failed.value.summary
    assert (s.inputs, s.written, s.failed) == (3, 2, 1)
    assert s.errors[0]["path"] == "gone.png" and s.errors[0]["stage"] == "read"
    assert "FileNotFoundError" in s.errors[0]["error"] and "gone.png" in s.errors[0]["error"]
    written = pq.read_table(tmp_path / "c" / "latents-00000.parquet").column("path").to_pylist()
    assert sorted(written) == ["chelsea.png", "coffee [1].png"]
