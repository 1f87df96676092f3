"""The training run's configuration: one frozen dataclass, recorded in the model's config.json."""

from __future__ import annotations

from dataclasses import dataclass

from aeflow import degrade
from aeflow.models.autoencoder import DEFAULT_LAMBDAS

TASKS = ("codec", "hyperprior", *degrade.TASKS)  # hyperprior: the top level's, on a fixed --init codec
PRECISIONS = ("auto", "bf16", "fp32")


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
    steps_per_epoch: int = 0  # plain loop: steps between checkpoints; 0 = images * crops_per_image / batch_size
    batch_size: int = 16
    crop: int = 128
    crops_per_image: int = 16
    scale_min: float = 1.0  # crops are cut at a random scale in [scale_min, 1] of the photo (then resized)
    lr: float = 1e-3
    cooldown: float = 1.0  # share of the run, at its end, over which lr falls (cosine) to 10%; 0 = constant
    ema: float = 0.999  # decay of the weights' moving average, which is what is saved; 0 = the raw weights
    precision: str = "auto"  # bf16 autocast where the processor has it natively (auto), or bf16 / fp32
    compile: bool = False  # torch.compile the model (fuses GDN's elementwise work; about 40 s to start)
    seed: int = 0
    init: str = ""  # model (URI or shipped name) to start from
    lmbda: tuple[float, ...] = DEFAULT_LAMBDAS  # codec: one quality level per lambda (bits + lambda*255^2*MSE)
    factorized: bool = False  # codec: factorized priors per level instead of a hyperprior coding every level
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: one of {', '.join(PRECISIONS)}")

    def storage_uri(self) -> str:
        return self.storage or self.out.rstrip("/") + "-checkpoints"
