"""Robustness benchmark: a mixed corpus (>= 200 good real-photo crops plus every bad and awkward kind)
through compress and restore, with one Ray worker SIGKILLed mid-run in each. Prints JSON:
good in, good out, bad recorded, lost (must be 0), duplicated (must be 0).

Usage: python benchmarks/robustness.py [--good 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/ helpers: the same corpus
from aeflow import pipeline  # noqa: E402
from aeflow.samples import photo_crops  # noqa: E402
from tests.badfiles import awkward_files, bad_files, write_all  # noqa: E402
from tests.processes import kill_when  # noqa: E402


def _run(name: str, job: pipeline.JobConfig, actor: str, progress, good: int, bad: set[str]) -> dict:
    out: dict = {}
    t0 = time.time()
    thread = threading.Thread(target=lambda: out.update(s=getattr(pipeline, name)(job)), daemon=True)
    thread.start()
    killed = kill_when(actor, progress)  # a worker of this process's own Ray
    thread.join()
    s = out["s"]
    ledger = (pq.ParquetDataset(sorted(str(p) for p in Path(job.output).glob("latents-*.parquet")))
              if name == "compress" else
              pq.ParquetDataset(sorted(str(p) for p in (Path(job.output) / "_progress").glob("part-*.parquet"))))
    paths = ledger.read(columns=["path"]).column("path").to_pylist()
    errors = {e["path"] for e in pq.read_table(Path(job.output) / "errors.parquet").to_pylist()}
    return {"job": name, "worker_killed": bool(killed), "good_in": good, "good_out": len(set(paths)),
            "bad_in": len(bad), "bad_recorded": len(errors & bad),
            "lost": good + len(bad) - len(set(paths)) - len(errors),
            "duplicated": len(paths) - len(set(paths)), "seconds": round(time.time() - t0, 1),
            "manifest_counts": s.manifest["counts"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--good", type=int, default=200)
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="aeflow-robust-"))
    src = work / "in"
    import skimage.data

    photo = skimage.data.coffee()[:200, :300]
    for i, arr in enumerate(photo_crops(args.good, 192, 192)):
        (src / f"batch{i // 10}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(src / f"batch{i // 10}/img{i:03d}.png")
    bad, odd = bad_files(photo), awkward_files(photo)
    write_all(src, bad)
    write_all(src, odd)
    good = args.good + len(odd)
    ray.init(num_cpus=os.cpu_count(), logging_level="warning", log_to_driver=False)  # stdout: JSON only
    results = []
    lat = work / "latents"
    results.append(_run("compress", pipeline.JobConfig(input=str(src), output=str(lat), batch_size=4, flush_rows=8),
                        "MapBatches(EncodeImages)", lambda: len(list(lat.glob("latents-*.parquet"))) >= 2, good,
                        set(bad)))
    res = work / "restored"
    results.append(_run("restore", pipeline.JobConfig(input=str(src), output=str(res), batch_size=4, flush_rows=8),
                        "MapBatches(RestoreImages)", lambda: len(list(res.rglob("*.png"))) >= 20, good, set(bad)))
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "results": results}, indent=1))


if __name__ == "__main__":
    main()
