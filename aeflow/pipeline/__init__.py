"""Ray Data jobs: compress, decompress, restore, generate.

Each job is one stream: list keys -> batches of keys (Ray Data) -> read bytes -> decode -> model -> encode ->
write. Decompress reads the latents Parquet with Ray Data instead. Image outputs are written by the stages;
the small result rows (latents, status, errors) come back to the driver, which writes the latents Parquet,
the errors table and the manifest, and so accounts for every input exactly once.

    config.py   JobConfig, JobSummary          schemas.py  the tables jobs write, result and error rows
    stages.py   read + decode, encode + write   actors.py   the model stage of each job
    ledger.py   resume ledger, plan, drain      runtime.py  Ray, the actor pool, threads and heap
    jobs.py     run_job and the four jobs
"""

from aeflow.pipeline.config import JobConfig, JobFailed, JobSummary
from aeflow.pipeline.jobs import compress, decompress, generate, restore
from aeflow.pipeline.schemas import ERRORS_SCHEMA, LATENTS_SCHEMA, PROGRESS_SCHEMA, STATUS_SCHEMA, latents_files

__all__ = ["ERRORS_SCHEMA", "LATENTS_SCHEMA", "PROGRESS_SCHEMA", "STATUS_SCHEMA", "JobConfig", "JobFailed",
           "JobSummary", "compress", "decompress", "generate", "latents_files", "restore"]
