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
