"""Training speed: the training loop's steps/s and pixels/s beside a bare forward/backward/Adam step of
the same model and batch, in bf16 autocast (where the CPU has it) and in fp32. Prints JSON.

The loop (aeflow.training.loop.train_epoch) adds what the bare step leaves out: cutting crops from
photos in memory, level sampling, gradient clipping, the learning-rate schedule and the EMA update.

    python benchmarks/train_speed.py --channels 64 --latent-channels 128 --batch-size 8 --crop 256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import numpy as np
import skimage.data
import torch

from aeflow import precision
from aeflow.pipeline import runtime
from aeflow.training import TrainConfig, compute_loss, make_optimizer, new_model
from aeflow.training.crops import batches_from_memory
from aeflow.training.loop import Ema, for_steps, prepare, train_epoch


def photos() -> list[np.ndarray]:
    """Textures and photos from scikit-image: only the crops' size matters to the timing."""
    return [np.asarray(getattr(skimage.data, n)()) for n in ("astronaut", "coffee", "chelsea", "rocket")]


def bare_step_seconds(cfg: TrainConfig, steps: int) -> float:
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = prepare(new_model(cfg), device)
    optimizer = make_optimizer(cfg, model)
    batch = next(batches_from_memory(cfg, photos(), 1, np.random.default_rng(0)))
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    bf16 = precision.use_bf16(cfg.precision, device)

    def step():
        with precision.autocast(bf16, device):
            loss, _ = compute_loss(cfg, model, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def loop_step_seconds(cfg: TrainConfig, steps: int) -> float:
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = prepare(new_model(cfg), device)
    optimizer = make_optimizer(cfg, model)
    ema = Ema(model, cfg.ema)
    pics = photos()
    model = for_steps(cfg, model)  # compiled on the first steps below, outside the timing
    train_epoch(cfg, model, optimizer, ema, batches_from_memory(cfg, pics, 3, np.random.default_rng(1)), 0,
                device, cfg.lr)
    t0 = time.perf_counter()
    train_epoch(cfg, model, optimizer, ema, batches_from_memory(cfg, pics, steps, np.random.default_rng(2)), 3,
                device, cfg.lr)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="codec")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--latent-channels", type=int, default=128)
    p.add_argument("--width", type=int, default=32, help="restorer width")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--scale-min", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    p.add_argument("--compile", action="store_true", help="also time the loop with torch.compile (bf16)")
    args = p.parse_args()
    runtime.keep_freed_memory()  # as the training entry points do
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "native_bf16": precision.cpu_has_native_bf16(),
              "task": args.task, "channels": args.channels, "latent_channels": args.latent_channels,
              "batch": f"{args.batch_size} x {args.crop} px", "runs": {}}
    pixels = args.batch_size * args.crop**2
    runs = [("bf16", False), ("fp32", False)] + ([("bf16", True)] if args.compile else [])
    for prec, compiled in runs:
        cfg = TrainConfig(task=args.task, channels=args.channels, latent_channels=args.latent_channels,
                          width=args.width, batch_size=args.batch_size, crop=args.crop, scale_min=args.scale_min,
                          precision=prec, warmup=1, lr=1e-4, compile=compiled)
        bare = bare_step_seconds(dataclasses.replace(cfg, compile=False), args.steps)
        loop = loop_step_seconds(cfg, args.steps)
        name = prec + (" compiled" if compiled else "")
        result["runs"][name] = {"bare_step_s": round(bare, 4), "loop_step_s": round(loop, 4),
                                "loop_steps_per_s": round(1 / loop, 3),
                                "loop_megapixels_per_s": round(pixels / loop / 1e6, 3),
                                "loop_over_bare": round(bare / loop, 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
