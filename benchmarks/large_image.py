"""Peak memory of coding (or restoring, --task restore) one large photo: tiled models keep it bounded.

Each size runs in a fresh process (so peaks do not mix): the photo is built by tiling scikit-image's
coffee, then encoded at --quality (default 3) and decoded with the shipped codec. Prints JSON: per size,
the pixels, peak RSS (MB) of the process, and encode/decode seconds.
Usage: python benchmarks/large_image.py [--sizes 1000x750,2000x1500,4000x3000] [--quality 3] [--task codec|restore]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def one_restore(size: str) -> dict:
    import numpy as np
    import skimage.data
    import torch

    from aeflow import images, metrics, modelstore, restoration

    w, h = (int(v) for v in size.split("x"))
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = modelstore.load_model("denoise-default")
    tile = skimage.data.coffee()
    arr = np.ascontiguousarray(np.tile(tile, (h // tile.shape[0] + 1, w // tile.shape[1] + 1, 1))[:h, :w])
    noisy = np.clip(np.round(arr + np.random.default_rng(0).normal(0, 25, arr.shape)), 0, 255).astype(np.uint8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    with torch.inference_mode():
        # as `aeflow restore` runs it: the blind noise estimate, 512-pixel tiles
        y = restoration.restore(loaded.module, images.to_tensor(noisy)[None], metrics.noise_sigma(noisy), tile=512)
        out = images.to_uint8(y[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "megapixels": round(w * h / 1e6, 2), "peak_rss_mb": round(peak), "rss_before_mb": round(base),
            "image_mb": round(arr.nbytes / 2**20, 1), "psnr_noisy": round(metrics.psnr(arr, noisy), 2),
            "psnr_restored": round(metrics.psnr(arr, out), 2), "restore_s": round(time.time() - t0, 2)}


def one(size: str, quality: int = 3) -> dict:
    import numpy as np
    import skimage.data
    import torch

    from aeflow import codec, metrics, modelstore

    w, h = (int(v) for v in size.split("x"))
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    tile = skimage.data.coffee()
    arr = np.ascontiguousarray(np.tile(tile, (h // tile.shape[0] + 1, w // tile.shape[1] + 1, 1))[:h, :w])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    bits = codec.encode_images(loaded, [arr], quality=quality)[0]
    t1 = time.time()
    out = codec.decode_bitstream(loaded, bits).rgb
    t2 = time.time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "megapixels": round(w * h / 1e6, 2), "peak_rss_mb": round(peak), "rss_before_mb": round(base),
            "image_mb": round(arr.nbytes / 2**20, 1), "bpp": round(8 * len(bits) / (w * h), 4),
            "psnr": round(metrics.psnr(arr, out), 2), "encode_s": round(t1 - t0, 2), "decode_s": round(t2 - t1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000x750,2000x1500,4000x3000")
    parser.add_argument("--one", default="")
    parser.add_argument("--task", default="codec", choices=["codec", "restore"])
    parser.add_argument("--quality", type=int, default=3, help="codec: quality level (8: the hyperprior's)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.quality) if args.task == "codec" else one_restore(args.one)))
        return
    rows = []
    for size in args.sizes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", size, "--task", args.task, "--quality",
                              str(args.quality)], check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "task": args.task,
                      "quality": args.quality if args.task == "codec" else None, "runs": rows},
                     indent=1))


if __name__ == "__main__":
    main()
