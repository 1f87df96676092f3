"""How many CPUs each Ray actor (model actor, Ray Train worker) reserves, so that Ray Data's own 1-CPU
tasks (listing, reading, crops) always find a CPU somewhere (RAY-NOTES: deadlock), and how many torch
threads a CPU model actor runs."""

from __future__ import annotations

import math
import os

# A CPU model actor runs two torch threads per CPU of its share, and its OpenMP threads sleep while they
# wait instead of spinning (libgomp reads OMP_WAIT_POLICY at start-up). While one actor decodes a file,
# entropy-codes or waits on Ray, the other's threads take the cores it leaves; spinning threads would
# burn them instead. On 2 cores, two actors of two threads ran a 1200-image compress in 21.1-22.5 s
# against 23.0-24.6 s with one thread each (7 jobs each way, alternating); decompress gained 7%, restore
# 2-3%; three or four threads per CPU gained nothing more; on one CPU, one actor of two threads took
# 14.8-15.0 s against 16.2 for 400 images (benchmarks/RESULTS.md, eighth session). The model alone, with
# nothing beside it, is fastest with one spinning thread per core: benchmarks/throughput.py measures it so.
THREADS_PER_CPU = 2


def cpu_nodes() -> int:
    """Alive nodes of the connected Ray cluster that have CPUs (the head counts)."""
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0) or 1


def cpu_per_actor(cpus: float, nodes: int, actors: int, floor: float = 0.0) -> float:
    """CPUs per actor such that, wherever Ray places the actors, some node keeps a whole CPU free.

    The actors together take at most cpus - nodes: were every node left with less than one CPU, less than
    `nodes` would be left in all. Keeping one CPU in total is not enough on a cluster: four 0.75-CPU
    actors on two 2-CPU nodes leave half a CPU on each, and the job waits forever (tests/test_cluster.py).
    On a 1-CPU machine this is 0: the actor shares the CPU. Ray Train's bundles cannot be all zero, so
    training passes a floor, which there leaves 0.99 CPU: see cpu_per_data_task."""
    return round(min(1.0, max(floor, (cpus - nodes) / actors)), 4)


def cpu_per_data_task(cpus: float, nodes: int, reserved: float) -> float:
    """CPUs for each of Ray Data's tasks beside actors that reserve `reserved` CPUs in all: 1 while some
    node keeps a whole CPU (cpu_per_actor sees to it), else what is left per node (a 1-CPU Ray Train
    keeps 0.99), so that a task always fits."""
    left = (cpus - reserved) / nodes
    return 1.0 if left >= 1 else max(0.01, math.floor(left * 1e4) / 1e4)  # down: a task must fit


def threads_per_actor(cpus: float, actors: int) -> int:
    """torch threads for each of `actors` CPU model actors sharing `cpus` CPUs (see THREADS_PER_CPU)."""
    return THREADS_PER_CPU * max(1, int(cpus // actors))


def actor_env() -> dict[str, str]:
    """Environment variables for the model actors' processes: OpenMP threads that sleep when they wait,
    unless the user's environment says otherwise."""
    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
