"""A Llama/Qwen-style decoder-only transformer, in one file, read top to bottom.

    token ids ─► embedding ─► N × [x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] ─► RMSNorm ─► lm_head

Field names follow the Hugging Face Llama config so that `config.json` and the weights are loadable
by `transformers` (LlamaForCausalLM) without conversion.

Shape legend used in comments:
    B batch, T new tokens this call, S cached + new tokens, C hidden_size, H query heads,
    K key/value heads (GQA: H % K == 0), D head_dim, F intermediate_size, V vocab_size
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn

from diji.kernels import ops


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    """Number of token ids (the tokenizer's vocabulary size)."""
    hidden_size: int = 256
    """Width C of the residual stream."""
    num_hidden_layers: int = 4
    """Number of transformer blocks."""
    num_attention_heads: int = 4
    """Query heads H; hidden_size must be divisible by it unless head_dim is set."""
    num_key_value_heads: int = 2
    """Key/value heads K for grouped-query attention; must divide num_attention_heads (K == H is MHA)."""
    intermediate_size: int = 688
    """Hidden width F of the SwiGLU MLP."""
    max_position_embeddings: int = 1024
    """Longest sequence the model is trained or served at (sizes the KV cache)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rms_norm_eps: float = 1e-5
    """Epsilon inside RMSNorm."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output projection (saves V×C parameters in small models)."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of weight matrices."""
    attention_bias: bool = False
    """Add biases to the q/k/v projections (Qwen2 has them; Llama does not)."""
    head_dim: int = 0
    """Per-head width D; 0 means hidden_size // num_attention_heads."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model.num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim == 0 and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_attention_heads "
                f"({self.num_attention_heads}), or set model.head_dim"
            )
        if self.dim_per_head % 2:
            raise ValueError(f"head dimension must be even for RoPE, got {self.dim_per_head}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("model.rms_norm_eps and model.rope_theta must be positive")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def num_params(self, include_embedding: bool = True) -> int:
        C, F, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        D, H, K = self.dim_per_head, self.num_attention_heads, self.num_key_value_heads
        attn = C * H * D + 2 * C * K * D + H * D * C + (H * D + 2 * K * D if self.attention_bias else 0)
        per_layer = attn + 3 * C * F + 2 * C
        emb = V * C * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + C + (emb if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6·N for the matmuls plus attention scores (Kaplan et al. 2020; PaLM App. B)."""
        n = self.num_params(include_embedding=False) + self.vocab_size * self.hidden_size
        attn = 12 * self.num_hidden_layers * self.num_attention_heads * self.dim_per_head * seq_len
        return 6 * n + attn


class Cache(Protocol):
    """What attention needs from a KV cache: store this layer's new k/v, return everything so far."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def length(self) -> int: ...


class KVCache:
    """A preallocated per-layer cache (B, K, max_len, D): decoding writes in place, never re-allocates.

    `length` is the number of positions already filled; the model advances it after each forward.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype) -> None:
        shape = (batch_size, cfg.num_key_value_heads, max_len, cfg.dim_per_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self._length = 0
        self._pending = 0

    @property
    def length(self) -> int:
        return self._length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, t = self._length, k.shape[2]
        if start + t > self.max_len:
            raise ValueError(f"KV cache full: {start} + {t} tokens exceed its {self.max_len} positions")
        self.k[layer][:, :, start : start + t] = k
        self.v[layer][:, :, start : start + t] = v
        self._pending = t
        return self.k[layer][:, :, : start + t], self.v[layer][:, :, : start + t]

    def advance(self) -> None:
        self._length += self._pending
        self._pending = 0

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. drop finished sequences)."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_per_head
        C, D = cfg.hidden_size, self.head_dim
        self.q_proj = nn.Linear(C, self.n_head * D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(C, self.n_kv * D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, self.n_kv * D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=False)

    def forward(self, x, cos, sin, cache: Cache | None, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, D)
        y = ops.attention(q, k, v, mask=mask, causal=True)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The decoder. Parameter names match HF `LlamaForCausalLM` (`model.layers.0.self_attn.q_proj…`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
                layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers)),
                norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
            )
        )
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """All initialisation in one place: N(0, σ) matrices, zero biases, unit norms.

        Output projections (o_proj, down_proj) are scaled by 1/sqrt(2·layers) so the residual stream's
        variance does not grow with depth (GPT-2, Radford et al. 2019, §2.3).
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                (p.zero_() if name.endswith("bias") else p.fill_(1.0))
                continue
            s = resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(s).to(p.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """input_ids (B, T) → logits (B, T, V) (or the final hidden states (B, T, C)).

        cache: continue after `cache.length` positions. position_ids (B, T): explicit positions (used with
        left padding). attention_mask (B, S) with 1 for real tokens, 0 for padding, over all S positions.
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = ops.rope_cos_sin(position_ids, self.config.dim_per_head, self.config.rope_theta, x.dtype)
        mask = self._mask(B, T, start, attention_mask, input_ids.device)
        for block in self.model.layers:
            x = block(x, cos, sin, cache, mask)
        if cache is not None and hasattr(cache, "advance"):
            cache.advance()
        x = self.model.norm(x)
        return x if return_hidden else self.lm_head(x)

    @staticmethod
    def _mask(B: int, T: int, start: int, attention_mask, device) -> torch.Tensor | None:
        """None when plain causal attention suffices (the fast SDPA path); else a bool (B, 1, T, S) mask."""
        if attention_mask is None and (start == 0 or T == 1):
            return None
        S = start + T
        causal = torch.arange(S, device=device)[None, :] <= torch.arange(start, S, device=device)[:, None]
        mask = causal[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            pad = attention_mask[:, None, None, :S].bool()
            mask = mask & pad
            # A fully padded query row would softmax over nothing (NaN); its output is never used,
            # so let it attend everywhere to keep the numbers finite.
            mask = mask | (~mask.any(-1, keepdim=True))
        return mask.expand(B, 1, T, S)
