"""Hugging Face `config.json` and state dict ↔ diji, dispatched to one adapter file per family.

    hf_llama.py     llama, mistral   (no biases; Mistral differs only by configuration)
    hf_qwen2.py     qwen2            (q/k/v biases)
    hf_deepseek.py  deepseek_v3      (MLA attention, DeepSeekMoE layers)

Each adapter module provides MODEL_TYPES, `config_from_hf(hf) -> dict` (ModelConfig keyword arguments),
`config_to_hf(cfg) -> dict` (its family's HF fields) and `state_from_hf(hf, state)` / `state_to_hf(cfg,
state)` for weights whose on-disk layout differs from diji's. A diji checkpoint *is* a checkpoint of
its family (DESIGN.md), so the checkpoint writer and `diji import-hf`/`export-hf` all go through here.

A diji model with no transformers equivalent (MoE without MLA, a softmax router under MLA) is written
with model_type "diji": diji reads it, `export-hf` refuses it with the reason.

diji-only fields (balancing, capacity) go under config.json's "diji" key, which transformers ignores.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

import torch

from diji.config import to_dict
from diji.model.transformer import ModelConfig

ADAPTERS = ("diji.model.hf_llama", "diji.model.hf_qwen2", "diji.model.hf_deepseek")
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
    if cfg.kv_lora_rank:
        if cfg.attention_bias:
            return NATIVE, "attention_bias with MLA has no transformers equivalent"
        if moe and cfg.scoring_func != "sigmoid":
            return NATIVE, "DeepSeek-V3 in transformers routes with sigmoid scores only (model.scoring_func)"
        return "deepseek_v3", ""
    if moe:
        return NATIVE, "transformers has no MoE with ordinary (non-MLA) attention in DeepSeek's form; set model.kv_lora_rank"
    return ("qwen2" if cfg.attention_bias else "llama"), ""


def rope_theta(hf: dict) -> float:
    """rope_theta from a transformers 5 `rope_parameters` dict or the older top-level field; refuse scaling."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"rope type '{kind}' is not supported yet (diji implements plain RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def rope_fields(theta: float) -> dict:
    """Both spellings, so transformers 4.x (rope_theta) and 5.x (rope_parameters) read the same value."""
    return {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta}}


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
        return ModelConfig(**{k: v for k, v in hf.items() if k in names})
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
