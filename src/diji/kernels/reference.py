"""Reference implementations of every op the model uses: plain PyTorch, any device, any dtype.

These define what "correct" means. A fast path must keep the same signature and agree with these
within a per-dtype tolerance (checked by tests and by `diji conformance`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diji.kernels import rope
from diji.kernels.rope import RopeScaling


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) * weight.

    Statistics in float32 even under bf16 autocast, then cast back — the same order of operations as
    HF Llama, so logits agree to fp32 rounding.
    """
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32,
    scaling: RopeScaling | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings (Su et al. 2021, RoFormer) at the given integer positions.

    Returns tensors of shape positions.shape + (head_dim,), laid out as two repeated halves — the
    "rotate_half" convention HF Llama/Qwen use, so weights move between the two without permutation.
    `scaling` (linear, dynamic, llama3, yarn; kernels/rope.py) changes the frequencies, and for yarn
    multiplies both tables by its attention factor, as transformers does.
    """
    seq_len = int(positions.max()) + 1 if scaling is not None and scaling.rope_type == "dynamic" else 0
    inv_freq = rope.inv_freq(head_dim, theta, scaling, seq_len, positions.device)
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    factor = rope.attention_factor(scaling)
    if factor != 1.0:
        return (emb.cos() * factor).to(dtype), (emb.sin() * factor).to(dtype)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by position; cos/sin are (T, D) or (B, T, D)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    return x * cos + _rotate_half(x) * sin


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Scaled dot-product attention with grouped-query heads (Ainslie et al. 2023, GQA).

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv. `mask` (bool, True = attend,
    broadcastable to (B, H, Tq, Tk)) overrides `causal`. The KV heads are expanded explicitly: on CPU
    this picks the same fused SDPA kernel HF uses, where `enable_gqa` may fall back to the math path.
    """
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] > 1)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation (Shazeer 2020): silu(gate) * up."""
    return F.silu(gate) * up


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored targets, computed in float32.

    logits: (..., V); targets: (...). Returns a scalar; NaN-free when every target is ignored (0).
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1)
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets): the output projection fused with the loss.

    hidden: (..., C); weight: (V, C) (the lm_head); targets: (...). The reference simply materialises the
    logits; fast paths may not (see fused.linear_cross_entropy).
    """
    return cross_entropy(F.linear(hidden, weight), targets, ignore_index)
