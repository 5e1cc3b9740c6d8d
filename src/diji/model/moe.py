"""DeepSeekMoE feed-forward layer: fine-grained routed experts plus always-on shared experts.

    x ─► shared_experts(x)                                   (dense SwiGLU, every token)
      └► gate: scores s = σ(W x) (or softmax), pick top-k experts per token
          └► experts: Σ_k g_k · Expert_k(x)                  (sorted, batched dispatch; kernels/moe.py)

Design from DeepSeekMoE (Dai et al. 2024): many narrow experts and a few shared ones isolate common
knowledge; routing per DeepSeek-V3 (DeepSeek-AI 2024, §2.1.2): sigmoid affinities, optional group-limited
selection, gates normalised over the chosen experts and scaled by `routed_scaling_factor`. With softmax
scores, no normalisation and group scoring by the best expert it is DeepSeek-V2's router; with softmax,
no shared experts and no groups it is Qwen3-MoE's (and Mixtral's) top-k router.

Load balancing (`moe_balance`):
- "bias" — auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert bias is added to
  the scores *for selection only*; after each training forward it moves by γ towards balance:
  b_i += γ·sign(mean load − load_i). The bias is a persistent buffer, so checkpoints and resume keep it.
- "aux_loss" — the Switch/GShard auxiliary loss α·E·Σ_i f_i·P_i (f_i: fraction of assignments to expert
  i, P_i: mean normalised score of i), added to the gradient inside the layer with DeepSeek's
  `AddAuxiliaryLoss` trick, so every training stage gets it without changing its loss code.
- "none".

Capacity (`moe_capacity_factor` > 0, training only): each expert takes at most
ceil(factor · N · k / E) tokens, first come first served; a dropped assignment contributes nothing and
the token still flows through the residual and the shared experts (Fedus et al. 2021, Switch §2.2).
Inference never drops, as in transformers.

Parameter names and layouts equal HF `DeepseekV3MoE` (`gate.weight`, `gate.e_score_correction_bias`,
`experts.gate_up_proj`, `experts.down_proj`, `shared_experts.*`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from diji.kernels.moe import capacity_mask, ensure_registered, moe_ffn

if TYPE_CHECKING:
    from diji.model.transformer import ModelConfig


class AddAuxiliaryLoss(torch.autograd.Function):
    """Identity on x whose backward also sends gradient 1 into `loss` — as if loss were added to the
    training objective (DeepSeek-V2's released modeling code uses the same device). The loop scales the
    main loss by 1/grad_accum but not this term, so with accumulation α acts grad_accum times larger."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.dtype, ctx.shape = loss.dtype, loss.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, torch.ones(ctx.shape, dtype=ctx.dtype, device=grad.device)


class Router(nn.Module):
    """Top-k expert selection (HF name: `gate`). Scores in float32 for stable routing under autocast."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E = cfg.n_routed_experts
        self.cfg = cfg
        self.weight = nn.Parameter(torch.zeros(E, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(E), persistent=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C) → scores (N, E) float32, idx (N, k), gates (N, k) float32."""
        cfg = self.cfg
        # Routing decisions are discrete: a bf16 rounding flips near-ties, so the router stays float32
        # even under autocast (transformers does the same).
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid() if cfg.scoring_func == "sigmoid" else logits.softmax(-1)
        choice = scores.detach() + self.e_score_correction_bias.float()  # bias steers selection only
        if cfg.n_group > 1:
            # Group-limited routing: keep the topk_group groups whose two best experts score highest
            # (DeepSeek-V3) or whose best expert does (DeepSeek-V2), so each token's experts live on few
            # devices under expert parallelism.
            N, E = choice.shape
            grouped = choice.view(N, cfg.n_group, E // cfg.n_group)
            if cfg.group_scoring == "max":
                group_score = grouped.max(dim=-1).values  # (N, n_group)
            else:
                group_score = grouped.topk(2, dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(cfg.topk_group, dim=-1).indices, 1.0)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(E // cfg.n_group, dim=1), float("-inf"))
        idx = choice.topk(cfg.num_experts_per_tok, dim=-1).indices  # (N, k)
        gates = scores.gather(1, idx)
        if cfg.norm_topk_prob:
            gates = gates / (gates.sum(-1, keepdim=True) + 1e-20)
        return scores, idx, gates * cfg.routed_scaling_factor


class Experts(nn.Module):
    """E SwiGLU experts stored as 3-D tensors so that the dispatch can batch them (HF layout)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, C, F_ = cfg.n_routed_experts, cfg.hidden_size, cfg.expert_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * F_, C))
        self.down_proj = nn.Parameter(torch.empty(E, C, F_))


class MoE(nn.Module):
    """Routed + shared experts; `shared` is the dense MLP the transformer builds (None if no shared experts)."""

    def __init__(self, cfg: ModelConfig, shared: nn.Module | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.shared_experts = shared
        ensure_registered()
        self.stats: dict[str, torch.Tensor] = {}
        """Load of the latest training forward: counts (E,), dropped assignments, aux loss."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, shape = self.cfg, x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, C)
        scores, idx, gates = self.gate(x2)
        N, E, k = x2.shape[0], cfg.n_routed_experts, cfg.num_experts_per_tok
        if self.training and cfg.moe_capacity_factor > 0:
            idx = capacity_mask(idx, E, math.ceil(cfg.moe_capacity_factor * N * k / E))
        y = moe_ffn(x2, idx, gates.to(x.dtype), self.experts.gate_up_proj, self.experts.down_proj)
        y = y.view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        if self.training:
            y = self._balance(y, scores, idx)
        return y

    def _balance(self, y: torch.Tensor, scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        cfg, E = self.cfg, self.cfg.n_routed_experts
        kept = idx[idx >= 0]
        with torch.no_grad():
            load = torch.bincount(kept, minlength=E).float()  # (E,)
            self.stats = {"load": load, "dropped": (idx < 0).sum().float() / idx.numel()}
            if cfg.moe_balance == "bias":
                bias = self.gate.e_score_correction_bias
                bias += cfg.moe_bias_update_rate * torch.sign(load.mean() - load).to(bias.dtype)
        if cfg.moe_balance == "aux_loss" and torch.is_grad_enabled():
            f = load * E / max(idx.numel(), 1)  # f_i scaled so that uniform routing gives 1
            p = (scores / scores.sum(-1, keepdim=True)).mean(0)  # P_i
            aux = cfg.moe_aux_loss_coef * (f * p).sum()
            self.stats["aux_loss"] = aux.detach()
            y = AddAuxiliaryLoss.apply(y, aux)
        return y
