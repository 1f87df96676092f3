"""Generation from the shipped codec's hyperprior, on real photos: variations, interpolation, samples, and
the generate job (Ray Data) that writes them."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from aeflow import codec, generation, images, modelstore, pipeline
from aeflow.metrics import psnr
from tests.conftest import write_photos

LEVEL = 6  # 1-based


@pytest.fixture(scope="module")
def codec_model():
    return modelstore.load_model(modelstore.DEFAULT_CODEC)


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return np.ascontiguousarray(skimage.data.chelsea()[:256, :320])


def test_variation_at_zero_temperature_is_the_images_own_decode(codec_model, photo):
    plain = codec.decode_bitstream(codec_model, codec.encode_images(codec_model, [photo], LEVEL)[0]).rgb
    a = generation.anchor(codec_model, photo, LEVEL - 1)
    assert np.array_equal(generation.variation(codec_model, a, 0.0, seed=7), plain)


def test_variations_drift_with_temperature(codec_model, photo):
    a = generation.anchor(codec_model, photo, LEVEL - 1)
    plain = generation.variation(codec_model, a, 0.0, seed=0)
    by_t = {t: [generation.variation(codec_model, a, t, seed=s) for s in range(3)] for t in (0.25, 0.5, 1.0)}
    mean_psnr = {t: np.mean([psnr(photo, v) for v in vs]) for t, vs in by_t.items()}
    assert mean_psnr[0.25] > mean_psnr[0.5] > mean_psnr[1.0]
    assert all(not np.array_equal(v, plain) for vs in by_t.values() for v in vs)
    assert not np.array_equal(by_t[0.5][0], by_t[0.5][1])  # another seed, another variation
    assert np.array_equal(by_t[0.5][0], generation.variation(codec_model, a, 0.5, seed=0))  # same seed, same pixels
    assert all(psnr(photo, v) < psnr(photo, plain) - 3 for v in by_t[0.5])


def test_interpolation_runs_from_one_decode_to_the_other(codec_model, photo):
    import skimage.data

    other = np.ascontiguousarray(skimage.data.coffee()[:256, :320])
    frames = generation.interpolate(codec_model, photo, other, 5, LEVEL - 1)
    own = [generation.variation(codec_model, generation.anchor(codec_model, x, LEVEL - 1), 0.0, 0)
           for x in (photo, other)]
    assert len(frames) == 5 and np.array_equal(frames[0], own[0]) and np.array_equal(frames[-1], own[1])
    to_other = [psnr(other, f) for f in frames]
    assert to_other == sorted(to_other)  # each step nearer the other image


def test_unconditional_samples_have_the_size_asked_and_differ(codec_model):
    a = generation.sample(codec_model, (96, 160), LEVEL - 1, 1.0, seed=1)
    b = generation.sample(codec_model, (96, 160), LEVEL - 1, 1.0, seed=2)
    assert a.shape == (96, 160, 3) and a.std() > 5
    assert np.abs(a.astype(int) - b).mean() > 3
    assert np.array_equal(a, generation.sample(codec_model, (96, 160), LEVEL - 1, 1.0, seed=1))


def test_a_level_without_a_hyperprior_is_refused(tiny_codec):
    with pytest.raises(ValueError, match="no hyperprior at that level"):
        generation.check_level(tiny_codec, 1)  # its hyperprior codes the top level only
    assert generation.check_level(tiny_codec, 0) == 1  # by default, the level it has a hyperprior at


def test_generation_defaults_to_the_codecs_default_level(codec_model):
    assert generation.check_level(codec_model, 0) == codec.default_quality(codec_model.config["lambdas"]) - 1


def test_generate_job_writes_variations_once_each_and_a_rerun_gives_the_same_pixels(ray_local, tmp_path, photos):
    src = write_photos(tmp_path / "in", {"a/astro.png": photos["astronaut"], "cat.jpg": photos["chelsea"]})
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    job = pipeline.JobConfig(input=str(src), output=str(tmp_path / "out"), variations=3, quality=LEVEL,
                             max_errors=1)
    summary = pipeline.generate(job)
    assert (summary.written, summary.failed) == (2, 1)
    assert summary.errors[0]["path"] == "broken.png"
    out = tmp_path / "out"
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert names == ["a/astro-v00.png", "a/astro-v01.png", "a/astro-v02.png",
                     "cat-v00.png", "cat-v01.png", "cat-v02.png"]
    rows = {r["path"]: r for r in pq.read_table(out / "_progress").to_pylist()}
    assert sorted(rows) == ["a/astro.png", "cat.jpg"] and rows["cat.jpg"]["output"] == "cat-v*.png"
    assert rows["cat.jpg"]["seed"] == generation.image_seed(0, "cat.jpg")
    first = {n: (out / n).read_bytes() for n in names}
    again = pipeline.generate(job)
    assert (again.done_before, again.written, again.failed) == (2, 0, 1)  # finished before: not redone
    redo = pipeline.generate(pipeline.JobConfig(**{**job.__dict__, "output": str(tmp_path / "redo")}))
    assert redo.written == 2
    assert all((tmp_path / "redo" / n).read_bytes() == data for n, data in first.items())
    cat = images.decode_image(first["cat-v00.png"])[0]
    assert cat.shape == photos["chelsea"].shape
