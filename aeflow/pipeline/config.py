"""The settings of one bulk job and what it reports back. Each field's metadata names the jobs that use it
and its help: the command line builds its flags from them (aeflow.cli)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aeflow import codec, storage

ALL = ("compress", "decompress", "restore", "generate")
FROM_FILES = ("compress", "decompress", "restore")  # jobs that read an input URI (generate may: --variations)
FROM_IMAGES = ("compress", "restore", "generate")  # jobs that list images


def _opt(default, jobs: tuple[str, ...], help: str, **extra):
    """A JobConfig field: its default, the jobs that read it, and its help for the command line."""
    return field(default=default, metadata={"jobs": jobs, "help": help, **extra})


@dataclass(frozen=True)
class JobConfig:
    """Settings of one bulk job, as the CLI and jobs/*.py build them."""

    input: str = field(metadata={"jobs": ALL, "help": "local path or s3://bucket/prefix",
                                 "optional_for": ("generate",)})
    output: str = field(metadata={"jobs": ALL, "help": "local path or s3://bucket/prefix"})
    model: str = _opt("", ALL, "model folder URI or shipped name (default: compress and generate codec-default; "
                               "decompress the shipped model of each row's fingerprint; restore the one for --task)")
    batch_size: int = _opt(8, ALL, "images per model call")
    concurrency: int = _opt(0, ALL, "model actors (0: one per free CPU, or per GPU)")
    gpus: float = _opt(0.0, ALL, "GPUs per model actor (0: CPU)")
    threads: int = _opt(0, ALL, "torch threads per actor (0: from the CPUs per actor)")
    split_stages: bool = _opt(False, ALL, "run reading and decoding, and encoding and writing, as CPU operators "
                                          "of their own beside the model actors (always so with --gpus)")
    format: str = _opt("png", ("decompress", "restore"), "output image format", choices=("png", "webp", "jpeg"))
    task: str = _opt("denoise", ("restore",), "restoration task: denoise, deblock, deblur, inpaint, or enhance "
                                              "(the deblurrer on clean photos, with --strength)")
    quality: int = _opt(0, ("compress", "generate"),
                        "the codec's quality level, 1 (smallest) .. its number of levels; 0: its default, the "
                        f"level trained nearest lambda {codec.DEFAULT_LAMBDA:g} (generate: the level whose latents "
                        "and hyperprior it samples; 0: that default, or the top level of a codec whose hyperprior "
                        "codes only that one)")
    target_bpp: float = _opt(0.0, ("compress",), "per image, the highest level whose stored size is at most this "
                                                 "many bits per pixel (overrides --quality)")
    target_psnr: float = _opt(0.0, ("compress",), "per image, the lowest level whose decoded PSNR (dB, 8-bit RGB) "
                                                  "reaches this, or the top level (overrides --quality and "
                                                  "--target-bpp); the rows record the PSNR reached")
    tile: int = _opt(512, ("restore",), "images larger than this run in overlapping tiles (bounded memory)")
    strength: float = _opt(1.0, ("restore",), "how much of the model's correction to apply: output = input + "
                                              "strength * (restored - input); 0.5-1.5 with --task enhance")
    sigma: float = _opt(-1.0, ("restore",), "a noise-map denoiser's noise std (0-255) of every input "
                                            "(< 0: each image's blind estimate)")
    precision: str = _opt("auto", ("compress", "restore"), "auto: the encoder's analysis transform and the "
                          "restorers run in bf16 where the processor computes it natively (AVX512_BF16, AMX, "
                          "GPUs), fp32 elsewhere; fp32: always fp32 (streams decode exactly either way)",
                          choices=("auto", "fp32"))
    fast_decode: bool = _opt(False, ("decompress",), "run the synthesis transform in bf16 where the processor "
                             "has it natively: faster, but the pixels differ from the fp32 decode's (on held-out "
                             "photos by 0.07 of a level on average, at most 1 level of 255: "
                             "benchmarks/bf16_cost.py)")
    compile: bool = _opt(False, ("compress", "decompress", "restore"), "torch.compile the model in each actor "
                         "(seconds to start per actor; pays on long jobs)")
    listing: str = _opt("", FROM_IMAGES, "keys under --input from a file (Parquet 'path' column, or text with one "
                                         "key a line) instead of listing the prefix; each job saves its own "
                                         "listing as <output>/_listing.parquet")
    count: int = _opt(0, ("generate",), "unconditional samples to draw (without --input): z from its own prior, "
                                        "then the latents from the hyperprior's Gaussians given z")
    size: tuple[int, ...] = _opt((256, 256), ("generate",), "width,height of the unconditional samples",
                                 metavar="W,H")
    variations: int = _opt(0, ("generate",), "variations to write of each image under --input, as "
                                             "<output>/<key stem>-vNN.png")
    temperature: float = _opt(0.5, ("generate",), "T: the latents drawn are the image's own plus T times the "
                                                  "hyperprior's scale times standard normal noise (0: the "
                                                  "image's own decode)")
    interpolate: tuple[str, ...] = _opt((), ("generate",), "two image URIs: decode --steps images along the "
                                                           "straight line between their latents (on the driver)",
                                        nargs=2, metavar=("A", "B"))
    steps: int = _opt(8, ("generate",), "images along --interpolate, both ends included")
    seed: int = _opt(0, ("generate",), "seed of the first sample (sample i has seed + i); with --input, each "
                                       "image's seed comes from this seed and its key")
    max_errors: float = _opt(-1, ALL, "fail the job past N failed inputs (N >= 1) or a fraction "
                                             "(0 < N < 1); -1: fail only when every input failed")
    resume: bool = _opt(True, ALL, "redo every input (by default a job skips the inputs that a previous run "
                                   "finished with the same settings)", flag="--overwrite")
    flush_rows: int = _opt(1000, (), "finished rows are made durable every flush_rows rows or flush_seconds")
    flush_seconds: float = _opt(30.0, (), "see flush_rows")
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions, metadata={"jobs": ()})


@dataclass
class JobSummary:
    """What a job did; `manifest` is what was written to <output>/manifest.json."""

    job: str
    inputs: int
    done_before: int  # finished by an earlier run of the same job, skipped now
    written: int
    failed: int
    skipped: int  # files that are not images
    seconds: float
    output: str
    errors: list[dict]
    manifest: dict

    def too_many_errors(self, max_errors: float) -> bool:
        if self.failed == 0:
            return False
        if max_errors < 0:
            return self.failed >= self.inputs - self.done_before
        if max_errors >= 1:
            return self.failed > max_errors
        return self.failed > max_errors * max(1, self.inputs)


class JobFailed(RuntimeError):
    """A job finished but failed its error budget; the summary says what was written."""

    def __init__(self, message: str, summary: JobSummary):
        super().__init__(message)
        self.summary = summary
