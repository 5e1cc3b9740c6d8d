"""Multi-head Latent Attention (MLA; DeepSeek-V2, DeepSeek-AI 2024, §2.1).

Keys and values are compressed into one small latent per token; only it (plus one shared rotary key)
is cached, so the KV cache holds R + Dr numbers per token and layer instead of 2·K·D.

    x ─► kv_a_proj_with_mqa ─► [c (R) | k_rot (Dr)]      c ─► RMSNorm ─► kv_b_proj ─► [k_nope (H·Dn) | v (H·Dv)]
    x ─► q_a_proj ─► RMSNorm ─► q_b_proj ─► [q_nope (H·Dn) | q_rot (H·Dr)]   (or one q_proj when q_lora_rank = 0)
    RoPE only on the decoupled parts q_rot, k_rot (k_rot is shared by all heads): RoPE does not commute
    with the up-projection, so rotating the latent would defeat caching it (§2.1.3).
    score = (q_nope·k_nope + q_rot·k_rot) / sqrt(Dn + Dr)
    With YaRN rope scaling the cos/sin tables carry YaRN's attention factor (so q_rot·k_rot scales by its
    square) and, when `mscale_all_dim` is set, the softmax scale is multiplied by mscale(factor, mscale_all_dim)²
    — DeepSeek's release code and transformers do both (kernels/rope.py).

Decoding one token uses the "absorbed" form (§2.1.2): q_nope is pushed through the key up-projection
(q_lat = q_nope · W_UK, (B, H, 1, R)) so attention runs directly against the cached latents, and the value
up-projection W_UV is applied after attention — the cache is never expanded to H heads.

Shape legend: B batch, T new tokens, S cached + new, C hidden, H heads, R kv_lora_rank, Dr qk_rope_head_dim,
Dn qk_nope_head_dim, Dv v_head_dim. Parameter names equal HF `DeepseekV3Attention`; rotary dims are stored
as two halves (the rotate_half convention), and the HF adapter permutes interleaved checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from diji.kernels import ops, rope

if TYPE_CHECKING:
    from diji.model.transformer import Cache, ModelConfig

LATENT_NORM_EPS = 1e-6
"""DeepSeek's q_a/kv_a RMSNorms use the class default 1e-6, not rms_norm_eps (HF DeepseekV3Attention)."""


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, norm: Callable[[int, float], nn.Module]) -> None:
        super().__init__()
        self.layer = layer
        C, H = cfg.hidden_size, cfg.num_attention_heads
        self.H, self.R, self.Dr = H, cfg.kv_lora_rank, cfg.rope_head_dim
        self.Dn, self.Dv = cfg.nope_head_dim, cfg.value_head_dim
        Dq = self.Dn + self.Dr
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(C, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = norm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * Dq, bias=False)
        else:
            self.q_proj = nn.Linear(C, H * Dq, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(C, self.R + self.Dr, bias=False)
        self.kv_a_layernorm = norm(self.R, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.R, H * (self.Dn + self.Dv), bias=False)
        self.o_proj = nn.Linear(H * self.Dv, C, bias=False)
        self.q_scale = rope.softmax_scale_factor(cfg.rope_scaling)
        """Extra factor on the softmax scale, applied to q (SDPA's own scale stays 1/sqrt(query width))."""

    def forward(self, x, cos, sin, cache: Cache | None, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if hasattr(self, "q_b_proj") else self.q_proj(x)
        q = q.view(B, T, self.H, self.Dn + self.Dr).transpose(1, 2)  # (B, H, T, Dn+Dr)
        q_nope, q_rot = q.split([self.Dn, self.Dr], dim=-1)
        c, k_rot = self.kv_a_proj_with_mqa(x).split([self.R, self.Dr], dim=-1)
        c = self.kv_a_layernorm(c)[:, None]  # (B, 1, T, R): one "head", the latent
        q_rot, k_rot = ops.apply_rope(q_rot, cos, sin), ops.apply_rope(k_rot[:, None], cos, sin)  # k_rot (B,1,T,Dr)
        if self.q_scale != 1.0:
            q_nope, q_rot = q_nope * self.q_scale, q_rot * self.q_scale
        if cache is not None:
            c, k_rot = cache.update(self.layer, c, k_rot)  # (B, 1, S, R), (B, 1, S, Dr)
        if cache is not None and T == 1:
            y = self._absorbed(q_nope, q_rot, c, k_rot, mask)
        else:
            S = c.shape[2]
            kv = self.kv_b_proj(c[:, 0]).view(B, S, self.H, self.Dn + self.Dv).transpose(1, 2)
            k_nope, v = kv.split([self.Dn, self.Dv], dim=-1)  # (B, H, S, Dn), (B, H, S, Dv)
            k = torch.cat((k_nope, k_rot.expand(-1, self.H, -1, -1)), dim=-1)
            y = ops.attention(torch.cat((q_nope, q_rot), dim=-1), k, v, mask=mask, causal=True)  # (B, H, T, Dv)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.Dv))

    def _absorbed(self, q_nope, q_rot, c, k_rot, mask) -> torch.Tensor:
        """One new token per row: attend in latent space. Returns (B, H, 1, Dv)."""
        w = self.kv_b_proj.weight.view(self.H, self.Dn + self.Dv, self.R)
        w_uk, w_uv = w[:, : self.Dn], w[:, self.Dn :]  # (H, Dn, R), (H, Dv, R)
        q_lat = torch.matmul(q_nope, w_uk)  # (B, H, 1, R)
        # SDPA scales by 1/sqrt(its query width R+Dr); the model's scale is 1/sqrt(Dn+Dr).
        fix = math.sqrt((self.R + self.Dr) / (self.Dn + self.Dr))
        q_cat = (torch.cat((q_lat, q_rot), dim=-1) * fix).transpose(1, 2)  # (B, 1, H, R+Dr): heads as queries
        k_cat = torch.cat((c, k_rot), dim=-1)  # (B, 1, S, R+Dr)
        o = ops.attention(q_cat, k_cat, c, mask=mask, causal=False)  # (B, 1, H, R); mask (B,1,1,S) broadcasts
        return torch.matmul(o.transpose(1, 2), w_uv.transpose(1, 2))  # (B, H, 1, Dv)
