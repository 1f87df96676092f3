"""Training: one step loop (training/loop.py) that runs inside Ray Train workers or as plain PyTorch.

config.py the run's settings; start.py the model it starts from; crops.py its data; loss.py what it
minimises; loop.py the steps; checkpoints.py resume; ray_train.py and plain.py the two ways to run it.
"""

from __future__ import annotations

import dataclasses
import time

from aeflow import modelstore, storage
from aeflow.training.config import TASKS, TrainConfig
from aeflow.training.crops import load_photos, random_crops
from aeflow.training.loop import lr_at, make_optimizer, train_epoch
from aeflow.training.loss import compute_loss
from aeflow.training.start import grow_into, initial_model, new_model

__all__ = ["TASKS", "TrainConfig", "compute_loss", "grow_into", "initial_model", "load_photos",
           "lr_at", "make_optimizer", "new_model", "random_crops", "train", "train_epoch"]


def train(cfg: TrainConfig, options: storage.StorageOptions = storage.StorageOptions()) -> dict:
    """Train (Ray Train, or plain PyTorch with cfg.no_ray), then write the model folder to cfg.out.
    Returns the final metrics plus the model's fingerprint."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}: one of {', '.join(TASKS)}")
    if not cfg.out:
        raise ValueError("--out is required: the model folder to write")
    t0 = time.time()
    if cfg.no_ray:
        from aeflow.training.plain import train_plain

        model, metrics = train_plain(cfg, options)
    else:
        from aeflow.training.ray_train import train_ray

        model, metrics = train_ray(cfg, options)
    record = {"config": dataclasses.asdict(cfg), "final": metrics, "seconds": round(time.time() - t0, 1)}
    fp = modelstore.save_model(model, cfg.out, training=record, options=options)
    return {**metrics, "fingerprint": fp, "out": cfg.out}
