"""Codec rate-distortion on held-out real photos against Pillow JPEG and WebP (`aeflow eval`).

scikit-image's colour photos (never used in training) are written as PNG and evaluated at every
quality level of the codec; prints the mean curves, BD-rates, the mean PSNR gap to WebP and JPEG at
equal bpp over 0.25-1.0 bpp, and encode/decode seconds per megapixel as JSON.
Usage: python benchmarks/codec_vs_classic.py [--model URI] [--work DIR]
"""

import argparse
import json
import os
import platform
import tempfile

from PIL import Image

from aeflow.evaluate import evaluate_codec
from aeflow.samples import demo_photos


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
    report = evaluate_codec(src, os.path.join(work, "eval"), args.model)
    mean = report["mean"]
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": report["model"],
        "images": report["images"], "convention": report["convention"],
        "levels": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in lv.items()} for lv in mean["levels"]],
        **{k: v for k, v in mean.items() if k not in ("levels", "classic")},
        "work": work}, indent=1))


if __name__ == "__main__":
    main()
