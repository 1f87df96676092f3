"""The model a run starts from: fresh, the --init model as it is, or the --init model grown into the
run's shape (wider layers, more latent channels or levels, a noise-map input, a hyperprior at every level)."""

from __future__ import annotations

import numpy as np
import torch

from aeflow import degrade, modelstore
from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig, ResidualUNet, ResidualUNetConfig
from aeflow.training.config import TASKS, TrainConfig


def new_model(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.task == "hyperprior":
        raise ValueError("--task hyperprior trains the scale hyperprior of an existing codec: pass --init")
    if cfg.task == "codec":
        return ConvAutoencoder(ConvAutoencoderConfig(
            channels=cfg.channels, latent_channels=cfg.latent_channels, lambdas=cfg.lmbda,
            hyperprior=not cfg.factorized, hyperprior_levels="top" if cfg.factorized else "all",
            hyperprior_signed=not cfg.factorized))
    if cfg.task in degrade.TASKS:
        noise_map = cfg.noise_map and cfg.task == "denoise"
        return ResidualUNet(ResidualUNetConfig(task=cfg.task, width=cfg.width, noise_map=noise_map,
                                               in_channels=4 if cfg.task == "inpaint" or noise_map else 3))
    raise ValueError(f"unknown task {cfg.task!r}: one of {', '.join(TASKS)}")


def initial_model(cfg: TrainConfig) -> torch.nn.Module:
    """A fresh model, or the --init model. A codec whose width, latent channels, levels or entropy model
    differ from the flags is grown into the new shape: matching weights are copied and every added channel
    starts with zero weight into the old ones, so the grown model first reproduces the old one's pixels."""
    if not cfg.init:
        return new_model(cfg)
    config, state = modelstore.load_state(cfg.init)
    if cfg.task == "hyperprior":  # the codec as it is, plus a hyperprior that alone learns
        if config.get("kind") != "codec":
            raise ValueError(f"--init {cfg.init}: a {config.get('kind')} model; --task hyperprior needs a codec")
        model = modelstore.build_module({**config, "hyperprior": True})
        model.load_state_dict(state, strict=False)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("hyper."))
        return model
    if cfg.task != "codec":  # a restorer may start from another task's weights (same network)
        config = {**config, "task": cfg.task}
    saved, model = modelstore.build_module(config), new_model(cfg)
    inputs = (saved.config.in_channels, saved.config.noise_map) if cfg.task != "codec" else None
    same = (saved.config == model.config if cfg.task == "codec"
            else inputs == (model.config.in_channels, model.config.noise_map))
    if same:
        saved.load_state_dict(state)
        return saved
    if cfg.task == "codec" and model.hyper is not None and model.hyper.z_levels > 1 and (
            saved.hyper is None or saved.hyper.z_levels == 1):
        state = hyperprior_for_every_level(state, model.hyper.z_levels)
    elif cfg.task == "codec" and saved.config.lambdas != model.config.lambdas:
        state = levels_by_lambda(state, saved.config.lambdas, model.config.lambdas)
    grow_into(model, state)  # e.g. inpainting's mask or a noise map as an extra channel on a denoiser's weights
    return model


def hyperprior_for_every_level(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A top-level hyperprior's weights as the start of one that codes every level: h_a and h_s are
    shared as they are, and its z prior starts as every level's z prior."""
    out = {}
    for name, value in state.items():
        if name.startswith("hyper.z_prior."):
            value = value.repeat(levels, *([1] * (value.dim() - 1)))
        out[name] = value
    return out


def levels_by_lambda(state: dict[str, torch.Tensor], old: tuple[float, ...],
                     new: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """A codec's per-level weights moved to a new set of lambdas (a wider or denser range of quality levels):
    a level whose lambda the old codec has keeps that level's weights; another starts with log-gains
    interpolated (or extrapolated) in log-lambda between its neighbours and the entropy model of the
    nearest one, so it codes at a rate between theirs from the first step."""
    x_old, x_new = np.log(old), np.log(new)
    nearest = [int(np.argmin(np.abs(x_old - x))) for x in x_new]
    out = {k: v for k, v in state.items() if not k.startswith("priors.")}
    for name in ("log_gain", "log_inv_gain"):
        rows = state[name].double().numpy()
        if len(old) == 1:
            out[name] = torch.from_numpy(rows[[0] * len(new)]).float()
            continue
        below = np.clip(np.searchsorted(x_old, x_new) - 1, 0, len(old) - 2)  # the segment each lambda is on
        t = ((x_new - x_old[below]) / (x_old[below + 1] - x_old[below]))[:, None]
        out[name] = torch.from_numpy(rows[below] * (1 - t) + rows[below + 1] * t).float()
    for name, value in state.items():
        if name.startswith("hyper.z_prior."):  # level-major blocks of the hyper channels
            blocks = value.reshape(len(old), -1, *value.shape[1:])
            out[name] = blocks[nearest].reshape(-1, *value.shape[1:]).clone()
    for j, i in enumerate(nearest):  # a factorized prior per level: priors.<level>.<parameter>
        prefix = f"priors.{i}."
        out.update({f"priors.{j}.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)})
    return out


@torch.no_grad()
def grow_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy each tensor of `state` into the overlapping slice of the same-named parameter. Where a layer
    gained inputs (wider layers, added latent channels or input planes, the signed latents beside the
    magnitudes in a hyperprior's analysis), the weights from them into its old outputs start at zero, so
    the old outputs are unchanged; added outputs keep their fresh initialisation."""
    own = model.state_dict()
    transposed = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    for name, value in state.items():
        if name not in own or own[name].dim() != value.dim():
            continue
        target = own[name]
        if target.dim() >= 2 and target.shape != value.shape:
            out_dim, in_dim = (1, 0) if name in transposed else (0, 1)  # ConvTranspose2d weights are (in, out, ...)
            new_inputs = [slice(None)] * target.dim()
            new_inputs[out_dim] = slice(0, value.shape[out_dim])
            new_inputs[in_dim] = slice(value.shape[in_dim], None)
            target[tuple(new_inputs)] = 0
        region = tuple(slice(0, min(a, b)) for a, b in zip(target.shape, value.shape))
        target[region] = value[region]
