"""What the machine can do, decided at run time: CPU flags, bf16 support, the dtype to compute in.

CPUs differ between machines of the same kind: with AVX512-BF16 or AMX, bf16 matmuls are 3-4.5x
faster than fp32; with AVX2 only, bf16 is emulated and ~100x slower. ``dtype=auto`` therefore picks
bf16 only where the hardware has it (CUDA GPUs with bf16, CPUs with avx512_bf16 / amx_bf16) and fp32
everywhere else. The decision is logged and recorded in the run manifest (``hardware``).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model name and the flags that matter for speed (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    return {"model": model, "flags": sorted(f for f in wanted if f in flags),
            "torch_capability": _torch_capability(), "threads": torch.get_num_threads()}


def _torch_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        return None


def bf16_fast(device: str | torch.device = "cpu") -> bool:
    """True where bf16 compute is hardware-accelerated on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(f in cpu_info()["flags"] for f in BF16_FLAGS)
    return False


def canonical_dtype(name: str) -> str:
    """'bf16' -> 'bfloat16' etc.; 'auto' stays 'auto'. Raises on an unknown name."""
    name = ALIASES.get(str(name), str(name))
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16 (fp32/bf16/fp16)")
    return name


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> str:
    """The concrete dtype name for a ``dtype`` knob: ``auto`` -> bfloat16 where fast, else float32.

    float16 on a CPU is refused (no CPU has fast fp16 matmuls and its range breaks log-probs)."""
    name = canonical_dtype(name)
    device = torch.device(device)
    if name == "auto":
        name = "bfloat16" if bf16_fast(device) else "float32"
    if name == "float16" and device.type == "cpu":
        raise ValueError("dtype float16 is not supported on CPU: use auto, float32 or bfloat16")
    if name == "bfloat16" and device.type == "cpu" and not bf16_fast(device):
        log.warning("dtype bfloat16 on a CPU without AVX512-BF16/AMX (%s): bf16 is emulated there and "
                    "can be ~100x slower than float32; dtype=auto would choose float32", cpu_info()["model"])
    return name


def describe() -> dict:
    """The manifest's ``hardware`` record."""
    info = dict(cpu_info())
    info["bf16_fast_cpu"] = bf16_fast("cpu")
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info
