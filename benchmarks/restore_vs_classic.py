"""Restoration on held-out real photos against classical tools (`aeflow eval --task ...`).

Centre crops (481x321, CBSD68's size) of scikit-image's colour photos (never used in training) are
degraded with fixed seeds: Gaussian noise at
sigma 15, 25 and 50; JPEG at quality 20; Gaussian blur of 2 px; 4 missing rectangles. Each is restored
by the shipped model and by the baselines (NL-means, wavelet, TV, CBM3D given the true sigma,
Richardson-Lucy with the true kernel, biharmonic inpainting). Prints mean PSNR/SSIM per method and
aeflow's seconds per megapixel as JSON.
Usage: python benchmarks/restore_vs_classic.py [--tasks denoise:15,denoise:25,denoise:50,deblock:20,...]
"""

import argparse
import json
import os
import platform
import tempfile

from PIL import Image

from aeflow import modelstore
from aeflow.evaluate_restore import evaluate_restorer
from aeflow.samples import demo_photos

DEFAULT = "denoise:15,denoise:25,denoise:50,deblock:20,deblur:2,inpaint:4"
CROP = (321, 481)  # rows, columns: the size of CBSD68's images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default=DEFAULT)
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="aeflow-restore-")
    src = os.path.join(work, "clean")
    os.makedirs(src, exist_ok=True)
    for name, arr in demo_photos().items():  # centre crops of CBSD68's size: CBM3D takes ~1 min per megapixel here
        h, w = min(arr.shape[0], CROP[0]), min(arr.shape[1], CROP[1])
        y, x = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
        Image.fromarray(arr[y:y + h, x:x + w]).save(os.path.join(src, f"{name}.png"))
    results = []
    for spec in args.tasks.split(","):
        task, level = spec.split(":")
        if task not in modelstore.DEFAULT_RESTORERS:
            results.append({"task": task, "level": float(level), "skipped": "no shipped model"})
            continue
        report = evaluate_restorer(src, os.path.join(work, f"{task}-{level}"), task, float(level))
        mean = {m: {k: round(v, 3) for k, v in r.items()} for m, r in report["mean"].items()}
        results.append({"task": task, "level": float(level), "model": report["model"]["fingerprint"],
                        "mean": mean, "aeflow_seconds_per_megapixel": round(report["aeflow_seconds_per_megapixel"], 3)})
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "images": sorted(demo_photos()),
                      "convention": "PSNR/SSIM on 8-bit RGB against the clean photo", "results": results,
                      "work": work}, indent=1))


if __name__ == "__main__":
    main()
