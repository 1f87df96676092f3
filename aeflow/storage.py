"""URIs (local paths or s3://bucket/prefix) -> fsspec filesystems, listing, key mirroring, atomic writes."""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage. Empty fields fall back to the standard AWS environment
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), which botocore reads itself."""

    endpoint_url: str | None = None

    def s3_kwargs(self) -> dict:
        kw: dict = {}
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kw["endpoint_url"] = endpoint
        return kw


S3_ATTEMPTS = 10  # tries per S3 request, for s3fs and PyArrow's client alike (see filesystem)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def split_uri(uri: str) -> tuple[str, str]:
    """'s3://b/p' -> ('s3', 'b/p'); '/x/y' or 'x/y' -> ('file', '/abs/x/y')."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        return "s3", uri.split("://", 1)[1].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return "file", os.path.abspath(os.path.expanduser(path))


def filesystem(uri: str, options: StorageOptions = StorageOptions()) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a URI and the path inside it."""
    scheme, path = split_uri(uri)
    if scheme == "s3":
        # A fresh instance: s3fs caches instances per kwargs, and tests restart endpoints.
        # botocore's standard retry mode backs off up to 20 s a try: an endpoint that is away for a
        # few seconds (or answers 503) costs time, not images.
        return fsspec.filesystem("s3", skip_instance_cache=True, **options.s3_kwargs(),
                                 config_kwargs={"retries": {"max_attempts": S3_ATTEMPTS, "mode": "standard"}}), path
    return fsspec.filesystem("file"), path


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pyarrow.fs.FileSystem:
    """Wrap an fsspec filesystem for Ray Data / pyarrow, so workers reach the same endpoint."""
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def list_files(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, tuple[int, str]]:
    """All files under root: key relative to root -> (size, tag), sorted by key. The tag is the
    object's ETag on S3 or its mtime locally, so a changed input is seen as changed.
    A root that is a single file lists itself."""
    if not fs.exists(root):
        raise FileNotFoundError(f"input not found: {root}")
    if fs.isfile(root):
        info = fs.info(root)
        return {posixpath.basename(root): (int(info.get("size") or 0), _tag(info))}
    prefix = root.rstrip("/") + "/"
    out = {}
    for full, info in fs.find(root, detail=True).items():
        rel = full[len(prefix):] if full.startswith(prefix) else posixpath.basename(full)
        out[rel] = (int(info.get("size") or 0), _tag(info))
    return dict(sorted(out.items()))


def _tag(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    return str(etag).strip('"') if etag else str(info.get("mtime", ""))


def input_root(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """The folder that relative keys are taken against (the parent when root is one file)."""
    return posixpath.dirname(root) if fs.isfile(root) else root


def output_key(rel: str, new_ext: str | None) -> str:
    """Mirror an input key under the output root, replacing its extension when asked.

    Keys that would escape the output prefix ('..', absolute, backslashes) are refused.
    """
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe key {rel!r}: would write outside the output prefix")
    if new_ext is not None:
        stem, _ = posixpath.splitext(rel)
        rel = stem + new_ext
    return rel


def read_files(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes | Exception]:
    """The bytes of each path, or the exception reading it raised: one missing or unreadable object
    does not fail the others. Keys are taken literally (no globbing). On S3 a batch's objects are fetched at
    once by PyArrow's native (C++) client for the same endpoint and credentials, a HEAD and one GET each: it
    costs a fraction of s3fs's CPU per object, CPU the model actors would otherwise lose on every image."""
    paths = list(paths)
    native = native_s3(fs)
    if native is not None:
        return list(_s3_readers().map(functools.partial(_read_or_error, native), paths))
    return fs.cat_ranges(paths, None, None, on_error="return")


def native_s3(fs: fsspec.AbstractFileSystem) -> pyarrow.fs.S3FileSystem | None:
    """PyArrow's S3 client for the endpoint and credentials of an s3fs filesystem (None otherwise).
    Told by protocol, so that local-only runs never import s3fs."""
    if "s3" not in _protocols(fs):
        return None
    return _s3_client(fs.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), fs.key, fs.secret, fs.token)


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, key: str | None, secret: str | None,
               token: str | None) -> pyarrow.fs.S3FileSystem | None:
    """PyArrow's S3 client for an endpoint; credentials not given come from the standard AWS chain
    (environment, profile, instance role), as for s3fs. Retries as filesystem() configures s3fs.
    None (s3fs reads instead) on AWS itself with no region configured: botocore follows a bucket's
    region redirect, PyArrow does not."""
    import botocore.session

    region = botocore.session.get_session().get_config_variable("region")  # environment or profile
    if not region and not endpoint:
        return None
    kw: dict = {"region": region or "us-east-1",  # a custom endpoint (MinIO, moto) takes any region
                "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
                # without it an output stream starts a multipart upload at open: three requests, not one PUT
                "allow_delayed_open": True}
    if endpoint:
        url = urlsplit(endpoint)
        kw["endpoint_override"], kw["scheme"] = url.netloc or url.path, url.scheme or "https"
    if key and secret:
        kw.update(access_key=key, secret_key=secret, session_token=token)
    return pyarrow.fs.S3FileSystem(**kw)


@functools.lru_cache(maxsize=1)
def _s3_readers() -> ThreadPoolExecutor:
    """Threads for a batch's GETs (PyArrow releases the GIL while it waits on the network)."""
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="aeflow-s3-read")


def _read_or_error(fs: pyarrow.fs.FileSystem, path: str) -> bytes | Exception:
    """A whole object in one ranged GET after the HEAD (an input stream would read it in two)."""
    try:
        with fs.open_input_file(path) as f:
            return f.read()
    except Exception as e:  # one object's failure is that object's error row
        return e


def join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write so that no partial object is ever visible under its final name: local files go to a
    temporary name and are renamed; an S3 PUT only becomes visible when complete. On S3 through PyArrow's
    client where reads use it (native_s3): with delayed open, one PUT for a small object, for less client CPU."""
    native = native_s3(fs)
    if native is not None:
        with native.open_output_stream(path) as f:
            f.write(data)
        return
    with atomic_open(fs, path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(fs: fsspec.AbstractFileSystem, path: str):
    parent = posixpath.dirname(path)
    local = "file" in _protocols(fs)
    if not local:
        with fs.open(path, "wb") as f:
            yield f
        return
    os.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


LISTING_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("tag", pa.string())])


def read_listing(uri: str, options: StorageOptions = StorageOptions()) -> dict[str, tuple[int, str]]:
    """Keys to process, relative to the input root, from a listing file instead of listing a prefix
    (listing 100M objects takes hours): Parquet with a `path` column (optional `size` and `tag`, as
    aeflow writes to <output>/_listing.parquet), or text with one key per line. Without sizes and
    tags a re-run recognises finished inputs by key alone."""
    fs, path = filesystem(uri, options)
    if path.endswith(".parquet"):
        table = pq.read_table(path, filesystem=arrow_filesystem(fs))
        if "path" not in table.column_names:
            raise ValueError(f"listing {uri}: a Parquet listing needs a 'path' column")
        keys = table.column("path").to_pylist()
        sizes = table.column("size").to_pylist() if "size" in table.column_names else [-1] * len(keys)
        tags = table.column("tag").to_pylist() if "tag" in table.column_names else [""] * len(keys)
    else:
        keys = [line.strip() for line in fs.cat_file(path).decode().splitlines() if line.strip()]
        sizes, tags = [-1] * len(keys), [""] * len(keys)
    return dict(sorted((k, (int(s if s is not None else -1), t or "")) for k, s, t in zip(keys, sizes, tags)))


def write_listing(fs: fsspec.AbstractFileSystem, path: str, listing: dict[str, tuple[int, str]]) -> None:
    """Save a listing (key -> (size, tag)) as Parquet, so the next job can take it with --listing."""
    table = pa.table({"path": list(listing), "size": [v[0] for v in listing.values()],
                      "tag": [v[1] for v in listing.values()]}, schema=LISTING_SCHEMA)
    with atomic_open(fs, path) as f:
        pq.write_table(table, f)
