"""Measured device peak: the fastest square GEMM here, the denominator of MFU (model FLOPs utilisation).

Measuring beats a vendor table: it is honest on CPUs, whose peak depends on cores, SIMD width and
clock, and on accelerators whose plugin may not report one.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

from diji.compute.device import synchronize


@lru_cache(maxsize=8)
def matmul_peak_flops(device_str: str, dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """Best FLOP/s over a few square matmul sizes, each timed for about seconds/3."""
    device = torch.device(device_str)
    best = 0.0
    for n in (512, 1024, 2048):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up: first call may allocate or pick kernels
        synchronize(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            synchronize(device)
            elapsed = time.perf_counter() - t0
            if elapsed > seconds / 3:
                break
        best = max(best, 2 * n**3 * reps / elapsed)
    return best
