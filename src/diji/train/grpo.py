"""GRPO: reinforcement learning with verifiable rewards — the stage's own part of the one training loop.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1; used by DeepSeek-R1):

1. **Rollout** (`next_batch`): take `batch_size` prompts from the task's train split and sample G
   completions of each with the KV-cached sampler (`diji.model.generate`).
2. **Reward**: the task's verifier scores each completion (exact answer + a small format term).
3. **Advantage**: within each group, Â = (r − mean) / (std + ε) — the group is the baseline, no critic.
   `scale_rewards = false` drops the std division (Liu et al. 2025, "Dr. GRPO": it over-weights groups
   that are nearly all right or all wrong).
4. **Objective** (`loss`): the PPO clipped ratio (Schulman et al. 2017) per completion token,
   ρ = π/π_old, L = −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â) + β·KL, averaged over all completion tokens of
   the batch (token-level averaging, Yu et al. 2025 "DAPO" §3.3, so long answers are not down-weighted).
   KL to the frozen starting policy uses the k3 estimator exp(q−p) − (q−p) − 1 (Schulman 2020,
   "Approximating KL divergence"); β = 0 needs no reference model.

Groups whose rewards are all equal carry no signal (Â = 0); with β = 0 they are dropped before the
backward pass (the saving DAPO's dynamic sampling also takes). With `updates_per_rollout` μ > 1 the same
rollout feeds μ optimizer steps and π_old is the policy that sampled it; with μ = 1, ρ ≡ 1 in value and
only its gradient matters.

Layout (compute): a group's G completions share their prompt, which is most of the tokens here. Sampling
prefills each prompt once and copies its KV cache to the G rows (`generate(..., n=G)`); the loss packs
each group into one row — the prompt once, then every completion with its own positions and a mask that
hides the other completions (`pack_groups`) — so the prompt is computed once per group, not G times
(bench/grpo_step.py).

Data parallel (torchrun): every rank draws the same global batch of prompts and samples only its share
of the groups; each completion has its own random stream keyed by (run.seed, rollout k, group, sample)
and each rank divides its token sum by the global token count over the world size, so N processes
sample, score and step exactly as one does (tests/train/test_distributed.py), each doing 1/N of the work.

Resume is exact: rollout k is sampled from weights the checkpoint restores with the streams above, and
the prompt order is a per-epoch permutation fixed by (seed, epoch); the state is (epoch, cursor, k) plus
a pending rollout when μ > 1 (kept with one process; under torchrun a resume samples a fresh one).
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diji.config import to_dict
from diji.errors import DijiError
from diji.eval.verifiers import is_thinking
from diji.train.config import LoopConfig, OptimConfig, RunConfig
from diji.train.loop import Job, Trainer, seed_everything
from diji.train.lora import LoRAConfig
from diji.train.sft import start_from


@dataclass(frozen=True)
class GRPOParams:
    task: str = "arith"
    """Task supplying prompts, verifier and reward: a built-in name (`diji.eval.task.task_names()`) or
    `math:FILE` — the user's GSM8K/MATH-style JSONL problems (question + answer), all used as prompts."""
    verifier: str = ""
    """For a `math:FILE` task: what grades a completion — "" / `math` (the built-in final-answer check,
    plus format_weight) or a plug-in `module:function` / `path/file.py:function` returning the reward."""
    eval_task: str = ""
    """Where val_accuracy is measured: "" = the task's own test split (for `math:FILE`, the same file:
    give a held-out `math:TEST_FILE` here to measure generalisation). `diji eval CKPT --tasks <it>
    --max-new-tokens <grpo.max_new_tokens> --limit <grpo.eval_examples>` reports the same number."""
    prompt_pool: int = 20000
    """Distinct training problems drawn from the task's train split; iterated in shuffled epochs."""
    group_size: int = 8
    """Completions sampled per prompt (G); advantages are normalised within each group."""
    max_new_tokens: int = 64
    """Longest completion; a completion cut off here usually earns no answer reward."""
    temperature: float = 1.0
    """Sampling temperature for rollouts."""
    top_k: int = 0
    """Top-k filter for rollouts (0 = off)."""
    top_p: float = 1.0
    """Nucleus filter for rollouts (1 = off)."""
    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − clip_low."""
    clip_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    kl_beta: float = 0.0
    """Weight β of the k3 KL penalty to the starting policy (0 = no penalty, no reference model)."""
    scale_rewards: bool = True
    """Divide advantages by the group's reward std (GRPO); false = Dr. GRPO's mean-only baseline."""
    updates_per_rollout: int = 1
    """μ: optimizer steps per rollout batch (π_old is the sampling policy)."""
    format_weight: float = 0.1
    """Reward added for the <think>…</think>-then-answer shape (on top of 1 for a correct answer)."""
    eval_examples: int = 200
    """Held-out test problems for val_accuracy at each evaluation (greedy)."""
    entropy_top: float = 1.0
    """Fraction of completion tokens the policy gradient trains: those with the highest policy entropy
    (Wang et al. 2025 use 0.2). 1 = every token."""
    loss_norm: str = "token"
    """What the summed token loss is divided by: "token" = the completion tokens of the batch (DAPO's
    token mean) or "constant" = completions × max_new_tokens (Dr. GRPO, arXiv 2503.20783: a token mean
    weighs each token of a short reply more than one of a long reply, which biases length)."""
    kl_skip_first: bool = False
    """Leave the first completion token out of the KL penalty, so β anchors the reasoning tokens but does
    not cap how far the choice of reply style (e.g. `<think>` or a direct answer) can move."""
    freeze_first_token: bool = False
    """Train no policy gradient on the first completion token (a control: with it, GRPO cannot change
    which reply style the model starts with, only what it writes after)."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be >= 2 (advantages compare completions), got {self.group_size}")
        for name in ("prompt_pool", "max_new_tokens", "updates_per_rollout", "eval_examples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"grpo.{name} must be positive, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"grpo.temperature must be > 0 (rollouts must explore), got {self.temperature}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("grpo.top_p must be in (0, 1] and grpo.top_k >= 0")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError("grpo.clip_low must be in [0, 1) and grpo.clip_high >= 0")
        if self.kl_beta < 0 or self.format_weight < 0:
            raise ValueError("grpo.kl_beta and grpo.format_weight must be >= 0")
        if not 0 < self.entropy_top <= 1:
            raise ValueError(f"grpo.entropy_top must be in (0, 1], got {self.entropy_top}")
        if self.loss_norm not in ("token", "constant"):
            raise ValueError(f"grpo.loss_norm must be 'token' or 'constant', got {self.loss_norm!r}")


@dataclass(frozen=True)
class GRPOConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="grpo"))
    grpo: GRPOParams = field(default_factory=GRPOParams)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, weight_decay=0.0, warmup_steps=5,
                                                                   schedule="constant"))
    train: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=8, eval_every=25))
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        if not self.train.init_from:
            raise ValueError("train.init_from is required: the checkpoint to improve (e.g. an SFT run's)")
        if self.train.grad_accum != 1 and self.grpo.updates_per_rollout != 1:
            raise ValueError("use either train.grad_accum > 1 or grpo.updates_per_rollout > 1, not both")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Â for rewards laid out group after group (N·G,): minus the group mean, over the group std if `scale`.

    The std is the unbiased sample std, as in TRL's GRPOTrainer; ε keeps all-equal groups at exactly 0.
    """
    r = rewards.view(-1, group_size).float()
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def token_logprobs(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   positions: torch.Tensor | None = None, attn: torch.Tensor | None = None,
                   with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log π(targets[t] | context of t) for every position (B, T), in float32 — and, with `with_entropy`,
    the (detached) entropy of π at every position as well.

    π is the distribution the rollouts were sampled from: the logits divided by the sampling
    temperature, so that the ratio π/π_old and the gradient refer to the policy that acted.
    `positions` and a 4-D bool `attn` describe packed rows (see `pack_groups`); without them each row
    is one causal sequence."""
    logits = model(ids, position_ids=positions, attention_mask=attn).float()
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return picked
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)
    return picked, entropy


def forking_tokens(entropy: torch.Tensor, mask: torch.Tensor, top: float) -> torch.Tensor:
    """The `top` fraction of completion tokens (by `mask`) with the highest policy entropy, as a bool (B, T).

    These are the "forking" tokens where the policy actually chooses (here: add or subtract, which number);
    the rest are near-deterministic copies and sums. Restricting the policy gradient to them is the 80/20
    rule of Wang et al. 2025 ("Beyond the 80/20 Rule", arXiv:2506.01939)."""
    if top >= 1.0 or not bool(mask.any()):
        return mask.clone()
    threshold = torch.quantile(entropy[mask].float(), 1.0 - top)
    return mask & (entropy >= threshold)


def clipped_objective(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
    clip_low: float, clip_high: float, ref_logp: torch.Tensor | None = None, beta: float = 0.0,
    denom: float | None = None, kl_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss over (B, T) token log-probs; `adv` is (B,) per row or (B, T) per token, `mask` (B, T)
    marks completion tokens. The sum over tokens is divided by `denom` (default: the tokens in `mask`).
    `kl_mask` (default `mask`) marks the tokens the KL penalty covers."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None] if adv.dim() == 1 else adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.minimum(ratio * a, clipped * a)
    m = mask.float()
    n = m.sum().clamp_min(1)
    total = n if denom is None else max(float(denom), 1e-12)
    stats: dict[str, float] = {}
    if ref_logp is not None and beta > 0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1  # k3: unbiased, always >= 0
        km = m if kl_mask is None else kl_mask.float()
        per_token = per_token + beta * kl * km
        stats["kl"] = float((kl.detach() * km).sum() / km.sum().clamp_min(1))
    is_clipped = ((ratio < 1 - clip_low) & (a < 0)) | ((ratio > 1 + clip_high) & (a > 0))
    stats["clip_frac"] = float((is_clipped.float() * m).sum() / n)
    return (per_token * m).sum() / total, stats


def pack_groups(prompts: list[list[int]], completions: list[list[int]], adv: torch.Tensor, pad_id: int,
                ) -> tuple[torch.Tensor, ...]:
    """Lay out each group — one prompt and its G completions — as one row that holds the prompt once.

    Row i is prompt[:-1], then for every completion j the segment [prompt[-1]] + c_j[:-1] whose targets
    are c_j: the last prompt token is repeated at the start of each segment because it is what predicts
    each completion's first token. Position ids restart after the prompt in every segment and the
    attention mask lets a segment see the prompt and itself only, so every completion token has exactly
    the context it was sampled with. Compared with one row per completion this computes the prompt once
    per group instead of G times (the prompts here are most of the tokens).

    Returns (ids, positions, attn (N, 1, T, T) bool, targets (−1 off-completion), mask, per-token adv).
    """
    N, G = len(prompts), len(completions) // max(len(prompts), 1)
    if len(completions) != N * G or any(not c for c in completions):
        raise ValueError("pack_groups needs G non-empty completions for each prompt, group after group")
    lengths = [len(p) - 1 + sum(len(c) for c in completions[i * G : (i + 1) * G]) for i, p in enumerate(prompts)]
    T = max(lengths)
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    positions = torch.zeros((N, T), dtype=torch.long)
    targets = torch.full((N, T), -1, dtype=torch.long)
    seg = torch.full((N, T), -2, dtype=torch.long)  # -1 prompt, j >= 0 completion j, -2 padding
    tok_adv = torch.zeros((N, T), dtype=torch.float32)
    for i, p in enumerate(prompts):
        P = len(p)
        ids[i, : P - 1] = torch.tensor(p[:-1], dtype=torch.long)
        positions[i, : P - 1] = torch.arange(P - 1)
        seg[i, : P - 1] = -1
        at = P - 1
        for j in range(G):
            c = completions[i * G + j]
            span = slice(at, at + len(c))
            ids[i, span] = torch.tensor([p[-1], *c[:-1]], dtype=torch.long)
            targets[i, span] = torch.tensor(c, dtype=torch.long)
            positions[i, span] = torch.arange(P - 1, P - 1 + len(c))
            seg[i, span] = j
            tok_adv[i, span] = float(adv[i * G + j])
            at += len(c)
        positions[i, at:] = torch.arange(T - at) + (positions[i, at - 1] + 1 if at else 0)
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones((T, T), dtype=torch.bool).tril()
    attn = causal & ((k == -1) | (k == q)) | torch.eye(T, dtype=torch.bool)  # padding sees itself
    return ids, positions, attn[:, None], targets, seg >= 0, tok_adv


@dataclass
class Rollout:
    ids: torch.Tensor
    """(N, T) one row per kept group: the prompt once, then each completion (+ stop token), right-padded."""
    positions: torch.Tensor
    """(N, T) position ids (each completion continues from the end of the prompt)."""
    attn: torch.Tensor
    """(N, 1, T, T) bool: which positions each position may attend to."""
    targets: torch.Tensor
    """(N, T) the token each position predicts (−1 where nothing is trained)."""
    mask: torch.Tensor
    """(N, T) True where the target is a completion token."""
    adv: torch.Tensor
    """(N, T) the advantage of the completion each target token belongs to."""
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    metrics: dict[str, float]
    denom: float | None = None
    """What this rank divides its token sum by: all ranks' completion tokens / world size, so that the
    data-parallel mean of the ranks' gradients is the gradient of the global token mean."""
    first: torch.Tensor | None = None
    """(N, T) True at the first token of every completion (the reply-style choice)."""


class GRPOStage:
    def __init__(self, cfg: GRPOConfig, tokenizer: Any, device: torch.device) -> None:
        from diji.data.chat import render_prompt
        from diji.eval.task import get_task

        self.cfg, self.p, self.tok, self.device = cfg, cfg.grpo, tokenizer, device
        self.task = get_task(self.p.task, verifier=self.p.verifier)
        self.task.format_weight = self.p.format_weight
        self.eval_task = get_task(self.p.eval_task, verifier=self.p.verifier) if self.p.eval_task else self.task
        self.pool = self.task.examples("train", self.p.prompt_pool, seed=cfg.run.seed)
        self.prompts = [render_prompt(list(e.messages), tokenizer) for e in self.pool]
        self.eval_set = self.eval_task.examples("test", self.p.eval_examples, seed=0)
        self.data_sha256 = hashlib.sha256(repr([e.messages for e in self.pool]).encode()).hexdigest()
        self.model: torch.nn.Module | None = None  # the policy; set by `grpo()` once the Trainer owns it
        self.ref: torch.nn.Module | None = None
        self.epoch = self.cursor = self.rollouts = 0
        self._perm = self._permutation(0)
        self.pending: Rollout | None = None
        self.pending_uses = 0
        self.rank, self.world = 0, 1  # set by `grpo()` under torchrun: each rank samples its share of groups

    def _permutation(self, epoch: int) -> list[int]:
        perm = list(range(len(self.pool)))
        random.Random(f"grpo/{self.cfg.run.seed}/{epoch}").shuffle(perm)
        return perm

    def attach(self, model: torch.nn.Module) -> None:
        self.model = model
        if self.p.kl_beta > 0:
            self.ref = copy.deepcopy(model).eval()
            for q in self.ref.parameters():
                q.requires_grad_(False)

    # ---- rollout ---------------------------------------------------------------------------------
    def _take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if self.cursor == len(self._perm):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            out.append(self._perm[self.cursor])
            self.cursor += 1
        return out

    @torch.no_grad()
    def rollout(self) -> Rollout:
        from diji.model.generate import SamplingParams, generate

        assert self.model is not None, "GRPOStage.attach(model) must be called before training"
        G = self.p.group_size
        # Every rank draws the same global batch (the cursor stays in step) and samples its own slice of
        # groups; each completion has its own random stream, keyed by (seed, rollout, group, sample), so
        # what is sampled does not depend on the number of processes.
        share = self.cfg.train.batch_size // self.world
        first = self.rank * share
        picks = self._take(self.cfg.train.batch_size)[first : first + share]
        base = (self.cfg.run.seed * 1_000_003 + self.rollouts) * 1_000_033
        seeds = [(base + (first + i) * G + j) % 2**63 for i in range(share) for j in range(G)]
        params = SamplingParams(max_new_tokens=self.p.max_new_tokens, temperature=self.p.temperature,
                                top_k=self.p.top_k, top_p=self.p.top_p, stop_ids=self.tok.stop_ids)
        self.rollouts += 1
        was_training = self.model.training
        self.model.eval()  # adapters' dropout off while sampling
        try:
            gens = generate(self.model, [self.prompts[i] for i in picks], params, pad_id=self.tok.pad_id, n=G,
                            row_seeds=seeds)
        finally:
            self.model.train(was_training)
        texts = [self.tok.decode(g.tokens) for g in gens]
        examples = [self.pool[i] for i in picks for _ in range(G)]
        grades = [self.task.grade(e, t) for e, t in zip(examples, texts, strict=True)]
        rewards = torch.tensor([self.task.reward(e, t) for e, t in zip(examples, texts, strict=True)])
        adv = group_advantages(rewards, G, self.p.scale_rewards)
        thinking = [is_thinking(t) for t in texts]
        n = len(grades)
        metrics = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "accuracy": sum(g.correct for g in grades) / n,
            "format": sum(g.format_ok for g in grades) / n,
            "response_len": sum(len(g.tokens) for g in gens) / len(gens),
            "truncated": sum(g.finish_reason == "length" for g in gens) / len(gens),
            # The R1 curve: how often the policy chooses to reason first, and how often that is right
            # (think_correct / think_share is the accuracy of thinking replies).
            "think_share": sum(thinking) / n,
            "think_correct": sum(t and g.correct for t, g in zip(thinking, grades, strict=True)) / n,
        }
        groups = list(range(len(picks)))
        if self.p.kl_beta == 0:  # a unanimous group has Â = 0 everywhere: no gradient, skip its compute
            groups = [g for g in groups if bool(adv[g * G : (g + 1) * G].any())]
        metrics["kept_frac"] = len(groups) / len(picks)
        # The stop token is part of what the policy chose: training on it teaches when to stop.
        completions = [gens[i].tokens + ([gens[i].stop_token] if gens[i].stop_token is not None else [])
                       for g in groups for i in range(g * G, (g + 1) * G)]
        kept = torch.tensor([i for g in groups for i in range(g * G, (g + 1) * G)], dtype=torch.long)
        if self.p.loss_norm == "constant":  # Dr. GRPO: the same divisor whatever the replies' lengths
            denom = self.cfg.train.batch_size * G * self.p.max_new_tokens / self.world
        else:
            denom = self._global_tokens(sum(len(c) for c in completions)) / self.world
        if not groups:
            empty = torch.zeros((0, 1), dtype=torch.long)
            return Rollout(empty, empty, torch.zeros((0, 1, 1, 1), dtype=torch.bool), empty, empty.bool(),
                           empty.float(), None, None, metrics, denom)
        prompts = [self.prompts[picks[g]] for g in groups]
        ids, positions, attn, targets, mask, tok_adv = pack_groups(prompts, completions, adv[kept], self.tok.pad_id)
        # Each completion's positions start at len(prompt) − 1 (pack_groups), which no prompt token has.
        starts = torch.tensor([len(q) - 1 for q in prompts], dtype=torch.long)[:, None]
        ro = Rollout(ids, positions, attn, targets, mask, tok_adv, None, None, metrics, denom,
                     first=mask & (positions == starts))
        if self.p.updates_per_rollout > 1:
            ro.old_logp = self._logprobs(self.model, ro).cpu()
        if self.ref is not None:
            ro.ref_logp = self._logprobs(self.ref, ro).cpu()
        return ro

    def _global_tokens(self, local: int) -> float:
        """Completion tokens trained this step, summed over ranks."""
        if self.world == 1:
            return float(local)
        import torch.distributed as tdist

        t = torch.tensor([float(local)], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return float(t.item())

    def _logprobs(self, model: torch.nn.Module, ro: Rollout, with_entropy: bool = False):
        d = self.device
        return token_logprobs(model, ro.ids.to(d), ro.targets.to(d), self.p.temperature, ro.positions.to(d),
                              ro.attn.to(d), with_entropy)

    # ---- Stage protocol --------------------------------------------------------------------------
    def shard_batch(self, batch: Rollout, rank: int, world: int) -> Rollout:
        """A rollout is already this rank's share (it sampled only its own groups)."""
        return batch

    def next_batch(self) -> Rollout:
        if self.pending is None or self.pending_uses >= self.p.updates_per_rollout:
            self.pending, self.pending_uses = self.rollout(), 0
        self.pending_uses += 1
        return self.pending

    def loss(self, model, batch: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        metrics = dict(batch.metrics)
        if batch.ids.shape[0] == 0:
            # Every group was unanimous: nothing to learn from this rollout (a zero loss, no gradient). The
            # metric names match a normal step's: under torchrun the ranks reduce them as one vector.
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            empty = {"clip_frac": 0.0, "tokens": 0, **({"kl": 0.0} if self.ref is not None else {}),
                     **({"fork_entropy_min": 0.0} if self.p.entropy_top < 1.0 else {})}
            return zero, {**metrics, **empty}
        d = self.device
        mask, adv = batch.mask.to(d), batch.adv.to(d)
        first = batch.first.to(d) if batch.first is not None else torch.zeros_like(mask)
        if self.p.freeze_first_token:
            adv = adv * ~first
        if self.p.entropy_top < 1.0:
            logp, entropy = self._logprobs(model, batch, with_entropy=True)
            forks = forking_tokens(entropy, mask, self.p.entropy_top)
            adv = adv * forks  # the KL term still covers every completion token
            metrics["fork_entropy_min"] = float(entropy[forks].min()) if bool(forks.any()) else 0.0
        else:
            logp = self._logprobs(model, batch)
        old = batch.old_logp.to(d) if batch.old_logp is not None else logp.detach()
        ref = batch.ref_logp.to(d) if batch.ref_logp is not None else None
        loss, stats = clipped_objective(logp, old, adv, mask, self.p.clip_low, self.p.clip_high, ref,
                                        self.p.kl_beta, batch.denom,
                                        kl_mask=mask & ~first if self.p.kl_skip_first else None)
        return loss, {**metrics, **stats, "tokens": int(mask.sum())}

    def evaluate(self, model) -> dict[str, float]:
        from diji.eval.task import score

        s = score(model, self.tok, self.eval_task, self.eval_set, max_new_tokens=self.p.max_new_tokens)
        return {"val_accuracy": s.accuracy, "val_format": s.format_rate, "val_think_share": s.think_share}

    def state_dict(self) -> dict:
        # A pending rollout (μ > 1) is rank 0's share only; under torchrun a resume samples a fresh one.
        pending = self.pending if self.world == 1 else None
        # As a plain dict of tensors: training state is unpickled with weights_only=True (no custom classes).
        pending = vars(pending).copy() if pending is not None else None
        return {"epoch": self.epoch, "cursor": self.cursor, "rollouts": self.rollouts,
                "pending": pending, "pending_uses": self.pending_uses if pending is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.rollouts = state["epoch"], state["cursor"], state["rollouts"]
        self._perm = self._permutation(self.epoch)
        pending = state.get("pending")
        self.pending = Rollout(**pending) if isinstance(pending, dict) else pending
        self.pending_uses = state.get("pending_uses", 0)


def grpo(cfg: GRPOConfig, resume: bool = False) -> dict[str, Any]:
    from diji.data.tokenizer import Tokenizer

    seed_everything(cfg.run.seed)
    model, tokenizer_file, extra = start_from(cfg.train.init_from, cfg.lora, cfg.run.seed)
    tok = Tokenizer.from_file(tokenizer_file)
    stage = GRPOStage(cfg, tok, torch.device("cpu"))
    longest = max(len(p) for p in stage.prompts) + cfg.grpo.max_new_tokens
    if longest > model.config.max_position_embeddings:
        raise DijiError(f"the longest prompt plus grpo.max_new_tokens ({longest} tokens) exceeds the model's "
                        f"context ({model.config.max_position_embeddings}); lower grpo.max_new_tokens")
    job = Job(run=cfg.run, optim=cfg.optim, loop=cfg.train, config=to_dict(cfg), tokenizer_file=tokenizer_file,
              data_sha256=stage.data_sha256, parent=Path(cfg.train.init_from), stage_name="grpo",
              extra_lineage={**extra, "task": cfg.grpo.task, "eval_task": cfg.grpo.eval_task or cfg.grpo.task,
                             **({"verifier": cfg.grpo.verifier} if cfg.grpo.verifier else {})})
    trainer = Trainer(model, stage, job)
    stage.device = trainer.device
    stage.rank, stage.world = trainer.dist.rank, trainer.dist.world_size
    stage.attach(trainer.model)
    return trainer.run(resume=resume)
