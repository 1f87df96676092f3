import pytest

from aeflow import pipeline, storage


@pytest.mark.parametrize("key", ["../x.jpg", "a/../../x.jpg", "/etc/passwd.jpg", "a\\..\\x.jpg", "a//b.jpg"])
def test_unsafe_keys_cannot_escape_the_output(key):
    with pytest.raises(ValueError, match="unsafe key"):
        storage.output_key(key, ".png")


def test_output_key_mirrors_and_replaces_extension():
    assert storage.output_key("a/b/c.JPG", ".png") == "a/b/c.png"


def test_extension_collisions_are_detected_not_overwritten():
    assert pipeline._collisions(["a.jpg", "a.png", "b.jpg", "d/a.jpg"], ".png") == {"a.png"}


def test_split_uri():
    assert storage.split_uri("s3://bucket/pre/fix/") == ("s3", "bucket/pre/fix")
    assert storage.split_uri("rel")[1].endswith("/rel")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.split_uri("gs://x/y")
