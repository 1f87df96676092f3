"""Variations from a codec's hyperprior on held-out real photos (scikit-image's, never trained on): for each
photo and temperature, the PSNR of its variations to the photo at full size and seen 16x smaller (the layout),
beside its plain decode's. Prints JSON.
Usage: python benchmarks/generate_variations.py [--model URI] [--quality 8] [--seeds 3]
"""

import argparse
import json
import os
import platform

import numpy as np
import torch
from PIL import Image

from aeflow import generation, modelstore
from aeflow.metrics import psnr
from aeflow.samples import demo_photos

TEMPERATURES = (0.25, 0.5, 1.0)
LAYOUT_DB = 25.0  # the floor a variation at T = 0.5 keeps, seen 16x smaller


def downscaled(a: np.ndarray, factor: int = 16) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((a.shape[1] // factor, a.shape[0] // factor), Image.BOX))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=modelstore.DEFAULT_CODEC)
    parser.add_argument("--quality", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    import skimage.data

    torch.set_num_threads(os.cpu_count() or 1)
    loaded = modelstore.load_model(args.model)
    level = generation.check_level(loaded, args.quality)
    photos = {**demo_photos(), "motorcycle_left": skimage.data.stereo_motorcycle()[0]}
    rows = []
    for name, photo in photos.items():
        a = generation.anchor(loaded, photo, level)
        plain = generation.variation(loaded, a, 0.0, 0)
        row = {"image": name, "plain_psnr": round(psnr(photo, plain), 2),
               "plain_psnr_16x_smaller": round(psnr(downscaled(photo), downscaled(plain)), 2)}
        for t in TEMPERATURES:
            vs = [generation.variation(loaded, a, t, generation.image_seed(0, name) + s) for s in range(args.seeds)]
            row[f"t{t:g}"] = {"psnr": round(float(np.mean([psnr(photo, v) for v in vs])), 2),
                              "psnr_16x_smaller": round(float(np.mean(
                                  [psnr(downscaled(photo), downscaled(v)) for v in vs])), 2),
                              "min_psnr_16x_smaller": round(float(np.min(
                                  [psnr(downscaled(photo), downscaled(v)) for v in vs])), 2)}
        rows.append(row)
    keeps = [r["t0.5"]["min_psnr_16x_smaller"] > LAYOUT_DB for r in rows]
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": loaded.fingerprint,
        "quality": level + 1, "seeds": args.seeds, "per_image": rows,
        f"images_whose_t0.5_variations_all_keep_{LAYOUT_DB:g}_db_16x_smaller": f"{sum(keeps)}/{len(keeps)}"},
        indent=1))


if __name__ == "__main__":
    main()
