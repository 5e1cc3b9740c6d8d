"""KV-cached autoregressive generation: greedy, temperature, top-k and top-p sampling.

Used by `diji generate`, GRPO rollouts and evaluation. Prompts of different lengths are left-padded so
that every row's newest token sits in the same column; an attention mask hides the padding and explicit
position ids keep RoPE positions counting from each prompt's own first token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diji.model.transformer import KVCache, Transformer


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    """Upper bound on generated tokens per sequence."""
    temperature: float = 0.0
    """0 means greedy (argmax); otherwise logits are divided by it before sampling."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p (1 = off)."""
    stop_ids: tuple[int, ...] = field(default_factory=tuple)
    """Token ids that end a sequence (EOS, end of turn); the stop token is not returned."""
    seed: int | None = None
    """Seed for sampling; the same seed, prompt and model give the same tokens."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, generator=None
) -> torch.Tensor:
    """Pick one token per row of logits (B, V) → (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass *before* it already reaches top_p: the top token always survives.
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class Generation:
    tokens: list[int]
    """Generated token ids, without the prompt and without the stop token."""
    finish_reason: str
    """"stop" (a stop token was produced) or "length" (max_new_tokens reached)."""


@torch.inference_mode()
def generate(
    model: Transformer, prompts: list[list[int]], params: SamplingParams, pad_id: int = 0
) -> list[Generation]:
    """Generate continuations for a batch of token-id prompts with one shared KV cache."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    B, P = len(prompts), max(len(p) for p in prompts)
    total = P + params.max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({P} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
            f"context of {model.config.max_position_embeddings} tokens"
        )
    if params.max_new_tokens == 0:
        return [Generation([], "length") for _ in prompts]
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)

    ragged = any(len(p) != P for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
    ids = ids.to(device)
    attn = positions = None
    if ragged:
        attn = torch.zeros((B, total), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            attn[i, P - len(p) : P] = 1
        positions = (attn[:, :P].cumsum(-1) - 1).clamp_min(0)
        next_pos = attn[:, :P].sum(-1)  # (B,) position of each row's next token

    cache = KVCache(model.config, B, total, device, dtype)
    logits = model(ids, cache=cache, position_ids=positions, attention_mask=attn)[:, -1]
    stop = torch.tensor(sorted(set(params.stop_ids)) or [-1], device=device)
    out = torch.empty((B, params.max_new_tokens), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    n = 0
    for step in range(params.max_new_tokens):
        tok = sample(logits, params.temperature, params.top_k, params.top_p, generator)
        tok = tok.masked_fill(done, pad_id)
        out[:, step] = tok
        n = step + 1
        done |= torch.isin(tok, stop)
        if step + 1 == params.max_new_tokens or bool(done.all()):
            break
        if ragged:
            attn[:, P + step] = 1
            logits = model(tok[:, None], cache=cache, position_ids=next_pos[:, None], attention_mask=attn)[:, -1]
            next_pos = next_pos + 1
        else:
            logits = model(tok[:, None], cache=cache)[:, -1]

    results = []
    stops = set(params.stop_ids)
    for row in out[:, :n].tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        results.append(Generation(row[:cut], "stop") if cut is not None else Generation(row, "length"))
    return results
