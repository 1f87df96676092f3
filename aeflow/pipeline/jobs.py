"""The four jobs. Each checks its settings on the driver (a bad --model fails here, not once per row), says
what its inputs are and which stages turn them into outputs, and hands that to run_job: plan against the
resume ledger -> start Ray -> size the pool -> map the stages -> drain the results."""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

import aeflow
from aeflow import codec, generation, images, modelstore, storage
from aeflow.pipeline import ledger, runtime, schemas, stages
from aeflow.pipeline.actors import DecodeLatents, EncodeImages, GenerateImages, ModelActor, RestoreImages, VaryImages
from aeflow.pipeline.config import JobConfig, JobSummary

# Ray Data counts an operator's inputs when it plans the job, before the streaming repartition of the keys or
# latents into batch-sized blocks; its warning that the pool "only received 1 input(s)" is then wrong.
warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)


@dataclass
class Stages:
    """A job's operators: its model actor class and that class's own arguments, and the keyword arguments
    of stages.read_images (the job reads image files) and stages.write_images (it writes them)."""

    actor: type[ModelActor]
    params: dict
    read: dict | None = None
    write: dict | None = None


@dataclass
class Spec:
    """What one job hands run_job: its inputs' identities, the settings that shape its outputs, how the
    inputs still to do become a dataset, and the stages that map it."""

    name: str
    identity: dict[str, tuple[int, str]]
    skipped: list[str]
    settings: str
    models: list[str]
    source: Callable[[list[str]], object]
    stages: Stages


def run_job(job: JobConfig, spec: Spec, t0: float) -> JobSummary:
    """The skeleton every job runs; nothing starts on the cluster when a previous run finished everything."""
    plan = ledger.plan(spec.name, job, spec.identity, spec.skipped, spec.settings, spec.models)
    ds = None
    if plan.todo:
        runtime.init_ray()
        pool = runtime.pool(job.concurrency, job.gpus, job.threads, job.split_stages)
        plan.pool = pool.record
        ds = _map_stages(spec.source(plan.todo), job, spec.stages, pool)
    return ledger.drain(plan, ds, t0)


def _map_stages(ds, job: JobConfig, st: Stages, pool: runtime.Pool):
    """The fused actor (reads, runs the model, writes), or reading, the model and writing as operators of their
    own. A split model stage takes the reader's batches whole, so a batch holds the same images either way."""
    actor = {"options": job.storage, "threads": pool.threads, "gpus": job.gpus, **st.params}
    batches = {"batch_format": "numpy", "batch_size": job.batch_size}
    if not pool.split:
        return ds.map_batches(st.actor, fn_constructor_kwargs={**actor, "read": st.read, "write": st.write},
                              **batches, **pool.actor_options)
    if st.read is not None:
        ds = ds.map_batches(stages.read_stage, fn_kwargs={"options": job.storage, **st.read}, **batches,
                            **pool.task_options)
        batches = {**batches, "batch_size": None}
    ds = ds.map_batches(st.actor, fn_constructor_kwargs=actor, **batches, **pool.actor_options)
    if st.write is not None:
        ds = ds.map_batches(stages.write_stage, fn_kwargs={"options": job.storage, **st.write},
                            batch_format="numpy", batch_size=None, **pool.task_options)
    return ds


def _list_images(job: JobConfig) -> images.ImageListing:
    """The job's input images (from job.listing when given); the listing is saved as
    <output>/_listing.parquet for later jobs."""
    found = images.list_images(job.input, job.storage, job.listing)
    out_fs, out_root = storage.filesystem(job.output, job.storage)
    out_fs.makedirs(out_root, exist_ok=True)
    storage.write_listing(out_fs, storage.join(out_root, "_listing.parquet"), found.files)
    return found


def _keys(batch_size: int) -> Callable[[list[str]], object]:
    """The input keys still to do, as a dataset of batch-sized blocks: the stages read the files themselves
    (storage.read_files), one GET each. Ray's read_binary_files would first look up every path again on the
    driver (a HEAD per object, or a re-listing of their prefix: the listing the job was given to avoid)."""
    def source(todo: list[str]):
        import ray.data

        return ray.data.from_arrow(pa.table({"path": pa.array(todo, pa.string())})).repartition(
            target_num_rows_per_block=batch_size)

    return source


def _load(model: str, job: JobConfig, kind: str, needs: str) -> modelstore.LoadedModel:
    loaded = modelstore.load_model(model, job.storage)
    if loaded.kind != kind:
        raise ValueError(f"--model {model}: a {loaded.kind} model, {needs}")
    return loaded


def compress(job: JobConfig) -> JobSummary:
    """Images under job.input -> latents Parquet (+ errors.parquet, manifest.json) under job.output."""
    t0 = time.time()
    found = _list_images(job)
    model = job.model or modelstore.DEFAULT_CODEC
    loaded = _load(model, job, "codec", "compress needs a codec")
    if job.target_bpp <= 0 and job.target_psnr <= 0:
        job = replace(job, quality=codec.resolve_quality(job.quality, loaded.config["lambdas"]))
    rate = (f"psnr{job.target_psnr:g}" if job.target_psnr > 0 else
            f"bpp{job.target_bpp:g}" if job.target_bpp > 0 else f"q{job.quality}")
    return run_job(job, Spec(
        "compress", found.images, found.others, f"{loaded.fingerprint}/format{codec.FORMAT_VERSION}/{rate}",
        [loaded.fingerprint], _keys(job.batch_size),
        Stages(EncodeImages, {"model": model, "quality": job.quality, "target_bpp": job.target_bpp,
                              "target_psnr": job.target_psnr,
                              "precision": job.precision, "compile": job.compile},
               read={"source": job.input, "base": found.base})), t0)


@contextlib.contextmanager
def _parquet_reader():
    """Read the latents with Ray Data's V1 Parquet reader: the default, V2, starts actors only to read
    footers, a worker process each, whose start-up costs the model CPU on a small cluster; V1 samples
    footers with plain tasks. A user's RAY_DATA_USE_DATASOURCE_V2 wins. Scoped to the read_parquet call,
    which reads the setting when called."""
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
    t0 = time.time()
    fs, root = storage.filesystem(job.input, job.storage)
    files = schemas.latents_files(fs, root)
    index = schemas.read_latents_index(fs, files)
    keys, models, sizes = (index.column(c).to_pylist() for c in ("path", "model", "bytes"))
    if len(set(keys)) != len(keys):
        raise ValueError(f"{job.input}: the latents hold some paths twice; decompress refuses to pick one")
    if job.model:
        modelstore.load_model(job.model, job.storage)  # a bad --model fails here, not per row
    identity = {k: (b, m) for k, b, m in zip(keys, sizes, models)}

    def source(todo: list[str]):
        import ray.data

        with _parquet_reader():
            ds = ray.data.read_parquet(files, filesystem=storage.arrow_filesystem(fs)).select_columns(
                ["path", "width", "height", "model", "bitstream"])
        if len(todo) < len(identity):
            wanted = pa.array(todo, pa.string())
            ds = ds.map_batches(lambda t: t.filter(pc.is_in(t["path"], value_set=wanted)), batch_format="pyarrow")
        # A latents file is one block, and a block goes to one actor: cut it into batch-sized blocks so that
        # every actor of the pool gets work (streaming, no shuffle).
        return ds.repartition(target_num_rows_per_block=job.batch_size)

    ext = stages.output_ext(job.format)
    return run_job(job, Spec(
        "decompress", identity, [], f"{job.model or 'by-fingerprint'}/{job.format}", sorted(set(models)), source,
        Stages(DecodeLatents, {"model": job.model, "out_ext": ext, "taken": stages.collisions(keys, ext),
                               "precision": "auto" if job.fast_decode else "fp32", "compile": job.compile},
               write={"output": job.output, "fmt": job.format})), t0)


def restore(job: JobConfig) -> JobSummary:
    """Images -> restored images at <output>/<path> (extension replaced by the output format)."""
    t0 = time.time()
    task = "deblur" if job.task == "enhance" else job.task  # enhance: the deblurrer, applied with --strength
    if not job.model and task not in modelstore.DEFAULT_RESTORERS:
        raise ValueError(f"--task {job.task}: no shipped model yet (shipped: "
                         f"{', '.join(modelstore.DEFAULT_RESTORERS)}); pass --model")
    model = job.model or modelstore.DEFAULT_RESTORERS[task]
    loaded = _load(model, job, "restore", "restore needs a restoration model")
    if job.sigma >= 0 and not loaded.config.get("noise_map"):
        raise ValueError(f"--sigma: model {model} is blind (it takes no noise level); --sigma needs a "
                         f"noise-map denoiser such as the shipped {modelstore.DEFAULT_RESTORERS['denoise']}")
    found = _list_images(job)
    forced = f"/sigma{job.sigma:g}" if job.sigma >= 0 else ""
    ext = stages.output_ext(job.format)
    return run_job(job, Spec(
        "restore", found.images, found.others, f"{loaded.fingerprint}/{job.format}/s{job.strength:g}{forced}",
        [loaded.fingerprint], _keys(job.batch_size),
        Stages(RestoreImages, {"model": model, "tile": job.tile, "strength": job.strength, "sigma": job.sigma,
                               "precision": job.precision, "compile": job.compile},
               read={"source": job.input, "base": found.base, "out_ext": ext,
                     "taken": stages.collisions(list(found.images), ext)},
               write={"output": job.output, "fmt": job.format})), t0)


def generate(job: JobConfig) -> JobSummary:
    """From the codec's hyperprior: --variations of each image under job.input, an --interpolate sequence
    between two images (on the driver), or --count unconditional samples; PNGs under job.output."""
    t0 = time.time()
    modes = [bool(job.input), bool(job.interpolate), job.count > 0]
    if sum(modes) != 1:
        raise ValueError("generate: give one of --input (with --variations), --interpolate A B, or --count")
    model = job.model or modelstore.DEFAULT_CODEC
    loaded = _load(model, job, "codec", "generate samples a codec's hyperprior")
    level = generation.check_level(loaded, job.quality)
    if job.temperature < 0:
        raise ValueError(f"--temperature {job.temperature:g}: must be 0 or more")
    if job.interpolate:
        return _interpolate(job, loaded, level, t0)
    settings = f"{loaded.fingerprint}/q{level + 1}/t{job.temperature:g}"
    if job.input:
        if job.variations < 1:
            raise ValueError("--input: say how many variations of each image with --variations K (K >= 1)")
        found = _list_images(job)
        return run_job(job, Spec(
            "generate", found.images, found.others, f"{settings}/k{job.variations}/seed{job.seed}",
            [loaded.fingerprint], _keys(job.batch_size),
            Stages(VaryImages, {"model": model, "level": level, "variations": job.variations,
                                "temperature": job.temperature, "seed": job.seed},
                   read={"source": job.input, "base": found.base, "out_ext": ".png",
                         "taken": stages.collisions(list(found.images), ".png")},
                   write={"output": job.output, "fmt": "png"})), t0)
    if len(job.size) != 2 or min(job.size) < 16:
        raise ValueError(f"--size {','.join(map(str, job.size))}: width,height, each at least 16")
    seeds = {GenerateImages.key(job.seed + i): job.seed + i for i in range(job.count)}

    def source(todo: list[str]):
        import ray.data

        return ray.data.from_items([{"id": seeds[k]} for k in todo])

    width, height = job.size
    return run_job(job, Spec(
        "generate", {k: (0, "") for k in seeds}, [], f"{settings}/{width}x{height}", [loaded.fingerprint], source,
        Stages(GenerateImages, {"model": model, "level": level, "size": (height, width),
                                "temperature": job.temperature}, write={"output": job.output, "fmt": "png"})), t0)


def _interpolate(job: JobConfig, loaded: modelstore.LoadedModel, level: int, t0: float) -> JobSummary:
    """The --interpolate sequence, decoded here (a few images) as <output>/interpolate-NN.png."""
    ends = []
    for uri in job.interpolate:
        fs, path = storage.filesystem(uri, job.storage)
        data = storage.read_files(fs, [path])[0]
        if isinstance(data, BaseException):
            raise FileNotFoundError(f"--interpolate {uri}: cannot be read ({type(data).__name__}: {data})")
        try:
            ends.append(images.decode_image(data)[0])
        except images.ImageError as e:
            raise ValueError(f"--interpolate {uri}: {e}") from None
    frames = generation.interpolate(loaded, ends[0], ends[1], job.steps, level)
    fs, root = storage.filesystem(job.output, job.storage)
    fs.makedirs(root, exist_ok=True)
    keys = [f"interpolate-{i:02d}.png" for i in range(len(frames))]
    for key, frame in zip(keys, frames):
        storage.write_bytes(fs, storage.join(root, key), images.encode_png(frame))
    manifest = {"job": "generate", "aeflow_version": aeflow.__version__, "models": [loaded.fingerprint],
                "interpolate": list(job.interpolate), "level": level + 1, "outputs": keys,
                "seconds": round(time.time() - t0, 3)}
    storage.write_bytes(fs, storage.join(root, "manifest.json"), json.dumps(manifest, indent=1).encode())
    return JobSummary("generate", 2, 0, len(frames), 0, 0, time.time() - t0, job.output, [], manifest)
