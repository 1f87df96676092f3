"""Faults caused for real: a Ray worker SIGKILLed mid-job, the driver killed mid-job, a training
worker killed, and the S3 endpoint gone for a few seconds. Nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from aeflow import pipeline
from aeflow.training import TrainConfig, train
from tests.conftest import many_photos, write_photos
from tests.processes import kill_tree, kill_when

ROOT = Path(__file__).resolve().parents[1]


def _many_images(folder: Path, n: int, size: int = 256) -> list[str]:
    """n distinct real-photo crops written under folder; their keys."""
    crops = many_photos(n, size)
    write_photos(folder, crops)
    return list(crops)


def _run_in_thread(fn):
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as e:  # surfaced by the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_worker_sigkilled_mid_restore_loses_nothing_and_writes_nothing_twice(ray_local, tmp_path):
    names = _many_images(tmp_path / "in", 40)
    out = tmp_path / "out"
    job = pipeline.JobConfig(input=str(tmp_path / "in"), output=str(out), batch_size=2, flush_rows=1)
    thread, res = _run_in_thread(lambda: pipeline.restore(job))
    killed = kill_when("MapBatches(RestoreImages)", lambda: len(list(out.rglob("img*.png"))) >= 4)
    thread.join(timeout=400)
    assert killed, "the worker was never seen to kill"
    assert "error" not in res, res.get("error")
    summary = res["result"]
    assert (summary.written, summary.failed) == (40, 0)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("img*.png"))
    assert written == sorted(names)
    assert not list(out.rglob("*.tmp")), "a partial file was left behind"
    progress = pq.ParquetDataset(sorted(str(p) for p in (out / "_progress").glob("part-*.parquet"))).read()
    assert sorted(progress.column("path").to_pylist()) == sorted(names)  # each exactly once


def test_worker_sigkilled_mid_generate_writes_every_variation_once(ray_local, tmp_path):
    names = _many_images(tmp_path / "in", 24)
    out = tmp_path / "out"
    job = pipeline.JobConfig(input=str(tmp_path / "in"), output=str(out), variations=2, quality=6,
                             batch_size=2, flush_rows=1)
    thread, res = _run_in_thread(lambda: pipeline.generate(job))
    killed = kill_when("MapBatches(VaryImages)", lambda: len(list(out.rglob("img*.png"))) >= 6)
    thread.join(timeout=400)
    assert killed, "the worker was never seen to kill"
    assert "error" not in res, res.get("error")
    assert (res["result"].written, res["result"].failed) == (24, 0)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("img*.png"))
    assert written == sorted(n[:-4] + f"-v{v:02d}.png" for n in names for v in range(2))
    assert not list(out.rglob("*.tmp")), "a partial file was left behind"
    progress = pq.ParquetDataset(sorted(str(p) for p in (out / "_progress").glob("part-*.parquet"))).read()
    assert sorted(progress.column("path").to_pylist()) == sorted(names)  # each exactly once


def test_driver_killed_mid_job_rerun_finishes_the_rest(ray_local, tmp_path):
    names = _many_images(tmp_path / "in", 30, size=400)  # big enough that the job takes a while
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="aed", dir="/tmp")
    code = ("from aeflow import pipeline; pipeline.restore(pipeline.JobConfig("
            f"input={str(tmp_path / 'in')!r}, output={str(out)!r}, batch_size=1, flush_rows=1))")
    driver = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, cwd=ROOT,
                              env={**os.environ, "RAY_TMPDIR": ray_tmp},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while len(list((out / "_progress").glob("part-*.parquet"))) < 2:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.time() < deadline, "the driver made no progress"
            time.sleep(0.2)
    finally:
        kill_tree(driver.pid)  # the driver and its own local Ray (its descendants), nothing else
        driver.wait()
    assert not (out / "manifest.json").exists()
    rerun = pipeline.restore(pipeline.JobConfig(input=str(tmp_path / "in"), output=str(out)))
    assert rerun.done_before >= 2 and rerun.done_before + rerun.written == 30 and rerun.failed == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("img*.png")) == sorted(names)
    assert json.loads((out / "manifest.json").read_text())["counts"]["unaccounted"] == 0


def test_training_worker_killed_restores_latest_checkpoint(ray_local, tmp_path):
    data = tmp_path / "data"
    _many_images(data, 6, size=128)
    cfg = TrainConfig(task="codec", data=str(data), out=str(tmp_path / "model"), storage=str(tmp_path / "ckpt"),
                      name="t", workers=2, epochs=8, batch_size=2, crop=64, crops_per_image=24, channels=16,
                      latent_channels=8)
    thread, res = _run_in_thread(lambda: train(cfg))
    snapshot = tmp_path / "ckpt" / "t" / "checkpoint_manager_snapshot.json"

    def checkpoint_registered() -> bool:
        """Train's controller has taken in a checkpoint: its own record of them, which it writes when it
        registers one, lists it."""
        try:
            return bool(json.loads(snapshot.read_text()).get("checkpoint_results"))
        except (OSError, ValueError):  # not written yet, or caught mid-write
            return False

    killed = kill_when("RayTrainWorker", checkpoint_registered)
    thread.join(timeout=500)
    assert killed, "no training worker was seen to kill"
    assert "error" not in res, res.get("error")
    assert res["result"]["epoch"] == 8
    assert res["result"]["start_epoch"] >= 1  # the final attempt started from a checkpoint, not from scratch


def test_s3_endpoint_gone_for_seconds_is_retried(ray_local, s3, s3_server, tmp_path):
    names = _many_images(tmp_path / "in", 40, size=320)
    for n in names:
        s3.put(str(tmp_path / "in" / n), f"photos/in/{n}")
    job = pipeline.JobConfig(input="s3://photos/in", output="s3://photos/out", batch_size=1, flush_rows=1)
    thread, res = _run_in_thread(lambda: pipeline.restore(job))
    deadline = time.time() + 240
    while len(s3.find("photos/out/batch0")) < 3:  # the actors are writing
        assert time.time() < deadline and thread.is_alive(), "the job made no progress"
        time.sleep(0.2)
        s3.invalidate_cache()
    assert thread.is_alive(), "the job ended before the endpoint could be taken away"
    s3_server.stop()
    time.sleep(4)
    s3_server.start()
    thread.join(timeout=400)
    assert "error" not in res, res.get("error")
    summary = res["result"]
    assert (summary.written, summary.failed) == (40, 0), summary.errors[:3]
    s3.invalidate_cache()
    with s3.open("photos/out/manifest.json") as f:
        assert json.load(f)["counts"]["unaccounted"] == 0
    assert sorted(p[len("photos/out/"):] for p in s3.find("photos/out") if "/img" in p) == sorted(names)
    paths = []
    for part in s3.glob("photos/out/_progress/part-*.parquet"):
        with s3.open(part, "rb") as f:
            paths += pq.read_table(f, columns=["path"]).column("path").to_pylist()
    assert sorted(paths) == sorted(names)  # each exactly once
