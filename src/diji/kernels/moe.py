"""Mixture-of-Experts dispatch: run every token through the experts the router picked for it.

    x (N, C) tokens, idx (N, k) expert ids (-1 = dropped by the capacity limit), weight (N, k) gates,
    gate_up (E, 2F, C) each expert's fused [gate; up] projection, down (E, C, F) its down projection
    → y (N, C) = Σ_j weight[n, j] · down[e] · swiglu(gate_up[e] · x[n])   with e = idx[n, j]

The weight layout is Hugging Face's `DeepseekV3Experts` (transformers ≥ 5), so checkpoints map 1:1.

Two implementations with the same signature (STYLE rule 4), registered in the kernel registry as op
"moe_ffn" and chosen once per (device, dtype) like every other op (`DIJI_KERNELS=moe_ffn:reference`
forces the loop):
- `moe_ffn_reference`: one small matmul per expert over the tokens routed to it — the obvious loop,
  the definition of correct, and what transformers itself runs.
- `moe_ffn_grouped`: sort the N·k assignments by expert, scatter them into an (E, cap, C) buffer
  (cap = the largest expert's load), and run all experts in two batched matmuls. No Python loop over
  tokens or experts; the padding costs FLOPs when the load is uneven, which balancing keeps small.
  (This is the GShard/Switch "dispatch tensor" idea, Lepikhin et al. 2020, Fedus et al. 2021, with the
  buffer sized by the actual load instead of a fixed capacity.)

`torch.nn.functional.grouped_mm` would avoid the padding, but its CPU backward fails in torch 2.13
("Invalid strides/sizes"), so the batched matmul is the portable fast path.
"""

from __future__ import annotations

import torch

from diji.kernels.reference import swiglu


def moe_ffn_reference(
    x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """Per-expert loop: for each expert, gather its tokens, apply its SwiGLU MLP, scatter-add back."""
    y = torch.zeros_like(x)
    for e in range(gate_up.shape[0]):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        g, u = torch.nn.functional.linear(x[tok], gate_up[e]).chunk(2, dim=-1)
        out = torch.nn.functional.linear(swiglu(g, u), down[e]) * weight[tok, slot, None]
        y = y.index_add(0, tok, out.to(y.dtype))
    return y


def moe_ffn_grouped(
    x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """Sort assignments by expert, pad to the largest load, two batched matmuls, weighted scatter-add."""
    N, k = idx.shape
    E, C = gate_up.shape[0], x.shape[1]
    flat = idx.reshape(-1)  # (N·k,)
    keep = flat >= 0
    flat, tok, gates = flat[keep], torch.arange(N * k, device=x.device)[keep] // k, weight.reshape(-1)[keep]
    if flat.numel() == 0:
        return torch.zeros_like(x)
    order = torch.argsort(flat, stable=True)  # stable: a token keeps its place within its expert
    expert, tok, gates = flat[order], tok[order], gates[order]
    counts = torch.bincount(expert, minlength=E)  # (E,) load per expert
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(expert.numel(), device=x.device) - starts[expert]  # position within its expert
    cap = int(counts.max())
    buf = x.new_zeros(E, cap, C)
    buf[expert, rank] = x[tok]  # (E, cap, C)
    g, u = torch.bmm(buf, gate_up.transpose(1, 2)).chunk(2, dim=-1)  # (E, cap, F) each
    out = torch.bmm(swiglu(g, u), down.transpose(1, 2))  # (E, cap, C)
    contrib = out[expert, rank] * gates[:, None].to(out.dtype)  # (A, C) one row per assignment
    return torch.zeros_like(x).index_add(0, tok, contrib.to(x.dtype))


OP = "moe_ffn"


def register(registry) -> None:
    """Add the op to the kernel registry (kernels/registry.py): the reference and the grouped fast path."""
    registry.register(OP, "reference", moe_ffn_reference, why="one matmul pair per expert; defines correct")
    registry.register(OP, "grouped", moe_ffn_grouped, priority=10,
                      why="sort by expert + two batched matmuls; no per-expert Python loop")


def ensure_registered(registry=None) -> None:
    """Register once; called when a MoE layer is built (never at import)."""
    if registry is None:
        from diji.kernels.registry import REGISTRY as registry
    if OP not in registry.ops():
        register(registry)


def moe_ffn(
    x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """The dispatch the model calls: the implementation the registry chose for x's device and dtype."""
    from diji.kernels.registry import REGISTRY

    return REGISTRY.call(OP, x, idx, weight, gate_up, down)


def sample_inputs(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0, tokens: int = 64
) -> tuple[torch.Tensor, ...]:
    """Inputs for comparing implementations: 8 experts, top-2, load skewed towards the high ids."""
    gen = torch.Generator().manual_seed(seed)
    E, C, F_, k = 8, 32, 16, 2
    x = torch.randn(tokens, C, generator=gen, dtype=torch.float64)
    logits = torch.randn(tokens, E, generator=gen, dtype=torch.float64) + torch.linspace(0, 2, E, dtype=torch.float64)
    weight, idx = logits.softmax(-1).topk(k, dim=-1)
    gate_up = torch.randn(E, 2 * F_, C, generator=gen, dtype=torch.float64) / C**0.5
    down = torch.randn(E, C, F_, generator=gen, dtype=torch.float64) / F_**0.5
    to = dict(device=device, dtype=dtype)
    return x.to(**to), idx.to(device), weight.to(**to), gate_up.to(**to), down.to(**to)


def conformance_cases() -> list:
    """`diji conformance` cases (kernels/specs.py format): skewed load, dropped slots, one idle expert."""
    from diji.kernels.specs import Case

    x, idx, w, gu, down = sample_inputs(dtype=torch.float64, seed=1)
    dropped = capacity_mask(idx, 8, capacity=12)
    x2, idx2, w2, gu2, down2 = sample_inputs(dtype=torch.float64, seed=2, tokens=7)
    idx2 = idx2.masked_fill(idx2 == 7, 6)  # expert 7 gets no token at all
    return [
        Case("x(64,32) E=8 k=2 skewed", [x, idx, w, gu, down], grad=(0, 2, 3, 4)),
        Case("capacity 12: dropped slots", [x, dropped, w, gu, down], grad=(0, 2, 3, 4)),
        Case("x(7,32) idle expert", [x2, idx2, w2, gu2, down2], grad=(0, 2, 3, 4)),
    ]


def capacity_mask(idx: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Drop assignments beyond `capacity` tokens per expert, first come first served (GShard §2.2).

    Returns idx with dropped slots set to -1. Token order decides priority, so the result is
    deterministic and identical for both dispatch paths.
    """
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(flat.numel(), device=idx.device) - starts[flat[order]]
    return torch.where(rank < capacity, flat, torch.full_like(flat, -1)).view_as(idx)
