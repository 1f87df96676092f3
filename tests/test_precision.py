"""bf16 where the processor has it: the compress actor's streams still decode exactly, and a CPU without native
bf16 gets fp32's bytes and pixels. The actors run in this process (their Ray-free core), on a real photo."""

from __future__ import annotations

import numpy as np
import pytest

from aeflow import codec, images, metrics, modelstore, precision, restoration, storage
from aeflow.pipeline.actors import DecodeLatents, EncodeImages, RestoreImages
from aeflow.pipeline.stages import Batch
from tests.conftest import write_photos

ACTOR = {"options": storage.StorageOptions(), "threads": 2, "gpus": 0.0}


def _compress(src, quality: int, prec: str) -> dict:
    """The compress actor's row for src/astro.png."""
    actor = EncodeImages(model=modelstore.DEFAULT_CODEC, quality=quality, target_bpp=0.0, precision=prec,
                         read={"source": str(src), "base": str(src)}, **ACTOR)
    return actor({"path": np.array(["astro.png"])}).to_pylist()[0]


def _decompress(row: dict) -> np.ndarray:
    """The decompress actor's pixels for a latents row (before they are written)."""
    actor = DecodeLatents(model="", out_ext=".png", taken=frozenset(), **ACTOR)
    batch = {k: np.array([row[k]], dtype=object) for k in ("path", "width", "height", "model", "bitstream")}
    return Batch.from_numpy(actor(batch)).images[0].pixels


@pytest.fixture
def astro(tmp_path, photos):
    return write_photos(tmp_path / "in", {"astro.png": photos["astronaut"]}), photos["astronaut"]


@pytest.mark.skipif(not precision.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_analysis_streams_decode_exactly_at_every_level(astro):
    src, photo = astro
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    for level in range(1, codec.tables_of(loaded).levels + 1):
        row = _compress(src, level, "auto")
        fp32 = codec.encode_images(loaded, [photo], level)[0]
        assert abs(len(row["bitstream"]) - len(fp32)) <= 0.02 * len(fp32), level
        library = codec.decode_bitstream(loaded, row["bitstream"]).rgb
        fp32_psnr = metrics.psnr(photo, codec.decode_bitstream(loaded, fp32).rgb)
        assert abs(metrics.psnr(photo, library) - fp32_psnr) < 0.1, level
        assert np.array_equal(_decompress(row), library), level


def test_without_native_bf16_auto_is_exactly_fp32(astro, monkeypatch):
    src, photo = astro
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    loaded = modelstore.load_model(modelstore.DEFAULT_CODEC)
    assert _compress(src, 3, "auto")["bitstream"] == codec.encode_images(loaded, [photo], 3)[0]

    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 25, photo.shape), 0, 255).astype(np.uint8)
    noisy_src = write_photos(src.parent / "noisy", {"astro.png": noisy})
    name = modelstore.DEFAULT_RESTORERS["denoise"]
    actor = RestoreImages(model=name, tile=512, precision="auto",
                          read={"source": str(noisy_src), "base": str(noisy_src), "out_ext": ".png"}, **ACTOR)
    got = Batch.from_numpy(actor({"path": np.array(["astro.png"])})).images[0].pixels
    want = restoration.restore(modelstore.load_model(name).module, images.to_tensor(noisy)[None],
                               metrics.noise_sigma(noisy), bf16=False)
    assert np.array_equal(got, images.to_uint8(want[0]))
