"""`aeflow eval`: run the real compress -> decompress pipeline over an image URI and measure it.

Per image and mean: bits per pixel (from the stored bytes), PSNR-RGB of the round trip, and Pillow
JPEG and WebP at the largest quality whose file is no larger than aeflow's bitstream.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from aeflow import images, metrics, pipeline, storage


def classic_at_most(arr: np.ndarray, max_bytes: int, fmt: str = "JPEG") -> tuple[int, float, int]:
    """(quality, PSNR, bytes) of the best Pillow JPEG or WebP no larger than max_bytes (quality 1
    if none fits, so the result may then be larger)."""
    best = None
    lo, hi = 1, 95
    while lo <= hi:
        q = (lo + hi) // 2
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, quality=q)
        if buf.tell() <= max_bytes or q == 1:
            best = (q, buf.getvalue())
            lo = q + 1
        else:
            hi = q - 1
    q, data = best
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return q, metrics.psnr(arr, decoded), len(data)


def evaluate_codec(input_uri: str, work_uri: str, model: str = "",
                   options: storage.StorageOptions = storage.StorageOptions()) -> dict:
    """Compress and decompress input_uri into work_uri/{latents,decoded}; write work_uri/eval.json."""
    latents_uri = storage.join(work_uri, "latents")
    decoded_uri = storage.join(work_uri, "decoded")
    comp = pipeline.compress(pipeline.JobConfig(input=input_uri, output=latents_uri, model=model, resume=False,
                                                storage=options))
    pipeline.decompress(pipeline.JobConfig(input=latents_uri, output=decoded_uri, model=model, resume=False,
                                           storage=options))
    in_fs, in_root = storage.filesystem(input_uri, options)
    base = storage.input_root(in_fs, in_root)
    out_fs, out_root = storage.filesystem(decoded_uri, options)
    lat_fs, lat_root = storage.filesystem(latents_uri, options)
    rows = []
    for f in pipeline.latents_files(lat_fs, lat_root):
        table = pq.read_table(f, columns=["path", "width", "height", "bytes", "bpp"],
                              filesystem=storage.arrow_filesystem(lat_fs))
        for r in table.to_pylist():
            original, _ = images.decode_image(in_fs.cat_file(storage.join(base, r["path"])))
            out_key = storage.output_key(r["path"], ".png")
            decoded, _ = images.decode_image(out_fs.cat_file(storage.join(out_root, out_key)))
            row = {"path": r["path"], "width": r["width"], "height": r["height"], "bpp": r["bpp"],
                   "psnr": metrics.psnr(original, decoded)}
            for fmt in ("JPEG", "WEBP"):
                q, fmt_psnr, fmt_bytes = classic_at_most(original, r["bytes"], fmt)
                key = fmt.lower()
                row.update({f"{key}_quality": q, f"{key}_bpp": metrics.bpp(fmt_bytes, r["width"], r["height"]),
                            f"{key}_psnr": fmt_psnr})
            rows.append(row)
    rows.sort(key=lambda r: r["path"])
    keys = ("bpp", "psnr", "jpeg_bpp", "jpeg_psnr", "webp_bpp", "webp_psnr")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}
    mean.update(images=len(rows), failed=comp.failed)
    report = {"convention": "PSNR-RGB on 8-bit outputs; bpp = 8 * stored bytes / pixels",
              "model": comp.manifest["models"], "mean": mean, "images": rows}
    work_fs, work_root = storage.filesystem(work_uri, options)
    storage.write_bytes(work_fs, storage.join(work_root, "eval.json"), json.dumps(report, indent=1).encode())
    return report
