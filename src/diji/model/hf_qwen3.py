"""Qwen3 and Qwen3-MoE ↔ diji.

Qwen3 (Qwen3ForCausalLM) is Llama's layout plus one RMSNorm of width head_dim on every query and key
head before RoPE (`self_attn.q_norm`, `self_attn.k_norm`), which diji's `qk_norm` gives exactly; no q/k/v
biases, an explicit head_dim. Its `attention_bias` would also bias o_proj, which diji lacks: refused.

Qwen3-MoE (Qwen3MoeForCausalLM) adds sparse layers: a softmax router over `num_experts`, top-k, the k
gates renormalised when `norm_topk_prob`, no shared experts, no routed scaling — diji's MoE with
scoring_func = softmax, one group, n_shared_experts = 0. Which layers are sparse is set by
`decoder_sparse_step` and `mlp_only_layers`; diji keeps dense layers only before the first MoE layer
(`first_k_dense_replace`), which covers the released models (every layer sparse) and a dense prefix. Other
patterns are refused. Experts are one tensor each on disk and stacked in diji (model/hf.py).
Training balances experts with the auxiliary loss (router_aux_loss_coef), as Qwen does.
"""

from __future__ import annotations

import torch

from diji.model.hf import add_zero_routing_bias, drop_routing_bias, stack_experts, unstack_experts
from diji.model.hf_llama import dense_config_from_hf, dense_config_to_hf
from diji.model.transformer import ModelConfig

MODEL_TYPES = ("qwen3", "qwen3_moe")


def _num_experts(hf: dict) -> int:
    """Released configs say num_experts; transformers 5 saves it as num_local_experts."""
    return hf.get("num_experts") or hf.get("num_local_experts") or 0


def _first_moe_layer(hf: dict) -> int:
    """The index from which every layer is sparse (num_hidden_layers if none is); refuse other patterns."""
    L, E = hf["num_hidden_layers"], _num_experts(hf)
    step, dense_only = hf.get("decoder_sparse_step") or 1, set(hf.get("mlp_only_layers") or [])
    sparse = [i for i in range(L) if E > 0 and i not in dense_only and (i + 1) % step == 0]
    first = sparse[0] if sparse else L
    if sparse != list(range(first, L)):
        raise ValueError(f"qwen3_moe with decoder_sparse_step = {step} and mlp_only_layers = {sorted(dense_only)} "
                         "interleaves dense and MoE layers; diji supports dense layers only before the first MoE "
                         "layer (mlp_only_layers = [0, …, k-1], decoder_sparse_step = 1)")
    return first


def config_from_hf(hf: dict) -> dict:
    if hf.get("attention_bias"):
        raise ValueError("Qwen3 with attention_bias = true (biases on q/k/v and o_proj) is not supported")
    kwargs = {**dense_config_from_hf(hf), "qk_norm": True}
    kwargs["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    if hf.get("model_type") == "qwen3_moe":
        first = _first_moe_layer(hf)
        if first < hf["num_hidden_layers"]:
            kwargs.update(n_routed_experts=_num_experts(hf), num_experts_per_tok=hf["num_experts_per_tok"],
                          moe_intermediate_size=hf["moe_intermediate_size"], first_k_dense_replace=first,
                          norm_topk_prob=bool(hf.get("norm_topk_prob", False)), n_shared_experts=0, n_group=1,
                          topk_group=1, routed_scaling_factor=1.0, scoring_func="softmax", moe_balance="aux_loss",
                          moe_aux_loss_coef=float(hf.get("router_aux_loss_coef") or 0.001))
    return kwargs


def config_to_hf(cfg: ModelConfig) -> dict:
    common = {**dense_config_to_hf(cfg), "attention_bias": False, "use_sliding_window": False,
              "sliding_window": None, "max_window_layers": cfg.num_hidden_layers}
    if not cfg.n_routed_experts:
        return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **common}
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", **common,
            "num_experts": cfg.n_routed_experts, "num_experts_per_tok": cfg.num_experts_per_tok,
            "moe_intermediate_size": cfg.expert_size, "norm_topk_prob": cfg.norm_topk_prob,
            "decoder_sparse_step": 1, "mlp_only_layers": list(range(cfg.first_k_dense_replace)),
            "router_aux_loss_coef": cfg.moe_aux_loss_coef, "output_router_logits": False}


def state_from_hf(hf: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = stack_experts(state)
    add_zero_routing_bias(out)
    return out


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return unstack_experts(drop_routing_bias(state))
