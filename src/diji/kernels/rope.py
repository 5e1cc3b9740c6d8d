"""RoPE frequency maths: the inverse frequencies and the attention factors of every supported scaling.

    default  θ_i = theta^(-2i/D)                                   (Su et al. 2021, RoFormer)
    linear   θ_i / factor: positions interpolated                 (Chen et al. 2023, position interpolation)
    dynamic  theta grows with the sequence beyond the trained length   (NTK-aware, "dynamic NTK")
    llama3   long wavelengths / factor, short ones kept, a smooth ramp between (Llama 3.1 release)
    yarn     per-frequency blend of interpolation and extrapolation, plus an attention temperature
             (Peng et al. 2023, YaRN §3.2–3.4); DeepSeek-V2/V3 and Qwen long-context configs use it

The formulas follow what `transformers` 5.23 computes (modeling_rope_utils.py), operation for operation,
so imported models agree with it to float32 rounding. `RopeScaling` holds the parameters; the model config
carries one (model/transformer.py) and reference.rope_cos_sin applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    rope_type: str = "default"
    """One of default, linear, dynamic, llama3, yarn (the `rope_type` of a transformers config)."""
    factor: float = 1.0
    """Context extension factor (linear, dynamic, llama3, yarn)."""
    original_max_position_embeddings: int = 0
    """Context length the model was pretrained at (llama3, yarn; dynamic: where scaling starts)."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above original/low_freq_factor are fully interpolated."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below original/high_freq_factor are kept."""
    beta_fast: float = 32.0
    """yarn: rotations over the original context above which a dimension is extrapolated (kept)."""
    beta_slow: float = 1.0
    """yarn: rotations below which a dimension is fully interpolated."""
    mscale: float = 0.0
    """yarn (DeepSeek): numerator coefficient of the cos/sin temperature; 0 = unset."""
    mscale_all_dim: float = 0.0
    """yarn (DeepSeek): denominator coefficient of the cos/sin temperature, and MLA's softmax-scale
    correction mscale(factor, mscale_all_dim)²; 0 = unset."""
    attention_factor: float = 0.0
    """yarn: explicit multiplier on cos/sin; 0 = derived from factor (and mscale, mscale_all_dim)."""
    truncate: bool = True
    """yarn: round the correction range to whole dimensions (floor/ceil), as the paper does."""

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"model.rope_scaling.rope_type must be one of {', '.join(ROPE_TYPES)}, "
                             f"got '{self.rope_type}'")
        if self.rope_type == "default":
            return
        if not self.factor > 0:
            raise ValueError(f"model.rope_scaling.factor must be positive, got {self.factor}")
        if self.rope_type in ("dynamic", "llama3", "yarn") and self.original_max_position_embeddings <= 0:
            raise ValueError(f"model.rope_scaling.original_max_position_embeddings must be a positive integer "
                             f"for rope_type '{self.rope_type}'")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError("model.rope_scaling needs high_freq_factor > low_freq_factor > 0 for llama3, got "
                             f"{self.high_freq_factor} and {self.low_freq_factor}")
        if self.rope_type == "yarn" and not self.beta_fast > self.beta_slow > 0:
            raise ValueError(f"model.rope_scaling needs beta_fast > beta_slow > 0 for yarn, got "
                             f"{self.beta_fast} and {self.beta_slow}")
        if min(self.mscale, self.mscale_all_dim, self.attention_factor) < 0:
            raise ValueError("model.rope_scaling.mscale, mscale_all_dim and attention_factor must be >= 0")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature √(1/t) = 0.1·ln(s) + 1 (Peng et al. 2023, eq. 22), scaled by `mscale`."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None, seq_len: int = 0,
             device: torch.device | None = None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) float32. `seq_len` (max position + 1) matters only for dynamic."""
    s = scaling or RopeScaling()
    D = head_dim
    exponents = torch.arange(0, D, 2, device=device, dtype=torch.float32) / D
    if s.rope_type == "dynamic":
        # NTK-aware: raise the base so the lowest frequency spans the longer context; no change within the
        # trained length (seq_len is clamped to it, so shorter inputs use the plain base).
        L0 = s.original_max_position_embeddings
        theta = theta * ((s.factor * max(seq_len, L0) / L0) - (s.factor - 1)) ** (D / (D - 2))
    base = 1.0 / (theta**exponents)
    if s.rope_type in ("default", "dynamic"):
        return base
    if s.rope_type == "linear":
        return base / s.factor
    if s.rope_type == "llama3":
        L0, f = s.original_max_position_embeddings, s.factor
        wavelen = 2 * math.pi / base
        out = torch.where(wavelen > L0 / s.low_freq_factor, base / f, base)
        smooth = (L0 / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        smoothed = (1 - smooth) * out / f + smooth * out
        medium = ~(wavelen < L0 / s.high_freq_factor) & ~(wavelen > L0 / s.low_freq_factor)
        return torch.where(medium, smoothed, out)
    # yarn: dimensions that rotate fewer than beta_slow times over the original context are interpolated
    # (÷ factor), those rotating more than beta_fast times kept, and a linear ramp in between (§3.2).
    pos_freqs = theta ** (torch.arange(0, D, 2, device=device).to(torch.float32) / D)
    L0 = s.original_max_position_embeddings

    def dim_of(rotations: float) -> float:
        return (D * math.log(L0 / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = dim_of(s.beta_fast), dim_of(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, D - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(D // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1).to(device)
    extrapolate = 1 - ramp
    return (1.0 / (s.factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate


def attention_factor(scaling: RopeScaling | None) -> float:
    """Multiplier on the cos/sin tables (so on q·k twice over the rotated dims); 1 except for yarn."""
    s = scaling or RopeScaling()
    if s.rope_type != "yarn":
        return 1.0
    if s.attention_factor:
        return s.attention_factor
    if s.mscale and s.mscale_all_dim:
        return float(_yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim))
    return _yarn_mscale(s.factor)


def softmax_scale_factor(scaling: RopeScaling | None) -> float:
    """DeepSeek's MLA multiplies its softmax scale 1/√(Dn+Dr) by mscale(factor, mscale_all_dim)² whenever
    the rope is scaled and mscale_all_dim is set (DeepSeek-V2 release code; transformers' yarn_apply_mscale)."""
    s = scaling or RopeScaling()
    if s.rope_type == "default" or not s.mscale_all_dim:
        return 1.0
    m = _yarn_mscale(s.factor, s.mscale_all_dim)
    return m * m
