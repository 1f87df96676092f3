"""Training crops: photos decoded once into memory (plain loop) or read by Ray Data (Ray Train), cut
at random positions, scales, flips and quarter turns, to stretch a small corpus."""

from __future__ import annotations

import numpy as np
from PIL import Image

from aeflow import images, storage
from aeflow.training.config import TrainConfig


def random_crops(arr: np.ndarray, size: int, n: int, rng: np.random.Generator,
                 scale_min: float = 1.0) -> list[np.ndarray]:
    """n random size x size crops of an HxWx3 image, each cut at a scale drawn from [scale_min, 1] (a
    larger square resized down), flipped and turned at random; small images are upscaled first."""
    h, w = arr.shape[:2]
    if min(h, w) < size:
        scale = size / min(h, w)
        arr = np.asarray(Image.fromarray(arr).resize((max(size, round(w * scale)), max(size, round(h * scale)))))
        h, w = arr.shape[:2]
    out = []
    for _ in range(n):
        side = size if scale_min >= 1.0 else min(h, w, round(size / rng.uniform(scale_min, 1.0)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        c = arr[y:y + side, x:x + side]
        if side != size:
            c = np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC))
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if scale_min < 1.0:  # quarter turns only with the augmented recipe: plain runs stay as they were
            c = np.rot90(c, int(rng.integers(0, 4)))
        out.append(np.ascontiguousarray(c))
    return out


def image_paths(uri: str, options: storage.StorageOptions) -> tuple[object, list[str]]:
    """(filesystem, full paths) of the images under uri, by the one lister (images.list_images)."""
    found = images.list_images(uri, options)
    return found.fs, [found.path(k) for k in found.images]


def load_photos(uri: str, options: storage.StorageOptions) -> list[np.ndarray]:
    """Decode every image under uri into memory (the plain path and the prior fit use this)."""
    fs, paths = image_paths(uri, options)
    photos = []
    for p in paths:
        try:
            photos.append(images.decode_image(fs.cat_file(p))[0])
        except images.ImageError as e:
            print(f"skipping {p}: {e}")
    return photos


def batches_from_memory(cfg: TrainConfig, photos: list[np.ndarray], steps: int, rng: np.random.Generator):
    """`steps` batches of uint8 NHWC crops, each crop from a photo drawn at random."""
    import torch

    for _ in range(steps):
        idx = rng.integers(0, len(photos), cfg.batch_size)
        crops = [random_crops(photos[i], cfg.crop, 1, rng, cfg.scale_min)[0] for i in idx]
        yield torch.from_numpy(np.stack(crops))


def crops_dataset(cfg: TrainConfig, options: storage.StorageOptions, task_cpus: float = 1.0):
    """A Ray Dataset of random crops: read bytes -> decode -> crops_per_image crops per image.
    The dataset is re-executed each epoch, so each epoch sees fresh crops. Its tasks take `task_cpus`
    each: less than 1 where the Train workers leave less (runtime.cpu_per_data_task)."""
    import ray.data

    fs, paths = image_paths(cfg.data, options)
    size, n, scale_min = cfg.crop, cfg.crops_per_image, cfg.scale_min

    def to_crops(row: dict) -> list[dict]:
        try:
            arr, _ = images.decode_image(row["bytes"])
        except images.ImageError:
            return []
        return [{"crop": c} for c in random_crops(arr, size, n, np.random.default_rng(), scale_min)]

    ds = ray.data.read_binary_files(paths, filesystem=storage.arrow_filesystem(fs),
                                    ray_remote_args={"num_cpus": task_cpus})
    return ds.flat_map(to_crops, num_cpus=task_cpus)
