"""Training as plain PyTorch, for machines without Ray (a lent GPU box, a long CPU campaign): the same
step loop over crops cut from photos held in memory, with its own checkpoint in the run's storage."""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import torch

from aeflow import storage
from aeflow.pipeline import runtime
from aeflow.training.checkpoints import FILES, load_checkpoint, save_checkpoint
from aeflow.training.config import TrainConfig
from aeflow.training.crops import batches_from_memory, load_photos
from aeflow.training.loop import Ema, for_steps, lr_at, make_optimizer, prepare, train_epoch
from aeflow.training.start import initial_model


def train_plain(cfg: TrainConfig, options: storage.StorageOptions) -> tuple[torch.nn.Module, dict]:
    """Run cfg in this process; returns the final (averaged) model on the CPU and the last metrics."""
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    runtime.keep_freed_memory()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    photos = load_photos(cfg.data, options)
    torch.manual_seed(cfg.seed)
    model = prepare(initial_model(cfg), device)
    optimizer = make_optimizer(cfg, model)
    ema = Ema(model, cfg.ema) if cfg.ema > 0 else None
    ckpt_fs, ckpt_root = storage.filesystem(cfg.storage_uri(), options)
    ckpt_dir = storage.join(storage.join(ckpt_root, cfg.name), "plain-checkpoint")
    start_epoch, step = 0, 0
    if ckpt_fs.exists(storage.join(ckpt_dir, "progress.json")):
        with tempfile.TemporaryDirectory() as tmp:
            for f in FILES:
                if ckpt_fs.exists(storage.join(ckpt_dir, f)):
                    ckpt_fs.get(storage.join(ckpt_dir, f), os.path.join(tmp, f))
            start_epoch, step = load_checkpoint(tmp, model, optimizer, ema)
        print(f"resuming {cfg.name} from epoch {start_epoch}, step {step}")
    stepping = for_steps(cfg, model)
    per_epoch = cfg.steps_per_epoch or len(photos) * cfg.crops_per_image // cfg.batch_size
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        t0 = time.time()
        lr = lr_at(cfg, epoch / max(1, cfg.epochs - 1))
        step, metrics = train_epoch(cfg, stepping, optimizer, ema, batches_from_memory(cfg, photos, per_epoch, rng),
                                    step, device, lr)
        metrics = {"epoch": epoch + 1, "step": step, "start_epoch": start_epoch, **metrics}
        print(json.dumps({**metrics, "lr": lr, "seconds": round(time.time() - t0, 1)}), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, model, optimizer, ema, epoch + 1, step, cfg)
            ckpt_fs.makedirs(ckpt_dir, exist_ok=True)
            for f in os.listdir(tmp):
                ckpt_fs.put(os.path.join(tmp, f), storage.join(ckpt_dir, f))
    if ema is not None:
        model.load_state_dict(ema.state_dict(model))
    return model.cpu().to(memory_format=torch.contiguous_format), metrics
