"""GRPO: hand-computed advantages and objective, a reward that rises within seconds, exact resume."""

import json
import math

import pytest
import torch
from test_sft import tiny_base

from diji.config import load_config
from diji.errors import DijiError
from diji.eval import task as task_mod
from diji.eval.task import Example, Grade, Task
from diji.model.transformer import ModelConfig, Transformer
from diji.observe.metrics import read_metrics
from diji.train.checkpoint import latest_checkpoint, read_lineage
from diji.train.grpo import (
    GRPOConfig,
    clipped_objective,
    forking_tokens,
    group_advantages,
    grpo,
    pack_groups,
    token_logprobs,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 0.0, 0.0, 1.0])
    adv = group_advantages(rewards, 4)
    # Group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 → ±0.5 / (0.57735 + 1e-4).
    s = math.sqrt(1 / 3) + 1e-4
    assert adv[:4].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s])
    assert adv[4:8].tolist() == [0.0, 0.0, 0.0, 0.0]  # a unanimous group carries no signal
    # Group 3: mean 1, deviations (2, -1, -1, 0), std sqrt(6 / 3) = sqrt(2).
    s3 = math.sqrt(2) + 1e-4
    assert adv[8:].tolist() == pytest.approx([2 / s3, -1 / s3, -1 / s3, 0.0])
    assert group_advantages(rewards, 4, scale=False)[8:].tolist() == pytest.approx([2.0, -1.0, -1.0, 0.0])


def test_clipped_objective_by_hand():
    # Row 0 (Â = +1): ratios 1.5 (clipped to 1.2), 1.0, and a masked-out token.
    # Row 1 (Â = -1): ratios 0.5 (clipped to 0.8: min(-0.5, -0.8) = -0.8), 1.1 (unclipped: -1.1).
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 7.0], [0.5, 1.1, 1.0]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = clipped_objective(logp, old, adv, mask, 0.2, 0.2)
    # Per-token losses: -1.2, -1.0, +0.8, +1.1; token-level mean over the 4 unmasked tokens.
    assert float(loss) == pytest.approx((-1.2 - 1.0 + 0.8 + 1.1) / 4)
    assert stats["clip_frac"] == pytest.approx(2 / 4)
    # k3 KL is 0 against an identical reference and positive otherwise.
    _, same = clipped_objective(logp, old, adv, mask, 0.2, 0.2, ref_logp=logp.clone(), beta=0.1)
    assert same["kl"] == pytest.approx(0.0)
    _, diff = clipped_objective(logp, old, adv, mask, 0.2, 0.2, ref_logp=logp - 0.3, beta=0.1)
    assert diff["kl"] == pytest.approx(math.exp(-0.3) + 0.3 - 1, rel=1e-5)
    # With old = logp (μ = 1) the value is -mean(Â) per token and the gradient is the policy gradient.
    lp = logp.clone().requires_grad_(True)
    loss, _ = clipped_objective(lp, lp.detach(), adv, mask, 0.2, 0.2)
    loss.backward()
    assert lp.grad[0, :2].tolist() == pytest.approx([-0.25, -0.25]) and lp.grad[1, :2].tolist() == pytest.approx([0.25, 0.25])
    assert lp.grad[:, 2].tolist() == [0.0, 0.0]


def test_packed_groups_give_each_completion_its_own_log_probs():
    """One row per group (the prompt once) equals one causal row per completion, token for token."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64))
    m.init_weights(seed=1)
    prompts = [[3, 4, 5, 6], [7], [8, 9]]
    comps = [[10, 11], [12], [13, 14, 15], [16, 17, 18, 19], [20], [21, 22]]  # G = 2 per prompt
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    ids, pos, attn, targets, mask, tok_adv = pack_groups(prompts, comps, adv, pad_id=0)
    packed = token_logprobs(m, ids, targets, 0.7, pos, attn)
    for r, c in enumerate(comps):
        g, p = r // 2, prompts[r // 2]
        full = torch.tensor([p + c])
        alone = token_logprobs(m, full[:, :-1], full[:, 1:], 0.7)[0, len(p) - 1 :]
        mine = mask[g] & (tok_adv[g] == adv[r])  # the advantages are distinct, so they mark the segment
        assert targets[g][mine].tolist() == c
        assert torch.allclose(packed[g][mine], alone, atol=1e-5)
    assert int(mask.sum()) == sum(len(c) for c in comps)
    assert torch.isfinite(packed).all()  # padding rows attend to themselves, never to nothing


def test_forking_tokens_keep_the_highest_entropy_completion_tokens():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64))
    m.init_weights(seed=1)
    ids = torch.randint(0, 50, (2, 12))
    logp, ent = token_logprobs(m, ids[:, :-1], ids[:, 1:], 1.3, with_entropy=True)
    assert torch.equal(logp, token_logprobs(m, ids[:, :-1], ids[:, 1:], 1.3))
    probs = torch.softmax(m(ids[:, :-1]).float() / 1.3, -1)
    assert torch.allclose(ent, -(probs * probs.log()).sum(-1), atol=1e-5)
    mask = torch.zeros_like(ent, dtype=torch.bool)
    mask[:, 4:] = True  # the prompt's tokens are never candidates
    forks = forking_tokens(ent, mask, 0.25)
    assert not forks[:, :4].any() and int(forks.sum()) == math.ceil(0.25 * int(mask.sum()))
    assert ent[forks].min() >= ent[mask & ~forks].max()
    assert torch.equal(forking_tokens(ent, mask, 1.0), mask)


class DigitTask(Task):
    """Trivially learnable: reward 1 when the completion contains a digit (about 1 in 4 at random init)."""

    name = "digits"

    def examples(self, split, n, seed=0):
        return [Example(id=f"{split}-{i}", messages=({"role": "user", "content": "go"},), answer="") for i in range(n)]

    def grade(self, example, completion):
        return Grade(any(c.isdigit() for c in completion), None, False)

    def reward(self, example, completion):
        return float(self.grade(example, completion).correct)


def grpo_overrides(base, out, name="g", steps=20, task="digits"):
    return [
        f"train.init_from={json.dumps(str(base))}", f"run.out_dir={json.dumps(str(out))}", f'run.name="{name}"',
        "run.progress=false", f'grpo.task="{task}"', "grpo.prompt_pool=16", "grpo.group_size=8",
        "grpo.max_new_tokens=8", "grpo.eval_examples=4", f"train.max_steps={steps}", "train.batch_size=4",
        "train.log_every=1", "train.eval_every=0", "train.save_every=100", "optim.lr=2e-2", "optim.warmup_steps=0",
    ]


def test_tiny_grpo_run_raises_a_trivially_learnable_reward(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(task_mod, "get_task", lambda name, **kw: DigitTask())
    base = tiny_base(tmp_path, data_dir)
    result = grpo(load_config(GRPOConfig, None, grpo_overrides(base, tmp_path, steps=20) + ["optim.lr=5e-2"]))
    rows = [r for r in read_metrics(tmp_path / "g" / "metrics.jsonl") if "reward_mean" in r]
    first, last = sum(r["reward_mean"] for r in rows[:3]) / 3, sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert last > first + 0.4, (first, last)  # measured: about 0.2 → 0.95
    assert {"reward_std", "accuracy", "response_len", "clip_frac", "kept_frac", "grad_norm"} <= set(rows[-1])
    lineage = read_lineage(result["checkpoint"])
    assert lineage["stage"] == "grpo" and lineage["task"] == "digits"


def test_grpo_resume_after_a_crash_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
    """On the real arithmetic task, with μ = 2 and a KL penalty, so every piece of state is exercised."""
    base = tiny_base(tmp_path, data_dir)
    extra = ["train.save_every=3", "grpo.updates_per_rollout=2", "grpo.kl_beta=0.05", "grpo.group_size=4",
             "train.batch_size=2", "optim.lr=1e-3", "train.eval_every=3"]

    def curve(name):
        return [(r["step"], r["loss"], r["reward_mean"]) for r in read_metrics(tmp_path / name / "metrics.jsonl")
                if "loss" in r]

    grpo(load_config(GRPOConfig, None, grpo_overrides(base, tmp_path, "full", 6, "arith_en") + extra))
    from diji.train import grpo as grpo_mod

    original, calls = grpo_mod.GRPOStage.next_batch, {"n": 0}

    def crash_on_fifth(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return original(self)

    part = load_config(GRPOConfig, None, grpo_overrides(base, tmp_path, "part", 6, "arith_en") + extra)
    monkeypatch.setattr(grpo_mod.GRPOStage, "next_batch", crash_on_fifth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        grpo(part)
    monkeypatch.setattr(grpo_mod.GRPOStage, "next_batch", original)
    assert latest_checkpoint(tmp_path / "part").name == "step-000003"  # mid-rollout: μ = 2, step 3 of 6
    grpo(part, resume=True)
    assert curve("part") == curve("full") and len(curve("full")) == 6


def test_config_errors(data_dir, tmp_path):
    with pytest.raises(DijiError, match="grpo.group_size"):
        load_config(GRPOConfig, None, ['train.init_from="x"', "grpo.group_size=1"])
    with pytest.raises(DijiError, match="train.init_from"):
        load_config(GRPOConfig, None, [])
    base = tiny_base(tmp_path, data_dir)
    with pytest.raises(DijiError, match="grpo.max_new_tokens"):
        grpo(load_config(GRPOConfig, None, grpo_overrides(base, tmp_path, task="arith") + ["grpo.max_new_tokens=250"]))


def test_a_rollout_with_nothing_to_learn_reports_the_same_metrics(data_dir, tmp_path, monkeypatch):
    """Under torchrun each rank samples its own groups, so one rank may find every group unanimous while
    another does not; the ranks reduce their metrics as one vector, so the names must not differ."""
    from diji.data.tokenizer import Tokenizer
    from diji.train.grpo import GRPOStage
    from diji.train.lora import LoRAConfig
    from diji.train.sft import start_from

    base = tiny_base(tmp_path, data_dir)
    cfg = load_config(GRPOConfig, None, grpo_overrides(base, tmp_path) + ["grpo.entropy_top=0.5"])
    model, tokenizer_file, _ = start_from(str(base), LoRAConfig(), 0)
    names = {}
    for case, task in (("learns", DigitTask()), ("unanimous", ConstantTask())):
        monkeypatch.setattr(task_mod, "get_task", lambda name, task=task, **kw: task)
        stage = GRPOStage(cfg, Tokenizer.from_file(tokenizer_file), torch.device("cpu"))
        stage.attach(model)
        batch = stage.rollout()
        assert (batch.ids.shape[0] == 0) == (case == "unanimous")
        names[case] = set(stage.loss(model, batch)[1])
    assert names["learns"] == names["unanimous"] and "fork_entropy_min" in names["learns"]


class ConstantTask(DigitTask):
    def reward(self, example, completion):
        return 1.0


def test_kl_mask_leaves_tokens_out_of_the_penalty():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.ones((1, 3), dtype=torch.bool)
    adv = torch.zeros(1)
    d = ref - logp
    k3 = torch.exp(d) - d - 1
    full, stats = clipped_objective(logp, logp, adv, mask, 0.2, 0.2, ref, 0.5)
    assert math.isclose(float(full), 0.5 * float(k3.sum()) / 3, rel_tol=1e-6)
    kl_mask = torch.tensor([[False, True, True]])
    skipped, stats = clipped_objective(logp, logp, adv, mask, 0.2, 0.2, ref, 0.5, kl_mask=kl_mask)
    assert math.isclose(float(skipped), 0.5 * float(k3[0, 1:].sum()) / 3, rel_tol=1e-6)
    assert math.isclose(stats["kl"], float(k3[0, 1:].mean()), rel_tol=1e-6)


class ParityTask(DigitTask):
    """Reward 1 for a reply whose text has odd length: about half of any sample of tokens."""

    def grade(self, example, completion):
        return Grade(len(completion) % 2 == 1, None, False)


def _stage(data_dir, tmp_path, monkeypatch, extra=(), task=None):
    from diji.data.tokenizer import Tokenizer
    from diji.train.grpo import GRPOStage
    from diji.train.lora import LoRAConfig
    from diji.train.sft import start_from

    monkeypatch.setattr(task_mod, "get_task", lambda name, **kw: task or DigitTask())
    base = tiny_base(tmp_path, data_dir)
    cfg = load_config(GRPOConfig, None, grpo_overrides(base, tmp_path) + list(extra))
    model, tokenizer_file, _ = start_from(str(base), LoRAConfig(), 0)
    stage = GRPOStage(cfg, Tokenizer.from_file(tokenizer_file), torch.device("cpu"))
    stage.attach(model)
    return stage, model


def test_rollouts_mark_each_completions_first_token(data_dir, tmp_path, monkeypatch):
    stage, model = _stage(data_dir, tmp_path, monkeypatch, ['grpo.loss_norm="constant"'])
    torch.manual_seed(0)
    batch = stage.rollout()
    assert batch.ids.shape[0] > 0
    kept = batch.ids.shape[0] * stage.p.group_size
    assert int(batch.first.sum()) == kept and not (batch.first & ~batch.mask).any()
    # A first token's context is the prompt alone: its position is the prompt length - 1 in every segment.
    for row in range(batch.ids.shape[0]):
        starts = batch.positions[row][batch.first[row]]
        assert starts.unique().numel() == 1
        assert int(starts[0]) == int(batch.positions[row][batch.mask[row]].min())
    # Dr. GRPO's constant normaliser: batch × G × max_new_tokens, whatever the replies' lengths.
    assert batch.denom == stage.cfg.train.batch_size * stage.p.group_size * stage.p.max_new_tokens
    assert {"think_share", "think_correct"} <= set(batch.metrics)


def test_a_frozen_first_token_gets_no_policy_gradient(data_dir, tmp_path, monkeypatch):
    """With one-token replies every trained token is a first token: frozen, the loss has no gradient at
    all; unfrozen, the same rollout has one."""
    grads = {}
    for frozen in (False, True):
        stage, model = _stage(data_dir, tmp_path / str(frozen), monkeypatch,
                              ["grpo.max_new_tokens=1", f"grpo.freeze_first_token={str(frozen).lower()}"],
                              ParityTask())
        torch.manual_seed(0)
        batch = stage.rollout()
        assert batch.ids.shape[0] > 0  # some group disagreed
        model.zero_grad()
        stage.loss(model, batch)[0].backward()
        grads[frozen] = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
    assert grads[True] == 0.0 and grads[False] > 0.0


def test_style_options_are_checked(data_dir, tmp_path):
    with pytest.raises(DijiError, match="grpo.loss_norm"):
        load_config(GRPOConfig, None, ['train.init_from="x"', 'grpo.loss_norm="mean"'])
