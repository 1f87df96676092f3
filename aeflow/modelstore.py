"""The one model loader: a model is a folder (local or s3://) holding model.safetensors + config.json,
or the name of a model shipped inside the package (aeflow/weights/<name>/)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import aeflow
from aeflow import storage
from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig, ResidualUNet, ResidualUNetConfig
from aeflow.models.entropy import export_tables

SHIPPED_DIR = Path(__file__).parent / "weights"
DEFAULT_CODEC = "codec-default"
DEFAULT_RESTORERS = {"denoise": "denoise-default", "deblock": "deblock-default", "deblur": "deblur-default",
                     "inpaint": "inpaint-default"}


@dataclass
class LoadedModel:
    """A model ready for inference, with what identifies it."""

    module: torch.nn.Module
    kind: str  # "codec" | "restore"
    config: dict  # the model section of config.json
    fingerprint: str
    source: str  # the URI or shipped name it came from
    extra: dict  # other tensors stored beside the weights (e.g. the entropy coder's integer tables)
    meta: dict  # the whole config.json (training record included)


def build_module(model_config: dict) -> torch.nn.Module:
    """Instantiate the torch module a config describes."""
    kind = model_config.get("kind")
    if kind == "codec":
        return ConvAutoencoder(ConvAutoencoderConfig(**model_config))
    if kind == "restore":
        return ResidualUNet(ResidualUNetConfig(**model_config))
    raise ValueError(f"unknown model kind {kind!r} in config.json")


def fingerprint(weights: bytes, model_config: dict) -> str:
    """First 16 hex digits of SHA-256 over the weights file and the canonical model config."""
    h = hashlib.sha256(weights)
    h.update(json.dumps(model_config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def save_model(module: torch.nn.Module, out_uri: str, training: dict | None = None,
               extra: dict[str, torch.Tensor] | None = None,
               options: storage.StorageOptions = storage.StorageOptions()) -> str:
    """Write fp16 weights (plus `extra` tensors under 'extra.' names) and config.json; returns the
    fingerprint. fp16 halves the shipped size; inference upcasts to fp32."""
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()}
    extra = dict(extra or {})
    if module.config.kind == "codec":  # the coder's integer tables, fixed here once and for all
        if len(module.priors):  # the factorized priors' tables (none where the hyperprior codes every level)
            extra.update(export_tables(list(module.priors)))
        if module.hyper is not None:  # the hyperprior's tables and fixed-point h_s
            extra.update(module.hyper.export())
    for k, v in extra.items():
        v = v.detach().cpu()
        tensors[f"extra.{k}"] = (v if not v.is_floating_point() else v.to(torch.float16)).contiguous()
    weights = save_safetensors(tensors)
    model_config = dataclasses.asdict(module.config)
    fs, root = storage.filesystem(out_uri, options)
    fs.makedirs(root, exist_ok=True)
    fp = fingerprint(weights, model_config)
    meta = {"model": model_config, "fingerprint": fp, "training": training or {}}
    storage.write_bytes(fs, storage.join(root, "model.safetensors"), weights)
    storage.write_bytes(fs, storage.join(root, "config.json"), json.dumps(meta, indent=1).encode())
    return fp


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "model.safetensors").exists())


def _read(model: str, options: storage.StorageOptions) -> tuple[bytes, bytes, str]:
    if "/" not in model and "\\" not in model and (SHIPPED_DIR / model).is_dir():
        folder = SHIPPED_DIR / model
        return (folder / "model.safetensors").read_bytes(), (folder / "config.json").read_bytes(), model
    fs, root = storage.filesystem(model, options)
    try:
        weights = fs.cat_file(storage.join(root, "model.safetensors"))
        config = fs.cat_file(storage.join(root, "config.json"))
    except FileNotFoundError:
        names = ", ".join(shipped_names()) or "none"
        raise FileNotFoundError(
            f"model {model!r}: no model.safetensors + config.json there (shipped models: {names})"
        ) from None
    return weights, config, model


def load_state(model: str, options: storage.StorageOptions = storage.StorageOptions()) -> tuple[dict, dict]:
    """(model config, fp32 weights) of a model without building it: for growing it into a new shape."""
    weights, config_bytes, _ = _read(model, options)
    tensors = load_safetensors(weights)
    return json.loads(config_bytes)["model"], {k: v.float() for k, v in tensors.items() if not k.startswith("extra.")}


def load_model(model: str, options: storage.StorageOptions = storage.StorageOptions()) -> LoadedModel:
    """Load a model by shipped name or folder URI. Only safetensors are read: nothing is unpickled."""
    weights, config_bytes, source = _read(model, options)
    meta = json.loads(config_bytes)
    model_config = meta["model"]
    tensors = load_safetensors(weights)
    extra = {k[len("extra."):]: v.float() if v.is_floating_point() else v
             for k, v in tensors.items() if k.startswith("extra.")}
    state = {k: v.float() for k, v in tensors.items() if not k.startswith("extra.")}
    module = build_module(model_config)
    module.load_state_dict(state)
    module.eval()
    return LoadedModel(module, model_config["kind"], model_config, fingerprint(weights, model_config),
                       source, extra, meta)


def retired_fingerprints() -> dict[str, str]:
    """fingerprint -> the aeflow version that last shipped it, for codecs no longer in the package
    (aeflow/weights/retired.json; docs/models.md lists them)."""
    path = SHIPPED_DIR / "retired.json"
    return {fp: entry["version"] for fp, entry in json.loads(path.read_text()).items()} if path.exists() else {}


def shipped_for_fingerprint(fp: str, shipped: dict[str, str]) -> str:
    """The shipped model name that wrote a row with fingerprint fp (`shipped` from shipped_fingerprints);
    ValueError naming the version to install where the codec was retired."""
    if fp in shipped:
        return shipped[fp]
    retired = retired_fingerprints()
    if fp in retired:
        raise ValueError(f"row was encoded by codec {fp}, retired from this aeflow ({aeflow.__version__}); "
                         f"aeflow {retired[fp]} shipped it: decode with `pip install aeflow=={retired[fp]}`")
    raise ValueError(f"row was encoded by model {fp}, which matches no shipped model; pass --model")


def shipped_fingerprints() -> dict[str, str]:
    """fingerprint -> shipped model name, for decompress to find the model that wrote a row."""
    out = {}
    for name in shipped_names():
        folder = SHIPPED_DIR / name
        meta = json.loads((folder / "config.json").read_text())
        out[fingerprint((folder / "model.safetensors").read_bytes(), meta["model"])] = name
    return out
