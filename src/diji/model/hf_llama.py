"""Llama and Mistral ↔ diji. diji's native layout *is* LlamaForCausalLM's: same parameter names, the
same rotate_half RoPE, so weights pass through unchanged and only config.json needs translating.

RoPE scaling (Llama 3.1+'s llama3, linear, dynamic, yarn) is read by model/hf.py's `rope_from_hf`, which
every dense family shares through `dense_config_from_hf`.

Mistral (MistralForCausalLM) differs from Llama only by configuration: a sliding attention window. A
window shorter than the context is imported by shortening the context to the window, where the two
attentions are identical.
"""

from __future__ import annotations

import logging

import torch

from diji.model.hf import rope_fields, rope_from_hf
from diji.model.transformer import ModelConfig

log = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "mistral")

DENSE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "intermediate_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
         "initializer_range")


def dense_config_from_hf(hf: dict) -> dict:
    """The fields every dense family shares, checked for what diji does not implement."""
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"hidden_act '{hf['hidden_act']}' is not supported (diji's MLP is SwiGLU)")
    if hf.get("mlp_bias"):
        raise ValueError("mlp_bias = true is not supported (diji's MLP has no biases)")
    kwargs = {k: hf[k] for k in DENSE if hf.get(k) is not None}
    kwargs.setdefault("num_key_value_heads", hf["num_attention_heads"])
    kwargs.setdefault("tie_word_embeddings", False)  # the transformers default for these families
    kwargs["rope_theta"], kwargs["rope_scaling"] = rope_from_hf(hf)
    head_dim = hf.get("head_dim")
    if head_dim and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        kwargs["head_dim"] = head_dim
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if window and window < kwargs.get("max_position_embeddings", 1 << 30):
        log.warning("sliding_window %d < max_position_embeddings %d: importing with a %d-token context, where "
                    "full and sliding-window attention agree", window, kwargs["max_position_embeddings"], window)
        kwargs["max_position_embeddings"] = window
    return kwargs


def dense_config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **{k: getattr(cfg, k) for k in DENSE},
        **rope_fields(cfg.rope_theta, cfg.rope_scaling),
        "head_dim": cfg.dim_per_head,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
    }


def config_from_hf(hf: dict) -> dict:
    if hf.get("attention_bias"):
        raise ValueError("Llama with attention_bias = true (an o_proj bias) is not supported")
    return dense_config_from_hf(hf)


def config_to_hf(cfg: ModelConfig) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **dense_config_to_hf(cfg),
            "attention_bias": False, "mlp_bias": False}


def state_from_hf(hf: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state
