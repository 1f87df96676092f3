"""Split stages (reading and writing as CPU operators beside the model actors, as with GPUs) against the
fused actor of CPU-only pools: the same bytes and the same accounting, forced here on the CPU."""

import pyarrow.parquet as pq

from aeflow import pipeline
from tests.conftest import encoded, write_photos


def _run(job_fn, src, out, split: bool):
    summary = job_fn(pipeline.JobConfig(input=str(src), output=str(out), batch_size=2, split_stages=split))
    assert summary.manifest["pool"]["stages"] == ("split" if split else "fused")
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    return summary.manifest["counts"], errors


def test_split_stages_write_the_same_bytes_and_manifest_as_the_fused_actor(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", {**photos, "sub/astronaut-again": photos["astronaut"],
                                         "coffee.tif": photos["coffee"]})  # restore: coffee.png twice
    (src / "truncated.jpg").write_bytes(encoded(photos["chelsea"], "JPEG")[:400])
    (src / "notes.txt").write_text("not an image")

    latents = {}
    for split in (False, True):
        out = tmp_path / f"lat-{split}"
        counts, errors = _run(pipeline.compress, src, out, split)
        rows = pq.read_table(out / "latents-00000.parquet").to_pylist()
        latents[split] = (counts, errors, {r["path"]: r["bitstream"] for r in rows})
    assert latents[True] == latents[False]
    assert latents[True][0]["written"] == 5 and [e["stage"] for e in latents[True][1]] == ["decode"]

    restored = {}
    for split in (False, True):
        out = tmp_path / f"res-{split}"
        counts, errors = _run(pipeline.restore, src, out, split)
        files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.png")}
        restored[split] = (counts, errors, files)
    assert restored[True] == restored[False]
    assert sorted(e["stage"] for e in restored[True][1]) == ["decode", "key"]
    assert restored[True][0]["written"] == 4 and len(restored[True][2]) == 4
