"""Flat memory: peak RSS of a compress job over N and 10N images must stay within 10% (issue #6).

Each size runs in a fresh process with its own Ray (num_cpus = the machine's): the images (distinct
512x384 crops of scikit-image photos, JPEG q95) are written to a temp folder first, then compressed.
Prints JSON: per size, the driver's peak RSS (ru_maxrss) and the peak summed RSS of Ray worker
processes sampled every 0.5 s, and the 10N/N ratios.
Usage: python benchmarks/flat_memory.py [--images 40]
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


def one(n: int) -> dict:
    import ray
    from PIL import Image
    from throughput import WorkerRSS, photos

    from aeflow import pipeline

    tmp = tempfile.mkdtemp(prefix="aeflow-mem-")
    for start in range(0, n, 20):  # a few at a time: the driver must not hold the whole set
        for i, arr in enumerate(photos(min(20, n - start), 512, 384, start), start):
            Image.fromarray(arr).save(f"{tmp}/{i:06d}.jpg", quality=95)
    ray.init(num_cpus=os.cpu_count(), logging_level="error", log_to_driver=False)
    with WorkerRSS(total=True) as rss:
        t0 = time.time()
        summary = pipeline.compress(pipeline.JobConfig(input=tmp, output=f"{tmp}-out", resume=False))
        seconds = time.time() - t0
    return {"images": n, "written": summary.written, "seconds": round(seconds, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "workers_peak_rss_mb": round(rss.peak_kb / 1024),
            "largest_worker_peak_rss_mb": round(rss.peak_one_kb / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--one", type=int, default=0)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    runs = []
    for n in (args.images, 10 * args.images):
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": runs,
        "driver_ratio_10n_over_n": round(runs[1]["driver_peak_rss_mb"] / runs[0]["driver_peak_rss_mb"], 3),
        "workers_ratio_10n_over_n": round(runs[1]["workers_peak_rss_mb"] / runs[0]["workers_peak_rss_mb"], 3),
        "largest_worker_ratio_10n_over_n": round(runs[1]["largest_worker_peak_rss_mb"]
                                                 / runs[0]["largest_worker_peak_rss_mb"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
