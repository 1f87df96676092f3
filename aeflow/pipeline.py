"""Ray Data jobs: compress, decompress, restore, generate.

Each job is one stream: list keys -> batches of keys (Ray Data) -> model actor pool: read bytes -> decode
-> model -> encode -> write. Decompress reads the latents Parquet with Ray Data instead. Image outputs
are written by the actors; the small result rows (latents, status, errors) come
back to the driver, which writes the latents Parquet, the errors table and the manifest, and so
accounts for every input exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

import aeflow
from aeflow import codec, degrade, heap, images, metrics, modelstore, resources, storage
from aeflow.models.restorer import with_noise_map
from aeflow.tiling import tiled

# Columns that let a re-run skip finished inputs: the input's size and tag (ETag or mtime) when it was
# processed, and the settings that shaped the output (model fingerprint, format).
_LEDGER_FIELDS = [("source_bytes", pa.int64()), ("source_tag", pa.string()), ("settings", pa.string())]
LATENTS_SCHEMA = pa.schema([
    ("path", pa.string()),  # key relative to the input root
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("mode", pa.string()),  # the input file's Pillow mode (bit depth included: "I;16" is 16-bit)
    ("has_alpha", pa.bool_()),  # alpha plane stored losslessly in the bitstream
    ("has_icc", pa.bool_()),  # ICC profile stored in the bitstream
    ("model", pa.string()),  # fingerprint of the weights that wrote the bitstream
    ("quality", pa.int16()),  # the codec's quality level used (1 = smallest)
    ("format_version", pa.int16()),
    ("aeflow_version", pa.string()),
    ("crc32", pa.int64()),  # the bitstream's own crc32 field (it covers every other byte of it)
    ("bitstream", pa.binary()),  # header + payload: every byte needed to rebuild the image
    ("bytes", pa.int64()),
    ("bpp", pa.float64()),  # 8 * bytes / (width * height)
    *_LEDGER_FIELDS,
])
_ENCODED_SCHEMA = pa.schema([f for f in LATENTS_SCHEMA if f.name not in dict(_LEDGER_FIELDS)])  # from actors
STATUS_SCHEMA = pa.schema([
    ("path", pa.string()), ("output", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("noise_sigma", pa.float64()),  # restore: the input's noise std (0-255): --sigma or the blind estimate
])
PROGRESS_SCHEMA = pa.schema([("path", pa.string()), ("output", pa.string()), ("noise_sigma", pa.float64()),
                             *_LEDGER_FIELDS])
ERRORS_SCHEMA = pa.schema([("path", pa.string()), ("stage", pa.string()), ("error", pa.string())])
ROWS_PER_FILE = 100_000
TRIM_SECONDS = 10.0  # an actor gives freed heap memory back to the OS at most this often (bound_memory)

# Ray Data counts an operator's inputs when it plans the job, before the streaming repartition (_keys,
# decompress) cuts the one block of keys or latents into batch-sized blocks; its warning that the pool
# "only received 1 input(s)" is then wrong: every actor gets work (measured: the two actors of a 1000-image
# compress took 30.8 and 30.2 CPU seconds).
warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)


@dataclass(frozen=True)
class JobConfig:
    """Settings of one bulk job, as the CLI and jobs/*.py build them."""

    input: str
    output: str
    model: str = ""  # URI or shipped name; "" = the shipped default for the job
    batch_size: int = 8
    concurrency: int = 0  # model actors; 0 = one per free CPU (or per GPU)
    gpus: float = 0.0  # GPUs per actor
    threads: int = 0  # torch threads per actor; 0 = CPUs / actors
    format: str = "png"  # restore/decompress/generate output format
    task: str = "denoise"  # restore task
    quality: int = codec.DEFAULT_QUALITY  # compress: the codec's quality level (1 = smallest)
    target_bpp: float = 0.0  # compress: > 0 picks per image the highest level at most this many bits/pixel
    tile: int = 512  # restore: larger images run in overlapping tiles of this size (bounded memory)
    strength: float = 1.0  # restore: output = input + strength * (model output - input); enhance: 0..2
    sigma: float = -1.0  # restore with a noise-map denoiser: noise std (0-255) of every input; < 0 = estimate each
    listing: str = ""  # a listing file of keys under `input` to use instead of listing the prefix
    count: int = 0  # generate: number of images
    seed: int = 0  # generate: base seed
    max_errors: float = -1  # >= 1: max failed inputs; in (0, 1): max fraction; -1: fail only if all failed
    resume: bool = True  # skip inputs a previous run finished with the same settings; False = redo all
    flush_rows: int = 1000  # finished rows are made durable every flush_rows rows or flush_seconds
    flush_seconds: float = 30.0
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)


@dataclass
class JobSummary:
    """What a job did; `manifest` is what was written to <output>/manifest.json."""

    job: str
    inputs: int
    done_before: int  # finished by an earlier run of the same job, skipped now
    written: int
    failed: int
    skipped: int  # files that are not images
    seconds: float
    output: str
    errors: list[dict]
    manifest: dict

    def too_many_errors(self, max_errors: float) -> bool:
        if self.failed == 0:
            return False
        if max_errors < 0:
            return self.failed >= self.inputs - self.done_before
        if max_errors >= 1:
            return self.failed > max_errors
        return self.failed > max_errors * max(1, self.inputs)


class JobFailed(RuntimeError):
    """A job finished but failed its error budget; the summary says what was written."""

    def __init__(self, message: str, summary: JobSummary):
        super().__init__(message)
        self.summary = summary


def _rss_mb() -> float:
    """This process's resident memory in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


# --- shared by the actors ------------------------------------------------------------------------

def _error(path: str, stage: str, exc: BaseException | str) -> dict:
    """An error row with a one-line reason; aeflow's own errors read as they are, others keep their type."""
    if isinstance(exc, str):
        reason = exc
    elif isinstance(exc, (images.ImageError, codec.BitstreamError)):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return {"path": path, "stage": stage, "error": reason.splitlines()[0] if reason else stage}


def _rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Result rows (good ones with `schema`'s fields, bad ones with path/stage/error) -> one table."""
    full = pa.schema(list(schema) + [f for f in ERRORS_SCHEMA if f.name not in schema.names])
    return pa.Table.from_pylist([{**{n: None for n in full.names}, **r} for r in rows], schema=full)


def _decode_batch(fs, base: str, keys, row_for) -> tuple[list[dict], list[tuple[int, images.Picture]]]:
    """Read and decode the images of a batch of keys (relative to `base` on `fs`). Returns one row per
    key, in order (an error row for a file that cannot be read or decoded, or for a key that
    row_for(key, pic) refuses with ValueError), and (row index, picture) for each decoded image."""
    keys = [str(k) for k in keys]
    rows: list[dict] = []
    decoded: list[tuple[int, images.Picture]] = []
    for key, data in zip(keys, storage.read_files(fs, [storage.join(base, k) for k in keys])):
        if isinstance(data, BaseException):
            rows.append(_error(key, "read", data))
            continue
        try:
            pic = images.decode_picture(data)
            row = row_for(key, pic)
        except images.ImageError as e:
            rows.append(_error(key, "decode", e))
            continue
        except ValueError as e:  # an output key that is unsafe or collides
            rows.append(_error(key, "key", e))
            continue
        rows.append(row)
        decoded.append((len(rows) - 1, pic))
    return rows, decoded


def _by_shape(items: list[tuple[int, images.Picture]]) -> dict[tuple, list[tuple[int, images.Picture]]]:
    """Group decoded images by shape so each group is one batched model call (no padding waste)."""
    groups: dict[tuple, list[tuple[int, images.Picture]]] = {}
    for i, pic in items:
        groups.setdefault(pic.rgb.shape, []).append((i, pic))
    return groups


class _ModelActor:
    """Loads one model per actor process and sets its torch threads.

    Ray Data runs two calls of an actor at once (see _pool), so that one batch's file decoding,
    encoding and writing overlap the other's model work; `model_lock` lets one call at a time use the
    model, which has all the torch threads to itself."""

    def __init__(self, model: str, options: storage.StorageOptions, threads: int, gpus: float):
        heap.keep_freed_memory()
        self.model_lock = threading.Lock()
        self.rss_ceiling, self.last_trim = 0.0, 0.0  # set after the first batch: see bound_memory
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
        self.options = options
        self.loaded = modelstore.load_model(model, options) if model else None
        if self.loaded is not None:
            self.loaded.module.to(self.device)

    def bound_memory(self) -> None:
        """Keep a long job's actor near its size after the first batch. glibc keeps the memory that
        large tensors free in its heaps, fragmented, so without this an actor grows with the number of
        images (restore, largest worker: 904 MB after 100 images, 1164 MB after 1000); malloc_trim
        hands it back. At most every TRIM_SECONDS: the memory handed back is faulted in again by the
        next batches, which costs a little each time (compress trimmed after half its batches when
        trims were not spaced)."""
        rss, now = _rss_mb(), time.monotonic()
        if not self.rss_ceiling:
            self.rss_ceiling, self.last_trim = 1.05 * rss, now
        elif rss > self.rss_ceiling and now - self.last_trim >= TRIM_SECONDS:
            heap.give_back()
            self.last_trim = now

    def fast_math(self):
        """bf16 autocast on a GPU for the encoder and the restorers (not the decoder, whose pixels must
        not depend on the device's precision); a no-op on the CPU."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")


class EncodeImages(_ModelActor):
    """keys -> read -> decode -> encoder -> bitstream rows (or error rows)."""

    def __init__(self, model: str, options: storage.StorageOptions, threads: int, gpus: float, source: str,
                 base: str, quality: int, target_bpp: float):
        super().__init__(model, options, threads, gpus)
        self.in_fs, _ = storage.filesystem(source, options)
        self.base, self.quality, self.target_bpp = base, quality, target_bpp

    def __call__(self, batch: dict) -> pa.Table:
        rows, decoded = _decode_batch(self.in_fs, self.base, batch["path"], lambda key, pic: {
            "path": key, "width": pic.rgb.shape[1], "height": pic.rgb.shape[0], "mode": pic.mode,
            "has_alpha": pic.alpha is not None, "has_icc": pic.icc is not None})
        fp = self.loaded.fingerprint
        for group in _by_shape(decoded).values():
            pics = [p for _, p in group]
            try:
                with self.model_lock, self.fast_math():
                    streams = codec.encode_images(
                        self.loaded, [p.rgb for p in pics], self.quality, self.target_bpp,
                        modes=[p.mode for p in pics], alphas=[p.alpha for p in pics], iccs=[p.icc for p in pics])
            except Exception as e:  # a model failure loses only this group's images, as error rows
                for i, _ in group:
                    rows[i] = _error(rows[i]["path"], "model", e)
                continue
            for (i, pic), bits in zip(group, streams):
                h, w = pic.rgb.shape[:2]
                head = codec.read_header(bits)
                rows[i].update(model=fp, quality=head["level"], format_version=codec.FORMAT_VERSION,
                               aeflow_version=aeflow.__version__, crc32=head["crc32"],
                               bitstream=bits, bytes=len(bits), bpp=8.0 * len(bits) / (w * h))
        self.bound_memory()
        return _rows_table(rows, _ENCODED_SCHEMA)


class _WriteImages(_ModelActor):
    """Common end of decompress/restore/generate: encode an image and write it under the output."""

    def __init__(self, model: str, options: storage.StorageOptions, threads: int, gpus: float,
                 output: str, fmt: str, collisions: frozenset[str]):
        super().__init__(model, options, threads, gpus)
        self.out_fs, self.out_root = storage.filesystem(output, options)
        self.fmt = fmt
        self.ext = _ext(fmt)
        self.collisions = collisions

    def out_key(self, key: str) -> str:
        out = storage.output_key(key, self.ext)
        if key in self.collisions:
            raise ValueError(f"output {out} collides with another input of the same name; not overwritten")
        return out

    def write(self, key: str, out: str, arr: np.ndarray, alpha: np.ndarray | None = None,
              icc: bytes | None = None, exif: bytes | None = None) -> dict:
        storage.write_bytes(self.out_fs, storage.join(self.out_root, out),
                            images.encode_image(arr, self.fmt, alpha, icc, exif))
        return {"path": key, "output": out, "width": arr.shape[1], "height": arr.shape[0]}


class DecodeLatents(_WriteImages):
    """bitstream rows -> decoder -> image files. Each row's model is found by its fingerprint."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.models = {self.loaded.fingerprint: self.loaded} if self.loaded else {}
        self.shipped = {} if self.loaded else modelstore.shipped_fingerprints()

    def _model_for(self, fp: str) -> modelstore.LoadedModel:
        if fp not in self.models:
            if self.loaded is not None:
                raise ValueError(f"row was encoded by model {fp}, but the model given "
                                 f"({self.loaded.source}) is {self.loaded.fingerprint}; refusing to decode")
            if fp not in self.shipped:
                raise ValueError(f"row was encoded by model {fp}, which matches no shipped model; pass --model")
            self.models[fp] = modelstore.load_model(self.shipped[fp], self.options)
        return self.models[fp]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for r in batch.to_pylist():
            key = r["path"]
            try:
                out = self.out_key(key)
            except ValueError as e:  # an output key that is unsafe or collides
                rows.append(_error(key, "key", str(e)))
                continue
            try:
                with self.model_lock:
                    model = self._model_for(r["model"])
            except ValueError as e:
                rows.append(_error(key, "model", str(e)))
                continue
            try:
                with self.model_lock:
                    pic = codec.decode_bitstream(model, r["bitstream"])
                h, w = pic.rgb.shape[:2]
                if (w, h) != (r["width"], r["height"]):
                    raise codec.BitstreamError(f"header says {w}x{h}, row says {r['width']}x{r['height']}")
            except codec.BitstreamError as e:
                rows.append(_error(key, "bitstream", e))
                continue
            try:
                rows.append(self.write(key, out, pic.rgb, pic.alpha, pic.icc))
            except Exception as e:
                rows.append(_error(key, "write", e))
        self.bound_memory()
        return _rows_table(rows, STATUS_SCHEMA)


class RestoreImages(_WriteImages):
    """keys -> read -> decode -> restorer -> image files. 16-bit greyscale inputs are restored from their 16
    bits and written as 16-bit PNG; an inpainting model fills the input's transparent pixels; a
    noise-map denoiser is given each image's noise std (forced by --sigma, or its blind estimate)."""

    def __init__(self, *args, source: str, base: str, tile: int, strength: float = 1.0, sigma: float = -1.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.in_fs, _ = storage.filesystem(source, self.options)
        self.base, self.tile, self.strength, self.sigma = base, tile, strength, sigma
        self.noise_map = bool(self.loaded.config.get("noise_map", False))
        self.inpaint = self.loaded.config.get("in_channels", 3) == 4 and not self.noise_map

    def _input(self, pic: images.Picture, sigma: float) -> torch.Tensor:
        """(C, H, W) model input in [0, 1]; for inpainting, RGB with the holes grey plus the mask; for a
        noise-map denoiser, RGB plus the noise std plane."""
        if pic.deep is not None:
            x = torch.from_numpy(pic.deep.astype(np.float32) / 65535.0)[None].expand(3, -1, -1)
        else:
            x = torch.from_numpy(pic.rgb).permute(2, 0, 1).float().div_(255)
        if self.inpaint:
            if pic.alpha is None:
                raise ValueError("inpainting needs the missing pixels marked transparent (an alpha channel); "
                                 "this image has none")
            mask = torch.from_numpy(pic.alpha < 128).float()[None]
            x = degrade.with_holes(x[None], mask[None])[0]
        if self.noise_map:
            x = with_noise_map(x[None], sigma)[0]
        return x

    def _output(self, pic: images.Picture, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Restored pixels to write and the alpha to keep (none after inpainting: holes are filled)."""
        if self.inpaint:
            return codec.to_uint8(torch.where(x[3:] > 0.5, y, x[:3])), None
        if pic.deep is not None:
            grey = y.clamp(0, 1).mean(dim=0).mul(65535).round()
            return grey.to(torch.int32).numpy().astype(np.uint16), pic.alpha
        return codec.to_uint8(y), pic.alpha

    @torch.inference_mode()
    def __call__(self, batch: dict) -> pa.Table:
        rows, decoded = _decode_batch(self.in_fs, self.base, batch["path"], lambda key, pic: {
            "path": key, "output": self.out_key(key)})
        for group in _by_shape(decoded).values():
            inputs = []
            for i, pic in group:
                # the noise level used (and recorded): --sigma, else the image's blind estimate
                rows[i]["noise_sigma"] = self.sigma if self.sigma >= 0 else metrics.noise_sigma(pic.rgb)
                try:
                    inputs.append((i, pic, self._input(pic, rows[i]["noise_sigma"])))
                except ValueError as e:
                    rows[i] = _error(rows[i]["path"], "input", e)
            if not inputs:
                continue
            try:
                x = torch.stack([t for _, _, t in inputs])
                with self.model_lock, self.fast_math():
                    y = tiled(self.loaded.module, x.to(self.device), tile=self.tile).float().cpu()
                if self.strength != 1.0:  # less (or, above 1, more) of the model's correction
                    y = x[:, :3] + self.strength * (y - x[:, :3])
            except Exception as e:
                for i, _, _ in inputs:
                    rows[i] = _error(rows[i]["path"], "model", e)
                continue
            for (i, pic, xi), yi in zip(inputs, y):
                try:
                    out, alpha = self._output(pic, xi, yi)
                    sigma = rows[i]["noise_sigma"]
                    rows[i] = self.write(rows[i]["path"], rows[i]["output"], out, alpha, pic.icc, pic.exif)
                    rows[i]["noise_sigma"] = sigma
                except Exception as e:
                    rows[i] = _error(rows[i]["path"], "write", e)
        self.bound_memory()
        return _rows_table(rows, STATUS_SCHEMA)


class GenerateImages(_WriteImages):
    """Seeds -> latents sampled from the codec's prior -> decoder -> image files."""

    @staticmethod
    def key(seed: int) -> str:
        return f"generated-{seed:06d}.png"

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        extra = self.loaded.extra
        shape = [int(v) for v in extra["prior_shape"].tolist()]
        size = int(shape[1] * self.loaded.module.config.stride)
        rows = []
        for seed in batch["id"]:
            key = self.key(int(seed))
            g = torch.Generator().manual_seed(int(seed))
            z = torch.randn(extra["prior_basis"].shape[0], generator=g)
            y = (extra["prior_mean"] + z @ extra["prior_basis"]).view(1, *shape)
            with self.model_lock:
                arr = codec.to_uint8(codec.synthesise(self.loaded.module, y, (size, size))[0])
            try:
                rows.append(self.write(key, self.out_key(key), arr))
            except Exception as e:
                rows.append(_error(key, "write", e))
        self.bound_memory()
        return _rows_table(rows, STATUS_SCHEMA)


# --- the driver ------------------------------------------------------------------------------------

def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(logging_level="warning")


def _pool(job: JobConfig, plan: _Plan) -> tuple[dict, int]:
    """Actor pool options and torch threads per actor, sized to the cluster so that Ray Data's tasks always
    keep a CPU (aeflow.resources); recorded in plan.pool for the manifest."""
    import ray

    cluster = ray.cluster_resources()
    cpus = cluster.get("CPU", 1)
    if job.gpus > 0:
        size = job.concurrency or max(1, int(cluster.get("GPU", 0) / job.gpus))
        per_cpu = 1.0
        threads = job.threads or max(1, int(cpus // size))
    else:  # one actor per CPU, of two torch threads: one actor's threads fill the cores the other leaves
        size = job.concurrency or max(1, int(cpus))
        per_cpu = resources.cpu_per_actor(cpus, resources.cpu_nodes(), size)
        threads = job.threads or resources.threads_per_actor(cpus, size)
    # Two calls per actor at once, the model used by one at a time (_ModelActor.model_lock): image files
    # are decoded, encoded and written while the other call's batch is in the model.
    pool = ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)
    # Ray Data places actors with DataContext.scheduling_strategy, "SPREAD" by default: on a cluster the
    # model actors go to different nodes rather than filling the first one (tests/test_cluster.py).
    # The actors' calls run in worker threads: one malloc arena keeps their tensors on the tuned heap
    # (aeflow.heap); their OpenMP threads sleep when they wait (aeflow.resources). Ray merges these
    # variables into the job's own runtime environment.
    env = {**heap.ONE_ARENA, **resources.actor_env()}
    opts = {"compute": pool, "num_cpus": per_cpu, "runtime_env": {"env_vars": env}}
    if job.gpus > 0:
        opts["num_gpus"] = job.gpus
    plan.pool = {"actors": size, "torch_threads_per_actor": threads, "cpus_per_actor": per_cpu,
                 "gpus_per_actor": job.gpus, "actor_env": env}
    return opts, threads


def _ext(fmt: str) -> str:
    return "." + ("jpg" if fmt in ("jpg", "jpeg") else fmt)


def _collisions(keys: list[str], ext: str) -> frozenset[str]:
    """Keys whose output name another (earlier, in sorted order) key already takes: a.jpg + a.png -> a.png."""
    seen: set[str] = set()
    dup = set()
    for k in sorted(keys):
        out = posixpath.splitext(k)[0] + ext
        if out in seen:
            dup.add(k)
        seen.add(out)
    return frozenset(dup)


class _Ledger:
    """The durable record of finished inputs: compress's latents-*.parquet files themselves, or
    _progress/part-*.parquet beside the images of the other jobs.

    Parts are written as the job goes (every flush_rows rows or flush_seconds), each atomically, so
    a job killed at any point leaves only complete parts. A re-run reads them back: an input is done
    when its key, size, tag and the job's settings all match; rows that no longer match (changed input
    or settings, or a row written twice) are dropped from their part, so nothing is kept twice.
    """

    def __init__(self, fs, folder: str, prefix: str, schema: pa.Schema, job: JobConfig):
        self.fs, self.folder, self.prefix, self.schema = fs, folder, prefix, schema
        self.flush_rows, self.flush_seconds = max(1, job.flush_rows), job.flush_seconds
        self.buffer: list[pa.Table] = []
        self.rows, self.last_flush = 0, time.time()
        self.parts = sorted(fs.glob(storage.join(folder, f"{prefix}*.parquet")))
        self.next_part = 1 + max((int(posixpath.basename(p)[len(prefix):-8]) for p in self.parts), default=-1)

    def clear(self) -> None:
        for part in self.parts:
            self.fs.rm(part)
        self.parts, self.next_part = [], 0

    def finished(self, identity: dict[str, tuple[int, str]], settings: str) -> set[str]:
        """Keys an earlier run finished with these inputs and settings; prunes rows that don't count."""
        done: set[str] = set()
        arrow_fs = storage.arrow_filesystem(self.fs)
        for part in self.parts:
            table = pq.read_table(part, filesystem=arrow_fs)
            if not set(self.schema.names) <= set(table.column_names):
                raise ValueError(f"{part}: written by another aeflow version (columns differ); use --overwrite")
            keep = []
            for path, size, tag, sett in zip(*(table.column(c).to_pylist() for c in
                                               ("path", "source_bytes", "source_tag", "settings"))):
                ok = path not in done and sett == settings and identity.get(path) == (size, tag)
                keep.append(ok)
                if ok:
                    done.add(path)
            if not all(keep):
                kept = table.filter(pa.array(keep))
                if kept.num_rows:
                    with storage.atomic_open(self.fs, part) as f:
                        pq.write_table(kept, f)
                else:
                    self.fs.rm(part)
        return done

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buffer.append(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows
        if self.rows >= min(self.flush_rows, ROWS_PER_FILE) or (
                self.rows and time.time() - self.last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.time()
        if not self.buffer:
            return
        path = storage.join(self.folder, f"{self.prefix}{self.next_part:05d}.parquet")
        with storage.atomic_open(self.fs, path) as f:
            pq.write_table(pa.concat_tables(self.buffer), f)
        self.next_part, self.rows, self.buffer = self.next_part + 1, 0, []


@dataclass
class _Plan:
    """What a job will do: every input's identity, which are still to do, and where results go."""

    name: str
    job: JobConfig
    identity: dict[str, tuple[int, str]]  # every input key -> (size, tag)
    todo: list[str]
    done_before: int
    skipped: list[str]
    settings: str
    models: list[str]
    ledger: _Ledger
    pool: dict = field(default_factory=dict)  # how the model actors ran, for the manifest (set by _pool)


def _plan(name: str, job: JobConfig, identity: dict[str, tuple[int, str]], skipped: list[str],
          settings: str, models: list[str]) -> _Plan:
    """Open the output's ledger and decide which inputs still need work (all of them with resume off)."""
    out_fs, out_root = storage.filesystem(job.output, job.storage)
    out_fs.makedirs(out_root, exist_ok=True)
    if name == "compress":
        ledger = _Ledger(out_fs, out_root, "latents-", LATENTS_SCHEMA, job)
    else:
        ledger = _Ledger(out_fs, storage.join(out_root, "_progress"), "part-", PROGRESS_SCHEMA, job)
    if job.resume:
        done = ledger.finished(identity, settings)
    else:
        ledger.clear()
        done = set()
    todo = [k for k in identity if k not in done]
    return _Plan(name, job, identity, todo, len(identity) - len(todo), skipped, settings, models, ledger)


def _with_ledger_columns(table: pa.Table, plan: _Plan) -> pa.Table:
    ids = [plan.identity[p] for p in table.column("path").to_pylist()]
    return (table.append_column("source_bytes", pa.array([i[0] for i in ids], pa.int64()))
            .append_column("source_tag", pa.array([i[1] for i in ids], pa.string()))
            .append_column("settings", pa.array([plan.settings] * len(ids), pa.string())))


def _drain(plan: _Plan, ds, t0: float) -> JobSummary:
    """Pull result rows to the driver as they come; record finished rows in the ledger, then write
    errors.parquet and manifest.json. Every input ends written, failed, or finished before."""
    job = plan.job
    errors: list[dict] = []
    written: set[str] = set()
    duplicates = 0
    batches = ds.iter_batches(batch_format="pyarrow", batch_size=None) if ds is not None else []
    first_result_s = None  # the job's start-up: listing, planning, model actors' processes and imports
    for batch in batches:
        if first_result_s is None:
            first_result_s = round(time.time() - t0, 3)
        ok = pc.is_null(batch["error"])
        errors.extend(batch.filter(pc.invert(ok)).select(ERRORS_SCHEMA.names).to_pylist())
        good = batch.filter(ok)
        fresh = [p not in written for p in good.column("path").to_pylist()]
        duplicates += fresh.count(False)  # a retried task's rows: the output was rewritten in place
        good = good.filter(pa.array(fresh, pa.bool_()))
        written.update(good.column("path").to_pylist())
        if good.num_rows:
            plan.ledger.write(_with_ledger_columns(good, plan))
    plan.ledger.flush()
    errors = [e for e in errors if e["path"] not in written]  # an error superseded by a retry's success
    errors.sort(key=lambda e: e["path"])
    out_fs, out_root = storage.filesystem(job.output, job.storage)
    with storage.atomic_open(out_fs, storage.join(out_root, "errors.parquet")) as f:
        pq.write_table(pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA), f)
    seconds = time.time() - t0
    config = dataclasses.asdict(job)
    config.pop("storage")  # endpoint settings are the environment's, not the job's
    inputs = len(plan.identity)
    counts = {"inputs": inputs, "done_before": plan.done_before, "written": len(written),
              "failed": len(errors), "skipped": len(plan.skipped), "duplicates_dropped": duplicates,
              "unaccounted": inputs - plan.done_before - len(written) - len(errors)}
    manifest = {
        "job": plan.name, "aeflow_version": aeflow.__version__, "input": job.input, "output": job.output,
        "models": plan.models, "settings": plan.settings, "config": config, "counts": counts,
        "errors_by_stage": dict(Counter(e["stage"] for e in errors)),
        "skipped_sample": plan.skipped[:100], "pool": plan.pool,
        "seconds": round(seconds, 3), "first_result_seconds": first_result_s,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_bytes(out_fs, storage.join(out_root, "manifest.json"), json.dumps(manifest, indent=1).encode())
    summary = JobSummary(plan.name, inputs, plan.done_before, len(written), len(errors), len(plan.skipped),
                         seconds, job.output, errors, manifest)
    if counts["unaccounted"]:
        raise JobFailed(f"{plan.name}: {counts['unaccounted']} inputs neither written nor recorded as failed; "
                        f"see {job.output}/manifest.json", summary)
    if summary.too_many_errors(job.max_errors):
        first = errors[0]
        raise JobFailed(f"{plan.name}: {len(errors)} of {inputs} inputs failed (first: {first['path']}: "
                        f"{first['error']}); see {job.output}/errors.parquet", summary)
    return summary


def _list_images(job: JobConfig) -> tuple[object, str, dict[str, tuple[int, str]], list[str]]:
    """(fs, base, image key -> (size, tag), skipped non-image keys) for the job's input URI, from
    job.listing when given; the listing is saved as <output>/_listing.parquet for later jobs."""
    fs, root = storage.filesystem(job.input, job.storage)
    if job.listing:
        listing, base = storage.read_listing(job.listing, job.storage), root
    else:
        listing, base = storage.list_files(fs, root), storage.input_root(fs, root)
    out_fs, out_root = storage.filesystem(job.output, job.storage)
    out_fs.makedirs(out_root, exist_ok=True)
    storage.write_listing(out_fs, storage.join(out_root, "_listing.parquet"), listing)
    imgs = {k: v for k, v in listing.items() if images.is_image_key(k)}
    if not imgs:
        raise FileNotFoundError(f"no image files under {job.input} ({len(listing)} other files; "
                                f"image extensions: {', '.join(images.IMAGE_EXTENSIONS)})")
    return fs, base, imgs, [k for k in listing if not images.is_image_key(k)]


def _keys(keys: list[str], batch_size: int):
    """The input keys still to do, as a dataset of batch-sized blocks: the model actors read the files
    themselves (storage.read_files). Ray's read_binary_files would first look up every path again on
    the driver (a HEAD per object, or a re-listing of their common prefix: the listing the job was
    given to avoid) and then spend three HEADs and a GET per object; this is one GET."""
    import ray.data

    return ray.data.from_arrow(pa.table({"path": pa.array(keys, pa.string())})).repartition(
        target_num_rows_per_block=batch_size)


def compress(job: JobConfig) -> JobSummary:
    """Images under job.input -> latents Parquet (+ errors.parquet, manifest.json) under job.output."""
    t0 = time.time()
    _, base, identity, skipped = _list_images(job)
    model = job.model or modelstore.DEFAULT_CODEC
    loaded = modelstore.load_model(model, job.storage)  # fail fast on a bad --model, on the driver
    if loaded.kind != "codec":
        raise ValueError(f"--model {model}: a {loaded.kind} model, compress needs a codec")
    levels = len(loaded.config["lambdas"])
    if job.target_bpp <= 0:
        codec.check_quality(job.quality, levels)
    rate = f"bpp{job.target_bpp:g}" if job.target_bpp > 0 else f"q{job.quality}"
    plan = _plan("compress", job, identity, skipped, f"{loaded.fingerprint}/format{codec.FORMAT_VERSION}/{rate}",
                 [loaded.fingerprint])
    ds = None
    if plan.todo:
        _init_ray()
        opts, threads = _pool(job, plan)
        ds = _keys(plan.todo, job.batch_size).map_batches(
            EncodeImages, fn_constructor_args=(model, job.storage, threads, job.gpus, job.input, base, job.quality,
                                               job.target_bpp),
            batch_size=job.batch_size, batch_format="numpy", **opts)
    return _drain(plan, ds, t0)


def latents_files(fs, root: str) -> list[str]:
    """The latents Parquet files of a compress output (a folder), or the one file given."""
    if fs.isfile(root):
        return [root]
    files = sorted(fs.glob(storage.join(root, "latents-*.parquet")))
    if not files:
        raise FileNotFoundError(f"no latents-*.parquet under {root}")
    return files


def _read_latents_index(fs, files: list[str]) -> pa.Table:
    """path, model and bytes of every row, checking each file is an aeflow latents table."""
    arrow_fs = storage.arrow_filesystem(fs)
    tables = []
    for f in files:
        schema = pq.read_schema(f, filesystem=arrow_fs)
        missing = [c for c in ("path", "width", "height", "model", "bitstream", "bytes", "format_version")
                   if c not in schema.names]
        if missing:
            raise ValueError(f"{f}: not an aeflow latents table (missing columns: {', '.join(missing)})")
        table = pq.read_table(f, columns=["path", "model", "bytes", "format_version"], filesystem=arrow_fs)
        versions = set(table.column("format_version").to_pylist()) - {codec.FORMAT_VERSION}
        if versions:
            raise ValueError(f"{f}: bitstream format version {sorted(versions)} is not supported "
                             f"(this aeflow reads {codec.FORMAT_VERSION})")
        tables.append(table)
    return pa.concat_tables(tables)


@contextlib.contextmanager
def _parquet_reader():
    """Read the latents with Ray Data's V1 Parquet reader. The default, V2, starts actors only to read
    footers (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS, 32 a call): a worker process each, whose start-up costs
    the model seconds of CPU on a small cluster (measured: 6.7 s of 80 for 32 actors, 1.4-2.2 s for one,
    on 2 cores); V1 samples footers with plain tasks, which reuse Ray's idle workers. A user's
    RAY_DATA_USE_DATASOURCE_V2 wins. read_parquet reads the setting when called: it is scoped to the call."""
    import ray.data

    if "RAY_DATA_USE_DATASOURCE_V2" in os.environ:
        yield
        return
    ctx = ray.data.DataContext.get_current()
    before, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        yield
    finally:
        ctx.use_datasource_v2 = before


def decompress(job: JobConfig) -> JobSummary:
    """Latents Parquet -> images at <output>/<path with the extension replaced>."""
    import ray.data

    t0 = time.time()
    fs, root = storage.filesystem(job.input, job.storage)
    files = latents_files(fs, root)
    index = _read_latents_index(fs, files)
    keys, models, sizes = (index.column(c).to_pylist() for c in ("path", "model", "bytes"))
    if len(set(keys)) != len(keys):
        raise ValueError(f"{job.input}: the latents hold some paths twice; decompress refuses to pick one")
    if job.model:
        modelstore.load_model(job.model, job.storage)  # a bad --model fails here, not per row
    identity = {k: (b, m) for k, b, m in zip(keys, sizes, models)}
    plan = _plan("decompress", job, identity, [], f"{job.model or 'by-fingerprint'}/{job.format}",
                 sorted(set(models)))
    ds = None
    if plan.todo:
        _init_ray()
        opts, threads = _pool(job, plan)
        todo = pa.array(plan.todo, pa.string())
        with _parquet_reader():
            ds = ray.data.read_parquet(files, filesystem=storage.arrow_filesystem(fs)).select_columns(
                ["path", "width", "height", "model", "bitstream"])
        if plan.done_before:
            ds = ds.map_batches(lambda t: t.filter(pc.is_in(t["path"], value_set=todo)), batch_format="pyarrow")
        # A latents file is one block, and a block goes to one actor: cut it into batch-sized blocks so
        # that every actor of the pool gets work (streaming, no shuffle).
        ds = ds.repartition(target_num_rows_per_block=job.batch_size)
        ds = ds.map_batches(
            DecodeLatents, fn_constructor_args=(job.model, job.storage, threads, job.gpus, job.output, job.format,
                                                _collisions(keys, _ext(job.format))),
            batch_size=job.batch_size, batch_format="pyarrow", **opts)
    return _drain(plan, ds, t0)


def restore(job: JobConfig) -> JobSummary:
    """Images -> restored images at <output>/<path> (extension replaced by the output format)."""
    t0 = time.time()
    task = "deblur" if job.task == "enhance" else job.task  # enhance: the deblurrer, applied with --strength
    if not job.model and task not in modelstore.DEFAULT_RESTORERS:
        raise ValueError(f"--task {job.task}: no shipped model yet (shipped: "
                         f"{', '.join(modelstore.DEFAULT_RESTORERS)}); pass --model")
    model = job.model or modelstore.DEFAULT_RESTORERS[task]
    loaded = modelstore.load_model(model, job.storage)
    if loaded.kind != "restore":
        raise ValueError(f"--model {model}: a {loaded.kind} model, restore needs a restoration model")
    if job.sigma >= 0 and not loaded.config.get("noise_map"):
        raise ValueError(f"--sigma: model {model} is blind (it takes no noise level); --sigma needs a "
                         f"noise-map denoiser such as the shipped {modelstore.DEFAULT_RESTORERS['denoise']}")
    _, base, identity, skipped = _list_images(job)
    forced = f"/sigma{job.sigma:g}" if job.sigma >= 0 else ""
    plan = _plan("restore", job, identity, skipped,
                 f"{loaded.fingerprint}/{job.format}/s{job.strength:g}{forced}", [loaded.fingerprint])
    ds = None
    if plan.todo:
        _init_ray()
        opts, threads = _pool(job, plan)
        ds = _keys(plan.todo, job.batch_size).map_batches(
            RestoreImages, fn_constructor_args=(model, job.storage, threads, job.gpus, job.output, job.format,
                                                _collisions(list(identity), _ext(job.format))),
            fn_constructor_kwargs={"source": job.input, "base": base, "tile": job.tile, "strength": job.strength,
                                   "sigma": job.sigma},
            batch_size=job.batch_size, batch_format="numpy", **opts)
    return _drain(plan, ds, t0)


def generate(job: JobConfig) -> JobSummary:
    """job.count new images decoded from latents sampled from the codec's prior, as PNGs."""
    import ray.data

    t0 = time.time()
    model = job.model or modelstore.DEFAULT_CODEC
    loaded = modelstore.load_model(model, job.storage)
    if "prior_basis" not in loaded.extra:
        raise ValueError(f"--model {model}: has no generative prior (train it with `aeflow train --task codec`)")
    if job.count < 1:
        raise ValueError("--count must be at least 1")
    seeds = {GenerateImages.key(job.seed + i): job.seed + i for i in range(job.count)}
    plan = _plan("generate", job, {k: (0, "") for k in seeds}, [], loaded.fingerprint, [loaded.fingerprint])
    ds = None
    if plan.todo:
        _init_ray()
        opts, threads = _pool(job, plan)
        ds = ray.data.from_items([{"id": seeds[k]} for k in plan.todo]).map_batches(
            GenerateImages, fn_constructor_args=(model, job.storage, threads, job.gpus, job.output, "png",
                                                 frozenset()),
            batch_size=job.batch_size, batch_format="numpy", **opts)
    return _drain(plan, ds, t0)
