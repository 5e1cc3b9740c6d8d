"""Device and dtype policy: which device to run on, whether to autocast, and *why*.

Everything device-specific is decided here and returned with a reason, so the rest of diji stays
vendor-neutral (it never names a device type itself).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from diji.compute.backends import backend_for, load_plugins
from diji.compute.fallback import FALLBACKS
from diji.errors import DijiError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str


def _accelerator() -> torch.device | None:
    """The current accelerator through PyTorch's device-plugin API (cuda, xpu, npu, mps, …), if any."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None and acc.is_available():
        return acc.current_accelerator()
    return None


def select_device(requested: str = "auto") -> DeviceChoice:
    """Resolve 'auto' / an explicit device string; the DIJI_DEVICE environment variable wins over both."""
    load_plugins()
    env = os.environ.get("DIJI_DEVICE")
    if env:
        requested, source = env, "DIJI_DEVICE"
    else:
        source = "config"
    if requested == "auto":
        acc = _accelerator()
        if acc is not None:
            return DeviceChoice(acc, f"auto: accelerator '{acc.type}' found through torch.accelerator")
        return DeviceChoice(torch.device("cpu"), "auto: no accelerator visible to torch, using the CPU")
    try:
        dev = torch.device(requested)
        torch.empty(1, device=dev)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DijiError(f"device '{requested}' (from {source}) is not usable here: {first}") from None
    return DeviceChoice(dev, f"{source} asked for '{requested}'")


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise DijiError(f"unknown dtype '{name}': use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def autocast(device: torch.device, dtype_name: str):
    """Mixed precision for the forward pass: weights stay float32, matmuls run in the low dtype."""
    if dtype_name == "float32":
        return contextlib.nullcontext()
    dtype = resolve_dtype(dtype_name)
    is_available = getattr(torch.amp, "is_autocast_available", None)
    if is_available is not None and not is_available(device.type):
        FALLBACKS.record(f"autocast:{device.type}",
                         f"torch has no autocast for '{device.type}'; running in float32 instead of {dtype_name}")
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def distributed_backend(device: torch.device) -> str:
    """The collective back-end for a device type (gloo for the CPU); see diji.compute.backends."""
    return backend_for(device.type).dist_backend


def synchronize(device: torch.device) -> None:
    """Wait for queued work on the device (for honest timings)."""
    if device.type == "cpu":
        return
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "synchronize"):
        acc.synchronize(device)
        return
    mod = getattr(torch, device.type, None)
    if mod is not None and hasattr(mod, "synchronize"):
        mod.synchronize()


def fast_low_precision(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether `device` computes in bf16/fp16 at least as fast as fp32, and why we think so.

    On a CPU, bf16 matmuls are fast only with AVX512-BF16 or AMX; without them oneDNN emulates bf16 and a
    training step was measured 19× slower than fp32 here (docs/LOG.md). fp16 on a CPU is emulated too.
    Accelerators compute in low precision natively.
    """
    if device.type != "cpu":
        return True, f"'{device.type}' computes in {str(dtype).removeprefix('torch.')} natively"
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = f.read()
    if dtype == torch.bfloat16 and ("avx512_bf16" in flags or "amx_bf16" in flags):
        return True, "this CPU has AVX512-BF16/AMX"
    return False, f"this CPU has no fast {str(dtype).removeprefix('torch.')} (no AVX512-BF16/AMX); it would be emulated"


def inference_dtype(requested: str, stored: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype to run a checkpoint in: `requested` ('auto' or a dtype name), the checkpoint's `stored`
    dtype, and the device. 'auto' keeps a bf16/fp16 checkpoint in its precision where the device is fast
    at it (half the memory) and uses float32 where low precision would be emulated — saying which."""
    if requested != "auto":
        dtype = resolve_dtype(requested)
        fast, why = fast_low_precision(device, dtype) if dtype != torch.float32 else (True, "")
        return dtype, f"{requested} as asked" + ("" if fast else f" (slow here: {why})")
    if stored == "float32":
        return torch.float32, "auto: the checkpoint is stored in float32"
    dtype = resolve_dtype(stored)
    fast, why = fast_low_precision(device, dtype)
    if fast:
        return dtype, f"auto: the checkpoint's own {stored} ({why})"
    return torch.float32, f"auto: float32, because {why}; pass --dtype {stored} to halve memory anyway"
