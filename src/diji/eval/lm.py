"""The model as evaluation sees it: batched log-likelihoods, rolling token losses and generation.

Three requests cover every task family, the same split lm-evaluation-harness makes (Gao et al. 2021,
`lm_eval.api.model.LM`): `loglikelihood` (score a continuation after a context), `token_losses` (every
next-token loss of a text window, for perplexity) and `generate` (sample or decode greedily until a stop).

Determinism: nothing here draws random numbers except sampling, which is seeded per item so a score never
depends on the batch size or on which other items share a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from diji.data.tokenizer import Tokenizer
from diji.model.generate import SamplingParams, generate
from diji.model.transformer import Transformer

Progress = Callable[[int], None]
SAMPLE_GROUP = 16
"""Samples of one prompt generated together; fixed so that sampled completions never depend on batch_size."""


def _noop(_: int) -> None:
    return None


@dataclass
class LoglikelihoodResult:
    logprob: float
    """Σ log p(continuation token | everything before it), in nats."""
    is_greedy: bool
    """True when every continuation token is the argmax at its position (lm-eval's `is_greedy`)."""
    token_logprobs: list[float]
    """Per-token log-probabilities of the continuation (what an OpenAI `logprobs` response carries)."""


class LanguageModel:
    """A loaded checkpoint plus its tokenizer, answering batched evaluation requests on one device."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, batch_size: int = 16, name: str = "model") -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        self.device = next(model.parameters()).device
        self.max_length = model.config.max_position_embeddings
        self.path: Path | None = None
        """The checkpoint directory, when loaded from one (results are recorded in its lineage.json)."""
        self.lineage: dict = {}
        """The checkpoint's verified lineage.json at load time."""

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", batch_size: int = 16,
                        dtype: str = "auto") -> LanguageModel:
        """Load (and verify) a checkpoint; `device` and `dtype` go through the one policy in `compute`."""
        from diji.train.checkpoint import load_for_inference

        loaded = load_for_inference(path, device, dtype)
        tok = Tokenizer.from_file(loaded.tokenizer_file)
        lm = cls(loaded.model, tok, batch_size=batch_size, name=str(path))
        lm.lineage = loaded.lineage
        lm.path = Path(path)
        return lm

    # ---- encoding ---------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation) exactly as lm-evaluation-harness splits them.

        Trailing whitespace of the context moves to the continuation, the whole string is encoded once
        and the continuation is whatever follows the context's own encoding: BPE may merge across the
        boundary, and scoring the tokens the model would really see is what makes the two harnesses agree.
        """
        n_trailing = len(context) - len(context.rstrip())
        if n_trailing:
            continuation = context[-n_trailing:] + continuation
            context = context[:-n_trailing]
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context)
        return ctx, whole[len(ctx):]

    # ---- requests ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(
        self, requests: Sequence[tuple[list[int], list[int]]], progress: Progress = _noop
    ) -> list[LoglikelihoodResult]:
        """Score each continuation given its context; contexts longer than the model's window are cut
        from the left (the tokens nearest the continuation matter most)."""
        prepared = []
        for i, (ctx, cont) in enumerate(requests):
            if not cont:
                raise ValueError(f"request {i}: the continuation encodes to no tokens")
            if len(cont) > self.max_length:
                raise ValueError(
                    f"request {i}: a {len(cont)}-token continuation does not fit the model's "
                    f"{self.max_length}-token window"
                )
            # The first token needs something before it; with no context the sequence starts at EOS,
            # the document separator every diji model was trained on (lm-eval's `prefix_token_id`).
            full = ([self.tokenizer.eos_id] if not ctx else list(ctx)) + list(cont)
            full = full[-(self.max_length + 1):]
            prepared.append((full[:-1], full[1:], len(cont)))
        # Longest first, as lm-eval does: batches hold similar lengths and the first batch shows at once
        # whether memory suffices.
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
        out: list[LoglikelihoodResult | None] = [None] * len(prepared)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            T = max(len(prepared[i][0]) for i in idx)
            x = torch.full((len(idx), T), self.tokenizer.pad_id, dtype=torch.long)
            for r, i in enumerate(idx):
                inp = prepared[i][0]
                x[r, : len(inp)] = torch.tensor(inp)
            # Right padding needs no mask: causal attention never lets a real token see the padding after it.
            hidden = self.model(x.to(self.device), return_hidden=True)
            for r, i in enumerate(idx):
                inp, tgt, n = prepared[i]
                pos = torch.arange(len(inp) - n, len(inp), device=self.device)
                logits = self.model.lm_head(hidden[r, pos]).float()  # only the positions scored: (n, V)
                logp = torch.log_softmax(logits, dim=-1)
                target = torch.tensor(tgt[-n:], device=self.device)
                tok_lp = logp.gather(-1, target[:, None]).squeeze(-1)
                greedy = bool((logp.argmax(-1) == target).all())
                out[i] = LoglikelihoodResult(float(tok_lp.double().sum()), greedy, tok_lp.tolist())
            progress(len(idx))
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def token_losses(self, windows: Sequence[list[int]], progress: Progress = _noop) -> list[torch.Tensor]:
        """Next-token losses (nats, float64) of each window's tokens after its first: len(window) - 1 each."""
        out: list[torch.Tensor | None] = [None] * len(windows)
        for start in range(0, len(windows), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(windows))))
            T = max(len(windows[i]) for i in rows) - 1
            x = torch.full((len(rows), T), self.tokenizer.pad_id, dtype=torch.long)
            y = torch.full((len(rows), T), -100, dtype=torch.long)
            for r, i in enumerate(rows):
                w = torch.tensor(windows[i], dtype=torch.long)
                if len(w) - 1 > self.max_length:
                    raise ValueError(f"window {i} has {len(w)} tokens; the model's window is {self.max_length + 1}")
                x[r, : len(w) - 1], y[r, : len(w) - 1] = w[:-1], w[1:]
            hidden = self.model(x.to(self.device), return_hidden=True)  # (B, T, C)
            y = y.to(self.device)
            for r, i in enumerate(rows):
                n = len(windows[i]) - 1
                # One row's logits at a time: (T, V) in float32 instead of (B, T, V) for a large vocabulary.
                logits = self.model.lm_head(hidden[r, :n]).float()
                out[i] = torch.nn.functional.cross_entropy(logits, y[r, :n], reduction="none").double().cpu()
            progress(len(rows))
        return out  # type: ignore[return-value]

    def generate(
        self,
        prompts: Sequence[list[int]],
        max_new_tokens: int,
        stop_ids: tuple[int, ...],
        stop_strings: tuple[str, ...] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        samples: int = 1,
        seed: int = 0,
        progress: Progress = _noop,
    ) -> list[list[str]]:
        """Decode `samples` completions per prompt; returns their texts cut at the first stop string.

        Greedy decoding (temperature 0) batches prompts together. Sampling generates one prompt's samples
        together (in groups of SAMPLE_GROUP) with a generator seeded by (seed, prompt index), so the same
        item always gets the same samples whatever the batch size. Prompts too long for the window lose tokens on the left.
        """
        keep = self.max_length - max_new_tokens
        if keep < 1:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's "
                             f"{self.max_length}-token window")
        prompts = [list(p)[-keep:] for p in prompts]
        texts: list[list[str]] = [[] for _ in prompts]
        if temperature == 0:
            params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=stop_ids)
            # Sorting by length keeps left padding short; results are put back in order.
            order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                gens = generate(self.model, [prompts[i] for i in idx], params, pad_id=self.tokenizer.pad_id)
                for i, g in zip(idx, gens, strict=True):
                    texts[i] = [_cut(self.tokenizer.decode(g.tokens), stop_strings)] * samples
                progress(len(idx))
            return texts
        for i, p in enumerate(prompts):
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    stop_ids=stop_ids, seed=seed * 1_000_003 + i)
            # A prompt's samples are drawn in groups of a fixed size (not the batch size, which would change
            # the draws); rows of a group are independent draws from one seeded generator.
            gens = []
            for s in range(0, samples, SAMPLE_GROUP):
                gens += generate(self.model, [p] * min(SAMPLE_GROUP, samples - s),
                                 replace(params, seed=params.seed + s), pad_id=self.tokenizer.pad_id)
            texts[i] = [_cut(self.tokenizer.decode(g.tokens), stop_strings) for g in gens]
            progress(1)
        return texts


def _cut(text: str, stops: tuple[str, ...]) -> str:
    """Text up to the earliest stop string (lm-eval's `until` post-processing)."""
    for s in stops:
        if s:
            text = text.split(s)[0]
    return text
