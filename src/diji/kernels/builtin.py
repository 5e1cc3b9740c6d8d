"""The built-in implementations, registered on first use of the registry (never at import).

Fast paths are registered for the device types where they were measured to help (bench/kernels.py);
on other devices the reference runs until someone measures there and adds a line here.
"""

from __future__ import annotations

import torch

from diji.kernels import fused, reference

OPS = ("rms_norm", "rope_cos_sin", "apply_rope", "attention", "swiglu", "cross_entropy", "linear_cross_entropy")


def register_all(registry) -> None:
    for op in OPS:
        registry.register(op, "reference", getattr(reference, op), why="plain PyTorch; defines correct")
    # Measured on the reference CPU (bench/kernels.py): equal in float32 (where the model's residual
    # stream lives, also under autocast), 3x slower on bfloat16 inputs — so float32 only.
    registry.register("rms_norm", "fused", fused.rms_norm, device_types=("cpu",), dtypes=(torch.float32,),
                      priority=10, why="torch's one-kernel RMSNorm forward and backward")
    registry.register("apply_rope", "fused", fused.apply_rope, device_types=("cpu",), priority=10,
                      why="rotates halves in place, saves only the tables for backward")
    registry.register("swiglu", "fused", fused.swiglu, device_types=("cpu",), priority=10,
                      why="saves gate and up only, recomputes sigmoid in backward")
    # Chunked losses trade speed for memory (0.6-0.9x here): the plain cross-entropy version only saves
    # memory for low-precision logits, so it is opt-in (DIJI_KERNELS=cross_entropy:chunked). Whoever calls
    # linear_cross_entropy asked for the memory saving, so there the chunked path is the default.
    registry.register("cross_entropy", "chunked", fused.cross_entropy, priority=10, opt_in=True,
                      why="float32 per chunk of rows; no full float32 copy or softmax kept")
    registry.register("linear_cross_entropy", "chunked", fused.linear_cross_entropy, priority=10,
                      why="lm_head + loss per chunk of rows; never holds the full logits or their gradient")
    for op in ("rms_norm", "apply_rope", "swiglu"):
        registry.register(op, "compiled", fused.Compiled(getattr(reference, op)), priority=5, opt_in=True,
                          slow_start=True, why="torch.compile (inductor) fuses the elementwise chain")
    # The MoE dispatch lives in its own file; registering it here puts it in `diji conformance` and doctor.
    from diji.kernels import moe

    if moe.OP not in registry.ops():
        moe.register(registry)
    from diji.kernels import quant

    if quant.OP not in registry.ops():
        quant.register(registry)
