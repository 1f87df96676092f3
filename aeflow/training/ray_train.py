"""Training inside Ray Train: a Ray Dataset of random crops feeds TorchTrainer workers; each epoch ends
with a checkpoint in the run's storage (local or s3://), and a re-run with the same storage and name
resumes from the latest one."""

from __future__ import annotations

import dataclasses
import tempfile

import torch

from aeflow import storage
from aeflow.pipeline import runtime
from aeflow.training.checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from aeflow.training.config import TrainConfig
from aeflow.training.crops import crops_dataset
from aeflow.training.loop import Ema, for_steps, lr_at, make_optimizer, prepare, train_epoch
from aeflow.training.start import initial_model


def _worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config)
    runtime.keep_freed_memory()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    device = ray.train.torch.get_device()
    model = prepare(initial_model(cfg), device)
    optimizer = make_optimizer(cfg, model)
    ema = Ema(model, cfg.ema) if cfg.ema > 0 else None
    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start_epoch, step = load_checkpoint(folder, model, optimizer, ema)
        print(f"rank {rank}: resuming from checkpoint at epoch {start_epoch}, step {step}", flush=True)
    # Each step draws some quality levels; the priors of the others get no gradient that step.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    bare = model.module if hasattr(model, "module") else model
    stepping = for_steps(cfg, model)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.epochs):
        batches = (b["crop"] for b in shard.iter_torch_batches(
            batch_size=cfg.batch_size, drop_last=True, local_shuffle_buffer_size=8 * cfg.batch_size))
        lr = lr_at(cfg, epoch / max(1, cfg.epochs - 1))
        step, metrics = train_epoch(cfg, stepping, optimizer, ema, batches, step, device, lr)
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                save_checkpoint(folder, bare, optimizer, ema, epoch + 1, step, cfg)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"epoch": epoch + 1, "step": step, "start_epoch": start_epoch, **metrics},
                             checkpoint=ckpt)


def train_ray(cfg: TrainConfig, options: storage.StorageOptions) -> tuple[torch.nn.Module, dict]:
    """Run cfg on the Ray cluster; returns the final (averaged) model and the last metrics."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    total_cpus, nodes = ray.cluster_resources().get("CPU", 1), runtime.cpu_nodes()
    # a placement group refuses an all-zero bundle: hence the floor on a 1-CPU machine
    per_worker = 1.0 if cfg.use_gpu else runtime.cpu_per_actor(total_cpus, nodes, cfg.workers, floor=0.01)
    task_cpus = runtime.cpu_per_data_task(total_cpus, nodes, per_worker * cfg.workers)
    if not cfg.threads:
        cfg = dataclasses.replace(cfg, threads=max(1, int(per_worker)))
    fs, ckpt_root = storage.filesystem(cfg.storage_uri(), options)
    scheme, _ = storage.split_uri(cfg.storage_uri())
    run_config = RunConfig(
        name=cfg.name,
        storage_path=ckpt_root,
        storage_filesystem=storage.arrow_filesystem(fs) if scheme != "file" else None,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        worker_runtime_env={"env_vars": dict(runtime.ONE_ARENA)},  # the loop runs in a worker thread
    )
    trainer = TorchTrainer(
        _worker,
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
