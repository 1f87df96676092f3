"""Which float type the models' convolutions run in: bf16 only where the processor computes it natively
(AVX512_BF16 or AMX on x86, or a GPU that has it); elsewhere bf16 is emulated and slower than fp32. And
torch.compile for long inference jobs."""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """precision: "auto" | "bf16" | "fp32"."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(enabled: bool, device: torch.device):
    """A bf16 autocast context on `device`, or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compile_model(module: torch.nn.Module) -> None:
    """torch.compile (inductor, shapes dynamic) a codec's transforms or a restorer, in place: fuses the
    elementwise work (GDN's normalisation, activations) around the convolutions."""
    if hasattr(module, "encoder"):
        module.encoder.compile(dynamic=True)
        module.decoder.compile(dynamic=True)
    else:
        module.compile(dynamic=True)
