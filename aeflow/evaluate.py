"""`aeflow eval`: rate-distortion of a codec on an image URI, against Pillow JPEG and WebP.

For every image and every quality level: bits per pixel from the stored bitstream bytes, PSNR-RGB and
MS-SSIM of the decoded 8-bit image, encode and decode seconds. JPEG and WebP are swept over Pillow's
quality settings on the same images and read off at aeflow's bpp (linear between sweep points, never
extrapolated); BD-rate against each uses the mean curves. The codec calls are the library functions
the compress/decompress actors run (`codec.encode_images`, `codec.decode_bitstream`).
Writes eval.json and rd-psnr.png / rd-msssim.png under the output URI.
"""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np
from PIL import Image

import aeflow
from aeflow import codec, images, metrics, modelstore, report, storage

SWEEP = tuple(range(5, 100, 5))  # Pillow quality settings tried for JPEG and WebP
CONVENTION = ("PSNR-RGB and MS-SSIM (RGB, 5 scales where the image allows) on 8-bit outputs; "
              "bpp = 8 * stored bytes / pixels, headers included")


def classic_at_most(arr: np.ndarray, max_bytes: int, fmt: str = "JPEG") -> tuple[int, float, int]:
    """(quality, PSNR, bytes) of the best Pillow JPEG or WebP no larger than max_bytes (quality 1
    if none fits, so the result may then be larger)."""
    best = None
    lo, hi = 1, 95
    while lo <= hi:
        q = (lo + hi) // 2
        data = _classic(arr, fmt, q)
        if len(data) <= max_bytes or q == 1:
            best = (q, data)
            lo = q + 1
        else:
            hi = q - 1
    q, data = best
    return q, metrics.psnr(arr, _decode(data)), len(data)


def _classic(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def sweep_classic(arr: np.ndarray, fmt: str, with_ms_ssim: bool = True) -> list[dict]:
    """bpp, PSNR and (unless skipped) MS-SSIM of Pillow `fmt` at every SWEEP quality."""
    h, w = arr.shape[:2]
    out = []
    for q in SWEEP:
        data = _classic(arr, fmt, q)
        dec = _decode(data)
        out.append({"quality": q, "bpp": metrics.bpp(len(data), w, h), "psnr": metrics.psnr(arr, dec),
                    "ms_ssim": metrics.ms_ssim(arr, dec) if with_ms_ssim else math.nan})
    return out


def evaluate_image(loaded, arr: np.ndarray, formats: tuple[str, ...] = ("JPEG", "WEBP"),
                   with_ms_ssim: bool = True) -> dict:
    """Every quality level of the codec, and the classical sweeps, on one image. MS-SSIM can be skipped
    (NaN) where only PSNR is wanted: it costs more than the codec itself."""
    h, w = arr.shape[:2]
    levels = []
    for q in range(1, len(loaded.config["lambdas"]) + 1):
        t0 = time.perf_counter()
        bits = codec.encode_images(loaded, [arr], quality=q)[0]
        t1 = time.perf_counter()
        dec = codec.decode_bitstream(loaded, bits).rgb
        t2 = time.perf_counter()
        levels.append({"quality": q, "bytes": len(bits), "bpp": metrics.bpp(len(bits), w, h),
                       "psnr": metrics.psnr(arr, dec),
                       "ms_ssim": metrics.ms_ssim(arr, dec) if with_ms_ssim else math.nan,
                       "encode_s": t1 - t0, "decode_s": t2 - t1})
    classic = {fmt: sweep_classic(arr, fmt, with_ms_ssim) for fmt in formats}
    for lv in levels:
        for fmt, pts in classic.items():
            for m in ("psnr", "ms_ssim"):
                lv[f"{fmt.lower()}_{m}"] = metrics.interp_at(lv["bpp"], [p["bpp"] for p in pts], [p[m] for p in pts])
    rates, psnrs = [lv["bpp"] for lv in levels], [lv["psnr"] for lv in levels]
    bd = {f"bd_psnr_vs_{fmt.lower()}": metrics.bd_psnr([p["bpp"] for p in pts], [p["psnr"] for p in pts], rates, psnrs)
          for fmt, pts in classic.items()}
    return {"width": w, "height": h, "levels": levels, "classic": classic, **bd}


def finite_or_none(obj):
    """JSON has no NaN: figures that do not exist (no overlap, out of the sweep) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(per_image: list[dict]) -> dict:
    """Mean curves, the mean PSNR gap to JPEG/WebP at equal bpp per level, BD-rates, speed."""
    n_levels = len(per_image[0]["levels"])
    mean_levels = []
    for i in range(n_levels):
        rows = [img["levels"][i] for img in per_image]
        keys = [k for k in rows[0] if k != "quality"]
        mean_levels.append({"quality": i + 1, **{k: _nanmean([r[k] for r in rows]) for k in keys}})
        for fmt in ("jpeg", "webp"):
            mean_levels[-1][f"{fmt}_delta_db"] = _nanmean([r["psnr"] - r[f"{fmt}_psnr"] for r in rows])
    classic = {}
    for fmt in ("JPEG", "WEBP"):
        classic[fmt.lower()] = [{"quality": q, **{m: float(np.mean([img["classic"][fmt][j][m] for img in per_image]))
                                                  for m in ("bpp", "psnr", "ms_ssim")}}
                                for j, q in enumerate(SWEEP)]
    ours_r, ours_p = [lv["bpp"] for lv in mean_levels], [lv["psnr"] for lv in mean_levels]
    bd = {}
    for fmt, pts in classic.items():
        bd[f"bd_rate_vs_{fmt}_percent"] = metrics.bd_rate([p["bpp"] for p in pts], [p["psnr"] for p in pts],
                                                          ours_r, ours_p)
    in_band = [lv for lv in mean_levels if 0.25 <= lv["bpp"] <= 1.0]
    pixels = sum(img["width"] * img["height"] for img in per_image) / 1e6
    speed = {"encode_s_per_megapixel": sum(lv["encode_s"] for img in per_image for lv in img["levels"])
             / (pixels * n_levels),
             "decode_s_per_megapixel": sum(lv["decode_s"] for img in per_image for lv in img["levels"])
             / (pixels * n_levels)}
    band = {"levels_in_0.25_1.0_bpp": [lv["quality"] for lv in in_band],
            "webp_delta_db_0.25_1.0_bpp": _nanmean([lv["webp_delta_db"] for lv in in_band]),
            "jpeg_delta_db_0.25_1.0_bpp": _nanmean([lv["jpeg_delta_db"] for lv in in_band])}
    per_image_bd = {}  # the measure: BD-PSNR over 0.25-1.0 bpp on each image's own curves, then averaged
    for fmt in ("jpeg", "webp"):
        values = [img[f"bd_psnr_vs_{fmt}"] for img in per_image]
        per_image_bd[f"bd_psnr_vs_{fmt}_0.25_1.0_bpp"] = _nanmean(values)
        per_image_bd[f"bd_psnr_vs_{fmt}_worst_image"] = min((v for v in values if math.isfinite(v)), default=math.nan)
    return {"levels": mean_levels, "classic": classic, **bd, **band, **per_image_bd, **speed}


def evaluate_codec(input_uri: str, work_uri: str, model: str = "",
                   options: storage.StorageOptions = storage.StorageOptions()) -> dict:
    """Rate-distortion report of `model` over the images under input_uri; written to work_uri."""
    loaded = modelstore.load_model(model or modelstore.DEFAULT_CODEC, options)
    if loaded.kind != "codec":
        raise ValueError(f"--model {model}: a {loaded.kind} model, eval needs a codec")
    found = images.list_images(input_uri, options)
    per_image, errors = [], []
    for key in found.images:
        try:
            arr = images.decode_picture(found.fs.cat_file(found.path(key))).rgb
        except images.ImageError as e:
            errors.append({"path": key, "error": str(e)})
            continue
        per_image.append({"path": key, **evaluate_image(loaded, arr)})
    if not per_image:
        raise ValueError(f"no decodable images under {input_uri}: {errors[:3]}")
    result = {"convention": CONVENTION, "model": {"source": loaded.source, "fingerprint": loaded.fingerprint},
              "aeflow_version": aeflow.__version__, "images": len(per_image), "errors": errors,
              "mean": summarise(per_image), "per_image": per_image}
    result = finite_or_none(result)
    mean = result["mean"]
    out_fs, out_root = storage.filesystem(work_uri, options)
    out_fs.makedirs(out_root, exist_ok=True)
    storage.write_bytes(out_fs, storage.join(out_root, "eval.json"), json.dumps(result, indent=1).encode())
    x_max = 1.3 * max(lv["bpp"] for lv in mean["levels"])  # the classic sweeps run far past our top level
    for metric, label in (("psnr", "PSNR-RGB (dB)"), ("ms_ssim", "MS-SSIM")):
        curves = {"aeflow": [(lv["bpp"], lv[metric]) for lv in mean["levels"] if lv[metric] is not None],
                  "JPEG": [(p["bpp"], p[metric]) for p in mean["classic"]["jpeg"] if p["bpp"] <= x_max],
                  "WebP": [(p["bpp"], p[metric]) for p in mean["classic"]["webp"] if p["bpp"] <= x_max]}
        png = report.rd_curve_png(curves, f"mean of {len(per_image)} images", label)
        storage.write_bytes(out_fs, storage.join(out_root, f"rd-{metric.replace('_', '')}.png"), png)
    return result
