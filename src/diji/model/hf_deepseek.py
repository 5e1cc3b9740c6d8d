"""DeepSeek-V2 and DeepSeek-V3 ↔ diji: Multi-head Latent Attention and DeepSeekMoE layers
(DeepseekV2ForCausalLM, DeepseekV3ForCausalLM).

The two differ in the router. V3: sigmoid scores plus a routing bias for selection, groups ranked by
their top-2 sum, gates renormalised, × routed_scaling_factor. V2 (as transformers 5.23 computes it):
softmax scores, `topk_method` greedy (no groups) or group_limited_greedy (groups ranked by their best
expert), gates never renormalised (transformers ignores V2's norm_topk_prob), × routed_scaling_factor;
no routing bias (diji's stays at zero). V2 always rotates interleaved pairs; V3 when `rope_interleave`.
YaRN rope scaling (the released V2/V3 configs) is read by model/hf.py; MLA applies its softmax-scale
correction (model/mla.py).

Two layouts differ between disk and diji:
- Experts. Checkpoints (DeepSeek's release, and what transformers' save_pretrained writes) hold one
  tensor per expert, `mlp.experts.{e}.{gate,up,down}_proj.weight`; diji stacks them into
  `experts.gate_up_proj` (E, 2F, C) and `experts.down_proj` (E, C, F) for its batched dispatch — the
  same layout transformers 5 builds in memory.
- Rotary dims. With `rope_interleave` (DeepSeek's default) the rotary part of q and k rotates adjacent
  pairs (x0, x1), (x2, x3)…; diji rotates halves (x_i, x_{i+D/2}). Permuting the output rows of the
  projections that produce q_rot and k_rot (q_b_proj / q_proj, kv_a_proj_with_mqa) to [evens | odds]
  turns one into the other exactly, so diji reorders on load and restores the interleaved layout on
  save. transformers computes the interleaved rotation the same way (`apply_rotary_pos_emb_interleave`).

Not supported (refused with a clear error): attention biases, FP8 block-quantised weights, V2 topk
methods other than greedy and group_limited_greedy. Multi-token-prediction layers (index ≥ num_hidden_layers) are skipped: diji predicts one token.
"""

from __future__ import annotations

import logging
import re

import torch

from diji.model.hf import (
    add_zero_routing_bias,
    drop_routing_bias,
    rope_fields,
    rope_from_hf,
    stack_experts,
    unstack_experts,
)
from diji.model.transformer import ModelConfig

log = logging.getLogger(__name__)

MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
V2_TOPK = ("greedy", "group_limited_greedy")

SAME = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "initializer_range",
        "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
MOE = ("n_routed_experts", "num_experts_per_tok", "n_shared_experts", "moe_intermediate_size",
       "first_k_dense_replace", "n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor")


def config_from_hf(hf: dict) -> dict:
    v2 = hf.get("model_type") == "deepseek_v2"
    if hf.get("attention_bias"):
        raise ValueError(f"{hf.get('model_type')} with attention_bias = true is not supported")
    if hf.get("quantization_config"):
        raise ValueError("quantised (FP8) DeepSeek checkpoints are not supported; convert the weights to bf16/fp32 first")
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"hidden_act '{hf['hidden_act']}' is not supported (diji's MLP is SwiGLU)")
    kwargs = {k: hf[k] for k in SAME if hf.get(k) is not None}
    kwargs["rope_theta"], kwargs["rope_scaling"] = rope_from_hf(hf)
    kwargs["q_lora_rank"] = hf.get("q_lora_rank") or 0
    kwargs.setdefault("tie_word_embeddings", False)
    kwargs["head_dim"] = hf["qk_nope_head_dim"]  # diji's nominal head width; MLA uses the explicit dims
    kwargs["num_key_value_heads"] = hf["num_attention_heads"]
    dense_layers = hf.get("first_k_dense_replace") or 0
    if hf.get("n_routed_experts") and dense_layers < hf["num_hidden_layers"]:
        kwargs.update({k: hf[k] for k in MOE if hf.get(k) is not None})
        kwargs["scoring_func"] = "sigmoid"
        if v2:
            kwargs.update(_v2_router(hf))
    return kwargs


def _v2_router(hf: dict) -> dict:
    method = hf.get("topk_method") or "greedy"
    if method not in V2_TOPK:
        raise ValueError(f"deepseek_v2 topk_method '{method}' is not supported (diji reads {', '.join(V2_TOPK)})")
    if hf.get("norm_topk_prob"):
        log.warning("deepseek_v2 norm_topk_prob = true: transformers 5.23 ignores it (gates are not renormalised), "
                    "and so does diji, to compute what transformers computes")
    grouped = method == "group_limited_greedy"
    return {"scoring_func": "softmax", "norm_topk_prob": False, "group_scoring": "max",
            "n_group": hf["n_group"] if grouped else 1, "topk_group": hf["topk_group"] if grouped else 1,
            "n_shared_experts": hf.get("n_shared_experts") or 0,
            # V2 trained with an expert-level balance loss (DeepSeek-V2 §2.2.3); it has no routing bias.
            "moe_balance": "aux_loss", "moe_aux_loss_coef": float(hf.get("aux_loss_alpha") or 0.001)}


def config_to_hf(cfg: ModelConfig) -> dict:
    moe = cfg.n_routed_experts > 0
    v2 = moe and cfg.scoring_func == "softmax"  # model/hf.py's family() has checked the rest
    hf = {
        "architectures": ["DeepseekV2ForCausalLM" if v2 else "DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v2" if v2 else "deepseek_v3",
        **{k: getattr(cfg, k) for k in SAME if k not in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")},
        "qk_rope_head_dim": cfg.rope_head_dim,
        "qk_nope_head_dim": cfg.nope_head_dim,
        "v_head_dim": cfg.value_head_dim,
        "q_lora_rank": cfg.q_lora_rank or None,
        "num_key_value_heads": cfg.num_attention_heads,
        **rope_fields(cfg.rope_theta, cfg.rope_scaling),
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
    }
    if not v2:
        hf.update(rope_interleave=True, num_nextn_predict_layers=0)
    if moe:
        hf.update({k: getattr(cfg, k) for k in MOE})
        hf["moe_intermediate_size"] = cfg.expert_size
    else:  # MLA alone: every layer dense; the MoE fields only need to be valid
        hf.update({"n_routed_experts": 2, "num_experts_per_tok": 1, "n_shared_experts": 0, "n_group": 1,
                   "topk_group": 1, "moe_intermediate_size": cfg.intermediate_size,
                   "first_k_dense_replace": cfg.num_hidden_layers})
    if v2:
        grouped = cfg.n_group > 1
        hf.update(topk_method="group_limited_greedy" if grouped else "greedy", norm_topk_prob=False,
                  n_group=cfg.n_group if grouped else None, topk_group=cfg.topk_group if grouped else None,
                  aux_loss_alpha=cfg.moe_aux_loss_coef)
    return hf


def _rope_perm(d: int) -> torch.Tensor:
    """Row order that turns interleaved rotary pairs into halves: [0, 2, 4, …, 1, 3, 5, …]."""
    return torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))


def _permute_rope_rows(state: dict, name: str, heads: int, nope: int, rope: int, inverse: bool) -> None:
    """Reorder the rotary rows (the last `rope` of each head's block) of a projection weight, in place."""
    if name not in state:
        return
    w = state[name]
    blocks = w.view(heads, nope + rope, -1)
    perm = _rope_perm(rope)
    if inverse:
        perm = torch.argsort(perm)
    state[name] = torch.cat((blocks[:, :nope], blocks[:, nope:][:, perm]), dim=1).reshape(w.shape).contiguous()


def _permute_all(state: dict, layers: int, heads: int, nope: int, rope: int, inverse: bool) -> None:
    for i in range(layers):
        p = f"model.layers.{i}.self_attn."
        for q in ("q_b_proj.weight", "q_proj.weight"):
            _permute_rope_rows(state, p + q, heads, nope, rope, inverse)
        # kv_a_proj_with_mqa produces [latent (R) | k_rot (Dr)]: one "head" whose position-free part is R wide.
        name = p + "kv_a_proj_with_mqa.weight"
        if name in state:
            _permute_rope_rows(state, name, 1, state[name].shape[0] - rope, rope, inverse)


def state_from_hf(hf: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    layers = hf["num_hidden_layers"]
    kept = {}
    for name, t in state.items():
        m = re.match(r"^model\.layers\.(\d+)\.", name)
        if not (m and int(m.group(1)) >= layers):  # else a multi-token-prediction module
            kept[name] = t
    out = stack_experts(kept)
    if hf.get("model_type") == "deepseek_v2":
        add_zero_routing_bias(out)
    if hf.get("model_type") == "deepseek_v2" or hf.get("rope_interleave", True):
        _permute_all(out, layers, hf["num_attention_heads"], hf["qk_nope_head_dim"], hf["qk_rope_head_dim"], False)
    return out


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = unstack_experts(state)
    if cfg.n_routed_experts and cfg.scoring_func == "softmax":  # deepseek_v2: no routing bias
        out = drop_routing_bias(out)
    _permute_all(out, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.nope_head_dim, cfg.rope_head_dim, True)
    return out
