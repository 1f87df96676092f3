"""Codec round trip on held-out real photos vs Pillow JPEG and WebP at the same or fewer bytes.

Runs the real `aeflow eval` (compress -> decompress through Ray Data) over scikit-image's colour
photos (never used in training) and prints the report's means as JSON.
Usage: python benchmarks/codec_vs_classic.py [--model URI] [--work DIR]
"""

import argparse
import json
import os
import platform
import tempfile

import ray
from PIL import Image

from aeflow.demo import demo_photos
from aeflow.evaluate import evaluate_codec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="aeflow-bench-")
    src = os.path.join(work, "photos")
    os.makedirs(src, exist_ok=True)
    for name, arr in demo_photos().items():
        Image.fromarray(arr).save(os.path.join(src, f"{name}.png"))
    ray.init(num_cpus=os.cpu_count(), logging_level="warning", log_to_driver=False)  # stdout: JSON only
    report = evaluate_codec(src, os.path.join(work, "eval"), args.model)
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": report["model"],
                      "mean": report["mean"],
                      "per_image": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                                    for r in report["images"]]}, indent=1))


if __name__ == "__main__":
    main()
