"""Qwen2 ↔ diji: Llama's layout plus biases on the q/k/v projections (not on o_proj), which diji's
`attention_bias` gives exactly. Parameter names are identical, so weights pass through unchanged."""

from __future__ import annotations

import torch

from diji.model.hf_llama import dense_config_from_hf, dense_config_to_hf
from diji.model.transformer import ModelConfig

MODEL_TYPES = ("qwen2",)


def config_from_hf(hf: dict) -> dict:
    return {**dense_config_from_hf(hf), "attention_bias": True}


def config_to_hf(cfg: ModelConfig) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **dense_config_to_hf(cfg),
            "use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.num_hidden_layers}


def state_from_hf(hf: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state
