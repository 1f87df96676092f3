"""The C heap under PyTorch's CPU tensors (glibc malloc): keep freed memory for the next image, and give
it back to the OS when asked.

A 512x384 decode allocates a few tensors of 12.6 MB per layer. By default glibc mostly returns such blocks
to the OS as soon as they are freed (mmap for large blocks, trimming the heap's top), so the next image
faults the same memory in again: 12,000-14,500 page faults per image in a process's main thread, where a
decode took 119-128 ms of CPU against 77-93 ms with the settings below (one torch thread;
benchmarks/heap_settings.py, benchmarks/RESULTS.md). A model run in a main thread gains (the CLI's
in-process work, plain training and the benchmark's bare model run there).

Ray Data calls the model actors from worker threads (Ray Train runs the training loop in one too), and glibc
gives each thread an arena of its own, made of heaps of at most 64 MB: there a larger tensor is mapped
afresh on every allocation whatever the settings above, and heaps are unmapped as they empty. The restorer
in a worker thread faulted 26,626 pages per 512x384 image, 0 with one arena (tests/test_heap.py), and a
restore actor's calls took 187-208 ms of CPU per image against 176-182 ms with it; a codec training step (16
crops of 128x128) in a worker thread 320-323 ms against 275-282 (benchmarks/RESULTS.md, seventh session).
ONE_ARENA, in the environment of such a process from its start, puts every thread on the main heap, where
the settings above hold. A long job's growth stays bounded by give_back(), which the model actors call now
and then."""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling on 64-bit: blocks up to this come from the heap and are reused
TRIM_THRESHOLD = 2**30  # the heap's free top is handed back only past this, or by give_back()
# For processes that run a model outside their main thread (model actors, Ray Train workers): glibc reads it
# at start-up
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}


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
