"""Per-core speed of each stage of the codec, for sizing clusters (docs/scaling.md).

On scikit-image's coffee (600x400) tiled up to 1536x1024: analysis and synthesis transforms at 1 and
all threads (fp32), and the range coder (pack / unpack of one quality level's symbols, one thread) at
the lowest, default and highest levels. Prints JSON in megapixels per second.
Usage: python benchmarks/codec_speed.py [--model codec-default]
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import skimage.data
import torch

from aeflow import bitstream, codec, entropy_coding, images, modelstore


def rate(fn, megapixels: float, repeat: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round(megapixels * repeat / (time.perf_counter() - t0), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=modelstore.DEFAULT_CODEC)
    args = parser.parse_args()
    loaded = modelstore.load_model(args.model)
    module, tables = loaded.module, entropy_coding.tables_of(loaded)
    tile = skimage.data.coffee()
    arr = np.ascontiguousarray(np.tile(tile, (3, 3, 1))[:1024, :1536])
    mp = arr.shape[0] * arr.shape[1] / 1e6
    x = images.to_tensor(arr)[None]
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": loaded.fingerprint,
           "image": "1536x1024", "transforms_mpix_s": {}, "coder_mpix_s_one_thread": {}}
    with torch.inference_mode():
        y = codec.analyse(module, x)
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            out["transforms_mpix_s"][f"{threads}_threads"] = {
                "analysis": rate(lambda: codec.analyse(module, x), mp),
                "synthesis": rate(lambda: codec.synthesise(module, y, arr.shape[:2]), mp)}
        for level in (1, codec.DEFAULT_QUALITY, tables.levels):
            q = module.quantize(y, level - 1)[0].numpy()
            bits = bitstream.pack(q, level - 1, tables, loaded.fingerprint, arr.shape[1], arr.shape[0])
            out["coder_mpix_s_one_thread"][f"quality_{level}"] = {
                "bpp": round(8 * len(bits) / (arr.shape[0] * arr.shape[1]), 4),
                "pack": rate(lambda q=q, lv=level - 1: bitstream.pack(q, lv, tables, loaded.fingerprint, arr.shape[1],
                                                                   arr.shape[0]), mp),
                "unpack": rate(lambda bits=bits: bitstream.unpack(bits, tables, loaded.fingerprint), mp)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
