"""Training: one per-worker loop that runs inside Ray Train (TorchTrainer) or as plain PyTorch.

Ray path: a Ray Dataset of random crops read from an image URI feeds `TorchTrainer` workers; each
epoch ends with a checkpoint in `--storage` (local or s3://), and a re-run with the same storage and
name resumes from the latest one. Plain path (`--no-ray`, for machines without Ray such as a lent
GPU box): the same step function over crops cut from images held in memory, with its own checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from aeflow import degrade, heap, images, modelstore, resources, storage
from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig, ResidualUNet, ResidualUNetConfig
from aeflow.models.autoencoder import DEFAULT_LAMBDAS
from aeflow.models.restorer import with_noise_map

TASKS = ("codec", "hyperprior", *degrade.TASKS)  # hyperprior: the top level's, on a fixed --init codec


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; recorded in the model's config.json."""

    task: str = "codec"
    data: str = ""  # image URI to cut crops from
    out: str = ""  # model folder URI written at the end
    storage: str = ""  # checkpoint URI; default: <out>-checkpoints
    name: str = "run"  # run name under storage; same storage + name = resume
    workers: int = 1
    use_gpu: bool = False
    epochs: int = 10
    batch_size: int = 16
    crop: int = 128
    crops_per_image: int = 16
    lr: float = 1e-3
    seed: int = 0
    init: str = ""  # model (URI or shipped name) to start from
    lmbda: tuple[float, ...] = DEFAULT_LAMBDAS  # codec: one quality level per lambda (bits + lambda*255^2*MSE)
    sigma_max: float = 50.0  # denoise: noise std drawn uniformly in [0, sigma_max] (0-255 scale)
    noise_map: bool = False  # denoise: the model also takes the noise std as an input plane (FFDNet)
    channels: int = 64  # codec width
    latent_channels: int = 128
    width: int = 32  # restorer width
    warmup: int = 500  # steps of linear lr warm-up (grown or fresh weights take large first Adam steps)
    max_failures: int = 3  # Ray Train: worker failures survived by restoring the latest checkpoint
    no_ray: bool = False
    threads: int = 0  # torch threads per worker; 0 = from the CPUs given to it

    def __post_init__(self):
        object.__setattr__(self, "lmbda", tuple(float(v) for v in self.lmbda))

    def storage_uri(self) -> str:
        return self.storage or self.out.rstrip("/") + "-checkpoints"


def new_model(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.task == "hyperprior":
        raise ValueError("--task hyperprior trains the scale hyperprior of an existing codec: pass --init")
    if cfg.task == "codec":
        return ConvAutoencoder(ConvAutoencoderConfig(channels=cfg.channels, latent_channels=cfg.latent_channels,
                                                     lambdas=cfg.lmbda))
    if cfg.task in degrade.TASKS:
        noise_map = cfg.noise_map and cfg.task == "denoise"
        return ResidualUNet(ResidualUNetConfig(task=cfg.task, width=cfg.width, noise_map=noise_map,
                                               in_channels=4 if cfg.task == "inpaint" or noise_map else 3))
    raise ValueError(f"unknown task {cfg.task!r}: one of {', '.join(TASKS)}")


def initial_model(cfg: TrainConfig) -> torch.nn.Module:
    """A fresh model, or the --init model. A codec whose latent channels or levels differ from the
    flags is grown into the new shape: matching weights are copied, added latent channels start with
    zero decoder weights, so the grown model first reproduces the old one's pixels."""
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
    grow_into(model, state)  # e.g. inpainting's mask or a noise map as an extra channel on a denoiser's weights
    return model


@torch.no_grad()
def grow_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy each tensor of `state` into the overlapping slice of the same-named parameter."""
    own = model.state_dict()
    for name, value in state.items():
        if name not in own or own[name].dim() != value.dim():
            continue
        target = own[name]
        if name in ("decoder.0.weight", "head.0.weight") and target.shape != value.shape:
            target.zero_()  # added latent / input channels start unused: the old model's output at first
        region = tuple(slice(0, min(a, b)) for a, b in zip(target.shape, value.shape))
        target[region] = value[region]


def compute_loss(cfg: TrainConfig, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """x: clean crops (B, 3, H, W) in [0, 1] -> (loss, metrics)."""
    if cfg.task == "hyperprior":  # the top level only, rate only: the transforms (so the distortion) are fixed
        bare = model.module if hasattr(model, "module") else model
        levels = torch.full((x.shape[0],), bare.levels - 1, device=x.device)
        _, bits = model(x, levels, decode=False)
        bpp = bits / (x.shape[-1] * x.shape[-2])
        return bpp.mean(), {"mse": torch.zeros((), device=x.device), "bpp": bpp.mean().detach()}
    if cfg.task == "codec":
        bare = model.module if hasattr(model, "module") else model
        levels = torch.randint(0, bare.levels, (x.shape[0],), device=x.device)
        x_hat, bits = model(x, levels)
        per_image = (x_hat - x).pow(2).mean(dim=(1, 2, 3))
        lmbda = torch.tensor(bare.config.lambdas, device=x.device)[levels]
        bpp = bits / (x.shape[-1] * x.shape[-2])
        loss = (bpp + lmbda * 255**2 * per_image).mean()
        return loss, {"mse": per_image.mean().detach(), "bpp": bpp.mean().detach()}
    else:
        x, degraded = degrade.sample(cfg.task, x, sigma_max=cfg.sigma_max)
        bare = model.module if hasattr(model, "module") else model
        if bare.config.noise_map:  # the noise each crop really got (sensor noise included), 0-255
            degraded = with_noise_map(degraded, (degraded - x).std(dim=(1, 2, 3)) * 255)
        out = model(degraded)
        mse = F.mse_loss(out, x)
        loss = mse
        if cfg.task == "inpaint":  # known pixels are easy: weight the holes 10x
            loss = ((out - x) ** 2 * (1 + 9 * degraded[:, 3:])).mean()
    return loss, {"mse": mse.detach()}


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


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Cosine decay to 10% of lr over the run's epochs: the cool-down that learned codecs need."""
    t = epoch / max(1, cfg.epochs - 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_epoch(cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                batches: Iterable[torch.Tensor], step: int, device: torch.device) -> tuple[int, dict]:
    """One pass over `batches` (uint8 NHWC crops); returns the new step count and mean metrics."""
    model.train()
    total = torch.zeros((), device=device)
    total_mse = torch.zeros((), device=device)
    total_bpp = torch.zeros((), device=device)
    n = 0
    for batch in batches:
        x = batch.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        loss, metrics = compute_loss(cfg, model, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * min(1.0, (step + 1) / max(1, cfg.warmup))
        optimizer.step()
        total += loss.detach()
        total_mse += metrics["mse"]
        total_bpp += metrics.get("bpp", 0.0)
        n += 1
        step += 1
    mse = (total_mse / max(n, 1)).item()
    out = {"loss": (total / max(n, 1)).item(), "psnr": 10 * math.log10(1 / max(mse, 1e-10)), "batches": n}
    if cfg.task in ("codec", "hyperprior"):  # codec: mean over the levels drawn, a progress signal
        out["bpp"] = (total_bpp / max(n, 1)).item()
    if cfg.task == "hyperprior":  # rate only: the fixed transforms' distortion is not measured
        del out["psnr"]
    return step, out


# --- checkpoints: safetensors for weights, weights_only torch.load for the optimizer -------------

def save_checkpoint(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, step: int, cfg: TrainConfig) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, "model.safetensors"))
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
    with open(os.path.join(folder, "progress.json"), "w") as f:
        json.dump({"epoch": epoch, "step": step, "model": dataclasses.asdict(model.config),
                   "config": dataclasses.asdict(cfg)}, f)


def load_checkpoint(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[int, int]:
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True))
    with open(os.path.join(folder, "progress.json")) as f:
        progress = json.load(f)
    return progress["epoch"], progress["step"]


def model_from_checkpoint(folder: str) -> torch.nn.Module:
    with open(os.path.join(folder, "progress.json")) as f:
        model = modelstore.build_module(json.load(f)["model"])
    load_checkpoint(folder, model, None)
    return model


# --- crops ----------------------------------------------------------------------------------------

def random_crops(arr: np.ndarray, size: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n random size x size crops (random flips) of an HxWx3 image; small images are upscaled first."""
    h, w = arr.shape[:2]
    if min(h, w) < size:
        from PIL import Image

        scale = size / min(h, w)
        arr = np.asarray(Image.fromarray(arr).resize((max(size, round(w * scale)), max(size, round(h * scale)))))
        h, w = arr.shape[:2]
    out = []
    for _ in range(n):
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        c = arr[y:y + size, x:x + size]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        out.append(np.ascontiguousarray(c))
    return out


def image_paths(uri: str, options: storage.StorageOptions) -> tuple[object, list[str]]:
    fs, root = storage.filesystem(uri, options)
    base = storage.input_root(fs, root)
    keys = [k for k in storage.list_files(fs, root) if images.is_image_key(k)]
    if not keys:
        raise FileNotFoundError(f"no images under {uri}")
    return fs, [storage.join(base, k) for k in keys]


def load_photos(uri: str, options: storage.StorageOptions) -> list[np.ndarray]:
    """Decode every image under uri into memory (the plain path and the prior fit use this)."""
    fs, paths = image_paths(uri, options)
    photos = []
    for p in paths:
        try:
            photos.append(images.decode_image(fs.cat_file(p))[0])
        except images.ImageError as e:
            print(f"skipping {p}: {e}")
    return photos


def crops_dataset(cfg: TrainConfig, options: storage.StorageOptions, task_cpus: float = 1.0):
    """A Ray Dataset of random crops: read bytes -> decode -> crops_per_image crops per image.
    The dataset is re-executed each epoch, so each epoch sees fresh crops. Its tasks take `task_cpus`
    each: less than 1 where the Train workers leave less (resources.cpu_per_data_task)."""
    import ray.data

    fs, paths = image_paths(cfg.data, options)
    size, n = cfg.crop, cfg.crops_per_image

    def to_crops(row: dict) -> list[dict]:
        try:
            arr, _ = images.decode_image(row["bytes"])
        except images.ImageError:
            return []
        return [{"crop": c} for c in random_crops(arr, size, n, np.random.default_rng())]

    ds = ray.data.read_binary_files(paths, filesystem=storage.arrow_filesystem(fs),
                                    ray_remote_args={"num_cpus": task_cpus})
    return ds.flat_map(to_crops, num_cpus=task_cpus)


# --- Ray Train worker -------------------------------------------------------------------------------

def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config)
    heap.keep_freed_memory()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    model = initial_model(cfg)
    optimizer = make_optimizer(cfg, model)
    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start_epoch, step = load_checkpoint(folder, model, optimizer)
        print(f"rank {rank}: resuming from checkpoint at epoch {start_epoch}, step {step}", flush=True)
    device = ray.train.torch.get_device()
    # Each step draws some quality levels; the priors of the others get no gradient that step.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.epochs):
        for group in optimizer.param_groups:
            group["base_lr"] = lr_at(cfg, epoch) * group["lr_scale"]
        batches = (b["crop"] for b in shard.iter_torch_batches(
            batch_size=cfg.batch_size, drop_last=True, local_shuffle_buffer_size=8 * cfg.batch_size))
        step, metrics = train_epoch(cfg, model, optimizer, batches, step, device)
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                bare = model.module if hasattr(model, "module") else model
                save_checkpoint(folder, bare, optimizer, epoch + 1, step, cfg)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"epoch": epoch + 1, "step": step, "start_epoch": start_epoch, **metrics},
                             checkpoint=ckpt)


def _train_ray(cfg: TrainConfig, options: storage.StorageOptions) -> tuple[torch.nn.Module, dict]:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    total_cpus, nodes = ray.cluster_resources().get("CPU", 1), resources.cpu_nodes()
    # a placement group refuses an all-zero bundle: hence the floor on a 1-CPU machine
    per_worker = 1.0 if cfg.use_gpu else resources.cpu_per_actor(total_cpus, nodes, cfg.workers, floor=0.01)
    task_cpus = resources.cpu_per_data_task(total_cpus, nodes, per_worker * cfg.workers)
    if not cfg.threads:
        cfg = dataclasses.replace(cfg, threads=max(1, int(per_worker)))
    fs, ckpt_root = storage.filesystem(cfg.storage_uri(), options)
    scheme, _ = storage.split_uri(cfg.storage_uri())
    run_config = RunConfig(
        name=cfg.name,
        storage_path=ckpt_root,
        storage_filesystem=storage.arrow_filesystem(fs) if scheme != "file" else None,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        worker_runtime_env={"env_vars": dict(heap.ONE_ARENA)},  # the loop runs in a worker thread (aeflow.heap)
    )
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=dataclasses.asdict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": per_worker}),
        run_config=run_config,
        datasets={"train": crops_dataset(cfg, options, task_cpus)},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        model = model_from_checkpoint(folder)
    return model, dict(result.metrics or {})


# --- plain PyTorch (no Ray) -----------------------------------------------------------------------

def _train_plain(cfg: TrainConfig, options: storage.StorageOptions) -> tuple[torch.nn.Module, dict]:
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    heap.keep_freed_memory()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    photos = load_photos(cfg.data, options)
    torch.manual_seed(cfg.seed)
    model = initial_model(cfg).to(device)
    optimizer = make_optimizer(cfg, model)
    ckpt_fs, ckpt_root = storage.filesystem(cfg.storage_uri(), options)
    ckpt_dir = storage.join(storage.join(ckpt_root, cfg.name), "plain-checkpoint")
    start_epoch, step = 0, 0
    if ckpt_fs.exists(storage.join(ckpt_dir, "progress.json")):
        with tempfile.TemporaryDirectory() as tmp:
            for f in ("model.safetensors", "optimizer.pt", "progress.json"):
                ckpt_fs.get(storage.join(ckpt_dir, f), os.path.join(tmp, f))
            start_epoch, step = load_checkpoint(tmp, model, optimizer)
        print(f"resuming {cfg.name} from epoch {start_epoch}, step {step}")
    per_epoch = len(photos) * cfg.crops_per_image // cfg.batch_size
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        for group in optimizer.param_groups:
            group["base_lr"] = lr_at(cfg, epoch) * group["lr_scale"]
        rng = np.random.default_rng([cfg.seed, epoch])

        def batches(rng: np.random.Generator):
            for _ in range(per_epoch):
                idx = rng.integers(0, len(photos), cfg.batch_size)
                crops = [random_crops(photos[i], cfg.crop, 1, rng)[0] for i in idx]
                yield torch.from_numpy(np.stack(crops))

        t0 = time.time()
        step, metrics = train_epoch(cfg, model, optimizer, batches(rng), step, device)
        metrics = {"epoch": epoch + 1, "step": step, "start_epoch": start_epoch, **metrics}
        print(json.dumps({**metrics, "seconds": round(time.time() - t0, 1)}), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, model, optimizer, epoch + 1, step, cfg)
            ckpt_fs.makedirs(ckpt_dir, exist_ok=True)
            for f in ("model.safetensors", "optimizer.pt", "progress.json"):
                ckpt_fs.put(os.path.join(tmp, f), storage.join(ckpt_dir, f))
    return model.cpu(), metrics


# --- the generative prior -------------------------------------------------------------------------

GEN_SIZE = 128
PRIOR_COMPONENTS = 64


@torch.no_grad()
def fit_prior(model: ConvAutoencoder, photos: list[np.ndarray], n_crops: int = 2048, seed: int = 0) -> dict:
    """A Gaussian over the latents of GEN_SIZE crops, kept to its top principal components
    (probabilistic PCA): enough for `aeflow generate` to sample plausible latents."""
    rng = np.random.default_rng(seed)
    model.eval()
    ys = []
    per = max(1, n_crops // len(photos))
    for p in photos:
        crops = np.stack(random_crops(p, GEN_SIZE, per, rng))
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
        ys.append(model.encode(x).flatten(1))
    y = torch.cat(ys)
    mean = y.mean(0)
    _, s, vt = torch.linalg.svd(y - mean, full_matrices=False)
    k = min(PRIOR_COMPONENTS, vt.shape[0])
    std = s[:k] / math.sqrt(max(1, y.shape[0] - 1))
    shape = torch.tensor(model.encode(torch.zeros(1, 3, GEN_SIZE, GEN_SIZE)).shape[1:])
    return {"prior_mean": mean, "prior_basis": vt[:k] * std[:, None], "prior_shape": shape.float()}


def train(cfg: TrainConfig, options: storage.StorageOptions = storage.StorageOptions()) -> dict:
    """Train (Ray Train, or plain PyTorch with cfg.no_ray), then write the model folder to cfg.out.
    Returns the final metrics plus the model's fingerprint."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}: one of {', '.join(TASKS)}")
    if not cfg.out:
        raise ValueError("--out is required: the model folder to write")
    t0 = time.time()
    model, metrics = _train_plain(cfg, options) if cfg.no_ray else _train_ray(cfg, options)
    extra = None
    if cfg.task in ("codec", "hyperprior"):
        extra = fit_prior(model, load_photos(cfg.data, options), seed=cfg.seed)
    record = {"config": dataclasses.asdict(cfg), "final": metrics, "seconds": round(time.time() - t0, 1)}
    fp = modelstore.save_model(model, cfg.out, training=record, extra=extra, options=options)
    return {**metrics, "fingerprint": fp, "out": cfg.out}
