"""Shared bits for the benchmarks: the reference config and an HF twin of a diji model."""

from __future__ import annotations

import torch

from diji.model.transformer import ModelConfig, Transformer

BENCH_CFG = ModelConfig(vocab_size=8192, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                        num_key_value_heads=2, intermediate_size=1024, max_position_embeddings=512,
                        tie_word_embeddings=False)


def hf_twin(model: Transformer):
    """A transformers LlamaForCausalLM (sdpa) with the same config and the very same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                         num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                         intermediate_size=c.intermediate_size, max_position_embeddings=c.max_position_embeddings,
                         rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
                         tie_word_embeddings=c.tie_word_embeddings, attn_implementation="sdpa",
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return hf.to(torch.float32)
