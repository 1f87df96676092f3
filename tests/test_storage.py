import pytest

from aeflow import pipeline, storage
from aeflow.pipeline import stages


@pytest.mark.parametrize("key", ["../x.jpg", "a/../../x.jpg", "/etc/passwd.jpg", "a\\..\\x.jpg", "a//b.jpg"])
def test_unsafe_keys_cannot_escape_the_output(key):
    with pytest.raises(ValueError, match="unsafe key"):
        storage.output_key(key, ".png")


def test_output_key_mirrors_and_replaces_extension():
    assert storage.output_key("a/b/c.JPG", ".png") == "a/b/c.png"


def test_extension_collisions_are_detected_not_overwritten():
    assert stages.collisions(["a.jpg", "a.png", "b.jpg", "d/a.jpg"], ".png") == {"a.png"}


def test_split_uri():
    assert storage.split_uri("s3://bucket/pre/fix/") == ("s3", "bucket/pre/fix")
    assert storage.split_uri("rel")[1].endswith("/rel")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.split_uri("gs://x/y")


def test_decompress_refuses_an_unsafe_key_in_the_latents_as_a_key_error(ray_local, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aeflow import codec, modelstore

    model = modelstore.load_model(modelstore.DEFAULT_CODEC)
    bits = codec.encode_images(model, [np.zeros((16, 16, 3), np.uint8)], quality=1)[0]
    row = {f.name: None for f in pipeline.LATENTS_SCHEMA}
    row.update(path="../escape.png", width=16, height=16, model=model.fingerprint, bitstream=bits,
               bytes=len(bits), format_version=codec.FORMAT_VERSION)
    (tmp_path / "lat").mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=pipeline.LATENTS_SCHEMA),
                   tmp_path / "lat" / "latents-00000.parquet")
    with pytest.raises(pipeline.JobFailed, match="unsafe key"):
        pipeline.decompress(pipeline.JobConfig(input=str(tmp_path / "lat"), output=str(tmp_path / "out" / "x")))
    errors = pq.read_table(tmp_path / "out" / "x" / "errors.parquet").to_pylist()
    assert [(e["path"], e["stage"]) for e in errors] == [("../escape.png", "key")]
    assert not (tmp_path / "out" / "escape.png").exists()


def test_s3_batch_read_takes_keys_literally_and_names_a_missing_one(s3, s3_server):
    """The actors' S3 reads (PyArrow's client, a batch at once): exact bytes in key order, glob
    characters taken literally, a missing key one error naming it that loses none of the others."""
    blobs = {f"photos/in/{name}": bytes([i]) * (1000 + i) for i, name in enumerate(["a [1].png", "b*.jpg", "c.png"])}
    for key, data in blobs.items():
        s3.pipe(key, data)
    fs, _ = storage.filesystem("s3://photos", storage.StorageOptions(endpoint_url=s3_server.url))
    keys = ["photos/in/b*.jpg", "photos/in/gone.png", "photos/in/a [1].png", "photos/in/c.png"]
    got = storage.read_files(fs, keys)
    assert storage.native_s3(fs) is not None  # the native client, not s3fs, answered
    assert [got[0], got[2], got[3]] == [blobs[keys[0]], blobs[keys[2]], blobs[keys[3]]]
    assert isinstance(got[1], FileNotFoundError) and "photos/in/gone.png" in str(got[1])


def test_s3_write_puts_the_exact_bytes_and_a_missing_bucket_is_an_error(s3, s3_server):
    """The actors' S3 writes (PyArrow's client, delayed open: one PUT): the object holds exactly the bytes
    written; a write that cannot land raises, naming the object, so the job records an error row."""
    fs, _ = storage.filesystem("s3://photos", storage.StorageOptions(endpoint_url=s3_server.url))
    data = bytes(range(256)) * 1200  # 300 KB, a restored photo's size
    storage.write_bytes(fs, "photos/out/a b.png", data)
    assert storage.native_s3(fs) is not None
    assert s3.cat("photos/out/a b.png") == data
    with pytest.raises(OSError, match="out/x.png.*no-such-bucket.*does not exist"):
        storage.write_bytes(fs, "no-such-bucket/out/x.png", data)
