"""`aeflow demo`: the product end to end on real photos bundled with scikit-image (never trained on).

compress -> decompress with the shipped codec, denoising of the same photos with sigma-25 noise added,
enhancing, and variations from the codec's hyperprior, all through the real Ray Data pipeline on a local
Ray; prints a table and where outputs are.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from aeflow import degrade, evaluate, generation, images, metrics, modelstore, pipeline, report
from aeflow.samples import PHOTOS, demo_photos

NOISE_SIGMA = 25.0
ENHANCE_STRENGTH = 1.0
VARIATIONS = 2  # per photo, at the second temperature
TEMPERATURES = (0.25, 0.5)
GENERATE_QUALITY = 8  # lambda 0.0483: the level whose variations kept the most layout (RESULTS.md)


def _save(folder: str, name: str, arr: np.ndarray) -> None:
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(arr).save(os.path.join(folder, name + ".png"))


def _load(folder: str, name: str) -> np.ndarray:
    with open(os.path.join(folder, name + ".png"), "rb") as f:
        return images.decode_image(f.read())[0]


def run_demo(out: str = "aeflow-demo") -> list[dict]:
    import ray

    out = os.path.abspath(out)
    steps = 6
    print(f"[1/{steps}] writing {len(PHOTOS)} scikit-image photos and their sigma-{NOISE_SIGMA:g} noisy copies "
          f"to {out}/photos, {out}/noisy", flush=True)
    photos = demo_photos()
    gen = torch.Generator().manual_seed(0)
    noisy = {}
    for name, arr in photos.items():
        _save(f"{out}/photos", name, arr)
        noisy[name] = images.to_uint8(degrade.gaussian_noise(images.to_tensor(arr)[None], NOISE_SIGMA, gen)[0])
        _save(f"{out}/noisy", name, noisy[name])
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), logging_level="warning")

    print(f"[2/{steps}] compress {out}/photos -> {out}/latents", flush=True)
    t = time.time()
    comp = pipeline.compress(pipeline.JobConfig(input=f"{out}/photos", output=f"{out}/latents", resume=False))
    t_comp = time.time() - t
    print(f"[3/{steps}] decompress {out}/latents -> {out}/decompressed", flush=True)
    t = time.time()
    pipeline.decompress(pipeline.JobConfig(input=f"{out}/latents", output=f"{out}/decompressed", resume=False))
    t_dec = time.time() - t
    print(f"[4/{steps}] restore --task denoise {out}/noisy -> {out}/denoised", flush=True)
    t = time.time()
    pipeline.restore(pipeline.JobConfig(input=f"{out}/noisy", output=f"{out}/denoised", task="denoise", resume=False))
    t_den = time.time() - t
    print(f"[5/{steps}] restore --task enhance --strength {ENHANCE_STRENGTH:g} {out}/photos -> {out}/enhanced",
          flush=True)
    pipeline.restore(pipeline.JobConfig(input=f"{out}/photos", output=f"{out}/enhanced", task="enhance",
                                        strength=ENHANCE_STRENGTH, resume=False))

    print(f"[6/{steps}] generate --variations {VARIATIONS} --temperature {TEMPERATURES[1]:g} {out}/photos -> "
          f"{out}/variations", flush=True)
    pipeline.generate(pipeline.JobConfig(input=f"{out}/photos", output=f"{out}/variations", variations=VARIATIONS,
                                         temperature=TEMPERATURES[1], quality=GENERATE_QUALITY, resume=False))
    _generation_grid(out, photos)

    lat = pq.read_table(f"{out}/latents/latents-00000.parquet", columns=["path", "bytes", "bpp"]).to_pylist()
    by_name = {r["path"][:-4]: r for r in lat}
    rows = []
    for name, arr in photos.items():
        _, jpeg_psnr, jpeg_bytes = evaluate.classic_at_most(arr, by_name[name]["bytes"], "JPEG")
        _, webp_psnr, webp_bytes = evaluate.classic_at_most(arr, by_name[name]["bytes"], "WEBP")
        rows.append({
            "image": name, "size": f"{arr.shape[1]}x{arr.shape[0]}", "bpp": by_name[name]["bpp"],
            "psnr": metrics.psnr(arr, _load(f"{out}/decompressed", name)),
            "jpeg_bpp": 8 * jpeg_bytes / (arr.shape[0] * arr.shape[1]), "jpeg_psnr": jpeg_psnr,
            "webp_bpp": 8 * webp_bytes / (arr.shape[0] * arr.shape[1]), "webp_psnr": webp_psnr,
            "noisy_psnr": metrics.psnr(arr, noisy[name]),
            "denoised_psnr": metrics.psnr(arr, _load(f"{out}/denoised", name)),
        })
    _print_table(rows, comp.written, t_comp, t_dec, t_den)
    folders = ["photos", "decompressed", "noisy", "denoised", "enhanced"]  # original, and after each job
    grid = [[("", _load(f"{out}/{folder}", name)) for folder in folders] for name in ("astronaut", "chelsea", "coffee")]
    with open(f"{out}/grid.png", "wb") as f:
        f.write(report.grid_png(grid, size=200))
    print(f"\noutputs: {out}/latents (Parquet, manifest.json, errors.parquet), {out}/decompressed, "
          f"{out}/noisy, {out}/denoised, {out}/enhanced, {out}/variations; a before/after picture in "
          f"{out}/grid.png, and variations and an interpolation in {out}/generate-grid.png")
    return rows


def _square(arr: np.ndarray, size: int) -> np.ndarray:
    """The centre square of a photo, resized to size x size."""
    h, w = arr.shape[:2]
    side = min(h, w)
    crop = arr[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS))


def _generation_grid(out: str, photos: dict[str, np.ndarray], size: int = 192) -> None:
    """generate-grid.png: a photo and its variations at two temperatures, then an interpolation to another."""
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    level = generation.check_level(loaded, GENERATE_QUALITY)
    first, second = (_square(photos[name], size) for name in ("astronaut", "chelsea"))
    a = generation.anchor(loaded, first, level)
    row = [("input", first)]
    for t in TEMPERATURES:
        row += [(f"T={t:g}", generation.variation(loaded, a, t, generation.image_seed(0, "astronaut") + v))
                for v in range(2)]
    frames = generation.interpolate(loaded, first, second, len(row), level)
    with open(f"{out}/generate-grid.png", "wb") as f:
        f.write(report.grid_png([row, [("interpolation" if i == 0 else "", x) for i, x in enumerate(frames)]],
                                size=size))


def _print_table(rows: list[dict], n: int, t_comp: float, t_dec: float, t_den: float) -> None:
    head = (f"{'image':<18}{'size':>10}{'bpp':>7}{'PSNR':>7}{'JPEG bpp':>10}{'JPEG PSNR':>11}"
            f"{'WebP bpp':>10}{'WebP PSNR':>11}{'noisy':>8}{'denoised':>10}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['image']:<18}{r['size']:>10}{r['bpp']:>7.3f}{r['psnr']:>7.2f}{r['jpeg_bpp']:>10.3f}"
              f"{r['jpeg_psnr']:>11.2f}{r['webp_bpp']:>10.3f}{r['webp_psnr']:>11.2f}{r['noisy_psnr']:>8.2f}"
              f"{r['denoised_psnr']:>10.2f}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("image", "size")}
    print("-" * len(head))
    print(f"{'mean':<18}{'':>10}{mean['bpp']:>7.3f}{mean['psnr']:>7.2f}{mean['jpeg_bpp']:>10.3f}"
          f"{mean['jpeg_psnr']:>11.2f}{mean['webp_bpp']:>10.3f}{mean['webp_psnr']:>11.2f}{mean['noisy_psnr']:>8.2f}"
          f"{mean['denoised_psnr']:>10.2f}")
    print(f"\nPSNR in dB (RGB, 8-bit); aeflow at its default quality level. JPEG, WebP: Pillow at the best "
          f"quality no larger than aeflow's bytes, or quality 1 where none is (then compare bpp). "
          f"noisy: sigma {NOISE_SIGMA:g}, seeded. Full curves: `aeflow eval`.")
    print(f"seconds: compress {t_comp:.1f}, decompress {t_dec:.1f}, denoise {t_den:.1f} ({n} images, "
          f"Ray Data on this machine's {os.cpu_count()} CPUs)")
