"""Ray Data jobs: compress, decompress, restore, generate.

Each job is one stream: list keys -> read bytes (Ray Data) -> decode -> model actor pool -> encode ->
write. Image outputs are written by the actors; the small result rows (latents, status, errors) come
back to the driver, which writes the latents Parquet, the errors table and the manifest, and so
accounts for every input exactly once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

import aeflow
from aeflow import codec, images, modelstore, storage

LATENTS_SCHEMA = pa.schema([
    ("path", pa.string()),  # key relative to the input root
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("mode", pa.string()),  # the input file's Pillow mode (decoded outputs are RGB)
    ("model", pa.string()),  # fingerprint of the weights that wrote the bitstream
    ("format_version", pa.int16()),
    ("aeflow_version", pa.string()),
    ("bitstream", pa.binary()),  # header + payload: every byte needed to rebuild the image
    ("bytes", pa.int64()),
    ("bpp", pa.float64()),  # 8 * bytes / (width * height)
])
STATUS_SCHEMA = pa.schema([
    ("path", pa.string()), ("output", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
])
ERRORS_SCHEMA = pa.schema([("path", pa.string()), ("stage", pa.string()), ("error", pa.string())])
ROWS_PER_FILE = 100_000


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
    count: int = 0  # generate: number of images
    seed: int = 0  # generate: base seed
    max_errors: float = -1  # >= 1: max failed inputs; in (0, 1): max fraction; -1: fail only if all failed
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)


@dataclass
class JobSummary:
    """What a job did; `manifest` is what was written to <output>/manifest.json."""

    job: str
    inputs: int
    written: int
    failed: int
    skipped: int
    seconds: float
    output: str
    errors: list[dict]
    manifest: dict

    def too_many_errors(self, max_errors: float) -> bool:
        if self.failed == 0:
            return False
        if max_errors < 0:
            return self.written == 0
        if max_errors >= 1:
            return self.failed > max_errors
        return self.failed > max_errors * max(1, self.inputs)


class JobFailed(RuntimeError):
    """A job finished but failed its error budget; the summary says what was written."""

    def __init__(self, message: str, summary: JobSummary):
        super().__init__(message)
        self.summary = summary


# --- shared by the actors ------------------------------------------------------------------------

def _error(path: str, stage: str, exc: BaseException | str) -> dict:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}" if not isinstance(
        exc, (images.ImageError, codec.BitstreamError)) else str(exc)
    return {"path": path, "stage": stage, "error": reason.splitlines()[0] if reason else stage}


def _rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Result rows (good ones with `schema`'s fields, bad ones with path/stage/error) -> one table."""
    full = pa.schema(list(schema) + [f for f in ERRORS_SCHEMA if f.name not in schema.names])
    return pa.Table.from_pylist([{**{n: None for n in full.names}, **r} for r in rows], schema=full)


def _by_shape(items: list[tuple[int, np.ndarray]]) -> dict[tuple, list[tuple[int, np.ndarray]]]:
    """Group decoded images by shape so each group is one batched model call (no padding waste)."""
    groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for i, arr in items:
        groups.setdefault(arr.shape, []).append((i, arr))
    return groups


class _ModelActor:
    """Loads one model per actor process and sets its torch threads."""

    def __init__(self, model: str, options: storage.StorageOptions, threads: int, gpus: float):
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
        self.options = options
        self.loaded = modelstore.load_model(model, options) if model else None
        if self.loaded is not None:
            self.loaded.module.to(self.device)


class EncodeImages(_ModelActor):
    """bytes -> decode -> encoder -> bitstream rows (or error rows)."""

    def __init__(self, model: str, options: storage.StorageOptions, threads: int, gpus: float, base: str):
        super().__init__(model, options, threads, gpus)
        self.base = base

    def __call__(self, batch: dict) -> pa.Table:
        rows: list[dict] = []
        decoded: list[tuple[int, np.ndarray]] = []
        for path, data in zip(batch["path"], batch["bytes"]):
            key = _relative(path, self.base)
            try:
                arr, mode = images.decode_image(data)
            except images.ImageError as e:
                rows.append(_error(key, "decode", e))
                continue
            rows.append({"path": key, "width": arr.shape[1], "height": arr.shape[0], "mode": mode})
            decoded.append((len(rows) - 1, arr))
        fp = self.loaded.fingerprint
        for group in _by_shape(decoded).values():
            try:
                streams = codec.encode_images(self.loaded.module, [a for _, a in group])
            except Exception as e:  # a model failure loses only this group's images, as error rows
                for i, _ in group:
                    rows[i] = _error(rows[i]["path"], "model", e)
                continue
            for (i, arr), bits in zip(group, streams):
                h, w = arr.shape[:2]
                rows[i].update(model=fp, format_version=codec.FORMAT_VERSION, aeflow_version=aeflow.__version__,
                               bitstream=bits, bytes=len(bits), bpp=8.0 * len(bits) / (w * h))
        return _rows_table(rows, LATENTS_SCHEMA)


class _WriteImages(_ModelActor):
    """Common end of decompress/restore/generate: encode an image and write it under the output."""

    def __init__(self, model: str, options: storage.StorageOptions, threads: int, gpus: float,
                 output: str, fmt: str, collisions: frozenset[str]):
        super().__init__(model, options, threads, gpus)
        self.out_fs, self.out_root = storage.filesystem(output, options)
        self.fmt = fmt
        self.ext = "." + ("jpg" if fmt in ("jpg", "jpeg") else fmt)
        self.collisions = collisions

    def out_key(self, key: str) -> str:
        out = storage.output_key(key, self.ext)
        if key in self.collisions:
            raise ValueError(f"output {out} collides with another input of the same name; not overwritten")
        return out

    def write(self, key: str, out: str, arr: np.ndarray) -> dict:
        storage.write_bytes(self.out_fs, storage.join(self.out_root, out), images.encode_image(arr, self.fmt))
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
                model = self._model_for(r["model"])
            except ValueError as e:
                rows.append(_error(key, "model", str(e)))
                continue
            try:
                latents, w, h = codec.unpack(r["bitstream"])
                if (w, h) != (r["width"], r["height"]):
                    raise codec.BitstreamError(f"header says {w}x{h}, row says {r['width']}x{r['height']}")
                arr = codec.decode_latents(model.module, latents, w, h)
            except codec.BitstreamError as e:
                rows.append(_error(key, "bitstream", e))
                continue
            try:
                rows.append(self.write(key, out, arr))
            except Exception as e:
                rows.append(_error(key, "write", e))
        return _rows_table(rows, STATUS_SCHEMA)


class RestoreImages(_WriteImages):
    """bytes -> decode -> restorer -> image files."""

    def __init__(self, *args, base: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.base = base

    @torch.inference_mode()
    def __call__(self, batch: dict) -> pa.Table:
        rows: list[dict] = []
        decoded: list[tuple[int, np.ndarray]] = []
        for path, data in zip(batch["path"], batch["bytes"]):
            key = _relative(path, self.base)
            try:
                out = self.out_key(key)
                arr, _ = images.decode_image(data)
            except (images.ImageError, ValueError) as e:
                rows.append(_error(key, "decode" if isinstance(e, images.ImageError) else "key", e))
                continue
            rows.append({"path": key, "output": out})
            decoded.append((len(rows) - 1, arr))
        for group in _by_shape(decoded).values():
            try:
                x = torch.from_numpy(np.stack([a for _, a in group])).permute(0, 3, 1, 2).float().div_(255)
                y = self.loaded.module(x.to(self.device)).cpu()
            except Exception as e:
                for i, _ in group:
                    rows[i] = _error(rows[i]["path"], "model", e)
                continue
            for (i, _), yi in zip(group, y):
                try:
                    rows[i] = self.write(rows[i]["path"], rows[i]["output"], codec.to_uint8(yi))
                except Exception as e:
                    rows[i] = _error(rows[i]["path"], "write", e)
        return _rows_table(rows, STATUS_SCHEMA)


class GenerateImages(_WriteImages):
    """Seeds -> latents sampled from the codec's prior -> decoder -> image files."""

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        extra = self.loaded.extra
        shape = [int(v) for v in extra["prior_shape"].tolist()]
        size = int(shape[1] * self.loaded.module.config.stride)
        rows = []
        for seed in batch["id"]:
            key = f"generated-{int(seed):06d}.png"
            g = torch.Generator().manual_seed(int(seed))
            z = torch.randn(extra["prior_basis"].shape[0], generator=g)
            y = (extra["prior_mean"] + z @ extra["prior_basis"]).view(1, *shape)
            arr = codec.to_uint8(self.loaded.module.decode(torch.round(y), (size, size))[0])
            try:
                rows.append(self.write(key, self.out_key(key), arr))
            except Exception as e:
                rows.append(_error(key, "write", e))
        return _rows_table(rows, STATUS_SCHEMA)


def _relative(path: str, base: str) -> str:
    """A path from Ray's reader -> the key relative to the input root."""
    base = base.rstrip("/") + "/"
    return path[len(base):] if path.startswith(base) else posixpath.basename(path)


# --- the driver ------------------------------------------------------------------------------------

def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(logging_level="warning")


def _pool(job: JobConfig) -> tuple[dict, int]:
    """Actor pool options sized to the cluster so that reads always keep a CPU (RAY-NOTES: deadlock)."""
    import ray

    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 1)
    if job.gpus > 0:
        size = job.concurrency or max(1, int(resources.get("GPU", 0) / job.gpus))
        per_cpu = 1.0
    else:
        size = job.concurrency or max(1, int(cpus) - 1)
        per_cpu = min(1.0, max(0.25, (cpus - 1) / size))
    threads = job.threads or max(1, int(cpus // size))
    opts = {"compute": ray.data.ActorPoolStrategy(size=size), "num_cpus": per_cpu}
    if job.gpus > 0:
        opts["num_gpus"] = job.gpus
    return opts, threads


def _list_images(job: JobConfig) -> tuple[object, str, list[str], list[str]]:
    """(fs, base, image keys, skipped non-image keys) for the job's input URI."""
    fs, root = storage.filesystem(job.input, job.storage)
    keys = storage.list_files(fs, root)
    base = storage.input_root(fs, root)
    imgs = [k for k in keys if images.is_image_key(k)]
    if not imgs:
        raise FileNotFoundError(f"no image files under {job.input} ({len(keys)} other files; "
                                f"image extensions: {', '.join(images.IMAGE_EXTENSIONS)})")
    return fs, base, imgs, [k for k in keys if not images.is_image_key(k)]


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


class _PartWriter:
    """Rolling Parquet files latents-00000.parquet, ... (plain Arrow types), each written atomically."""

    def __init__(self, fs, root: str, schema: pa.Schema, rows_per_file: int = ROWS_PER_FILE):
        self.fs, self.root, self.schema, self.rows_per_file = fs, root, schema, rows_per_file
        self.part, self.rows, self.buffer = 0, 0, []

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buffer.append(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows
        if self.rows >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        path = storage.join(self.root, f"latents-{self.part:05d}.parquet")
        with storage.atomic_open(self.fs, path) as f:
            pq.write_table(pa.concat_tables(self.buffer), f)
        self.part, self.rows, self.buffer = self.part + 1, 0, []


def _drain(job_name: str, job: JobConfig, ds, inputs: int, skipped: list[str], models: list[str],
           latents: bool, t0: float) -> JobSummary:
    """Pull result rows to the driver; write latents (compress), errors.parquet and manifest.json."""
    out_fs, out_root = storage.filesystem(job.output, job.storage)
    out_fs.makedirs(out_root, exist_ok=True)
    writer = _PartWriter(out_fs, out_root, LATENTS_SCHEMA) if latents else None
    errors: list[dict] = []
    written = 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        ok = pc.is_null(batch["error"])
        good = batch.filter(ok)
        errors.extend(batch.filter(pc.invert(ok)).select(ERRORS_SCHEMA.names).to_pylist())
        written += good.num_rows
        if writer is not None:
            writer.write(good)
    if writer is not None:
        writer.flush()
    errors.sort(key=lambda e: e["path"])
    with storage.atomic_open(out_fs, storage.join(out_root, "errors.parquet")) as f:
        pq.write_table(pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA), f)
    seconds = time.time() - t0
    config = dataclasses.asdict(job)
    config.pop("storage")  # endpoint settings are the environment's, not the job's
    manifest = {
        "job": job_name, "aeflow_version": aeflow.__version__, "input": job.input, "output": job.output,
        "models": models, "config": config,
        "counts": {"inputs": inputs, "written": written, "failed": len(errors), "skipped": len(skipped),
                   "unaccounted": inputs - written - len(errors)},
        "errors_by_stage": dict(Counter(e["stage"] for e in errors)),
        "skipped_sample": skipped[:100], "seconds": round(seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_bytes(out_fs, storage.join(out_root, "manifest.json"), json.dumps(manifest, indent=1).encode())
    summary = JobSummary(job_name, inputs, written, len(errors), len(skipped), seconds, job.output, errors, manifest)
    if manifest["counts"]["unaccounted"]:
        raise JobFailed(f"{job_name}: {manifest['counts']['unaccounted']} inputs neither written nor "
                        f"recorded as failed; see {job.output}/manifest.json", summary)
    if summary.too_many_errors(job.max_errors):
        first = errors[0]
        raise JobFailed(f"{job_name}: {len(errors)} of {inputs} inputs failed (first: {first['path']}: "
                        f"{first['error']}); see {job.output}/errors.parquet", summary)
    return summary


def _read_images(fs, base: str, keys: list[str]):
    import ray.data

    paths = [storage.join(base, k) for k in keys]
    return ray.data.read_binary_files(paths, include_paths=True, filesystem=storage.arrow_filesystem(fs))


def compress(job: JobConfig) -> JobSummary:
    """Images under job.input -> latents Parquet (+ errors.parquet, manifest.json) under job.output."""
    t0 = time.time()
    _init_ray()
    fs, base, keys, skipped = _list_images(job)
    model = job.model or modelstore.DEFAULT_CODEC
    loaded = modelstore.load_model(model, job.storage)  # fail fast on a bad --model, on the driver
    if loaded.kind != "codec":
        raise ValueError(f"--model {model}: a {loaded.kind} model, compress needs a codec")
    opts, threads = _pool(job)
    ds = _read_images(fs, base, keys).map_batches(
        EncodeImages, fn_constructor_args=(model, job.storage, threads, job.gpus, base),
        batch_size=job.batch_size, batch_format="numpy", **opts)
    return _drain("compress", job, ds, len(keys), skipped, [loaded.fingerprint], latents=True, t0=t0)


def latents_files(fs, root: str) -> list[str]:
    """The latents Parquet files of a compress output (a folder), or the one file given."""
    if fs.isfile(root):
        return [root]
    files = sorted(p for p in fs.find(root) if fnmatch.fnmatch(posixpath.basename(p), "latents-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no latents-*.parquet under {root}")
    return files


def _check_latents_schema(fs, path: str) -> None:
    schema = pq.read_schema(fs.open(path, "rb"))
    missing = [f.name for f in LATENTS_SCHEMA if f.name not in schema.names]
    if missing:
        raise ValueError(f"{path}: not an aeflow latents table (missing columns: {', '.join(missing)})")


def decompress(job: JobConfig) -> JobSummary:
    """Latents Parquet -> images at <output>/<path with the extension replaced>."""
    import ray.data

    t0 = time.time()
    _init_ray()
    fs, root = storage.filesystem(job.input, job.storage)
    files = latents_files(fs, root)
    for f in files:
        _check_latents_schema(fs, f)
    keys_table = pq.read_table(files[0], columns=["path", "model"], filesystem=storage.arrow_filesystem(fs)) \
        if len(files) == 1 else pa.concat_tables(
            pq.read_table(f, columns=["path", "model"], filesystem=storage.arrow_filesystem(fs)) for f in files)
    keys = keys_table.column("path").to_pylist()
    models = sorted(set(keys_table.column("model").to_pylist()))
    if job.model:
        modelstore.load_model(job.model, job.storage)  # a bad --model fails here, not per row
    ext = "." + ("jpg" if job.format in ("jpg", "jpeg") else job.format)
    opts, threads = _pool(job)
    ds = ray.data.read_parquet(files, filesystem=storage.arrow_filesystem(fs)).select_columns(
        ["path", "width", "height", "model", "bitstream"])
    ds = ds.map_batches(
        DecodeLatents, fn_constructor_args=(job.model, job.storage, threads, job.gpus, job.output, job.format,
                                            _collisions(keys, ext)),
        batch_size=job.batch_size, batch_format="pyarrow", **opts)
    return _drain("decompress", job, ds, len(keys), [], models, latents=False, t0=t0)


def restore(job: JobConfig) -> JobSummary:
    """Images -> restored images at <output>/<path> (extension replaced by the output format)."""
    t0 = time.time()
    _init_ray()
    if not job.model and job.task not in modelstore.DEFAULT_RESTORERS:
        raise ValueError(f"--task {job.task}: no shipped model yet (shipped: "
                         f"{', '.join(modelstore.DEFAULT_RESTORERS)}); pass --model")
    model = job.model or modelstore.DEFAULT_RESTORERS[job.task]
    loaded = modelstore.load_model(model, job.storage)
    if loaded.kind != "restore":
        raise ValueError(f"--model {model}: a {loaded.kind} model, restore needs a restoration model")
    fs, base, keys, skipped = _list_images(job)
    ext = "." + ("jpg" if job.format in ("jpg", "jpeg") else job.format)
    opts, threads = _pool(job)
    ds = _read_images(fs, base, keys).map_batches(
        RestoreImages, fn_constructor_args=(model, job.storage, threads, job.gpus, job.output, job.format,
                                            _collisions(keys, ext)),
        fn_constructor_kwargs={"base": base}, batch_size=job.batch_size, batch_format="numpy", **opts)
    return _drain("restore", job, ds, len(keys), skipped, [loaded.fingerprint], latents=False, t0=t0)


def generate(job: JobConfig) -> JobSummary:
    """job.count new images decoded from latents sampled from the codec's prior, as PNGs."""
    import ray.data

    t0 = time.time()
    _init_ray()
    model = job.model or modelstore.DEFAULT_CODEC
    loaded = modelstore.load_model(model, job.storage)
    if "prior_basis" not in loaded.extra:
        raise ValueError(f"--model {model}: has no generative prior (train it with `aeflow train --task codec`)")
    if job.count < 1:
        raise ValueError("--count must be at least 1")
    opts, threads = _pool(job)
    ds = ray.data.range(job.count).map_batches(lambda b: {"id": b["id"] + job.seed}, batch_format="numpy")
    ds = ds.map_batches(
        GenerateImages, fn_constructor_args=(model, job.storage, threads, job.gpus, job.output, "png", frozenset()),
        batch_size=job.batch_size, batch_format="numpy", **opts)
    return _drain("generate", job, ds, job.count, [], [loaded.fingerprint], latents=False, t0=t0)
