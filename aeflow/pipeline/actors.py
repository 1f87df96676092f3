"""The model stage of each job, as Ray Data actor classes: one model loaded per actor process.

An actor given `read` and `write` (keyword arguments of stages.read_images and stages.write_images) runs
the whole chain itself, which is fastest on CPU-only pools; without them it takes and gives stages.Batch
from and to the CPU operators beside it.
"""

from __future__ import annotations

import posixpath
import threading
import time

import numpy as np
import pyarrow as pa
import torch

import aeflow
from aeflow import codec, generation, images, metrics, modelstore, restoration, storage
from aeflow.pipeline import runtime, schemas, stages
from aeflow.pipeline.stages import Batch, Pending
from aeflow.precision import autocast, compile_model, use_bf16

TRIM_SECONDS = 10.0  # an actor gives freed heap memory back to the OS at most this often (bound_memory)


class ModelActor:
    """Loads one model per actor process and sets its torch threads.

    Ray Data runs two calls of an actor at once (runtime.pool), so that one batch's file decoding, encoding
    and writing overlap the other's model work; `model_lock` lets one call at a time use the model, which
    has all the torch threads to itself."""

    writes_images = True  # its batches end as image files (all jobs but compress)

    def __init__(self, *, model: str, options: storage.StorageOptions, threads: int, gpus: float,
                 read: dict | None = None, write: dict | None = None, precision: str = "fp32",
                 compile: bool = False):
        runtime.keep_freed_memory()
        self.model_lock = threading.Lock()
        self.rss_ceiling, self.last_trim = 0.0, 0.0  # set after the first batch: see bound_memory
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
        self.options, self.read, self.write = options, read, write
        self.bf16, self.compile = use_bf16(precision, self.device), compile
        self.loaded = self.ready(modelstore.load_model(model, options)) if model else None

    def ready(self, loaded: modelstore.LoadedModel) -> modelstore.LoadedModel:
        """A loaded model on the actor's device, compiled where the job asked for it."""
        loaded.module.to(self.device)
        if self.compile:
            compile_model(loaded.module)
        return loaded

    def take(self, batch: dict[str, np.ndarray]) -> Batch:
        """The batch to work on: the keys' images read here, or the reading operator's batch."""
        if self.read is not None:
            return stages.read_images(batch["path"], options=self.options, **self.read)
        return Batch.from_numpy(batch)

    def finish(self, work: Batch, schema: pa.Schema) -> pa.Table | dict[str, np.ndarray]:
        """Result rows, after writing the batch's images here; or the batch for the writing operator."""
        if self.writes_images and self.write is None:
            out = work.to_numpy()
        else:
            if self.writes_images:
                stages.write_images(work, options=self.options, **self.write)
            out = schemas.rows_table(work.rows, schema)
        self.bound_memory()
        return out

    def bound_memory(self) -> None:
        """Keep a long job's actor near its size after the first batch: glibc keeps the memory that large
        tensors free in its heaps, fragmented, so the actor would grow with the number of images. At most
        every TRIM_SECONDS, since memory handed back is faulted in again by the next batches."""
        rss, now = runtime.rss_mb(), time.monotonic()
        if not self.rss_ceiling:
            self.rss_ceiling, self.last_trim = 1.05 * rss, now
        elif rss > self.rss_ceiling and now - self.last_trim >= TRIM_SECONDS:
            runtime.give_back()
            self.last_trim = now

    def fast_math(self):
        """The model's autocast: bf16 where the job asked for it and the device computes it natively."""
        return autocast(self.bf16, self.device)


class EncodeImages(ModelActor):
    """Pictures -> encoder and entropy coder -> bitstream rows (or error rows)."""

    writes_images = False

    def __init__(self, *, quality: int, target_bpp: float, target_psnr: float = 0.0, **actor):
        super().__init__(**actor)
        self.quality, self.target_bpp, self.target_psnr = quality, target_bpp, target_psnr

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        work = self.take(batch)
        fp = self.loaded.fingerprint
        for group in work.by_shape():
            pics = [p for _, p in group]
            try:
                with self.model_lock, self.fast_math():
                    streams = codec.encode_images(
                        self.loaded, [p.rgb for p in pics], self.quality, self.target_bpp,
                        modes=[p.mode for p in pics], alphas=[p.alpha for p in pics], iccs=[p.icc for p in pics],
                        target_psnr=self.target_psnr)
            except Exception as e:  # a model failure loses only this group's images, as error rows
                for i, _ in group:
                    work.fail(i, "model", e)
                continue
            for (i, pic), bits in zip(group, streams):
                h, w = pic.rgb.shape[:2]
                head = codec.read_header(bits)
                work.rows[i].update(model=fp, quality=head["level"], format_version=codec.FORMAT_VERSION,
                                    aeflow_version=aeflow.__version__, crc32=head["crc32"],
                                    bitstream=bits, bytes=len(bits), bpp=8.0 * len(bits) / (w * h))
                if self.target_psnr > 0:  # what the level chosen reaches, measured on the stream's own decode
                    with self.model_lock:
                        reached = metrics.psnr(pic.rgb, codec.decode_bitstream(self.loaded, bits).rgb)
                    work.rows[i].update(psnr=reached, target_psnr_reached=reached >= self.target_psnr)
        return self.finish(work, schemas.ENCODED_SCHEMA)


class DecodeLatents(ModelActor):
    """Bitstream rows -> decoder -> images to write. Each row's model is found by its fingerprint."""

    def __init__(self, *, out_ext: str, taken: frozenset[str], **actor):
        super().__init__(**actor)
        self.out_ext, self.taken = out_ext, taken
        self.models = {self.loaded.fingerprint: self.loaded} if self.loaded else {}
        self.shipped = {} if self.loaded else modelstore.shipped_fingerprints()

    def _model_for(self, fp: str) -> modelstore.LoadedModel:
        if fp not in self.models:
            if self.loaded is not None:
                raise ValueError(f"row was encoded by model {fp}, but the model given "
                                 f"({self.loaded.source}) is {self.loaded.fingerprint}; refusing to decode")
            name = modelstore.shipped_for_fingerprint(fp, self.shipped)
            self.models[fp] = self.ready(modelstore.load_model(name, self.options))
        return self.models[fp]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        work = Batch([])
        for key, width, height, fp, bits in zip(*(batch[c] for c in ("path", "width", "height", "model",
                                                                      "bitstream"))):
            i, key = len(work.rows), str(key)
            work.rows.append({"path": key})
            try:
                work.rows[i]["output"] = stages.output_key(key, self.out_ext, self.taken)
            except ValueError as e:  # an output key that is unsafe or collides
                work.fail(i, "key", str(e))
                continue
            try:
                with self.model_lock:
                    model = self._model_for(str(fp))
            except ValueError as e:
                work.fail(i, "model", str(e))
                continue
            try:
                with self.model_lock, self.fast_math():  # fp32 unless --fast-decode
                    pic = codec.decode_bitstream(model, bits)
                h, w = pic.rgb.shape[:2]
                if (w, h) != (width, height):
                    raise codec.BitstreamError(f"header says {w}x{h}, row says {width}x{height}")
            except codec.BitstreamError as e:
                work.fail(i, "bitstream", e)
                continue
            work.images[i] = Pending(pic.rgb, pic.alpha, pic.icc)
        return self.finish(work, schemas.STATUS_SCHEMA)


class RestoreImages(ModelActor):
    """Pictures -> restorer -> images to write. 16-bit greyscale inputs are restored from their 16 bits and
    written as 16-bit PNG; an inpainting model fills the input's transparent pixels; a noise-map denoiser
    is given each image's noise std (forced by --sigma, or its blind estimate)."""

    def __init__(self, *, tile: int, strength: float = 1.0, sigma: float = -1.0, **actor):
        super().__init__(**actor)
        self.tile, self.strength, self.sigma = tile, strength, sigma
        self.inpaint = restoration.fills_holes(self.loaded.module)

    def _output(self, pic: images.Picture, y: torch.Tensor) -> Pending:
        """The restored pixels to write, with the alpha to keep (none after inpainting: holes are filled)."""
        if self.inpaint:
            return Pending(images.to_uint8(y), None, pic.icc, pic.exif)
        if pic.deep is not None:
            return Pending(images.to_uint16_grey(y), pic.alpha, pic.icc, pic.exif)
        return Pending(images.to_uint8(y), pic.alpha, pic.icc, pic.exif)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        work = self.take(batch)
        for group in work.by_shape():
            ready = []
            for i, pic in group:
                # the noise level used (and recorded): --sigma, else the image's blind estimate
                work.rows[i]["noise_sigma"] = self.sigma if self.sigma >= 0 else metrics.noise_sigma(pic.rgb)
                if self.inpaint and pic.alpha is None:
                    work.fail(i, "input", "inpainting needs the missing pixels marked transparent (an alpha "
                                          "channel); this image has none")
                    continue
                ready.append((i, pic))
            if not ready:
                continue
            try:
                x = torch.stack([images.deep_to_tensor(p.deep) if p.deep is not None else images.to_tensor(p.rgb)
                                 for _, p in ready])
                holes = torch.stack([torch.from_numpy(p.alpha < 128).float()[None] for _, p in ready]) \
                    if self.inpaint else None
                with self.model_lock:
                    y = restoration.restore(
                        self.loaded.module, x.to(self.device), [work.rows[i]["noise_sigma"] for i, _ in ready],
                        holes.to(self.device) if holes is not None else None, self.tile, self.strength,
                        self.bf16).cpu()
            except Exception as e:
                for i, _ in ready:
                    work.fail(i, "model", e)
                continue
            for (i, pic), yi in zip(ready, y):
                try:
                    work.images[i] = self._output(pic, yi)
                except Exception as e:
                    work.fail(i, "write", e)
        return self.finish(work, schemas.STATUS_SCHEMA)


class VaryImages(ModelActor):
    """Pictures -> their latents and hyperprior scales at one level -> K variations each to write, as
    <stem>-vNN.png beside where the row's output would go."""

    def __init__(self, *, level: int, variations: int, temperature: float, seed: int, **actor):
        super().__init__(**actor)
        self.level, self.variations, self.temperature, self.seed = level, variations, temperature, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        work = self.take(batch)
        for i, pic in list(work.images.items()):
            row = work.rows[i]
            stem = posixpath.splitext(row["output"])[0]
            seed = generation.image_seed(self.seed, row["path"])
            try:
                with self.model_lock:
                    a = generation.anchor(self.loaded, pic.rgb, self.level)
                    pixels = [generation.variation(self.loaded, a, self.temperature, seed + v)
                              for v in range(self.variations)]
            except Exception as e:
                work.fail(i, "model", e)
                continue
            row.update(output=f"{stem}-v*.png", seed=seed)
            work.images[i] = [Pending(p, pic.alpha, pic.icc, pic.exif, key=f"{stem}-v{v:02d}.png")
                              for v, p in enumerate(pixels)]
        return self.finish(work, schemas.STATUS_SCHEMA)


class GenerateImages(ModelActor):
    """Seeds -> unconditional samples from the codec's hyperprior at one level -> images to write."""

    def __init__(self, *, level: int, size: tuple[int, int], temperature: float, **actor):
        super().__init__(**actor)
        self.level, self.size, self.temperature = level, size, temperature

    @staticmethod
    def key(seed: int) -> str:
        return f"generated-{seed:06d}.png"

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        work = Batch([])
        for seed in batch["id"].tolist():
            key = self.key(seed)
            with self.model_lock:
                pixels = generation.sample(self.loaded, self.size, self.level, self.temperature, seed)
            work.images[len(work.rows)] = Pending(pixels)
            work.rows.append({"path": key, "output": key, "seed": seed})
        return self.finish(work, schemas.STATUS_SCHEMA)
