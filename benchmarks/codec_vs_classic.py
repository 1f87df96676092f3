"""Codec rate-distortion on held-out real photos against Pillow JPEG and WebP (`aeflow eval`).

scikit-image's colour photos (never used in training) are written as PNG and evaluated at every
quality level of the codec; prints the mean curves, BD-rates, the mean PSNR gap to WebP and JPEG at
equal bpp over 0.25-1.0 bpp, the per-image BD-PSNR against each over 0.25-1.0 bpp, and encode/decode
seconds per megapixel as JSON. With --baseline, also each image's BD-PSNR against that codec over the
same band, averaged: the figure that decides whether new weights ship.
Usage: python benchmarks/codec_vs_classic.py [--model URI] [--baseline URI] [--work DIR]
"""

import argparse
import json
import os
import platform
import tempfile

import numpy as np
from PIL import Image

from aeflow.evaluate import evaluate_codec
from aeflow.metrics import bd_psnr
from aeflow.samples import demo_photos


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--baseline", default="", help="a codec to compare against image by image")
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="aeflow-bench-")
    src = os.path.join(work, "photos")
    os.makedirs(src, exist_ok=True)
    import skimage.data

    held_out = {**demo_photos(), "motorcycle_left": skimage.data.stereo_motorcycle()[0]}
    for name, arr in held_out.items():
        Image.fromarray(arr).save(os.path.join(src, f"{name}.png"))
    report = evaluate_codec(src, os.path.join(work, "eval"), args.model)
    mean = report["mean"]
    versus = {}
    if args.baseline:
        base = evaluate_codec(src, os.path.join(work, "eval-baseline"), args.baseline)
        gains = [bd_psnr([lv["bpp"] for lv in b["levels"]], [lv["psnr"] for lv in b["levels"]],
                         [lv["bpp"] for lv in a["levels"]], [lv["psnr"] for lv in a["levels"]])
                 for a, b in zip(report["per_image"], base["per_image"])]
        versus = {"baseline": base["model"], "bd_psnr_vs_baseline_0.25_1.0_bpp": float(np.nanmean(gains)),
                  "bd_psnr_vs_baseline_per_image": [round(g, 3) for g in gains],
                  "baseline_bd_psnr_vs_webp_0.25_1.0_bpp": base["mean"]["bd_psnr_vs_webp_0.25_1.0_bpp"]}
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": report["model"],
        "images": report["images"], "convention": report["convention"],
        "levels": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in lv.items()} for lv in mean["levels"]],
        **{k: v for k, v in mean.items() if k not in ("levels", "classic")},
        "bd_psnr_vs_webp_per_image": {img["path"]: round(img["bd_psnr_vs_webp"], 3) for img in report["per_image"]},
        **versus,
        "work": work}, indent=1))


if __name__ == "__main__":
    main()
