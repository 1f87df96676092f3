"""What bf16 autocast costs and buys on held-out real photos (scikit-image's, never trained on), per model path:
- the codec's analysis (compress): bytes and PSNR at every level against fp32 analysis, both decoded in fp32;
- the codec's synthesis (decompress --fast-decode): mean and max pixel difference from the fp32 decode;
- the restorers (denoise at sigma 15/25/50, deblock at JPEG q20, deblur at 2 px): PSNR against fp32;
and the restorers' seconds per megapixel in both precisions (all threads; the codec's transforms are timed
per stage by codec_speed.py). Prints JSON; the defaults in aeflow.precision follow from it.
Usage: python benchmarks/bf16_cost.py
"""

import json
import os
import platform
import time

import numpy as np
import skimage.data
import torch

from aeflow import codec, images, modelstore, precision, restoration
from aeflow.evaluate_restore import degraded
from aeflow.metrics import noise_sigma, psnr
from aeflow.samples import demo_photos

CPU = torch.device("cpu")
RESTORE = (("denoise", 15.0), ("denoise", 25.0), ("denoise", 50.0), ("deblock", 20.0), ("deblur", 2.0))


def timed(fn, repeat: int = 2) -> tuple[object, float]:
    out = fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return out, (time.perf_counter() - t0) / repeat


def codec_cost(loaded, photos: dict[str, np.ndarray]) -> dict:
    levels = codec.tables_of(loaded).levels
    rows = {lv: {"bytes_change_pct": [], "psnr_change_db": []} for lv in range(1, levels + 1)}
    pixel_diff, decode_psnr_change = [], []
    for arr in photos.values():
        for lv in range(1, levels + 1):
            ref = codec.encode_images(loaded, [arr], lv)[0]
            with precision.autocast(True, CPU):
                fast = codec.encode_images(loaded, [arr], lv)[0]
            ref_px, fast_px = (codec.decode_bitstream(loaded, b).rgb for b in (ref, fast))
            rows[lv]["bytes_change_pct"].append(100 * (len(fast) - len(ref)) / len(ref))
            rows[lv]["psnr_change_db"].append(psnr(arr, fast_px) - psnr(arr, ref_px))
            if lv in (1, codec.default_quality(loaded.config["lambdas"]), levels):
                with precision.autocast(True, CPU):
                    bf16_px = codec.decode_bitstream(loaded, ref).rgb
                diff = np.abs(bf16_px.astype(int) - ref_px)
                pixel_diff.append((float(diff.mean()), int(diff.max())))
                decode_psnr_change.append(psnr(arr, bf16_px) - psnr(arr, ref_px))
    per_level = {f"quality_{lv}": {k: round(float(np.mean(v)), 4) for k, v in r.items()} for lv, r in rows.items()}
    return {
        "analysis_bf16": {"per_level": per_level,
                          "worst_level_bytes_change_pct": max(r["bytes_change_pct"] for r in per_level.values()),
                          "worst_level_psnr_change_db": min(r["psnr_change_db"] for r in per_level.values())},
        "synthesis_bf16": {"mean_abs_pixel_diff": round(float(np.mean([d[0] for d in pixel_diff])), 4),
                           "max_abs_pixel_diff": max(d[1] for d in pixel_diff),
                           "psnr_change_db": round(float(np.mean(decode_psnr_change)), 4),
                           "levels": [1, codec.default_quality(loaded.config["lambdas"]), levels]}}


def restore_cost(photos: dict[str, np.ndarray]) -> dict:
    out = {}
    for task, level in RESTORE:
        module = modelstore.load_model(modelstore.DEFAULT_RESTORERS[task]).module
        changes, seconds = [], {False: 0.0, True: 0.0}
        mp = 0.0
        for arr in photos.values():
            bad = degraded(task, arr, level, seed=0)
            sigma = noise_sigma(bad) if restoration.takes_noise_level(module) else None
            x = images.to_tensor(bad)[None]
            got = {}
            for bf16 in (False, True):
                y, t = timed(lambda m=module, x=x, s=sigma, b=bf16: restoration.restore(m, x, s, bf16=b), repeat=1)
                got[bf16], seconds[bf16] = images.to_uint8(y[0]), seconds[bf16] + t
            changes.append(psnr(arr, got[True]) - psnr(arr, got[False]))
            mp += arr.shape[0] * arr.shape[1] / 1e6
        out[f"{task}_{level:g}"] = {"psnr_change_db": round(float(np.mean(changes)), 4),
                                    "worst_image_psnr_change_db": round(float(np.min(changes)), 4),
                                    "fp32_s_per_mp": round(seconds[False] / mp, 4),
                                    "bf16_s_per_mp": round(seconds[True] / mp, 4)}
    return out


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    photos = {**demo_photos(), "motorcycle_left": skimage.data.stereo_motorcycle()[0]}
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, native bf16: {precision.cpu_has_native_bf16()}",
        "codec": loaded.fingerprint, "photos": list(photos),
        **codec_cost(loaded, photos),
        "restorers": restore_cost(photos)}, indent=1))


if __name__ == "__main__":
    main()
