"""Per-core speed of each stage of the codec's jobs, for sizing clusters (docs/scaling.md), with the library's
own functions:
- the CPU stages around the model: reading + JPEG decoding (pipeline.stages.read_images) and PNG encoding +
  writing (pipeline.stages.write_images), one process, one thread;
- the transforms (analysis, synthesis) in fp32 and bf16 autocast at 1 and all threads;
- entropy coding with the hyperprior's table choice (bitstream.pack / unpack of one level's symbols and
  side information; it stays on the CPU with --gpus too), one thread, at the lowest, default and top level.
On scikit-image's coffee tiled to 1536x1024, and 64 distinct 448x300 photo crops as JPEG q92 files.
Prints JSON in megapixels per second.
Usage: python benchmarks/codec_speed.py [--model codec-default]
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from aeflow import bitstream, codec, images, modelstore, precision, storage
from aeflow.entropy_coding import tables_of
from aeflow.pipeline import stages
from aeflow.pipeline.stages import Batch, Pending
from aeflow.samples import photo_crops

CPU = torch.device("cpu")


def rate(fn, megapixels: float, repeat: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round(megapixels * repeat / (time.perf_counter() - t0), 2)


def io_stages(work: Path) -> dict:
    """read + JPEG decode, and PNG encode + write, of 64 photos, one thread."""
    crops = photo_crops(64, 448, 300)
    keys = [f"p{i:03d}.jpg" for i in range(len(crops))]
    for key, arr in zip(keys, crops):
        Image.fromarray(arr).save(work / key, quality=92)
    mp = len(crops) * 448 * 300 / 1e6
    options = storage.StorageOptions()
    read = lambda: stages.read_images(keys, source=str(work), base=str(work), options=options)  # noqa: E731
    out = work / "out"
    out.mkdir()

    def write():
        batch = Batch([{"path": k, "output": k[:-4] + ".png"} for k in keys],
                      {i: Pending(arr) for i, arr in enumerate(crops)})
        stages.write_images(batch, output=str(out), fmt="png", options=options)

    return {"read_and_jpeg_decode": rate(read, mp), "png_encode_and_write": rate(write, mp)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=modelstore.DEFAULT_CODEC)
    args = parser.parse_args()
    loaded = modelstore.load_model(args.model)
    module, tables = loaded.module, tables_of(loaded)
    arr = np.ascontiguousarray(np.tile(skimage.data.coffee(), (3, 3, 1))[:1024, :1536])
    mp = arr.shape[0] * arr.shape[1] / 1e6
    x = images.to_tensor(arr)[None]
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, native bf16: {precision.cpu_has_native_bf16()}",
           "model": loaded.fingerprint, "image": "1536x1024", "transforms_mpix_s": {},
           "coder_mpix_s_one_thread": {}}
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        out["cpu_stages_mpix_s_one_thread"] = io_stages(Path(work))
    with torch.inference_mode():
        y = codec.analyse(module, x)
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            for bf16 in (False, True):
                with precision.autocast(bf16, CPU):
                    out["transforms_mpix_s"][f"{'bf16' if bf16 else 'fp32'}_{threads}_threads"] = {
                        "analysis": rate(lambda: codec.analyse(module, x), mp),
                        "synthesis": rate(lambda: codec.synthesise(module, y, arr.shape[:2]), mp)}
        torch.set_num_threads(1)
        for level in (1, codec.default_quality(loaded.config["lambdas"]), tables.levels):
            scaled = y * module._gain(module.log_gain, level - 1)
            q = torch.round(scaled)[0].numpy()
            z = torch.round(module.hyper.side(scaled))[0].numpy() if level - 1 in tables.hyper_levels else None
            h, w = arr.shape[:2]
            bits = bitstream.pack(q, level - 1, tables, loaded.fingerprint, w, h, z=z)
            out["coder_mpix_s_one_thread"][f"quality_{level}"] = {
                "bpp": round(8 * len(bits) / (h * w), 4),
                "pack": rate(lambda q=q, z=z, lv=level - 1, w=w, h=h: bitstream.pack(
                    q, lv, tables, loaded.fingerprint, w, h, z=z), mp),
                "unpack": rate(lambda bits=bits: bitstream.unpack(bits, tables, loaded.fingerprint), mp)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
