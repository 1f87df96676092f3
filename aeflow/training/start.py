"""The model a run starts from: fresh, the --init model as it is, or the --init model grown into the
run's shape (more latent channels or levels, a noise-map input, a hyperprior at every level)."""

from __future__ import annotations

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
    """A fresh model, or the --init model. A codec whose latent channels, levels or entropy model differ
    from the flags is grown into the new shape: matching weights are copied, added latent channels start
    with zero decoder weights, so the grown model first reproduces the old one's pixels."""
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
    if cfg.task == "codec" and model.hyper is not None and model.hyper.z_levels > 1:
        state = hyperprior_for_every_level(state, model.hyper.z_levels)
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


# First layers whose added inputs start at zero weight: a codec's added latent channels, a restorer's added
# input planes, the signed latents beside the magnitudes in a hyperprior's analysis.
GROWN_INPUTS = ("decoder.0.weight", "head.0.weight", "hyper.h_a.0.weight")


@torch.no_grad()
def grow_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy each tensor of `state` into the overlapping slice of the same-named parameter."""
    own = model.state_dict()
    for name, value in state.items():
        if name not in own or own[name].dim() != value.dim():
            continue
        target = own[name]
        if name in GROWN_INPUTS and target.shape != value.shape:
            target.zero_()  # added latent / input channels start unused: the old model's output at first
        region = tuple(slice(0, min(a, b)) for a, b in zip(target.shape, value.shape))
        target[region] = value[region]
