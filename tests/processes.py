"""The processes of a Ray that this process started, found through its own process tree (Ray's gcs, raylet and
workers are its descendants), never by a match over the whole machine: a test or benchmark that kills a
worker must not hit another user's Ray job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """Direct children of pid (Linux: /proc/<pid>/task/*/children); [] once it is gone."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    """Every process below pid, parents before their children."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop(0)):
            found.append(child)
            todo.append(child)
    return found


def title(pid: int) -> str:
    """A process's command line; Ray sets a worker's to ray::<actor or task> ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_workers(name: str, root: int | None = None) -> list[int]:
    """PIDs of the Ray worker processes below root (default: this process, so the Ray it started) whose
    title names `name`, e.g. "MapBatches(RestoreImages)" or "RayTrainWorker"."""
    return [p for p in descendants(root or os.getpid()) if title(p).startswith("ray::") and name in title(p)]


def kill_when(name: str, ready, timeout: float = 180) -> int:
    """Once ready() holds, SIGKILL the first of this process's Ray workers named `name`; returns its pid
    (0 if none was seen before the timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            pids = ray_workers(name)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                return pids[0]
        time.sleep(0.2)
    return 0


def kill_tree(pid: int) -> None:
    """SIGKILL a process started in a session of its own (start_new_session) and everything below it: its
    group first, then any descendant that left the group."""
    tree = descendants(pid)
    os.killpg(pid, signal.SIGKILL)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
