"""How a job's processes use the machine: Ray start-up, the model actors' pool (CPUs, torch threads, stage
layout), and the C heap under PyTorch's CPU tensors. Ray Train's workers are sized with the same rules."""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass, field

# A CPU model actor runs two torch threads per CPU of its share, and its OpenMP threads sleep while they wait
# instead of spinning (libgomp reads OMP_WAIT_POLICY at start-up): while one actor decodes a file,
# entropy-codes or waits on Ray, the other's threads take the cores it leaves.
THREADS_PER_CPU = 2

# glibc's mallopt parameters (<malloc.h>). Large blocks up to MMAP_THRESHOLD come from the heap and are reused
# for the next image instead of being mapped and faulted in afresh; the heap's free top is handed back only
# past TRIM_THRESHOLD, or by give_back().
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30
# For processes that run a model outside their main thread (model actors, Ray Train workers), read by glibc at
# start-up: every thread allocates from the main heap, where the settings above hold, instead of an arena of
# its own that maps each large tensor afresh.
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}


# --- the heap ---------------------------------------------------------------------------------------

def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return None


def keep_freed_memory() -> None:
    """Called once in each process that runs a model (model actors, training, the CLI); a no-op without glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def give_back() -> None:
    """Hand the heaps' free memory back to the OS (malloc_trim); a no-op without glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def rss_mb() -> float:
    """This process's resident memory in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


# --- CPUs per actor ---------------------------------------------------------------------------------

def cpu_nodes() -> int:
    """Alive nodes of the connected Ray cluster that have CPUs (the head counts)."""
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0) or 1


def cpu_per_actor(cpus: float, nodes: int, actors: int, floor: float = 0.0) -> float:
    """CPUs per actor such that, wherever Ray places the actors, some node keeps a whole CPU free for Ray
    Data's tasks (else the job waits forever for one).

    The actors together take at most cpus - nodes: were every node left with less than one CPU, less than
    `nodes` would be left in all. On a 1-CPU machine this is 0: the actor shares the CPU. Ray Train's
    bundles cannot be all zero, so training passes a floor (see cpu_per_data_task)."""
    return round(min(1.0, max(floor, (cpus - nodes) / actors)), 4)


def cpu_per_data_task(cpus: float, nodes: int, reserved: float) -> float:
    """CPUs for each of Ray Data's tasks beside actors that reserve `reserved` CPUs in all: 1 while some
    node keeps a whole CPU (cpu_per_actor sees to it), else what is left per node, so that a task always fits."""
    left = (cpus - reserved) / nodes
    return 1.0 if left >= 1 else max(0.01, math.floor(left * 1e4) / 1e4)  # down: a task must fit


def threads_per_actor(cpus: float, actors: int) -> int:
    """torch threads for each of `actors` CPU model actors sharing `cpus` CPUs (see THREADS_PER_CPU)."""
    return THREADS_PER_CPU * max(1, int(cpus // actors))


def actor_env() -> dict[str, str]:
    """Environment of the model actors' processes: one malloc arena, and OpenMP threads that sleep when they
    wait unless the user's environment says otherwise."""
    return {**ONE_ARENA, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


# --- a job's pool -----------------------------------------------------------------------------------

def init_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(logging_level="warning")


@dataclass
class Pool:
    """How a job's operators run: the model actors' map_batches options and torch threads, whether reading
    and writing are operators of their own (split) and their tasks' options, and a record for the manifest."""

    actor_options: dict
    threads: int
    split: bool
    task_options: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)


def pool(actors: int, gpus: float, threads: int, split: bool) -> Pool:
    """The pool for `actors` model actors (0: one per CPU, or per GPU) of `gpus` GPUs each, sized to the
    connected cluster so that Ray Data's tasks always keep a CPU. Actors that hold GPUs always run the model
    alone, fed and drained by CPU tasks (split), so the GPU does not wait on decoding and encoding."""
    import ray
    import ray.data

    cluster = ray.cluster_resources()
    cpus, nodes = cluster.get("CPU", 1), cpu_nodes()
    split = split or gpus > 0
    if gpus > 0:
        size = actors or max(1, int(cluster.get("GPU", 0) / gpus))
        per_cpu = 1.0
        threads = threads or max(1, int(cpus // size))
    else:  # one actor per CPU, of two torch threads: one actor's threads fill the cores the other leaves
        size = actors or max(1, int(cpus))
        per_cpu = cpu_per_actor(cpus, nodes, size)
        threads = threads or threads_per_actor(cpus, size)
    # Two calls per actor at once, the model used by one at a time (actors.ModelActor.model_lock): a fused
    # actor decodes, encodes and writes one batch while the other's is in the model. Ray Data places actors
    # with DataContext.scheduling_strategy, "SPREAD" by default: on a cluster they go to different nodes.
    strategy = ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=2,
                                          enable_true_multi_threading=True)
    env = actor_env()  # Ray merges it into the job's own runtime environment
    options = {"compute": strategy, "num_cpus": per_cpu, "runtime_env": {"env_vars": env}}
    if gpus > 0:
        options["num_gpus"] = gpus
    tasks = {"num_cpus": cpu_per_data_task(cpus, nodes, size * per_cpu)} if split else {}
    record = {"actors": size, "torch_threads_per_actor": threads, "cpus_per_actor": per_cpu,
              "gpus_per_actor": gpus, "actor_env": env, "stages": "split" if split else "fused"}
    return Pool(options, threads, split, tasks, record)
