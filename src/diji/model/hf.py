"""Hugging Face `config.json` and state dict ↔ diji, dispatched to one adapter file per family.

    hf_llama.py     llama, mistral          (no biases; Mistral differs only by configuration)
    hf_qwen2.py     qwen2                   (q/k/v biases)
    hf_qwen3.py     qwen3, qwen3_moe        (per-head q/k RMSNorm; softmax top-k experts, no shared ones)
    hf_deepseek.py  deepseek_v2, deepseek_v3 (MLA attention, DeepSeekMoE layers: softmax / sigmoid routers)

Each adapter module provides MODEL_TYPES, `config_from_hf(hf) -> dict` (ModelConfig keyword arguments),
`config_to_hf(cfg) -> dict` (its family's HF fields) and `state_from_hf(hf, state)` / `state_to_hf(cfg,
state)` for weights whose on-disk layout differs from diji's. A diji checkpoint *is* a checkpoint of
its family (DESIGN.md), so the checkpoint writer and `diji import-hf`/`export-hf` all go through here.

RoPE scaling (linear, dynamic, llama3, yarn) is read from either spelling — transformers 5's
`rope_parameters` or 4.x's `rope_scaling` — and written in both (`rope_from_hf`, `rope_fields`).

A diji model with no transformers equivalent (e.g. DeepSeekMoE with shared experts under ordinary
attention) is written with model_type "diji": diji reads it, `export-hf` refuses it with the reason.

diji-only fields (balancing, capacity) go under config.json's "diji" key, which transformers ignores.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from types import ModuleType
from typing import Any

import torch

from diji.config import from_dict, to_dict
from diji.kernels.rope import RopeScaling
from diji.model.transformer import ModelConfig

ADAPTERS = ("diji.model.hf_llama", "diji.model.hf_qwen2", "diji.model.hf_qwen3", "diji.model.hf_deepseek")
NATIVE = "diji"
DIJI_ONLY = ("scoring_func", "moe_balance", "moe_aux_loss_coef", "moe_bias_update_rate", "moe_capacity_factor")
"""Fields transformers has no name for; kept in config.json["diji"]["model"]."""


def _adapter_for_type(model_type: str) -> ModuleType:
    for name in ADAPTERS:
        mod = importlib.import_module(name)
        if model_type in mod.MODEL_TYPES:
            return mod
    supported = [t for name in ADAPTERS for t in importlib.import_module(name).MODEL_TYPES]
    raise ValueError(f"unsupported model_type '{model_type}' (diji reads {', '.join(supported)} and {NATIVE})")


def family(cfg: ModelConfig) -> tuple[str, str]:
    """The HF model_type that computes exactly what `cfg` computes, or ("diji", why there is none)."""
    moe = cfg.n_routed_experts > 0
    grouped = moe and cfg.n_group > 1
    rs = cfg.rope_scaling
    if rs.rope_type == "dynamic" and rs.original_max_position_embeddings != cfg.max_position_embeddings:
        return NATIVE, ("transformers' dynamic RoPE scales from max_position_embeddings; set "
                        "model.rope_scaling.original_max_position_embeddings equal to it")
    if cfg.kv_lora_rank:
        if cfg.attention_bias:
            return NATIVE, "attention_bias with MLA has no transformers equivalent"
        if not moe or cfg.scoring_func == "sigmoid":
            if grouped and cfg.group_scoring != "top2_sum":
                return NATIVE, "DeepSeek-V3 ranks expert groups by their top-2 sum only (model.group_scoring)"
            return "deepseek_v3", ""
        if cfg.norm_topk_prob:
            return NATIVE, "DeepSeek-V2 in transformers never renormalises the top-k gates (model.norm_topk_prob)"
        if cfg.moe_balance == "bias":
            return NATIVE, "DeepSeek-V2 has no routing bias; set model.moe_balance to aux_loss or none"
        if grouped and cfg.group_scoring != "max":
            return NATIVE, "DeepSeek-V2 ranks expert groups by their best expert only (model.group_scoring = max)"
        return "deepseek_v2", ""
    if moe:
        why = [why for bad, why in (
            (not cfg.qk_norm, "model.qk_norm = true"),
            (cfg.scoring_func != "softmax", "model.scoring_func = softmax"),
            (cfg.n_shared_experts > 0, "no shared experts"),
            (cfg.n_group > 1, "model.n_group = 1"),
            (cfg.routed_scaling_factor != 1.0, "model.routed_scaling_factor = 1"),
            (cfg.moe_balance == "bias", "model.moe_balance aux_loss or none (no routing bias)"),
            (cfg.attention_bias, "no attention biases")) if bad]
        if why:
            return NATIVE, ("transformers' MoE with ordinary attention (qwen3_moe) needs " + ", ".join(why) +
                            "; or use MLA (model.kv_lora_rank) for DeepSeek's form")
        return "qwen3_moe", ""
    if cfg.qk_norm:
        if cfg.attention_bias:
            return NATIVE, "Qwen3 with attention biases also biases o_proj, which diji does not have"
        return "qwen3", ""
    return ("qwen2" if cfg.attention_bias else "llama"), ""


ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate"),
}
"""The parameters each rope type reads (transformers 5.23 modeling_rope_utils.py)."""


def rope_from_hf(hf: dict) -> tuple[float, RopeScaling]:
    """(rope_theta, scaling) from transformers 5's `rope_parameters` or 4.x's `rope_scaling` + `rope_theta`.

    Missing values are filled the way transformers fills them: llama3/yarn's original context from a
    top-level original_max_position_embeddings, else max_position_embeddings; dynamic scales from
    max_position_embeddings; a yarn factor from their ratio.
    """
    # transformers 5 lets a non-empty rope_scaling replace rope_parameters whole; theta falls back to the top level
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise ValueError("per-layer-type rope parameters are not supported (diji uses one RoPE for all layers)")
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ROPE_KEYS:
        raise ValueError(f"rope type '{kind}' is not supported (diji implements {', '.join(ROPE_KEYS)})")
    if float(params.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ValueError("partial_rotary_factor < 1 is not supported (diji rotates the whole head)")
    if kind == "default":
        return theta, RopeScaling()
    max_pos = hf.get("max_position_embeddings")
    original = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings") or max_pos
    if kind == "dynamic":
        original = max_pos
    fields: dict[str, Any] = {"rope_type": kind}
    if kind != "linear":
        fields["original_max_position_embeddings"] = int(original or 0)
    factor = params.get("factor")
    if factor is None and kind == "yarn" and max_pos and original:
        factor = max_pos / original
    if factor is None:
        raise ValueError(f"rope type '{kind}' needs a factor")
    fields["factor"] = float(factor)
    if kind == "llama3":
        for k in ("low_freq_factor", "high_freq_factor"):
            if params.get(k) is None:
                raise ValueError(f"rope type 'llama3' needs {k}")
            fields[k] = float(params[k])
    if kind == "yarn":
        fields.update(beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
                      mscale=float(params.get("mscale") or 0.0), mscale_all_dim=float(params.get("mscale_all_dim") or 0.0),
                      attention_factor=float(params.get("attention_factor") or 0.0),
                      truncate=bool(params.get("truncate", True)))
    return theta, RopeScaling(**fields)


def rope_fields(theta: float, scaling: RopeScaling | None = None) -> dict:
    """Both spellings, so transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters) read the same."""
    s = scaling or RopeScaling()
    params: dict[str, Any] = {"rope_type": s.rope_type, "rope_theta": theta}
    for k in ROPE_KEYS[s.rope_type]:
        v = getattr(s, k)
        if k in ("mscale", "mscale_all_dim", "attention_factor") and not v:
            continue  # unset: transformers derives it
        if k == "original_max_position_embeddings" and s.rope_type == "dynamic":
            continue  # dynamic scales from max_position_embeddings
        params[k] = v
    out: dict[str, Any] = {"rope_theta": theta, "rope_parameters": params}
    if s.rope_type != "default":
        out["rope_scaling"] = {"type": s.rope_type, **{k: v for k, v in params.items() if k != "rope_theta"}}
    return out


_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def stack_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One tensor per expert on disk (`mlp.experts.{e}.{gate,up,down}_proj.weight`, what DeepSeek and Qwen
    release and transformers' save_pretrained writes) → diji's stacked `experts.gate_up_proj` (E, 2F, C) and
    `experts.down_proj` (E, C, F), the layout transformers 5 also builds in memory."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, t in state.items():
        e = _EXPERT.match(name)
        if e:
            experts.setdefault(e.group(1), {}).setdefault(int(e.group(2)), {})[e.group(3)] = t
        else:
            out[name] = t
    for prefix, per in experts.items():
        n = len(per)
        out[prefix + ".gate_up_proj"] = torch.stack([torch.cat((per[i]["gate_proj"], per[i]["up_proj"])) for i in range(n)])
        out[prefix + ".down_proj"] = torch.stack([per[i]["down_proj"] for i in range(n)])
    return out


def unstack_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `stack_experts`."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name.removesuffix(".gate_up_proj")
            gate, up = t.chunk(2, dim=1)
            for i in range(t.shape[0]):
                out[f"{prefix}.{i}.gate_proj.weight"] = gate[i].contiguous()
                out[f"{prefix}.{i}.up_proj.weight"] = up[i].contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name.removesuffix(".down_proj")
            for i in range(t.shape[0]):
                out[f"{prefix}.{i}.down_proj.weight"] = t[i].contiguous()
        else:
            out[name] = t
    return out


def add_zero_routing_bias(state: dict[str, torch.Tensor]) -> None:
    """Families without DeepSeek-V3's routing bias (Qwen3-MoE, DeepSeek-V2): diji's router keeps the buffer,
    at zero, which selects exactly as having none. Exporting such a family drops it (`family` refuses a
    model whose bias training could move, moe_balance = bias)."""
    for name in [n for n in state if n.endswith("mlp.gate.weight")]:
        state[name.removesuffix("weight") + "e_score_correction_bias"] = torch.zeros(state[name].shape[0])


def drop_routing_bias(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the (zero) routing bias for a family that has none; a non-zero one would change routing."""
    out = {}
    for k, v in state.items():
        if not k.endswith("mlp.gate.e_score_correction_bias"):
            out[k] = v
        elif v.any():
            raise ValueError(f"{k} is non-zero but this model family routes without a bias; writing it would "
                             "change the routing (set model.moe_balance = bias to keep it, as model_type diji)")
    return out


def to_hf_config(cfg: ModelConfig, bos_id: int, eos_id: Any, pad_id: Any, extra: dict | None = None) -> dict:
    model_type, why = family(cfg)
    if model_type == NATIVE:
        hf: dict[str, Any] = {"architectures": ["DijiForCausalLM"], "model_type": NATIVE, **to_dict(cfg)}
    else:
        hf = _adapter_for_type(model_type).config_to_hf(cfg)
    hf.update({"torch_dtype": "float32", "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
               "use_cache": True})
    hf["diji"] = {**(extra or {}), "model": {k: getattr(cfg, k) for k in DIJI_ONLY}}
    if why:
        hf["diji"]["no_hf_equivalent"] = why
    return hf


def from_hf_config(hf: dict) -> ModelConfig:
    model_type = hf.get("model_type") or "llama"
    if model_type == NATIVE:
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return from_dict(ModelConfig, {k: v for k, v in hf.items() if k in names})
    kwargs = _adapter_for_type(model_type).config_from_hf(hf)
    kwargs.update((hf.get("diji") or {}).get("model") or {})
    return ModelConfig(**kwargs)


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diji state dict → the family's on-disk names and layouts."""
    model_type, _ = family(cfg)
    return state if model_type == NATIVE else _adapter_for_type(model_type).state_to_hf(cfg, state)


def state_from_hf(hf: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict (with its config.json) → diji names and layouts."""
    model_type = hf.get("model_type") or "llama"
    return state if model_type == NATIVE else _adapter_for_type(model_type).state_from_hf(hf, state)
