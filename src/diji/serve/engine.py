"""The batched inference engine: state, policy and execution kept apart.

    Sequence      one generation in flight: prompt, output so far, sampling settings, text, finish reason
    Scheduler     pure Python: admits waiting sequences into free cache slots, runs the rest, retires
                  finished or cancelled ones (continuous batching: the batch changes between decode steps)
    ModelRunner   torch: a batched prefill of newly admitted prompts, or one decode step for every
                  running sequence, over a slot-per-sequence KV cache
    Engine.step   schedule → run → update

The layout follows nano-vllm (GeeeekExplorer/nano-vllm, `engine/llm_engine.py`) and the idea of
iteration-level scheduling from Orca (Yu et al., OSDI 2022): a finished sequence frees its slot at once
and a waiting one takes it at the next step, instead of the whole batch waiting for its longest member.

`AsyncEngine` runs the step loop on one background thread and hands each request's events to an
asyncio queue; the HTTP layer only ever talks to it through `submit` and `abort`.

Fault isolation: one sequence's failure is that sequence's alone. Sampling never sees a NaN from an
accepted setting (temperatures below `MIN_TEMPERATURE` are greedy, `top_p` is floored at `MIN_TOP_P`:
1e-300 underflows to 0 in float32 and 0/0 is NaN); a row whose logits are not finite, or whose sampling
raises, ends with `finish_reason="error"` while the rest of the batch goes on; a forward pass that fails
for a batch is retried one sequence at a time so that only the sequences that fail alone are ended. If
the engine thread itself dies, every request it holds fails at once and `alive` turns false.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diji.model.generate import sample
from diji.model.transformer import ModelConfig, Transformer
from diji.serve.json_constraint import START, JsonConstraint

log = logging.getLogger(__name__)

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"

MIN_TEMPERATURE = 1e-3
"""Below this a temperature is treated as 0 (greedy), its limit: logits / 1e-300 overflow to inf."""
MIN_TOP_P = 1e-6
"""Smaller top_p values act as this one (keep only the top token); 1e-300 is 0 in float32."""


class EngineDead(RuntimeError):
    """The engine thread has stopped: nothing submitted will ever be answered."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    """Cache slots: the most sequences decoding at once."""
    max_prefill_tokens: int = 4096
    """Upper bound on prompt tokens in one prefill step (a long prefill stalls every running decode)."""
    max_model_len: int = 0
    """Longest prompt + output per sequence; 0 means the model's max_position_embeddings."""

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be a positive integer, got {self.max_batch_size}")
        if self.max_prefill_tokens <= 0:
            raise ValueError(f"max_prefill_tokens must be a positive integer, got {self.max_prefill_tokens}")
        if self.max_model_len < 0:
            raise ValueError(f"max_model_len must be >= 0 (0 = the model's context), got {self.max_model_len}")


@dataclass(frozen=True)
class GenParams:
    """Per-sequence sampling settings (already validated by the caller)."""

    max_tokens: int = 16
    """Most tokens to generate (0: only score the prompt)."""
    temperature: float = 1.0
    """0 = greedy; otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    stop: tuple[str, ...] = ()
    """Strings that end the text; the text is cut before the first one."""
    stop_ids: tuple[int, ...] = ()
    """Token ids that end the sequence (EOS, end of turn); not returned."""
    seed: int | None = None
    """Seed of this sequence's own sampler (choice i of n uses seed + i)."""
    logprobs: int | None = None
    """Return the chosen token's log-probability and this many alternatives for each generated token."""
    prompt_logprobs: int | None = None
    """Return log-probabilities of the prompt tokens too (what `echo` + `logprobs` needs)."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI's definition)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was already generated."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits before sampling."""
    json_mode: bool = False
    """Constrain sampling so that the text is one JSON object (see serve/json_constraint.py)."""

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias or self.json_mode)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]
    """The most likely token ids and their log-probabilities, best first."""


@dataclass
class Event:
    """What one step produced for one sequence; the HTTP layer turns these into responses."""

    request_id: str
    index: int
    token_ids: list[int]
    text: str
    """New text that is final (not the start of a stop string, not half a UTF-8 character)."""
    logprobs: list[TokenLogprob]
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    stop_token: tuple[int, TokenLogprob | None] | None = None
    """The sampled stop token (not part of token_ids/text) and its log-probability: scoring clients
    such as lm-eval read the last generated token's log-prob even when it is EOS."""
    error: str | None = None
    """Set (with finish_reason "error") when this sequence failed; the others of the batch go on."""


class Sequence:
    """One generation: its tokens, its text, and why it stopped."""

    def __init__(self, request_id: str, index: int, prompt: list[int], params: GenParams,
                 decode: Callable[[list[int]], str]) -> None:
        self.request_id, self.index, self.prompt, self.params = request_id, index, list(prompt), params
        self.output: list[int] = []
        self.status = WAITING
        self.slot = -1
        self.finish_reason: str | None = None
        self._decode = decode
        self._text = ""
        self._sent = 0  # characters of _text already emitted
        self.generator = None
        if params.seed is not None:
            # Each of the n choices gets its own stream, so n=2 with a seed gives two different samples.
            self.generator = torch.Generator().manual_seed(params.seed + index)
        self.stop_hold = max((len(s) for s in params.stop), default=1) - 1
        self.json_state = START if params.json_mode else None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def last_token(self) -> int:
        return self.output[-1] if self.output else self.prompt[-1]

    def append(self, token: int) -> str:
        """Add a generated token, check the stop conditions; return the newly final text."""
        if token in self.params.stop_ids:
            self.finish_reason = "stop"
            return self._flush()
        self.output.append(token)
        self._text = self._decode(self.output)
        if self.params.stop:
            # Only the tail can hold a stop string that was not there before this token.
            start = max(0, self._sent - self.stop_hold)
            hits = [i for s in self.params.stop if (i := self._text.find(s, start)) >= 0]
            if hits:
                self._text = self._text[: min(hits)]
                self.finish_reason = "stop"
                return self._flush()
        if len(self.output) >= self.params.max_tokens:
            self.finish_reason = "length"
            return self._flush()
        # Hold back a possible stop-string prefix and an incomplete UTF-8 character: its 1-3 pending
        # bytes decode as U+FFFD until the rest arrives. More U+FFFD than that are invalid bytes for good.
        end = len(self._text) - self.stop_hold
        floor = max(self._sent, end - 3)
        while end > floor and self._text[end - 1] == "\ufffd":
            end -= 1
        if end <= self._sent:
            return ""
        new, self._sent = self._text[self._sent : end], end
        return new

    def _flush(self) -> str:
        new, self._sent = self._text[self._sent :], len(self._text)
        return new

    @property
    def text(self) -> str:
        return self._text


class Scheduler:
    """Admission and continuous batching over a fixed number of cache slots; no torch in here."""

    def __init__(self, slots: int, max_prefill_tokens: int) -> None:
        self.free = list(range(slots - 1, -1, -1))  # pop() hands out the lowest slot first
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, request_id: str) -> list[Sequence]:
        """Remove every sequence of a request (client gone), freeing their slots."""
        gone = [s for s in itertools.chain(self.waiting, self.running) if s.request_id == request_id]
        self.waiting = deque(s for s in self.waiting if s.request_id != request_id)
        for s in gone:
            if s.status == RUNNING:
                self._release(s)
            s.status, s.finish_reason = FINISHED, s.finish_reason or "abort"
        return gone

    def schedule(self) -> tuple[str, list[Sequence]] | None:
        """Prefill newly admitted sequences when any fit, else decode everything that runs."""
        batch: list[Sequence] = []
        budget = self.max_prefill_tokens
        while self.waiting and self.free:
            nxt = self.waiting[0]
            if batch and len(nxt.prompt) > budget:
                break
            self.waiting.popleft()
            nxt.slot, nxt.status = self.free.pop(), RUNNING
            budget -= len(nxt.prompt)
            batch.append(nxt)
        if batch:
            self.running.extend(batch)
            return "prefill", batch
        if self.running:
            return "decode", list(self.running)
        return None

    def finish(self, seq: Sequence) -> None:
        self._release(seq)
        seq.status = FINISHED

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot >= 0:
            self.free.append(seq.slot)
            self.free.sort(reverse=True)
            seq.slot = -1

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)


class SlotCache:
    """A KV cache with one row ("slot") per sequence; every row has its own length.

    Before each forward the runner binds the rows taking part and the position each writes at. The
    model's `Cache` protocol sees `length` = the furthest write position, and gets back keys/values for
    columns [0, length + T); the attention mask the runner passes hides each row's columns past its own
    length. Prefill writes rows from column 0, so right-padded prompts need no mask at all: causal
    attention never lets a real token see the padding after it, and the padding's keys are overwritten
    by the row's next token before any mask exposes them.
    """

    def __init__(self, cfg: ModelConfig, slots: int, max_len: int, device, dtype) -> None:
        heads, dk, dv = cfg.cache_dims()  # MLA caches its latent and rotary key instead of K/V heads
        k_shape, v_shape = (slots, heads, max_len, dk), (slots, heads, max_len, dv)
        self.k = [torch.zeros(k_shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(v_shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.rows = torch.zeros(0, dtype=torch.long)
        self.starts = torch.zeros(0, dtype=torch.long)
        self._start = 0
        self._contiguous = False

    def bind(self, rows: list[int], starts: list[int]) -> None:
        device = self.k[0].device
        self.rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.starts = torch.tensor(starts, dtype=torch.long, device=device)
        self._start = max(starts)
        # Rows 0..B-1 in order (the common case, the scheduler hands out low slots first) can be sliced
        # as a view instead of gathered as a copy.
        self._contiguous = rows == list(range(len(rows)))

    @property
    def length(self) -> int:
        return self._start

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        S = self._start + T
        if T == 1:  # decode: each row writes its one new token at its own position
            self.k[layer][self.rows, :, self.starts] = k[:, :, 0]
            self.v[layer][self.rows, :, self.starts] = v[:, :, 0]
        else:  # prefill: every bound row starts at column 0
            self.k[layer][self.rows, :, :T] = k
            self.v[layer][self.rows, :, :T] = v
        if self._contiguous:
            B = len(self.rows)
            return self.k[layer][:B, :, :S], self.v[layer][:B, :, :S]
        return self.k[layer][self.rows, :, :S], self.v[layer][self.rows, :, :S]


def _token_logprobs(logprobs: torch.Tensor, chosen: torch.Tensor, k: int) -> list[TokenLogprob]:
    """Rows of log-probabilities (N, V) and chosen ids (N,) → per-row chosen value plus the top k."""
    picked = logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
    if k > 0:
        top_v, top_i = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(top_i.tolist(), top_v.tolist(), strict=True)]
    else:
        tops = [[] for _ in picked]
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(chosen.tolist(), picked, tops, strict=True)]


class ModelRunner:
    """Executes the scheduler's decisions on the model; owns the KV cache."""

    def __init__(self, model: Transformer, slots: int, max_len: int) -> None:
        self.model = model.eval()
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.max_len = max_len
        self.cache = SlotCache(model.config, slots, max_len, self.device, self.dtype)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, list[list[TokenLogprob | None] | None]]:
        """Run the prompts (right-padded into one batch); logits for each prompt's last token."""
        B, P = len(seqs), max(len(s.prompt) for s in seqs)
        ids = torch.zeros((B, P), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s.prompt)] = torch.tensor(s.prompt)
        self.cache.bind([s.slot for s in seqs], [0] * B)
        hidden = self.model(ids.to(self.device), cache=self.cache, return_hidden=True)  # (B, P, C)
        last = torch.tensor([len(s.prompt) - 1 for s in seqs], device=self.device)
        logits = self.model.lm_head(hidden[torch.arange(B, device=self.device), last])  # (B, V)
        prompt_lps: list[list[TokenLogprob | None] | None] = []
        for i, s in enumerate(seqs):
            if s.params.prompt_logprobs is None:
                prompt_lps.append(None)
                continue
            # Position j predicts token j+1; the first prompt token has no context, hence None.
            n = len(s.prompt)
            lp = self.model.lm_head(hidden[i, : n - 1]).float().log_softmax(-1)
            targets = torch.tensor(s.prompt[1:], device=self.device)
            prompt_lps.append([None, *_token_logprobs(lp, targets, s.params.prompt_logprobs)])
        return logits, prompt_lps

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed each sequence's newest token at its own position; logits (B, V)."""
        starts = [s.num_tokens - 1 for s in seqs]
        self.cache.bind([s.slot for s in seqs], starts)
        ids = torch.tensor([[s.last_token] for s in seqs], device=self.device)
        pos = torch.tensor(starts, device=self.device)[:, None]
        mask = None
        if min(starts) != max(starts):
            S = max(starts) + 1
            mask = torch.arange(S, device=self.device)[None, :] <= pos  # (B, S): each row's own columns
        return self.model(ids, cache=self.cache, position_ids=pos, attention_mask=mask)[:, -1]

    def sample(self, logits: torch.Tensor, seqs: list[Sequence], json: JsonConstraint | None = None,
               ) -> tuple[list[int], list[TokenLogprob | None], dict[int, Exception]]:
        """One token per row with that row's own settings; log-probs are of the unmodified model.
        Rows that cannot be sampled (non-finite logits, a sampler error) are returned as failures by
        row index instead of raising, so that the other rows are unaffected."""
        raw = logits.float()
        adj = raw
        if any(s.params.adjusts_logits for s in seqs):
            adj = raw.clone()
            for i, s in enumerate(seqs):
                if s.params.adjusts_logits:
                    adj[i] = self._adjust(raw[i], s, json)
        failed: dict[int, Exception] = {}
        # NaN or +inf anywhere, or nothing left to choose: this row's sampling would fail or be garbage.
        bad = torch.isnan(adj).any(-1) | torch.isposinf(adj).any(-1) | torch.isneginf(adj).all(-1)
        for i in bad.nonzero()[:, 0].tolist():
            failed[i] = FloatingPointError("the model produced non-finite logits for this sequence")
        tokens = adj.argmax(-1)
        # Rows sharing settings and no private seed are sampled in one call; a seeded row uses its own
        # generator so that its tokens do not depend on what else is in the batch.
        groups: dict[tuple[float, int, float], list[int]] = {}
        singles: list[int] = []
        for i, s in enumerate(seqs):
            p = s.params
            if p.temperature < MIN_TEMPERATURE or i in failed:
                continue
            if s.generator is not None:
                singles.append(i)
            else:
                groups.setdefault((p.temperature, p.top_k, max(p.top_p, MIN_TOP_P)), []).append(i)
        for (temperature, top_k, top_p), rows in groups.items():
            idx = torch.tensor(rows, device=adj.device)
            try:
                tokens[idx] = sample(adj[idx], temperature, top_k, top_p)
            except Exception:  # noqa: BLE001 (find the row at fault below; the others must not fail)
                singles.extend(rows)
        for i in singles:
            p = seqs[i].params
            try:
                tokens[i] = sample(adj[i : i + 1], p.temperature, p.top_k, max(p.top_p, MIN_TOP_P),
                                   seqs[i].generator)[0]
            except Exception as e:  # noqa: BLE001
                failed[i] = e
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None and i not in failed]
        lps: list[TokenLogprob | None] = [None] * len(seqs)
        if want:
            rows = torch.tensor(want, device=raw.device)
            k = max(seqs[i].params.logprobs or 0 for i in want)
            got = _token_logprobs(raw[rows].log_softmax(-1), tokens[rows], k)
            for i, tl in zip(want, got, strict=True):
                tl.top = tl.top[: seqs[i].params.logprobs]
                lps[i] = tl
        return tokens.tolist(), lps, failed

    @staticmethod
    def _adjust(row: torch.Tensor, s: Sequence, json: JsonConstraint | None) -> torch.Tensor:
        """Logit bias, presence/frequency penalties (OpenAI's formula: mu[j] - c[j] * alpha_frequency
        - [c[j] > 0] * alpha_presence, counts over generated tokens), then the JSON mask."""
        p = s.params
        row = row.clone()
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=row.device)
            row[ids] += torch.tensor([b for _, b in p.logit_bias], device=row.device)
        if (p.presence_penalty or p.frequency_penalty) and s.output:
            counts = torch.bincount(torch.tensor(s.output, device=row.device), minlength=row.shape[0])
            counts = counts[: row.shape[0]].to(row.dtype)
            row -= counts * p.frequency_penalty + (counts > 0).to(row.dtype) * p.presence_penalty
        if s.json_state is not None and json is not None:
            stop = p.stop_ids[0] if p.stop_ids else -1
            budget = p.max_tokens - len(s.output)
            if json.tight(s.json_state, budget):
                allowed = json.forced(s.json_state, stop)
            else:
                # Most candidates are checked in the likeliest 256; a structural position (after a key
                # only ':' fits) may need the whole ranking.
                top = torch.topk(row, min(256, row.shape[0])).indices.tolist()
                allowed = json.allowed(s.json_state, top, budget) or json.allowed(
                    s.json_state, row.argsort(descending=True).tolist(), budget) or json.forced(s.json_state, stop)
            allowed = [t for t in allowed if 0 <= t < row.shape[0]]
            masked = torch.full_like(row, float("-inf"))
            if allowed:
                idx = torch.tensor(allowed, device=row.device)
                masked[idx] = row[idx].nan_to_num(nan=0.0, posinf=1e4, neginf=-1e4)
            row = masked
        return row


class Engine:
    """The synchronous core: `add`, `abort`, and `step` (schedule → run → update)."""

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], cfg: EngineConfig,
                 json_vocab: Callable[[], list[str | None]] | None = None) -> None:
        self.cfg = cfg
        self.max_model_len = min(cfg.max_model_len or model.config.max_position_embeddings,
                                 model.config.max_position_embeddings)
        self.decode = decode
        self.scheduler = Scheduler(cfg.max_batch_size, cfg.max_prefill_tokens)
        self.runner = ModelRunner(model, cfg.max_batch_size, self.max_model_len)
        self._json_vocab = json_vocab
        self._json: JsonConstraint | None = None

    @property
    def json(self) -> JsonConstraint:
        """The JSON-mode masks, built on first use (one decode per vocabulary entry)."""
        if self._json is None:
            if self._json_vocab is None:
                raise ValueError("this engine was built without token texts, so it cannot constrain JSON")
            self._json = JsonConstraint(self._json_vocab())
        return self._json

    def add(self, request_id: str, prompt: list[int], params: GenParams, n: int = 1) -> None:
        if not prompt or len(prompt) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) must fit the "
                             f"context of {self.max_model_len} tokens")
        if params.json_mode:
            self.json  # noqa: B018 (build it now, on the engine thread, not in the middle of a step)
        for i in range(n):
            self.scheduler.add(Sequence(request_id, i, prompt, params, self.decode))

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def _run(self, kind: str, seqs: list[Sequence]) -> tuple[torch.Tensor, list]:
        if kind == "prefill":
            return self.runner.prefill(seqs)
        return self.runner.decode(seqs), [None] * len(seqs)

    def step(self) -> list[Event]:
        plan = self.scheduler.schedule()
        if plan is None:
            return []
        kind, seqs = plan
        first = kind == "prefill"
        try:
            logits, prompt_lps = self._run(kind, seqs)
        except Exception as e:  # noqa: BLE001
            if len(seqs) == 1:
                return [self._fail(seqs[0], e)]
            # Which sequence is at fault? Each one alone: a row's cache writes are idempotent (same
            # positions, same values), so re-running the step for one sequence is safe.
            log.warning("a batched %s step failed (%s: %s); retrying its %d sequences one by one",
                        kind, type(e).__name__, e, len(seqs))
            events = []
            for s in seqs:
                try:
                    one, lps = self._run(kind, [s])
                except Exception as e1:  # noqa: BLE001
                    events.append(self._fail(s, e1))
                    continue
                events += self._update([s], one, lps, first)
            return events
        return self._update(seqs, logits, prompt_lps, first)

    def _fail(self, s: Sequence, e: BaseException) -> Event:
        log.error("sequence %s/%d failed: %s: %s", s.request_id, s.index, type(e).__name__, e,
                  exc_info=(type(e), e, e.__traceback__))
        s.finish_reason = "error"
        self.scheduler.finish(s)
        return Event(s.request_id, s.index, [], "", [], finish_reason="error",
                     error=f"{type(e).__name__}: {e}"[:300])

    def _update(self, seqs: list[Sequence], logits: torch.Tensor, prompt_lps: list, first: bool) -> list[Event]:
        events = []
        # max_tokens == 0 (echo-only scoring): nothing is sampled, the prompt's log-probs are the answer.
        live = [i for i, s in enumerate(seqs) if not (first and s.params.max_tokens == 0)]
        json = self._json if any(s.json_state is not None for s in seqs) else None
        tokens, lps, failed = (self.runner.sample(logits[live], [seqs[i] for i in live], json) if live
                               else ([], [], {}))
        chosen = dict(zip(live, zip(tokens, lps, strict=True), strict=True))
        bad = {live[j]: e for j, e in failed.items()}
        for i, s in enumerate(seqs):
            if i in bad:
                events.append(self._fail(s, bad[i]))
                continue
            try:
                ev = self._advance(s, chosen.get(i))
            except Exception as e:  # noqa: BLE001 (a decode or stop-check bug ends this sequence only)
                events.append(self._fail(s, e))
                continue
            ev.prompt_logprobs = prompt_lps[i] if first else None
            ev.finish_reason = s.finish_reason
            if s.finish_reason is not None:
                self.scheduler.finish(s)
            events.append(ev)
        return events

    def _advance(self, s: Sequence, pick: tuple[int, TokenLogprob | None] | None) -> Event:
        if pick is None:
            s.finish_reason = "length"
            return Event(s.request_id, s.index, [], "", [])
        tok, lp = pick
        is_stop = tok in s.params.stop_ids
        if s.json_state is not None and not is_stop and self._json is not None:
            s.json_state = self._json.advance(s.json_state, tok) or s.json_state
        text = s.append(tok)  # add() checked that max_tokens fits the context, so no overflow here
        ev = Event(s.request_id, s.index, [] if is_stop else [tok], text,
                   [lp] if lp is not None and not is_stop else [])
        if is_stop:
            ev.stop_token = (tok, lp)
        return ev

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)


@dataclass
class _Submit:
    request_id: str
    prompt: list[int]
    params: GenParams
    n: int
    sink: Callable[[Event | BaseException], None]


class AsyncEngine:
    """Runs `Engine.step` on a background thread; each request gets an asyncio.Queue of events.

    `alive` is false once the thread has stopped for any reason; then every request it held has been
    sent an `EngineDead` and `submit` raises it at once."""

    def __init__(self, engine: Engine, on_step: Callable[[str, int, float], None] | None = None) -> None:
        self.engine = engine
        self.on_step = on_step
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, Callable] = {}
        self._live: dict[str, int] = {}  # sequences of each request not finished yet
        self._wake = threading.Event()
        self._stop = False
        self._dead: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="diji-engine", daemon=True)
        self._thread.start()

    @staticmethod
    def next_id(prefix: str) -> str:
        """A response id nobody can guess (feedback is accepted only for ids the caller was given)."""
        return f"{prefix}-{secrets.token_hex(16)}"

    @property
    def alive(self) -> bool:
        return self._dead is None and self._thread.is_alive()

    def submit(self, request_id: str, prompt: list[int], params: GenParams, n: int = 1,
               q: asyncio.Queue | None = None) -> asyncio.Queue:
        """Queue a request; its events (or an exception) arrive on `q` (several requests may share one)."""
        if not self.alive:
            raise EngineDead("the engine is not running")
        loop = asyncio.get_running_loop()
        q = q if q is not None else asyncio.Queue()

        def sink(item) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is closing
                loop.call_soon_threadsafe(q.put_nowait, item)

        self._inbox.put(_Submit(request_id, prompt, params, n, sink))
        self._wake.set()
        return q

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting + self._inbox.qsize()

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def num_requests(self) -> int:
        """Requests the engine still holds (submitted, queued or running)."""
        return len(self._sinks) + self._inbox.qsize()

    def _drain(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                self.engine.abort(item[1])
                self._sinks.pop(item[1], None)
                self._live.pop(item[1], None)
                continue
            try:
                self.engine.add(item.request_id, item.prompt, item.params, item.n)
            except Exception as e:  # noqa: BLE001 (ValueError: the request does not fit; anything else is ours)
                item.sink(e)
                continue
            self._sinks[item.request_id] = item.sink
            self._live[item.request_id] = item.n

    def _iterate(self) -> None:
        self._drain()
        if not self.engine.scheduler.busy:
            self._wake.wait(0.5)
            self._wake.clear()
            return
        kind = "prefill" if self.engine.scheduler.waiting and self.engine.scheduler.free else "decode"
        t0 = time.perf_counter()
        events = self.engine.step()
        for ev in events:
            sink = self._sinks.get(ev.request_id)
            if sink is None:
                continue
            sink(ev)
            if ev.finish_reason is not None:
                self._live[ev.request_id] -= 1
                if self._live[ev.request_id] == 0:  # every choice of the request is done
                    del self._sinks[ev.request_id], self._live[ev.request_id]
        if self.on_step is not None:
            self.on_step(kind, len(events), time.perf_counter() - t0)

    def _loop(self) -> None:
        try:
            while not self._stop:
                try:
                    self._iterate()
                except Exception as e:  # noqa: BLE001 (a bug outside a step: fail what is in flight, keep serving)
                    log.exception("engine iteration failed")
                    for rid, sink in list(self._sinks.items()):
                        sink(e)
                        with contextlib.suppress(Exception):
                            self.engine.abort(rid)
                    self._sinks.clear()
                    self._live.clear()
        except BaseException as e:  # SystemExit, KeyboardInterrupt, MemoryError…: the thread is going away
            self._die(e)  # (not re-raised: the thread ends either way, and _die has logged it)
        finally:
            if not self._stop and self._dead is None:
                self._die(RuntimeError("the engine loop exited"))

    def _die(self, cause: BaseException) -> None:
        log.critical("the engine thread stopped (%s: %s); failing every request it held",
                     type(cause).__name__, cause)
        self._dead = cause
        dead = EngineDead(f"the engine stopped ({type(cause).__name__})")
        for sink in list(self._sinks.values()):
            sink(dead)
        self._sinks.clear()
        self._live.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, tuple):
                item.sink(dead)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
