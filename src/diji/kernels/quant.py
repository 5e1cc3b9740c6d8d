"""Weight-only int8 linear: y = x · (s ⊙ W)ᵀ + b, with W int8 (out, in) and one scale s per output channel.

Weight-only quantisation keeps activations in floating point and stores each weight row as int8 with
its own scale (absmax / 127), so decoding — which is bound by reading the weights — reads 4× fewer bytes
than float32 (Dettmers et al. 2022, "LLM.int8()", §3; the per-channel absmax variant of Frantar et al.'s
GPTQ baseline, "round to nearest").

    reference  dequantise the whole matrix, then an ordinary linear (defines correct)
    int8mm     torch's fused int8-weight matmul kernel (the one gpt-fast / torchao use on the CPU): the
               int8 rows are widened inside the kernel, no float copy of the weight is ever made
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OP = "int8_linear"


def int8_linear_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in), weight int8 (out, in), scale (out,) → (..., out)."""
    w = weight.to(x.dtype) * scale.to(x.dtype)[:, None]
    return F.linear(x, w, bias)


def int8_linear_int8mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    shape = x.shape
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).contiguous(), weight, scale.to(x.dtype))
    y = y.reshape(*shape[:-1], weight.shape[0])
    return y + bias if bias is not None else y


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row (per-output-channel) int8: scale = absmax / 127, q = round(w / scale)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=-1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def register(registry) -> None:
    registry.register(OP, "reference", int8_linear_reference, why="dequantise, then a float linear; defines correct")
    registry.register(OP, "int8mm", int8_linear_int8mm, device_types=("cpu",),
                      dtypes=(torch.float32, torch.bfloat16), priority=10,
                      why="fused int8-weight matmul: reads 1 byte per weight, no float copy")
