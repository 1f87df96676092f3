"""Throughput: megapixels per second of (a) the bare model in one process (one torch thread per core, the
OpenMP default: the model alone is fastest so here, faster than with the actors' two threads per core or
their sleeping OpenMP threads; no Ray, no I/O), (b) the full aeflow pipeline on local files, (c) the
same from a moto S3 server on loopback (the bare model runs before and after the two jobs and its mean
is used: this VM's speed drifts); also the bare model split over one process per actor with the actors'
threads and environment (bare_split: the pipeline's own layout without Ray or I/O),
for compress, decompress and restore over the same real photos; the ratios (b)/(a), (c)/(a); peak
RSS of the driver and of Ray workers; each job's start-up (seconds to its first result batch, from its
manifest) and the ratios after it. Prints JSON.

The photos are written as JPEG (quality 95, as archives hold them) or, with --input-format png, as PNG.
The moto S3 server runs in a process of its own (as an S3 endpoint would: not sharing the driver's GIL),
on the same two cores. Before the timed jobs a 4-image compress starts Ray Data's own per-cluster actors
(stats, autoscaling coordinator), which a long-lived cluster already has; every timed job still starts
its own model actors (their start-up is in its time).

Usage: python benchmarks/throughput.py [--images 2400] [--decompress-images 1200] [--restore-images 300]
       [--size 512x384] [--tasks compress,decompress,restore]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from aeflow import codec, images, metrics, modelstore, pipeline, restoration, storage
from aeflow.pipeline import runtime
from aeflow.samples import photo_crops


class WorkerRSS:
    """Samples the resident memory of Ray worker processes (and the peak) while a job runs."""

    def __init__(self, total: bool = False):
        self.peak_kb = 0
        self.total = total  # peak_kb: of the summed RSS of all workers, else of the largest one
        self.peak_one_kb = 0  # the largest single worker, in either case
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            sizes = []
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    if not (d / "cmdline").read_bytes().startswith(b"ray::"):
                        continue
                    for line in (d / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            sizes.append(int(line.split()[1]))
                except OSError:
                    pass
            if sizes:
                self.peak_kb = max(self.peak_kb, sum(sizes) if self.total else max(sizes))
                self.peak_one_kb = max(self.peak_one_kb, max(sizes))
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@torch.inference_mode()
def bare(task: str, arrays: list[np.ndarray], batch: int, threads: int) -> float:
    """Seconds for the model alone (with bitstream packing for compress, which the job also does), with the
    heap settings that the model actors use (aeflow.pipeline.runtime)."""
    runtime.keep_freed_memory()
    torch.set_num_threads(threads)
    loaded = modelstore.load_model("denoise-default" if task == "restore" else "codec-default")
    model = loaded.module
    streams = codec.encode_images(loaded, arrays[:batch]) if task == "decompress" else None
    t0 = time.time()
    for i in range(0, len(arrays), batch):
        group = arrays[i:i + batch]
        if task == "compress":
            codec.encode_images(loaded, group)
        elif task == "decompress":
            for j in range(len(group)):
                codec.decode_bitstream(loaded, streams[j % len(streams)])
        else:
            sigmas = [metrics.noise_sigma(a) for a in group]  # the restore actor's blind estimates
            for y in restoration.restore(model, images.to_tensor(group), sigmas):
                images.to_uint8(y)
    return time.time() - t0


def _bare_worker(task: str, arrays: list[np.ndarray], batch: int, threads: int, start, out) -> None:
    """One process of bare_split: waits for the others, then times its share (bare() sets the threads)."""
    bare(task, arrays[:1], batch, threads)  # load the model, warm up
    start.wait()
    out.put(bare(task, arrays, batch, threads))


def bare_split(task: str, arrays: list[np.ndarray], batch: int, procs: int, threads: int,
               env: dict[str, str]) -> float:
    """Seconds for the model alone in `procs` processes of `threads` torch threads at once, each with a
    share of the images and the actors' environment: the layout of the pipeline's actors, without Ray or I/O."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_bare_worker, args=(task, arrays[i::procs], batch, threads, start, out))
               for i in range(procs)]
    before = dict(os.environ)
    os.environ.update(env)  # spawned processes start with this environment (libgomp reads it then)
    try:
        for p in workers:
            p.start()
    finally:
        os.environ.clear()
        os.environ.update(before)
    seconds = max(out.get() for _ in workers)
    for p in workers:
        p.join()
    return seconds


def run_job(task: str, src: str, work: str, batch: int, listing: str = "") -> tuple[float, int, float]:
    """Seconds of one pipeline run (Ray already up), the peak worker RSS in kB and the seconds until the
    first batch of results reached the driver (the job's start-up). Decompress reads <work>/latents-sub
    (see subset_latents)."""
    job = {"compress": (src, f"{work}/latents"), "decompress": (f"{work}/latents-sub", f"{work}/decoded"),
           "restore": (src, f"{work}/restored")}[task]
    cfg = pipeline.JobConfig(input=job[0], output=job[1], batch_size=batch, resume=False, listing=listing)
    with WorkerRSS() as rss:
        t0 = time.time()
        summary = getattr(pipeline, task)(cfg)
        return time.time() - t0, rss.peak_kb, summary.manifest["first_result_seconds"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def subset_latents(work: str, n: int) -> None:
    """<work>/latents-sub/latents-00000.parquet: the first n rows of compress's latents (sorted by key)."""
    import pyarrow.parquet as pq

    fs, root = storage.filesystem(work)
    arrow_fs = storage.arrow_filesystem(fs)
    files = pipeline.latents_files(fs, storage.join(root, "latents"))
    table = pq.read_table(files, filesystem=arrow_fs).sort_by("path").slice(0, n)
    fs.makedirs(storage.join(root, "latents-sub"), exist_ok=True)
    with fs.open(storage.join(root, "latents-sub/latents-00000.parquet"), "wb") as f:
        pq.write_table(table, f)


def _serve_s3(port: int, stop) -> None:
    """The moto S3 server, in a process of its own until `stop` is set."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stop.wait()
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2400)  # >= 60 s of bare compress work here
    parser.add_argument("--size", default="512x384")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tasks", default="compress,decompress,restore")  # decompress alone compresses first, untimed
    parser.add_argument("--restore-images", type=int, default=300)  # the first N: >= 60 s of restore work
    parser.add_argument("--decompress-images", type=int, default=1200)  # the first N: >= 60 s of decode work
    parser.add_argument("--input-format", default="jpg", choices=["jpg", "png"])
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    arrays = photo_crops(args.images, w, h)
    mpix = args.images * w * h / 1e6
    tmp = tempfile.mkdtemp(prefix="aeflow-tp-")
    src = f"{tmp}/photos"
    os.makedirs(src)
    for i, a in enumerate(arrays):
        if args.input_format == "jpg":
            Image.fromarray(a).save(f"{src}/{i:05d}.jpg", quality=95)
        else:
            Image.fromarray(a).save(f"{src}/{i:05d}.png", compress_level=1)
    if args.input_format == "jpg":  # the bare model sees the pixels the pipeline decodes
        arrays = [np.asarray(Image.open(f"{src}/{i:05d}.jpg").convert("RGB")) for i in range(len(arrays))]

    import multiprocessing as mp

    port = 24000 + os.getpid() % 5000
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    stop_s3 = mp.get_context("spawn").Event()
    server = mp.get_context("spawn").Process(target=_serve_s3, args=(port, stop_s3), daemon=True)
    server.start()
    fs, _ = storage.filesystem("s3://bench")
    for _ in range(100):  # until the server answers
        try:
            fs.mkdir("bench")
            break
        except OSError:
            time.sleep(0.2)
    fs.put(src, "bench/photos", recursive=True)

    cpus = os.cpu_count()
    ray.init(num_cpus=cpus, logging_level="error", log_to_driver=False)
    warm = f"{tmp}/warmup.txt"
    Path(warm).write_text("\n".join(sorted(os.listdir(src))[:4]) + "\n")
    t0 = time.time()
    pool = pipeline.compress(pipeline.JobConfig(input=src, output=f"{tmp}/warmup", listing=warm)).manifest["pool"]
    warmup_s = time.time() - t0
    actors, threads = pool["actors"], pool["torch_threads_per_actor"]
    results = {}
    for task in args.tasks.split(","):
        n = {"restore": args.restore_images, "decompress": args.decompress_images}.get(task, args.images)
        n = min(n, args.images)
        mpix = n * w * h / 1e6
        listing = ""
        if n < args.images:  # the pipeline reads a listing of the first n photos
            listing = f"{tmp}/listing-{n}.txt"
            Path(listing).write_text("\n".join(sorted(os.listdir(src))[:n]) + "\n")
        if task == "decompress":
            if "compress" not in results:  # decompress reads compress's latents: make them (untimed)
                run_job("compress", src, f"{tmp}/local", args.batch_size, listing)
                run_job("compress", "s3://bench/photos", "s3://bench/out", args.batch_size, listing)
            subset_latents(f"{tmp}/local", n)
            subset_latents("s3://bench/out", n)
        a = bare(task, arrays[:n], args.batch_size, cpus)
        b, b_rss, b_first = run_job(task, src, f"{tmp}/local", args.batch_size, listing)
        server_cpu = cpu_seconds(server.pid)
        c, c_rss, c_first = run_job(task, "s3://bench/photos", "s3://bench/out", args.batch_size, listing)
        server_cpu = cpu_seconds(server.pid) - server_cpu  # the S3 server's share of the two cores
        a2 = bare(task, arrays[:n], args.batch_size, cpus)  # again: this machine's speed drifts
        a_runs, a = (a, a2), (a + a2) / 2
        split = bare_split(task, arrays[:n], args.batch_size, actors, threads, pool["actor_env"])
        left = (n - actors * args.batch_size) / n  # the share of images after every actor's first batch
        results[task] = {
            "images": n, "megapixels": round(mpix, 2),
            "bare_mpix_s": round(mpix / a, 3), "local_mpix_s": round(mpix / b, 3), "s3_mpix_s": round(mpix / c, 3),
            "local_over_bare": round(a / b, 3), "s3_over_bare": round(a / c, 3),
            "bare_split_mpix_s": round(mpix / split, 3),
            "local_over_bare_split": round(split / b, 3), "s3_over_bare_split": round(split / c, 3),
            # After start-up (what a long job converges to): the time after the first result batch against
            # the bare model's time for the images left after every actor's first batch (conservative: the
            # other actors' first batches, counted as done, partly run after it)
            "local_over_bare_after_start": round(a * left / (b - b_first), 3),
            "s3_over_bare_after_start": round(a * left / (c - c_first), 3),
            "first_result_s": {"local": round(b_first, 1), "s3": round(c_first, 1)},
            "seconds": {"bare": round(a, 1), "bare_before_after": [round(v, 1) for v in a_runs],
                        "bare_split": round(split, 1), "local": round(b, 1), "s3": round(c, 1)},
            "peak_worker_rss_mb": round(max(b_rss, c_rss) / 1024),
            "s3_server_cpu_s": round(server_cpu, 1),  # moto's CPU seconds during the S3 job (same cores)
        }
        print(json.dumps({task: results[task]}), file=sys.stderr, flush=True)  # kept if a later task fails
    stop_s3.set()
    server.join()
    print(json.dumps({
        "machine": f"{platform.machine()}, {cpus} CPUs",
        "pipeline": f"{actors} model actors x {threads} torch threads",
        "bare": f"one process, {cpus} torch threads; bare_split: {actors} processes x {threads} threads, "
                f"{pool['actor_env']}",
        "warmup_job_s": round(warmup_s, 1), "images": args.images, "size": args.size,
        "input_format": args.input_format, "megapixels": round(args.images * w * h / 1e6, 2),
        # this process: the aeflow driver, but also every photo in memory for the bare runs (see flat_memory.py)
        "peak_driver_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tasks": results,
    }, indent=1))


if __name__ == "__main__":
    main()
