"""Flat memory: peak RSS of a job over N and 10N images must stay within 10% (issue #6), for
compress, decompress and restore.

Each (task, size) runs in a fresh process with its own Ray (num_cpus = the machine's): the images
(distinct 512x384 crops of scikit-image photos, JPEG q95) are written to a temp folder first (for
decompress, compressed by another process first, so the measured process only decompresses), then the
job runs. Prints JSON: per run, the driver's peak RSS (ru_maxrss) and the peak summed RSS of Ray worker
processes sampled every 0.5 s, and per task the 10N/N ratios.
Usage: python benchmarks/flat_memory.py [--images 40] [--tasks compress,decompress,restore]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))


def write_photos(n: int) -> str:
    from PIL import Image

    from aeflow.samples import photo_crops

    tmp = tempfile.mkdtemp(prefix="aeflow-mem-")
    for start in range(0, n, 20):  # a few at a time: the driver must not hold the whole set
        for i, arr in enumerate(photo_crops(min(20, n - start), 512, 384, start), start):
            Image.fromarray(arr).save(f"{tmp}/{i:06d}.jpg", quality=95)
    return tmp


def one(task: str, n: int, src: str) -> dict:
    import ray
    from throughput import WorkerRSS

    from aeflow import pipeline

    ray.init(num_cpus=os.cpu_count(), logging_level="error", log_to_driver=False)
    source = f"{src}-latents" if task == "decompress" else src
    with WorkerRSS(total=True) as rss:
        t0 = time.time()
        summary = getattr(pipeline, task)(pipeline.JobConfig(input=source, output=f"{src}-{task}", resume=False))
        seconds = time.time() - t0
    return {"task": task, "images": n, "written": summary.written, "seconds": round(seconds, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "workers_peak_rss_mb": round(rss.peak_kb / 1024),
            "largest_worker_peak_rss_mb": round(rss.peak_one_kb / 1024)}


def run(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--tasks", default="compress,decompress,restore")
    parser.add_argument("--one", nargs=3, metavar=("TASK", "N", "SRC"))  # internal: one measured run
    args = parser.parse_args()
    if args.one:
        task, n, src = args.one
        print(json.dumps(one(task, int(n), src)))
        return
    sizes = (args.images, 10 * args.images)
    sources = {n: write_photos(n) for n in sizes}
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "tasks": {}}
    for task in args.tasks.split(","):
        runs = []
        for n in sizes:
            if task == "decompress":  # its input, made by a process of its own
                run("--one", "compress", str(n), sources[n])
                os.rename(f"{sources[n]}-compress", f"{sources[n]}-latents")
            runs.append(run("--one", task, str(n), sources[n]))
        result["tasks"][task] = {
            "runs": runs,
            **{f"{k}_ratio_10n_over_n": round(runs[1][f"{k}_peak_rss_mb"] / runs[0][f"{k}_peak_rss_mb"], 3)
               for k in ("driver", "workers", "largest_worker")},
        }
        print(json.dumps({task: result["tasks"][task]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
