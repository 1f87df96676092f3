"""Seconds per megapixel of whole `codec.encode_images` and `codec.decode_bitstream` calls at every level of a
codec (entropy coding and the hyperprior's path included), on scikit-image's held-out photos, one image per
call; --precision auto runs the encoder as `aeflow compress` does (bf16 where the processor has it natively),
fp32 as compress did before it had that. It imports only what every aeflow has, so the same file times an
older checkout: `PYTHONPATH=<checkout> python benchmarks/codec_levels_speed.py --precision fp32`. Prints JSON.
Usage: python benchmarks/codec_levels_speed.py [--model codec-default] [--precision auto|fp32] [--threads 2]
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import time

import numpy as np
import skimage.data
import torch

import aeflow
from aeflow import codec, modelstore

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


def encoder_precision(name: str):
    """The compress actors' autocast for --precision auto (aeflow.precision), or none for fp32."""
    if name == "fp32":
        return contextlib.nullcontext(), "fp32"
    from aeflow import precision

    cpu = torch.device("cpu")
    bf16 = precision.use_bf16("auto", cpu)
    return precision.autocast(bf16, cpu), "bf16" if bf16 else "fp32"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="codec-default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = modelstore.load_model(args.model)
    levels = len(loaded.config["lambdas"])
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    photos.append(skimage.data.stereo_motorcycle()[0])
    mp = sum(p.shape[0] * p.shape[1] for p in photos) / 1e6
    rows = {}
    for level in range(1, levels + 1):
        ctx, prec = encoder_precision(args.precision)
        with ctx:
            streams = [codec.encode_images(loaded, [p], level)[0] for p in photos]  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            ctx, prec = encoder_precision(args.precision)
            with ctx:
                streams = [codec.encode_images(loaded, [p], level)[0] for p in photos]
        enc = (time.perf_counter() - t0) / args.repeat / mp
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            for s in streams:
                codec.decode_bitstream(loaded, s)
        dec = (time.perf_counter() - t0) / args.repeat / mp
        bpp = 8 * sum(len(s) for s in streams) / (mp * 1e6)
        rows[f"quality_{level}"] = {"bpp": round(bpp, 4), "encode_s_per_mp": round(enc, 4),
                                    "decode_s_per_mp": round(dec, 4)}
    here = os.path.dirname(os.path.dirname(os.path.abspath(aeflow.__file__)))
    commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "aeflow": aeflow.__version__,
                      "commit": commit, "model": loaded.fingerprint, "encoder_precision": prec,
                      "threads": args.threads, "megapixels": round(mp, 3), "levels": rows,
                      "mean_encode_s_per_mp": round(float(np.mean([r["encode_s_per_mp"] for r in rows.values()])), 4),
                      "mean_decode_s_per_mp": round(float(np.mean([r["decode_s_per_mp"] for r in rows.values()])), 4)},
                     indent=1))


if __name__ == "__main__":
    main()
