"""Checkpoints: safetensors for the weights and their moving average, weights_only torch.load for the
optimizer, JSON for the progress. Resuming restores all four."""

from __future__ import annotations

import dataclasses
import json
import os

import torch
from safetensors.torch import load_file, save_file

from aeflow import modelstore
from aeflow.training.config import TrainConfig
from aeflow.training.loop import Ema

FILES = ("model.safetensors", "ema.safetensors", "optimizer.pt", "progress.json")


def _save_tensors(state: dict[str, torch.Tensor], path: str) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)


def save_checkpoint(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: Ema | None,
                    epoch: int, step: int, cfg: TrainConfig) -> None:
    _save_tensors(model.state_dict(), os.path.join(folder, "model.safetensors"))
    if ema is not None:
        _save_tensors(ema.state_dict(model), os.path.join(folder, "ema.safetensors"))
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
    with open(os.path.join(folder, "progress.json"), "w") as f:
        json.dump({"epoch": epoch, "step": step, "ema_updates": ema.updates if ema else 0,
                   "model": dataclasses.asdict(model.config), "config": dataclasses.asdict(cfg)}, f)


def load_checkpoint(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    ema: Ema | None = None) -> tuple[int, int]:
    """Restore what the folder holds into model, optimizer and ema; returns (epoch, step)."""
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True))
    with open(os.path.join(folder, "progress.json")) as f:
        progress = json.load(f)
    if ema is not None:
        averaged = os.path.join(folder, "ema.safetensors")
        ema.load(load_file(averaged) if os.path.exists(averaged) else model.state_dict())
        ema.updates = progress.get("ema_updates", 0)
    return progress["epoch"], progress["step"]


def model_from_checkpoint(folder: str, averaged: bool = True) -> torch.nn.Module:
    """The checkpoint's model with its averaged weights (where it has them) or its raw ones."""
    with open(os.path.join(folder, "progress.json")) as f:
        model = modelstore.build_module(json.load(f)["model"])
    path = os.path.join(folder, "ema.safetensors")
    if not (averaged and os.path.exists(path)):
        path = os.path.join(folder, "model.safetensors")
    model.load_state_dict(load_file(path))
    return model
