"""`aeflow eval --task denoise|deblock|deblur`: restoration quality against classical tools.

Clean images are degraded with a fixed seed (aeflow.degrade, the same functions training uses), then
restored by aeflow's model (aeflow.restoration, as `aeflow restore` runs it: a noise-map denoiser gets the blind
estimate, and, as `aeflow_sigma_given`, the true sigma) and by the classical baselines a user
already has on the same degraded images: scikit-image's non-local means, wavelet and TV denoisers, and
CBM3D (PyPI `bm3d`, given the true sigma) when installed. PSNR and SSIM on the 8-bit RGB outputs, per
image and mean; eval.json and a before/after grid of crops (grid.png).
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

import aeflow
from aeflow import degrade, images, metrics, modelstore, report, restoration, storage

CONVENTION = "PSNR and SSIM (skimage, RGB, data_range 255) on 8-bit outputs against the clean image"


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """One 8-bit image as a batch of one."""
    return images.to_tensor(arr)[None]


def _u8(x: torch.Tensor) -> np.ndarray:
    """The one image of a (1, 3, H, W) batch as 8-bit (H, W, 3)."""
    return images.to_uint8(x[0])


def degraded(task: str, arr: np.ndarray, level: float, seed: int) -> np.ndarray:
    """The fixed-seed degradation of one clean image: denoise = Gaussian noise of std `level`
    (0-255), deblock = JPEG at quality `level`, deblur = Gaussian blur of std `level` px + sigma-2 noise."""
    g = torch.Generator().manual_seed(seed)
    x = _tensor(arr)
    if task == "denoise":
        return _u8(degrade.gaussian_noise(x, level, g))
    if task == "deblock":
        return _u8(degrade.jpeg(x, level))
    if task == "deblur":
        return _u8(degrade.gaussian_noise(degrade.gaussian_blur(x, level), 2.0, g))
    if task == "inpaint":
        mask = _holes(arr, level, seed)
        return _u8(x * (1 - mask) + 0.5 * mask)  # the holes grey
    raise ValueError(f"eval --task {task}: one of codec, {', '.join(degrade.TASKS)}")


def _holes(arr: np.ndarray, level: float, seed: int) -> torch.Tensor:
    """The fixed-seed missing region for inpaint eval: `level` random rectangles, (1, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    return degrade.hole_mask(arr.shape[:2], int(level), g).float()[None, None]


def baselines(task: str, noisy: np.ndarray, level: float, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Classical restorations of one degraded image (8-bit RGB each)."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet, estimate_sigma

    x = noisy.astype(np.float64) / 255
    out = {}
    if task in ("denoise", "deblock"):
        sigma = level / 255 if task == "denoise" else float(np.mean(estimate_sigma(x, channel_axis=-1)))
        out["nl_means"] = denoise_nl_means(x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                           channel_axis=-1, fast_mode=True)
        try:  # needs PyWavelets (the `eval` extra)
            out["wavelet"] = denoise_wavelet(x, sigma=sigma, channel_axis=-1, convert2ycbcr=True, rescale_sigma=True)
        except ImportError:
            pass
        out["tv"] = denoise_tv_chambolle(x, weight=max(sigma, 1e-3), channel_axis=-1)
        try:  # the reference CBM3D (the `eval` extra), given the true sigma: a denoising baseline only
            import bm3d
        except ImportError:
            bm3d = None
        if bm3d is not None and task == "denoise":
            out["cbm3d"] = bm3d.bm3d_rgb(x, max(sigma, 1e-3))
    if task == "inpaint":
        from skimage.restoration import inpaint_biharmonic

        out["biharmonic"] = inpaint_biharmonic(x, mask, channel_axis=-1)
        hole = torch.from_numpy(mask).float()[None, None]
        out["push_pull"] = degrade.smooth_fill(_tensor(noisy), hole)[0].permute(1, 2, 0).numpy()  # aeflow's first fill
    if task == "deblur":
        from skimage.restoration import richardson_lucy

        psf = degrade.gaussian_kernel(level).numpy().astype(np.float64)
        out["richardson_lucy"] = np.stack([richardson_lucy(x[..., c], psf, num_iter=20) for c in range(3)], -1)
    return {k: (np.clip(v, 0, 1) * 255).round().astype(np.uint8) for k, v in out.items()}


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def evaluate_restorer(input_uri: str, work_uri: str, task: str, level: float, model: str = "", seed: int = 0,
                      tile: int = 512, options: storage.StorageOptions = storage.StorageOptions()) -> dict:
    """Degrade every image under input_uri (fixed seed), restore, compare; write eval.json + grid.png."""
    name = model or modelstore.DEFAULT_RESTORERS.get(task, "")
    if not name:
        raise ValueError(f"--task {task}: no shipped model yet; pass --model")
    loaded = modelstore.load_model(name, options)
    if loaded.kind != "restore":
        raise ValueError(f"--model {name}: a {loaded.kind} model, restoration eval needs a restorer")
    found = images.list_images(input_uri, options)
    per_image, grid_rows, seconds = [], [], {}
    pixels = 0.0
    for i, key in enumerate(found.images):
        clean = images.decode_picture(found.fs.cat_file(found.path(key))).rgb
        bad = degraded(task, clean, level, seed + i)
        mask = _holes(clean, level, seed + i) if task == "inpaint" else None
        noise_map = restoration.takes_noise_level(loaded.module)
        t0 = time.perf_counter()
        sigma = metrics.noise_sigma(bad) if noise_map else None  # blind, as `aeflow restore` runs by default
        ours = _u8(restoration.restore(loaded.module, _tensor(bad), sigma, mask, tile))
        seconds["aeflow"] = seconds.get("aeflow", 0.0) + time.perf_counter() - t0
        outputs = {"degraded": bad, "aeflow": ours}
        if noise_map and task == "denoise":  # as `aeflow restore --sigma`: told the true level, like CBM3D
            outputs["aeflow_sigma_given"] = _u8(restoration.restore(loaded.module, _tensor(bad), level, tile=tile))
        hole = mask[0, 0].numpy() > 0.5 if mask is not None else None
        for method, arr in baselines(task, bad, level, hole).items():
            outputs[method] = arr
        row = {"path": key, "width": clean.shape[1], "height": clean.shape[0]}
        for method, arr in outputs.items():
            row[method] = {"psnr": metrics.psnr(clean, arr), "ssim": _ssim(clean, arr)}
        per_image.append(row)
        pixels += clean.shape[0] * clean.shape[1] / 1e6
        classical = [m for m in outputs if m not in ("degraded", "aeflow", "aeflow_sigma_given")]
        best = max(classical, key=lambda m: row[m]["psnr"], default=None)
        crops = [("clean", clean), (f"sigma {level:g}" if task == "denoise" else task, bad), ("aeflow", ours)]
        if best:
            crops.append((best, outputs[best]))
        grid_rows.append(crops)
    methods = [m for m in per_image[0] if isinstance(per_image[0][m], dict)]
    mean = {m: {k: float(np.mean([r[m][k] for r in per_image])) for k in ("psnr", "ssim")} for m in methods}
    result = {"convention": CONVENTION, "task": task, "level": level, "seed": seed,
              "model": {"source": loaded.source, "fingerprint": loaded.fingerprint},
              "aeflow_version": aeflow.__version__, "images": len(per_image), "mean": mean,
              "aeflow_seconds_per_megapixel": seconds["aeflow"] / pixels, "per_image": per_image}
    out_fs, out_root = storage.filesystem(work_uri, options)
    out_fs.makedirs(out_root, exist_ok=True)
    storage.write_bytes(out_fs, storage.join(out_root, "eval.json"), json.dumps(result, indent=1).encode())
    storage.write_bytes(out_fs, storage.join(out_root, "grid.png"), report.grid_png(grid_rows[:4]))
    return result
