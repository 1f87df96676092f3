"""The resume ledger (which inputs a job has finished, durable as it goes), the plan of a run (what is left
to do), and the driver's drain of result rows into the ledger, errors.parquet and manifest.json."""

from __future__ import annotations

import dataclasses
import json
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import aeflow
from aeflow import storage
from aeflow.pipeline.config import JobConfig, JobFailed, JobSummary
from aeflow.pipeline.schemas import ERRORS_SCHEMA, LATENTS_SCHEMA, LEDGER_COLUMNS, PROGRESS_SCHEMA

ROWS_PER_FILE = 100_000


class Ledger:
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
            if not set(LEDGER_COLUMNS) <= set(table.column_names):
                raise ValueError(f"{part}: not an aeflow ledger (it lacks {', '.join(LEDGER_COLUMNS)}); "
                                 "use --overwrite")
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
class Plan:
    """What a run will do: every input's identity, which are still to do, and where results go."""

    name: str
    job: JobConfig
    identity: dict[str, tuple[int, str]]  # every input key -> (size, tag)
    todo: list[str]
    done_before: int
    skipped: list[str]
    settings: str
    models: list[str]
    ledger: Ledger
    pool: dict = field(default_factory=dict)  # how the model actors ran, for the manifest


def plan(name: str, job: JobConfig, identity: dict[str, tuple[int, str]], skipped: list[str],
         settings: str, models: list[str]) -> Plan:
    """Open the output's ledger and decide which inputs still need work (all of them with resume off)."""
    out_fs, out_root = storage.filesystem(job.output, job.storage)
    out_fs.makedirs(out_root, exist_ok=True)
    if name == "compress":
        ledger = Ledger(out_fs, out_root, "latents-", LATENTS_SCHEMA, job)
    else:
        ledger = Ledger(out_fs, storage.join(out_root, "_progress"), "part-", PROGRESS_SCHEMA, job)
    if job.resume:
        done = ledger.finished(identity, settings)
    else:
        ledger.clear()
        done = set()
    todo = [k for k in identity if k not in done]
    return Plan(name, job, identity, todo, len(identity) - len(todo), skipped, settings, models, ledger)


def _with_ledger_columns(table: pa.Table, plan: Plan) -> pa.Table:
    ids = [plan.identity[p] for p in table.column("path").to_pylist()]
    return (table.append_column("source_bytes", pa.array([i[0] for i in ids], pa.int64()))
            .append_column("source_tag", pa.array([i[1] for i in ids], pa.string()))
            .append_column("settings", pa.array([plan.settings] * len(ids), pa.string())))


def drain(plan: Plan, ds, t0: float) -> JobSummary:
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
