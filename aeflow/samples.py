"""Real photos that ship inside scikit-image (no download, never used in training): the demo's inputs, and
the distinct crops that tests and benchmarks feed the jobs."""

from __future__ import annotations

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


def demo_photos() -> dict[str, np.ndarray]:
    """The demo's colour photos, whole."""
    import skimage.data

    return {name: np.asarray(getattr(skimage.data, name)()) for name in PHOTOS}


def photo_crops(n: int, w: int, h: int, start: int = 0) -> list[np.ndarray]:
    """n distinct w x h crops (offsets and mirror images) of the colour photos, numbered from `start`, so
    that a job of many images never codes the same pixels twice."""
    import skimage.data
    from PIL import Image

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket(),
               skimage.data.hubble_deep_field()]
    out = []
    for i in range(start, start + n):
        src = sources[i % len(sources)]
        if src.shape[0] < h or src.shape[1] < w:
            src = np.asarray(Image.fromarray(src).resize((max(w, src.shape[1]), max(h, src.shape[0]))))
        y = (i * 17) % (src.shape[0] - h + 1)
        x = (i * 29) % (src.shape[1] - w + 1)
        crop = src[y:y + h, x:x + w]
        out.append(np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop))
    return out
