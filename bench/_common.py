"""Shared bits for the benchmarks: the reference config and an HF twin of a diji model."""

from __future__ import annotations

import statistics
from pathlib import Path

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


SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def corpus_tokens(path: Path = SHAKESPEARE) -> torch.Tensor:
    """The shared reference text as byte ids (0-255, a subset of every bench vocabulary): a real corpus with
    a real loss curve, no tokenizer training needed. Benchmarks only; never used by tests or quickstart."""
    if not path.is_file():
        raise SystemExit(f"benchmark corpus not found: {path} (see ../shared/data/README.md)")
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long()


def batches(tokens: torch.Tensor, batch: int, seq: int, seed: int):
    """Endless random (inputs, targets) windows; the same seed gives the same data order to every contender."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(tokens) - seq - 1, (batch,), generator=gen)
        rows = torch.stack([tokens[s : s + seq + 1] for s in starts.tolist()])
        yield rows[:, :-1], rows[:, 1:]


def median(xs: list[float]) -> float:
    return statistics.median(xs)
