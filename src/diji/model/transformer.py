"""A Llama/Qwen/DeepSeek-style decoder-only transformer, in one file, read top to bottom.

    token ids ─► embedding ─► N × [x + Attn(RMSNorm(x)); x + FFN(RMSNorm(x))] ─► RMSNorm ─► lm_head

Attn is grouped-query attention (with per-head q/k RMSNorm when `qk_norm`, Qwen3), or Multi-head Latent
Attention when `kv_lora_rank` > 0 (model/mla.py). RoPE may be scaled for long contexts (`rope_scaling`:
linear, dynamic, llama3, yarn; the frequency maths is in kernels/rope.py).
FFN is a SwiGLU MLP, or a DeepSeekMoE layer when `n_routed_experts` > 0 (model/moe.py) from layer
`first_k_dense_replace` on. Field and parameter names follow the Hugging Face Llama / DeepSeek-V3
configs, so weights map to `transformers` models one to one (model/hf.py).

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
from diji.kernels.rope import RopeScaling
from diji.model.mla import MLA
from diji.model.moe import MoE

SCORING = ("sigmoid", "softmax")
BALANCE = ("bias", "aux_loss", "none")
GROUP_SCORING = ("top2_sum", "max")


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
    rope_scaling: RopeScaling = RopeScaling()
    """Long-context RoPE scaling (Llama 3.1's llama3, YaRN, ...); the default is plain RoPE. A TOML table
    `[model.rope_scaling]` with the fields of kernels/rope.py's RopeScaling."""
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
    qk_norm: bool = False
    """RMSNorm each query and key head (weights q_norm, k_norm of width D) before RoPE (Qwen3; keeps
    attention logits bounded, Dehghani et al. 2023)."""

    # ---- Mixture-of-Experts (DeepSeekMoE); names follow the HF DeepSeek-V3 config ----
    n_routed_experts: int = 0
    """Routed experts E per MoE layer; 0 = every layer has a dense SwiGLU MLP."""
    num_experts_per_tok: int = 2
    """Experts k each token is routed to."""
    n_shared_experts: int = 0
    """Always-active shared experts per MoE layer (one dense MLP of n_shared × moe_intermediate_size)."""
    moe_intermediate_size: int = 0
    """Hidden width of one expert; 0 = intermediate_size // (num_experts_per_tok + n_shared_experts),
    which keeps the active parameters equal to the dense MLP's."""
    first_k_dense_replace: int = 0
    """The first this-many layers keep a dense MLP (DeepSeek keeps early layers dense)."""
    n_group: int = 1
    """Expert groups for group-limited routing; 1 = plain top-k over all experts."""
    topk_group: int = 1
    """Groups a token may pick experts from (with n_group > 1)."""
    group_scoring: str = "top2_sum"
    """How a group is ranked (with n_group > 1): top2_sum, the sum of its two best biased scores
    (DeepSeek-V3 "noaux_tc"), or max, its best score (DeepSeek-V2 "group_limited_greedy")."""
    norm_topk_prob: bool = True
    """Renormalise the chosen experts' gates to sum to 1."""
    routed_scaling_factor: float = 1.0
    """Multiplier on the routed experts' gates (DeepSeek-V3 uses 2.5)."""
    scoring_func: str = "sigmoid"
    """Router affinity: sigmoid (DeepSeek-V3) or softmax (DeepSeek-V2, Switch)."""
    moe_balance: str = "bias"
    """Load balancing: bias (auxiliary-loss-free, DeepSeek-V3), aux_loss (Switch-style loss) or none."""
    moe_aux_loss_coef: float = 0.001
    """α of the auxiliary balance loss (moe_balance = aux_loss)."""
    moe_bias_update_rate: float = 0.001
    """γ: per-step change of the routing bias (moe_balance = bias)."""
    moe_capacity_factor: float = 0.0
    """Training only: an expert takes at most factor·tokens·k/E tokens, the rest are dropped; 0 = no limit."""

    # ---- Multi-head Latent Attention (DeepSeek-V2); names follow the HF DeepSeek-V3 config ----
    kv_lora_rank: int = 0
    """Width R of the compressed KV latent; 0 = ordinary grouped-query attention."""
    q_lora_rank: int = 0
    """Width of the compressed query; 0 = a full-rank q_proj."""
    qk_rope_head_dim: int = 0
    """Per-head width Dr of the decoupled rotary part of q/k; 0 = head dim // 2."""
    qk_nope_head_dim: int = 0
    """Per-head width Dn of the position-free part of q/k; 0 = head dim."""
    v_head_dim: int = 0
    """Per-head value width Dv; 0 = head dim."""

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
        for name in ("n_routed_experts", "n_shared_experts", "moe_intermediate_size", "first_k_dense_replace",
                     "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
                     "moe_aux_loss_coef", "moe_bias_update_rate", "moe_capacity_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.qk_norm and self.kv_lora_rank:
            raise ValueError("model.qk_norm applies to grouped-query attention; MLA (model.kv_lora_rank > 0) "
                             "normalises its latents instead")
        if not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError("model.rope_scaling must be a RopeScaling (a [model.rope_scaling] table), got "
                             f"{type(self.rope_scaling).__name__}")
        if self.group_scoring not in GROUP_SCORING:
            raise ValueError(f"model.group_scoring must be one of {', '.join(GROUP_SCORING)}, "
                             f"got '{self.group_scoring}'")
        if self.scoring_func not in SCORING:
            raise ValueError(f"model.scoring_func must be one of {', '.join(SCORING)}, got '{self.scoring_func}'")
        if self.moe_balance not in BALANCE:
            raise ValueError(f"model.moe_balance must be one of {', '.join(BALANCE)}, got '{self.moe_balance}'")
        if self.n_routed_experts:
            E, k, g = self.n_routed_experts, self.num_experts_per_tok, self.n_group
            if g <= 0 or E % g or not 0 < self.topk_group <= g or (g > 1 and E // g < 2):
                raise ValueError(
                    f"model.n_group ({g}) must divide model.n_routed_experts ({E}) into groups of >= 2 experts, "
                    f"and model.topk_group ({self.topk_group}) must be in 1..n_group"
                )
            if not 0 < k <= self.topk_group * (E // g):
                raise ValueError(f"model.num_experts_per_tok ({k}) must be in 1..{self.topk_group * (E // g)}")
            if self.expert_size <= 0:
                raise ValueError("model.moe_intermediate_size resolves to 0; set it explicitly")
            if self.routed_scaling_factor <= 0:
                raise ValueError(f"model.routed_scaling_factor must be positive, got {self.routed_scaling_factor}")
        if self.kv_lora_rank and (self.rope_head_dim % 2 or self.nope_head_dim <= 0):
            raise ValueError(
                f"model.qk_rope_head_dim must be even and model.qk_nope_head_dim positive for MLA, got "
                f"{self.rope_head_dim} and {self.nope_head_dim}"
            )

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rope_head_dim(self) -> int:
        """Width of the rotated part of each query/key head (all of it without MLA)."""
        if not self.kv_lora_rank:
            return self.dim_per_head
        return self.qk_rope_head_dim or self.dim_per_head // 2

    @property
    def nope_head_dim(self) -> int:
        return self.qk_nope_head_dim or self.dim_per_head

    @property
    def value_head_dim(self) -> int:
        return (self.v_head_dim or self.dim_per_head) if self.kv_lora_rank else self.dim_per_head

    @property
    def expert_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size // (self.num_experts_per_tok + self.n_shared_experts)

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_routed_experts > 0 and layer >= self.first_k_dense_replace

    def num_params(self, include_embedding: bool = True, active: bool = False) -> int:
        """Parameter count; `active=True` counts only the k routed experts a token uses (for FLOPs)."""
        C, F, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        D, H, K = self.dim_per_head, self.num_attention_heads, self.num_key_value_heads
        if self.kv_lora_rank:
            R, Rq, Dq = self.kv_lora_rank, self.q_lora_rank, self.nope_head_dim + self.rope_head_dim
            q = (C * Rq + Rq + Rq * H * Dq) if Rq else C * H * Dq
            attn = q + C * (R + self.rope_head_dim) + R + R * H * (self.nope_head_dim + self.value_head_dim)
            attn += H * self.value_head_dim * C
        else:
            attn = C * H * D + 2 * C * K * D + H * D * C + (H * D + 2 * K * D if self.attention_bias else 0)
            attn += 2 * D if self.qk_norm else 0
        experts = self.num_experts_per_tok if active else self.n_routed_experts
        moe = 3 * C * self.expert_size * (experts + self.n_shared_experts) + self.n_routed_experts * C
        total = 0
        for layer in range(L):
            total += attn + 2 * C + (moe if self.is_moe_layer(layer) else 3 * C * F)
        emb = V * C * (1 if self.tie_word_embeddings else 2)
        return total + C + (emb if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6·N_active for the matmuls plus attention scores (Kaplan et al. 2020;
        PaLM App. B)."""
        n = self.num_params(include_embedding=False, active=True) + self.vocab_size * self.hidden_size
        qk = self.nope_head_dim + self.rope_head_dim if self.kv_lora_rank else self.dim_per_head
        attn = 6 * self.num_hidden_layers * self.num_attention_heads * (qk + self.value_head_dim) * seq_len
        return 6 * n + attn

    def cache_dims(self) -> tuple[int, int, int]:
        """(heads, key width, value width) of one layer's KV cache entry per token.

        With MLA the "key" is the normalised latent c (R) and the "value" the shared rotary key (Dr): the
        cache keeps the compressed form (DeepSeek-V2 §2.1.2). Any cache implementation sizes itself here.
        """
        if self.kv_lora_rank:
            return 1, self.kv_lora_rank, self.rope_head_dim
        return self.num_key_value_heads, self.dim_per_head, self.dim_per_head

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        heads, dk, dv = self.cache_dims()
        return self.num_hidden_layers * heads * (dk + dv) * bytes_per_element


class Cache(Protocol):
    """What attention needs from a KV cache: store this layer's new k/v, return everything so far.

    Shapes come from `ModelConfig.cache_dims()`: (B, K, T, D) keys and values for GQA; for MLA the
    "k" is the latent (B, 1, T, R) and the "v" the shared rotary key (B, 1, T, Dr).
    """

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def length(self) -> int: ...


class KVCache:
    """A preallocated per-layer cache (B, heads, max_len, width): decoding writes in place, never re-allocates.

    `length` is the number of positions already filled; the model advances it after each forward.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype) -> None:
        heads, dk, dv = cfg.cache_dims()  # MLA: the latent and the rotary key, (B, 1, max_len, R | Dr)
        k_shape, v_shape = (batch_size, heads, max_len, dk), (batch_size, heads, max_len, dv)
        self.k = [torch.zeros(k_shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(v_shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
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
        """Keep the given batch rows, in order (drop finished sequences, or repeat a row to sample it n times)."""
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
        if cfg.qk_norm:  # one weight of width D shared by all heads, as in HF Qwen3Attention
            self.q_norm, self.k_norm = RMSNorm(D, cfg.rms_norm_eps), RMSNorm(D, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache: Cache | None, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, D)
        y = ops.attention(q, k, v, mask=mask, causal=True)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, width: int | None = None) -> None:
        super().__init__()
        F = width or cfg.intermediate_size
        self.gate_proj = nn.Linear(cfg.hidden_size, F, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, F, bias=False)
        self.down_proj = nn.Linear(F, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, layer, norm=RMSNorm) if cfg.kv_lora_rank else Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_moe_layer(layer):
            shared = MLP(cfg, cfg.expert_size * cfg.n_shared_experts) if cfg.n_shared_experts else None
            self.mlp: nn.Module = MoE(cfg, shared)
        else:
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
        The MoE routing bias (a buffer) starts at zero: routing begins from the learned affinities alone.
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                (p.zero_() if name.endswith("bias") else p.fill_(1.0))
                continue
            s = resid_std if name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")) else std
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(s).to(p.dtype))
        for name, b in self.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.zero_()

    def moe_stats(self) -> dict[str, float]:
        """Expert load of the latest training forward, for the metrics log ({} for a dense model).

        moe_load_max: the busiest expert's load over the mean (1 = perfectly balanced), averaged over MoE
        layers; moe_load_min likewise for the idlest; moe_dropped: fraction of assignments over capacity.
        """
        layers = [b.mlp.stats for b in self.model.layers if isinstance(b.mlp, MoE) and b.mlp.stats]
        if not layers:
            return {}
        n = len(layers)
        out = {
            "moe_load_max": sum(float(s["load"].max() / s["load"].mean().clamp_min(1e-9)) for s in layers) / n,
            "moe_load_min": sum(float(s["load"].min() / s["load"].mean().clamp_min(1e-9)) for s in layers) / n,
            "moe_dropped": sum(float(s["dropped"]) for s in layers) / n,
        }
        if "aux_loss" in layers[0]:
            out["moe_aux_loss"] = sum(float(s["aux_loss"]) for s in layers)
        return out

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
        left padding). attention_mask (B, S) with 1 for real tokens, 0 for padding, over all S positions;
        or a bool (B, 1, T, S) mask, True where query t may attend key s, used as given — several
        sequences packed in one row (sharing a prefix, or side by side) attend only within themselves.
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cfg = self.config
        cos, sin = ops.rope_cos_sin(position_ids, cfg.rope_head_dim, cfg.rope_theta, x.dtype, cfg.rope_scaling)
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
        if attention_mask is not None and attention_mask.dim() == 4:
            if attention_mask.dtype != torch.bool or attention_mask.shape[-2:] != (T, start + T):
                raise ValueError(f"a 4-D attention_mask must be bool (B, 1, {T}, {start + T}), got "
                                 f"{attention_mask.dtype} {tuple(attention_mask.shape)}")
            return attention_mask
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
