"""The training step loop that both paths (Ray Train workers and plain PyTorch) run.

It keeps the device busy: bf16 autocast where the processor has it (the entropy model, GDN and the
transforms' outer layers stay fp32 inside the models), channels-last tensors, and no host sync inside
an epoch: losses are summed on the device and read once at its end. An exponential moving average of
the weights is kept beside them; it is what checkpoints and the saved model hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from aeflow import precision
from aeflow.training.config import TrainConfig
from aeflow.training.loss import compute_loss

FAST_PARAMS = ("priors.", "log_gain", "log_inv_gain", "hyper.z_prior.")  # small densities and gains: 10x the lr


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam; the entropy model's densities and the level gains learn 10x faster than the transforms,
    so the rate term tracks the latents within a short (CPU) run."""
    fast, slow = [], []
    for name, p in model.named_parameters():
        (fast if name.startswith(FAST_PARAMS) else slow).append(p)
    groups = [{"params": slow, "lr_scale": 1.0}]
    if fast:
        groups.append({"params": fast, "lr_scale": 10.0})
    return torch.optim.Adam(groups, lr=cfg.lr)


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """lr at `progress` (0..1) through the run: constant, then a cosine fall to 10% over the last
    `cfg.cooldown` of it (the whole run by default; none for a campaign that the EMA carries)."""
    start = 1.0 - cfg.cooldown
    if cfg.cooldown <= 0 or progress < start:
        return cfg.lr
    t = min(1.0, (progress - start) / cfg.cooldown)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


class Ema:
    """Moving average of a model's parameters, decay warmed up as (1 + n) / (10 + n) over its updates."""

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.names = [n for n, _ in model.named_parameters()]
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in model.parameters()], 1.0 - decay)

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged parameters in place of its own."""
        state = dict(model.state_dict())
        state.update(zip(self.names, self.shadow))
        return state

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in zip(self.names, self.shadow):
            value.copy_(state[name])


def prepare(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on its device in channels-last layout (faster convolutions on CPUs and GPUs)."""
    return model.to(device=device, memory_format=torch.channels_last)


def for_steps(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The module the steps call: the model itself, or its torch.compile'd form (same parameters)."""
    return torch.compile(model) if cfg.compile else model


def train_epoch(cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: Ema | None,
                batches: Iterable[torch.Tensor], step: int, device: torch.device, lr: float) -> tuple[int, dict]:
    """One pass over `batches` (uint8 NHWC crops) at base rate `lr`; returns the new step count and the
    epoch's mean metrics (read from the device once, here at the end)."""
    model.train()
    bf16 = precision.use_bf16(cfg.precision, device)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for batch in batches:
        # NHWC uint8 -> NCHW float whose memory stays NHWC: channels-last without a copy
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        with precision.autocast(bf16, device):
            loss, metrics = compute_loss(cfg, model, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        warm = min(1.0, (step + 1) / max(1, cfg.warmup))
        for group in optimizer.param_groups:
            group["lr"] = lr * warm * group["lr_scale"]
        optimizer.step()
        if ema is not None:
            ema.update(model)
        for k, v in {"loss": loss.detach(), **metrics}.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        n += 1
        step += 1
    means = {k: (v / max(n, 1)).item() for k, v in sums.items()}
    mse = means.pop("mse", 0.0)
    out = {"loss": means.get("loss", float("nan")), "psnr": 10 * math.log10(1 / max(mse, 1e-10)), "batches": n,
           "precision": "bf16" if bf16 else "fp32"}
    if cfg.task in ("codec", "hyperprior"):  # codec: mean over the levels drawn, a progress signal
        out["bpp"] = means.get("bpp", float("nan"))
    if cfg.task == "hyperprior":  # rate only: the fixed transforms' distortion is not measured
        del out["psnr"]
    return step, out
