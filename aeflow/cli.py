"""`aeflow` command line: each subcommand parses flags and calls one library function.

jobs/*.py call the same `main(argv)` entry points, so `ray job submit ... python jobs/compress.py`
and `aeflow compress` run one code path.
"""

from __future__ import annotations

import argparse
import json
import sys

from aeflow import codec, heap, pipeline, storage
from aeflow.models.autoencoder import DEFAULT_LAMBDAS


def _job_flags(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--input", required=True, help="local path or s3://bucket/prefix")
    p.add_argument("--output", required=True, help="local path or s3://bucket/prefix")
    p.add_argument("--model", default="", help=model_help)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=0, help="model actors (default: one per free CPU/GPU)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per model actor (default 0: CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per actor (default: CPUs/actors)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every input (default: resume, skipping inputs finished with the same settings)")
    p.add_argument("--listing", default="",
                   help="compress/restore: keys under --input from a file (Parquet 'path' column or text, one per "
                        "line) instead of listing the prefix; each job saves its listing as <output>/_listing.parquet")
    p.add_argument("--max-errors", type=float, default=-1,
                   help="fail the job past N failed inputs (N >= 1) or a fraction (0 < N < 1); "
                        "default: fail only when every input failed")
    _endpoint_flag(p)


def _endpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS); credentials from the AWS environment")


def _job(args: argparse.Namespace, **extra) -> pipeline.JobConfig:
    return pipeline.JobConfig(
        input=args.input, output=args.output, model=args.model, batch_size=args.batch_size,
        concurrency=args.concurrency, gpus=args.gpus, threads=args.threads, max_errors=args.max_errors,
        resume=not args.overwrite, listing=args.listing,
        storage=storage.StorageOptions(endpoint_url=args.endpoint_url), **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aeflow", description="Autoencoder image work at archive scale on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fit a model with Ray Train (or plain PyTorch with --no-ray)")
    p.add_argument("--task", default="codec",
                   choices=["codec", "hyperprior", "denoise", "deblock", "deblur", "inpaint"],
                   help="hyperprior: add a scale hyperprior for the top quality level to the --init codec")
    p.add_argument("--data", required=True, help="image URI to cut training crops from")
    p.add_argument("--out", required=True, help="model folder URI to write")
    p.add_argument("--storage", default="", help="checkpoint URI (default: <out>-checkpoints); re-runs resume")
    p.add_argument("--name", default="run", help="run name under --storage")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--crops-per-image", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default="", help="model to start from (URI or shipped name)")
    p.add_argument("--lmbda", default=",".join(str(v) for v in DEFAULT_LAMBDAS),
                   help="codec: comma-separated lambdas, one quality level each, low to high "
                        "(loss = bits/pixel + lambda * 255^2 * MSE)")
    p.add_argument("--sigma-max", type=float, default=50.0, help="denoise: max noise std (0-255)")
    p.add_argument("--noise-map", action="store_true",
                   help="denoise: the model also takes the noise std as an input plane (so restore --sigma works)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--latent-channels", type=int, default=128)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--warmup", type=int, default=500, help="steps of linear learning-rate warm-up")
    p.add_argument("--max-failures", type=int, default=3,
                   help="worker failures survived by restoring the latest checkpoint")
    p.add_argument("--no-ray", action="store_true", help="plain PyTorch loop (machines without Ray)")
    _endpoint_flag(p)

    p = sub.add_parser("compress", help="images -> latents Parquet")
    _job_flags(p, "codec folder URI or shipped name (default: codec-default)")
    p.add_argument("--quality", type=int, default=codec.DEFAULT_QUALITY,
                   help="the codec's quality level, 1 (smallest) .. its number of levels "
                        f"(default {codec.DEFAULT_QUALITY})")
    p.add_argument("--target-bpp", type=float, default=0.0,
                   help="per image, the highest level whose stored size is at most this many bits per pixel "
                        "(overrides --quality)")

    p = sub.add_parser("decompress", help="latents Parquet -> PNG images")
    _job_flags(p, "codec to decode with (default: found from each row's fingerprint among shipped models)")
    p.add_argument("--format", default="png", choices=["png", "webp", "jpeg"])

    p = sub.add_parser("restore", help="images -> restored images")
    _job_flags(p, "restoration model URI (default: the shipped model for --task)")
    p.add_argument("--task", default="denoise")
    p.add_argument("--format", default="png", choices=["png", "webp", "jpeg"])
    p.add_argument("--tile", type=int, default=512, help="images larger than this run in blended tiles")
    p.add_argument("--strength", type=float, default=1.0,
                   help="how much of the model's correction to apply: output = input + strength * (restored - "
                        "input); with --task enhance (the deblurrer on clean photos) 0.5-1.5 sharpens")
    p.add_argument("--sigma", type=float, default=-1.0,
                   help="denoise: the noise std (0-255) of every input, instead of each image's blind estimate")

    p = sub.add_parser("generate", help="new images decoded from sampled latents")
    p.add_argument("--output", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--gpus", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="redo images a previous run already wrote")
    _endpoint_flag(p)

    p = sub.add_parser("eval", help="codec rate-distortion vs JPEG/WebP, or restoration vs classical denoisers")
    p.add_argument("--input", required=True, help="clean images (local path or s3://)")
    p.add_argument("--output", required=True, help="folder for eval.json and its pictures")
    p.add_argument("--model", default="")
    p.add_argument("--task", default="codec", choices=["codec", "denoise", "deblock", "deblur", "inpaint"])
    p.add_argument("--level", type=float, default=0.0,
                   help="degradation: noise sigma (denoise, default 25), JPEG quality (deblock, default 20), "
                        "blur sigma in px (deblur, default 2), rectangles missing (inpaint, default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradations")
    _endpoint_flag(p)

    p = sub.add_parser("demo", help="the whole product on bundled real photos, with a results table")
    p.add_argument("--out", default="aeflow-demo", help="folder for the demo's inputs and outputs")
    return parser


def _print_summary(s: pipeline.JobSummary) -> None:
    before = f", {s.done_before} done before" if s.done_before else ""
    print(f"{s.job}: {s.written} written, {s.failed} failed{before}, {s.skipped} skipped of {s.inputs} inputs "
          f"in {s.seconds:.1f} s -> {s.output}")
    for e in s.errors[:10]:
        print(f"  error: {e['path']} [{e['stage']}] {e['error']}")
    if len(s.errors) > 10:
        print(f"  ... {len(s.errors) - 10} more in {s.output}/errors.parquet")


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed command line; returns the exit code."""
    if args.command == "train":
        from aeflow.training import TrainConfig, train

        cfg = TrainConfig(
            task=args.task, data=args.data, out=args.out, storage=args.storage, name=args.name,
            workers=args.workers, use_gpu=args.gpu, epochs=args.epochs, batch_size=args.batch_size,
            crop=args.crop, crops_per_image=args.crops_per_image, lr=args.lr, seed=args.seed, init=args.init,
            lmbda=tuple(float(v) for v in args.lmbda.split(",")), sigma_max=args.sigma_max, channels=args.channels,
            latent_channels=args.latent_channels, width=args.width, no_ray=args.no_ray, threads=args.threads,
            warmup=args.warmup, max_failures=args.max_failures, noise_map=args.noise_map)
        print(json.dumps(train(cfg, storage.StorageOptions(endpoint_url=args.endpoint_url))))
        return 0
    if args.command == "demo":
        from aeflow.demo import run_demo

        run_demo(args.out)
        return 0
    if args.command == "eval" and args.task != "codec":
        from aeflow.evaluate_restore import evaluate_restorer

        level = args.level or {"denoise": 25.0, "deblock": 20.0, "deblur": 2.0, "inpaint": 4.0}[args.task]
        report = evaluate_restorer(args.input, args.output, args.task, level, args.model, args.seed,
                                   options=storage.StorageOptions(endpoint_url=args.endpoint_url))
        print(json.dumps({"task": args.task, "level": level, "mean": report["mean"],
                          "aeflow_seconds_per_megapixel": report["aeflow_seconds_per_megapixel"]}, indent=1))
        return 0
    if args.command == "eval":
        from aeflow.evaluate import evaluate_codec

        report = evaluate_codec(args.input, args.output, args.model,
                                storage.StorageOptions(endpoint_url=args.endpoint_url))
        mean = report["mean"]
        print(json.dumps({k: v for k, v in mean.items() if k != "classic"}, indent=1))
        print(f"per image: {args.output.rstrip('/')}/eval.json; curves: rd-psnr.png, rd-msssim.png", file=sys.stderr)
        return 0
    if args.command == "generate":
        job = pipeline.JobConfig(input="", output=args.output, model=args.model, batch_size=args.batch_size,
                                 concurrency=args.concurrency, gpus=args.gpus, threads=args.threads,
                                 count=args.count, seed=args.seed, resume=not args.overwrite,
                                 storage=storage.StorageOptions(endpoint_url=args.endpoint_url))
        _print_summary(pipeline.generate(job))
        return 0
    if args.command == "compress":
        summary = pipeline.compress(_job(args, quality=args.quality, target_bpp=args.target_bpp))
    elif args.command == "decompress":
        summary = pipeline.decompress(_job(args, format=args.format))
    else:
        summary = pipeline.restore(_job(args, format=args.format, task=args.task, tile=args.tile,
                                        strength=args.strength, sigma=args.sigma))
    _print_summary(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    heap.keep_freed_memory()  # eval, demo and small jobs run models in this process
    try:
        return run(args)
    except pipeline.JobFailed as e:
        _print_summary(e.summary)
        print(f"aeflow {args.command}: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"aeflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
