"""The CPU stages around a job's model: read + decode (keys -> pictures) and encode + write (pixels -> image
files), and the batch that passes between stages.

On CPU-only pools the model actor runs them itself (one process, no copies). With split stages they run as
Ray Data tasks of their own, and the batch travels between operators pickled, one Ray row per input.
"""

from __future__ import annotations

import functools
import pickle
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from aeflow import images, storage
from aeflow.pipeline import schemas


@dataclass
class Pending:
    """Pixels to write, (H, W, 3) uint8 or (H, W) uint16, and what the output keeps of its input. `key` is
    where it goes when that is not its row's output (one of an input's several outputs)."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    icc: bytes | None = None
    exif: bytes | None = None
    key: str | None = None


@dataclass
class Batch:
    """One batch of inputs in flight: a row per input, in order (its result fields so far, or an error
    row), and by row index the images still to work on: Pictures after reading, Pending after the model."""

    rows: list[dict]
    images: dict[int, images.Picture | Pending] = field(default_factory=dict)

    def fail(self, i: int, stage: str, exc: BaseException | str) -> None:
        """Input i becomes an error row; its image goes no further."""
        self.rows[i] = schemas.error_row(self.rows[i]["path"], stage, exc)
        self.images.pop(i, None)

    def by_shape(self) -> list[list[tuple[int, images.Picture]]]:
        """The images grouped by shape, so each group is one batched model call (no padding waste)."""
        groups: dict[tuple, list[tuple[int, images.Picture]]] = {}
        for i, pic in sorted(self.images.items()):
            groups.setdefault(pic.rgb.shape, []).append((i, pic))
        return list(groups.values())

    def to_numpy(self) -> dict[str, np.ndarray]:
        """The batch as a Ray Data batch for the next operator: one pickled (row, image) per input."""
        items = np.empty(len(self.rows), dtype=object)
        items[:] = [pickle.dumps((row, self.images.get(i)), protocol=5) for i, row in enumerate(self.rows)]
        return {"item": items}

    @classmethod
    def from_numpy(cls, batch: dict[str, np.ndarray]) -> Batch:
        """The inverse of to_numpy, in the next operator."""
        pairs = [pickle.loads(item) for item in batch["item"]]
        return cls([row for row, _ in pairs], {i: image for i, (_, image) in enumerate(pairs) if image is not None})


@functools.lru_cache(maxsize=16)
def filesystem(uri: str, options: storage.StorageOptions) -> tuple[object, str]:
    """storage.filesystem, made once per process for the batches that follow."""
    return storage.filesystem(uri, options)


def output_ext(fmt: str) -> str:
    return "." + ("jpg" if fmt in ("jpg", "jpeg") else fmt)


def collisions(keys: list[str], ext: str) -> frozenset[str]:
    """Keys whose output name another (earlier, in sorted order) key already takes: a.jpg + a.png -> a.png."""
    seen: set[str] = set()
    dup = set()
    for k in sorted(keys):
        out = posixpath.splitext(k)[0] + ext
        if out in seen:
            dup.add(k)
        seen.add(out)
    return frozenset(dup)


def output_key(key: str, ext: str, taken: frozenset[str]) -> str:
    """Where an input's output goes; ValueError for an unsafe key or one whose output another input takes."""
    out = storage.output_key(key, ext)
    if key in taken:
        raise ValueError(f"output {out} collides with another input of the same name; not overwritten")
    return out


def read_images(keys, *, source: str, base: str, options: storage.StorageOptions, out_ext: str | None = None,
                taken: frozenset[str] = frozenset()) -> Batch:
    """Read and decode the files of a batch of keys (relative to `base` under `source`). A row per key: an
    error row for a file that cannot be read or decoded, else the picture's size and mode, and with
    out_ext its output key (an error row where that key is unsafe or taken)."""
    fs, _ = filesystem(source, options)
    keys = [str(k) for k in keys]
    batch = Batch([])
    for key, data in zip(keys, storage.read_files(fs, [storage.join(base, k) for k in keys])):
        if isinstance(data, BaseException):
            batch.rows.append(schemas.error_row(key, "read", data))
            continue
        try:
            pic = images.decode_picture(data)
            row = {"path": key, "width": pic.rgb.shape[1], "height": pic.rgb.shape[0], "mode": pic.mode,
                   "has_alpha": pic.alpha is not None, "has_icc": pic.icc is not None}
            if out_ext is not None:
                row["output"] = output_key(key, out_ext, taken)
        except images.ImageError as e:
            batch.rows.append(schemas.error_row(key, "decode", e))
            continue
        except ValueError as e:  # an output key that is unsafe or collides
            batch.rows.append(schemas.error_row(key, "key", e))
            continue
        batch.images[len(batch.rows)] = pic
        batch.rows.append(row)
    return batch


def write_images(batch: Batch, *, output: str, fmt: str, options: storage.StorageOptions) -> list[dict]:
    """Encode each pending image as `fmt` and write it at its key (its row's output key unless it has its
    own); the rows, written ones with the image's size, failed writes as error rows."""
    fs, root = filesystem(output, options)
    for i, pending in sorted(batch.images.items()):
        try:
            for out in pending if isinstance(pending, list) else [pending]:
                storage.write_bytes(fs, storage.join(root, out.key or batch.rows[i]["output"]),
                                    images.encode_image(out.pixels, fmt, out.alpha, out.icc, out.exif))
            batch.rows[i] = {**batch.rows[i], "width": out.pixels.shape[1], "height": out.pixels.shape[0]}
        except Exception as e:
            batch.fail(i, "write", e)
    return batch.rows


def read_stage(keys: dict[str, np.ndarray], **read) -> dict[str, np.ndarray]:
    """read_images as an operator of its own: a batch of keys -> the batch for the model actors."""
    return read_images(keys["path"], **read).to_numpy()


def write_stage(batch: dict[str, np.ndarray], **write) -> pa.Table:
    """write_images as an operator of its own: the model actors' batch -> result rows."""
    return schemas.rows_table(write_images(Batch.from_numpy(batch), **write), schemas.STATUS_SCHEMA)
