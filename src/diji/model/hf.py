"""Hugging Face config.json ↔ ModelConfig for the Llama family (diji's native layout).

diji's parameter names already equal LlamaForCausalLM's, so only the config needs translating.
diji-only fields go under a "diji" key, which transformers ignores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diji.model.transformer import ModelConfig

_SHARED = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "head_dim"]


def to_hf_config(cfg: ModelConfig, bos_id: int, eos_id: int, pad_id: int, extra: dict | None = None) -> dict:
    hf: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **{k: getattr(cfg, k) for k in _SHARED},
        "head_dim": cfg.dim_per_head,
        "hidden_act": "silu",
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "rope_scaling": None,
        "torch_dtype": "float32",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
    }
    hf["diji"] = dict(extra or {})
    return hf


def from_hf_config(hf: dict) -> ModelConfig:
    if hf.get("model_type") not in ("llama", None):
        raise ValueError(f"unsupported model_type '{hf.get('model_type')}' (this adapter handles llama)")
    kwargs = {k: hf[k] for k in _SHARED if k in hf}
    head_dim = hf.get("head_dim")
    if head_dim and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        kwargs["head_dim"] = head_dim
    kwargs.setdefault("num_key_value_heads", hf.get("num_attention_heads"))
    return ModelConfig(**kwargs)
