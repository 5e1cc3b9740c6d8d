"""The ops the model calls, dispatched through the kernel registry.

Same names and signatures as `reference.py`; each call runs the implementation chosen once for the
input's (device type, dtype, autocast dtype) — see `registry.py` for the rules and `DIJI_KERNELS`.
"""

from __future__ import annotations

import torch

from diji.kernels.registry import REGISTRY
from diji.kernels.rope import RopeScaling


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return REGISTRY.call("rms_norm", x, weight, eps)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32,
    scaling: RopeScaling | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return REGISTRY.call("rope_cos_sin", positions, head_dim, theta, dtype, scaling)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return REGISTRY.call("apply_rope", x, cos, sin)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = True
) -> torch.Tensor:
    return REGISTRY.call("attention", q, k, v, mask=mask, causal=causal)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return REGISTRY.call("swiglu", gate, up)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    return REGISTRY.call("cross_entropy", logits, targets, ignore_index)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    return REGISTRY.call("linear_cross_entropy", hidden, weight, targets, ignore_index)
