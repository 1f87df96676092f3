"""The tables a job writes: latents (compress's output and its resume ledger), the other jobs' progress
ledger, errors; and the rows its stages return, good ones and error rows alike."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from aeflow import codec, images, storage

# Columns that let a re-run skip finished inputs: the input's size and tag (ETag or mtime) when it was
# processed, and the settings that shaped the output (model fingerprint, format).
LEDGER_FIELDS = [("source_bytes", pa.int64()), ("source_tag", pa.string()), ("settings", pa.string())]
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
    ("psnr", pa.float64()),  # with --target-psnr: the PSNR (dB, 8-bit RGB) of the row's decode
    ("target_psnr_reached", pa.bool_()),  # with --target-psnr: false where even the top level falls short
    *LEDGER_FIELDS,
])
ENCODED_SCHEMA = pa.schema([f for f in LATENTS_SCHEMA if f.name not in dict(LEDGER_FIELDS)])  # compress's rows
STATUS_SCHEMA = pa.schema([  # the rows of the jobs that write images
    ("path", pa.string()),
    ("output", pa.string()),  # the output key; generate --variations: the pattern <stem>-v*.png of its files
    ("width", pa.int32()), ("height", pa.int32()),
    ("noise_sigma", pa.float64()),  # restore: the input's noise std (0-255): --sigma or the blind estimate
    ("seed", pa.int64()),  # generate: the sample's seed (variation v of an image: its seed + v)
])
PROGRESS_SCHEMA = pa.schema([("path", pa.string()), ("output", pa.string()), ("noise_sigma", pa.float64()),
                             ("seed", pa.int64()), *LEDGER_FIELDS])
LEDGER_COLUMNS = ("path", *(name for name, _ in LEDGER_FIELDS))  # what a re-run needs of an earlier run's rows
ERRORS_SCHEMA = pa.schema([("path", pa.string()), ("stage", pa.string()), ("error", pa.string())])
LATENTS_COLUMNS = ("path", "width", "height", "model", "bitstream", "bytes", "format_version")  # decompress needs


def error_row(path: str, stage: str, exc: BaseException | str) -> dict:
    """An error row with a one-line reason; aeflow's own errors read as they are, others keep their type."""
    if isinstance(exc, str):
        reason = exc
    elif isinstance(exc, (images.ImageError, codec.BitstreamError)):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return {"path": path, "stage": stage, "error": reason.splitlines()[0] if reason else stage}


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Result rows (good ones with `schema`'s fields, bad ones with path/stage/error) -> one table."""
    full = pa.schema(list(schema) + [f for f in ERRORS_SCHEMA if f.name not in schema.names])
    return pa.Table.from_pylist([{**{n: None for n in full.names}, **r} for r in rows], schema=full)


def latents_files(fs, root: str) -> list[str]:
    """The latents Parquet files of a compress output (a folder), or the one file given."""
    if fs.isfile(root):
        return [root]
    files = sorted(fs.glob(storage.join(root, "latents-*.parquet")))
    if not files:
        raise FileNotFoundError(f"no latents-*.parquet under {root}")
    return files


def read_latents_index(fs, files: list[str]) -> pa.Table:
    """path, model and bytes of every row, checking each file is an aeflow latents table this aeflow reads."""
    arrow_fs = storage.arrow_filesystem(fs)
    tables = []
    for f in files:
        schema = pq.read_schema(f, filesystem=arrow_fs)
        missing = [c for c in LATENTS_COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(f"{f}: not an aeflow latents table (missing columns: {', '.join(missing)})")
        table = pq.read_table(f, columns=["path", "model", "bytes", "format_version"], filesystem=arrow_fs)
        versions = set(table.column("format_version").to_pylist()) - {codec.FORMAT_VERSION}
        if versions:
            raise ValueError(f"{f}: bitstream format version {sorted(versions)} is not supported "
                             f"(this aeflow reads {codec.FORMAT_VERSION})")
        tables.append(table)
    return pa.concat_tables(tables)
