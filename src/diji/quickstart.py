"""`diji quickstart`: the whole chain on the embedded default corpus, on a CPU, in minutes.

corpus (this machine's Python standard library: docstrings and code) → curated, tokenized shards →
pretrained model → sample → SFT then GRPO on arithmetic word problems (diji.eval.reasoning) → evaluation
→ summary.json and the report card (report.html + report.md, diji.observe.card). Each stage writes its part of summary.json, whose keys later stages extend and never rename
(DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from diji.errors import DijiError
from diji.io import atomic_write_json

# The default recipe: a ~4M-parameter Llama-style model that fits a 2-core CPU's few minutes. Pretraining is
# 200 steps (≈ 0.7 s each on the 2-core machine of 2026-12-03; 2.2 s on the slower one of 2026-12-02, so
# the budget is watched in docs/LOG.md): SFT learns to copy and add the story's numbers only from a start
# that has read enough worked problems in pretraining (PROBLEM_DOCS).
PRETRAIN_OVERRIDES = [
    "model.vocab_size=4096", "model.hidden_size=256", "model.num_hidden_layers=4",
    "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.intermediate_size=704",
    "model.max_position_embeddings=512", "data.seq_len=256",
    "train.batch_size=16", "train.max_steps=200", "train.log_every=10", "train.eval_every=50",
    "train.eval_batches=8", "train.save_every=100", "optim.lr=3e-3", "optim.warmup_steps=20",
]

# Post-training on the embedded word problems (diji.eval.reasoning, task "arith_mix"): SFT on replies of two
# styles — 40 % reason step by step in <think>…</think>, 60 % answer directly — then GRPO rewarded only for
# the correct final answer. After SFT the model answers directly when greedy and is right far more often
# when it thinks; RL can *select* that behaviour (DeepSeek-R1's rising think share and length, in
# miniature) where it could not build a missing skill (docs/LOG.md, 2026-12-02). Dr. GRPO: no std
# division and a constant normaliser (no length bias); the KL anchor leaves out the first reply token, so
# it keeps the arithmetic close to SFT's without capping the choice of style. The control run is the same
# GRPO with the first token frozen: what it gains is what RL did for the reasoning itself.
EVAL_EXAMPLES = 200
SFT_TASK = "arith_mix"
REPLY_TOKENS = 64
"""Generation budget for the task's replies (GRPO rollouts and evaluations, the probe): the longest SFT trace
is 51 tokens, and a trace cut short scores 0, which would punish thinking."""
SFT_OVERRIDES = [
    f'data.task="{SFT_TASK}"', "data.task_examples=20000", "data.seq_len=256", "data.packing=true",
    f'data.eval_task="{SFT_TASK}"', f"data.eval_examples={EVAL_EXAMPLES}", f"data.eval_max_new_tokens={REPLY_TOKENS}",
    "train.batch_size=8", "train.max_steps=1000", "train.log_every=10", "train.eval_every=0",
    "train.eval_batches=4", "train.save_every=1000", "optim.lr=3e-3", "optim.warmup_steps=10",
    "optim.weight_decay=0.0",
]
GRPO_OVERRIDES = [
    f'grpo.task="{SFT_TASK}"', "grpo.group_size=8", f"grpo.max_new_tokens={REPLY_TOKENS}", "grpo.temperature=1.0",
    "grpo.scale_rewards=false", 'grpo.loss_norm="constant"', "grpo.format_weight=0.0", "grpo.kl_beta=0.1",
    "grpo.kl_skip_first=true", f"grpo.eval_examples={EVAL_EXAMPLES}", "grpo.prompt_pool=4000",
    "train.batch_size=8", "train.max_steps=60", "train.log_every=1", "train.eval_every=0",
    "train.save_every=60", "optim.lr=1e-4", "optim.warmup_steps=5", "optim.schedule=\"constant\"",
]
PROBE_SAMPLES = 4
"""Sampled (T = 1) replies per held-out problem in the before/after probe (sampled accuracy, pass@k)."""
CURVE_KEYS = ("accuracy", "think_share", "think_correct", "response_len", "truncated")
TREND_KEYS = ("accuracy", "think_share", "response_len")


def curve_trend(curve: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean of each rollout metric over the first and the last third of the GRPO steps.

    One step's rollout accuracy is 64 samples (± 6 points); a third of 60 steps is 1280, so whether the
    accuracy, the think share and the reply length rose over the run is read from these, not from two
    noisy points of the curve."""
    third = max(len(curve) // 3, 1)
    out: dict[str, dict[str, float]] = {}
    for key in TREND_KEYS:
        values = [r[key] for r in curve if key in r]
        if len(values) >= 2:
            head, tail = values[:third], values[-third:]
            out[key] = {"first_third": round(sum(head) / len(head), 4), "last_third": round(sum(tail) / len(tail), 4)}
    return out


THINK_PREFIX, DIRECT_PREFIX = "<think>", "\\boxed{"
"""The first tokens of the two reply styles: forcing one measures that style's accuracy."""
SFT_STYLE_NOTE = "replies that think first or answer directly"
STYLE_NOISE = 0.05
"""Per-style accuracy changes smaller than this count as unchanged: about the standard error of a difference
of two accuracies on 200 problems (4.6 points at 30 %)."""


def read_gain(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What a change between two probes consists of: the greedy gain, how much of it the switch of reply
    style explains, and whether each style itself got better — so a style (format) gain is never
    reported as a reasoning gain."""
    gain = after["greedy_accuracy"] - before["greedy_accuracy"]
    shift = after["greedy_think_share"] - before["greedy_think_share"]
    d_think = after["think_forced_accuracy"] - before["think_forced_accuracy"]
    d_direct = after["direct_forced_accuracy"] - before["direct_forced_accuracy"]
    styles_flat = abs(d_think) < STYLE_NOISE and abs(d_direct) < STYLE_NOISE
    points = f"{100 * gain:+.1f} points greedy"
    if abs(shift) >= 0.5 and styles_flat:
        kind = "style selection"
        finding = (f"{points}: the model learned to reason first (greedy think share {before['greedy_think_share']:.0%} "
                   f"→ {after['greedy_think_share']:.0%}); each style's own accuracy stayed within noise (think "
                   f"{100 * d_think:+.1f}, direct {100 * d_direct:+.1f} points), so this is the choice to think, "
                   "not better reasoning")
    elif styles_flat:
        kind = "none"
        finding = f"{points}: neither the reply style nor either style's accuracy moved beyond noise"
    else:
        kind = "style accuracy" if abs(shift) < 0.5 else "style selection and style accuracy"
        finding = (f"{points}; greedy think share {before['greedy_think_share']:.0%} → {after['greedy_think_share']:.0%}; "
                   f"accuracy with thinking forced {100 * d_think:+.1f} points, answering directly {100 * d_direct:+.1f}")
    return {"gain_points": round(100 * gain, 1), "think_share_change": round(shift, 4),
            "think_forced_change_points": round(100 * d_think, 1),
            "direct_forced_change_points": round(100 * d_direct, 1), "kind": kind, "finding": finding}


def unigram_loss(data_dir: Path) -> float:
    """Cross-entropy (nats/token) of the val split under the train split's add-one unigram model:
    the loss a model that ignores context would reach. Pretraining must end clearly below it."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    vocab = int(manifest["vocab_size"])
    counts = {s: np.zeros(vocab, np.int64) for s in ("train", "val")}
    for shard in manifest["shards"]:
        arr = np.memmap(data_dir / shard["file"], dtype=dtype, mode="r")
        counts[shard["split"]] += np.bincount(arr, minlength=vocab)[:vocab]
    p = (counts["train"] + 1) / (counts["train"].sum() + vocab)
    return float(-(counts["val"] * np.log(p)).sum() / max(counts["val"].sum(), 1))


PROBLEMS_FILE = "word-problems.jsonl"
PROBLEM_DOCS = 1000
"""Documents of worked train-split problems in the pretraining corpus (≈ 3.3 MB beside ≈ 6 MB of code). With
300 the think skill SFT reached depended on the pretraining seed (think-forced 21 % vs 34.5 %); with 1000, and
SFT drawing 20000 fresh problems instead of repeating 6000 five times, it was 66.5 % and 88.5 % on the same two
seeds (docs/LOG.md, 2026-12-03 session 4): the copy-and-add skill forms in pretraining."""
PROBLEMS_PER_DOC = 20
CORPUS_SEED = 101
"""Seed of the pretraining problems (SFT and GRPO draw theirs with run.seed: different problems)."""


def write_problem_corpus(path: Path, docs: int, per_doc: int = PROBLEMS_PER_DOC) -> Path:
    """Training-split word problems of the quickstart task with their worked equations, as pretraining text.

    It is the domain data a team mixes into pretraining: the tokenizer learns the names, units and
    hanzi of the problems as whole tokens (without it a Chinese character is several byte tokens of a
    tokenizer trained on code) and the model sees numbers read from stories and added step by step
    before SFT. Only the train split is drawn (test problems are held out by hash, diji.eval.reasoning),
    and the text has no chat markup and no reply-style choice: that is SFT's to teach.
    """
    from diji.eval.task import get_task
    from diji.io import atomic_open

    task = get_task(SFT_TASK, think_share=1.0)
    examples = task.examples("train", docs * per_doc, seed=CORPUS_SEED)
    with atomic_open(path, "w") as f:
        for d in range(docs):
            chunk = examples[d * per_doc : (d + 1) * per_doc]
            text = "\n\n".join(e.messages[-1]["content"] + "\n" + _plain_solution(e.solution) for e in chunk)
            f.write(json.dumps({"text": text, "source": "diji.eval.reasoning", "kind": "word-problems"},
                               ensure_ascii=False) + "\n")
    return path


def _plain_solution(solution: str) -> str:
    """`<think>\\n7+5=12\\n</think>\\n\\boxed{12}` → `7+5=12\\n\\boxed{12}`: the steps and the answer, no tags."""
    from diji.eval.verifiers import extract_answer, split_reasoning

    reasoning, _ = split_reasoning(solution)
    return reasoning.strip() + "\n\\boxed{" + str(extract_answer(solution)) + "}"


STAGES = ("pretrain", "sft", "grpo", "grpo-control")
CHAT_SAMPLES = 3
"""Held-out problems whose greedy replies after SFT and after GRPO the report card shows side by side."""


class Quickstart:
    def __init__(self, out: Path, fast: bool, quiet: bool = False, seed: int = 0) -> None:
        self.out, self.fast, self.quiet, self.seed = out.resolve(), fast, quiet, seed
        self.summary: dict[str, Any] = {"timings": {}, "samples": {}}
        self.t0 = time.perf_counter()
        self._stage_start = self.t0

    def timed(self, stage: str) -> None:
        """Close the timing of `stage` (seconds since the previous stage ended) in summary.timings."""
        now = time.perf_counter()
        self.summary["timings"][stage] = round(now - self._stage_start, 1)
        self._stage_start = now

    def quiet_overrides(self) -> list[str]:
        return [f"run.seed={self.seed}", *(["run.progress=false"] if self.quiet else [])]

    def say(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def save_summary(self) -> None:
        self.summary["seconds"] = round(time.perf_counter() - self.t0, 1)
        atomic_write_json(self.out / "summary.json", self.summary)

    def data(self) -> Path:
        from diji.data.corpus import build_default_corpus
        from diji.data.prepare import DataConfig, prepare
        from diji.data.report import curation_summary

        self.say("building the embedded corpus from this machine's Python standard library")
        files = build_default_corpus(self.out / "corpus", max_bytes=(3 if self.fast else 6) * 2**20)
        files.append(write_problem_corpus(self.out / "corpus" / PROBLEMS_FILE, PROBLEM_DOCS))
        self.say("curating, training a tokenizer and writing token shards")
        data_dir = self.out / "data"
        manifest = prepare(files, data_dir, DataConfig(vocab_size=4096))
        self.summary["data"] = curation_summary(manifest)
        self.timed("data")
        self.save_summary()
        return data_dir

    def pretrain(self, data_dir: Path) -> str:
        from diji.config import load_config
        from diji.train.config import PretrainConfig
        from diji.train.pretrain import pretrain

        overrides = [*PRETRAIN_OVERRIDES, f"data.path={json.dumps(str(data_dir))}",
                     f"run.out_dir={json.dumps(str(self.out / 'runs'))}", 'run.name="pretrain"',
                     *self.quiet_overrides()]
        if self.fast:
            overrides += ["train.max_steps=100"]
        cfg = load_config(PretrainConfig, None, overrides)
        self.say(f"pretraining a {cfg.model.num_params() / 1e6:.1f}M-parameter model for {cfg.train.max_steps} steps")
        result = pretrain(cfg)
        base = unigram_loss(data_dir)
        self.summary["pretrain"] = {"checkpoint": result["checkpoint"], "val_loss": round(result["val_loss"], 4),
                                    "unigram_loss": round(base, 4)}
        self.timed("pretrain")
        self.save_summary()
        self.say(f"pretrain val_loss {result['val_loss']:.3f} vs unigram baseline {base:.3f} nats/token")
        return result["checkpoint"]

    def _stage_overrides(self, name: str, parent: str) -> list[str]:
        return [f"train.init_from={json.dumps(parent)}", f"run.out_dir={json.dumps(str(self.out / 'runs'))}",
                f'run.name="{name}"', *self.quiet_overrides()]

    def sft(self, parent: str) -> str:
        from diji.config import load_config
        from diji.train.sft import SFTConfig, sft

        overrides = [*SFT_OVERRIDES, *self._stage_overrides("sft", parent)]
        if self.fast:
            overrides += ["train.max_steps=40", "data.task_examples=640", "data.eval_examples=50"]
        cfg = load_config(SFTConfig, None, overrides)
        self.say(f"SFT on {cfg.data.task_examples} word problems (en+zh; {SFT_STYLE_NOTE}) for {cfg.train.max_steps} steps")
        result = sft(cfg)
        self.summary["sft"] = {"checkpoint": result["checkpoint"], "accuracy": round(result["val_accuracy"], 4)}
        self.timed("sft")
        self.save_summary()
        self.say(f"after SFT: held-out accuracy {result['val_accuracy']:.1%} on {cfg.data.eval_examples} problems "
                 f"({result['val_format']:.1%} of greedy replies open with a well-formed <think>…</think> trace)")
        return result["checkpoint"]

    def grpo(self, parent: str, control: bool = False) -> str:
        """GRPO from the SFT checkpoint; `control` = the same run with the first reply token frozen."""
        from diji.config import load_config
        from diji.observe.metrics import read_metrics
        from diji.train.grpo import GRPOConfig, grpo

        name = "grpo-control" if control else "grpo"
        overrides = [*GRPO_OVERRIDES, *self._stage_overrides(name, parent),
                     *(["grpo.freeze_first_token=true"] if control else [])]
        if self.fast:
            overrides += ["train.max_steps=10", "grpo.eval_examples=50"]
        cfg = load_config(GRPOConfig, None, overrides)
        what = "control: the same GRPO with the first reply token frozen" if control else "GRPO"
        self.say(f"{what}: {cfg.train.max_steps} steps × {cfg.train.batch_size} problems × {cfg.grpo.group_size} "
                 "samples, rewarded only for a correct final answer")
        result = grpo(cfg)
        curve = [{"step": r["step"], **{k: round(float(r[k]), 4) for k in CURVE_KEYS if k in r}}
                 for r in read_metrics(Path(cfg.run.out_dir) / name / "metrics.jsonl") if "think_share" in r]
        key = "control" if control else "grpo"
        trend = curve_trend(curve)
        self.summary[key] = {"checkpoint": result["checkpoint"], "accuracy": round(result["val_accuracy"], 4),
                             "curve": curve, "trend": trend}
        self.timed(name)
        self.save_summary()
        before = self.summary["sft"]["accuracy"]
        self.say(f"after {what.split(':')[0]}: held-out accuracy {result['val_accuracy']:.1%} (SFT: {before:.1%}; "
                 f"{100 * (result['val_accuracy'] - before):+.1f} points)")
        if trend:
            self.say("rollouts, first → last third of the steps: " + ", ".join(
                f"{k} {v['first_third']:.3g} → {v['last_third']:.3g}" for k, v in trend.items()))
        return result["checkpoint"]

    def probe(self, stage: str, ckpt: str) -> None:
        """What a checkpoint does on the held-out problems: greedy and sampled accuracy, pass@k, how often
        it reasons first and how long it writes — and each reply style's accuracy with the first token
        forced, which separates "chose to think" from "thinks better" (summary.reasoning)."""
        from diji.data.tokenizer import Tokenizer
        from diji.eval.task import get_task, score
        from diji.train.checkpoint import load_checkpoint

        loaded = load_checkpoint(ckpt)
        model, tok = loaded.model.eval(), Tokenizer.from_file(loaded.tokenizer_file)
        task = get_task(SFT_TASK)
        examples = task.examples("test", 50 if self.fast else EVAL_EXAMPLES, seed=0)
        budget = REPLY_TOKENS

        def length(completions: list[str]) -> float:
            return sum(len(tok.encode(c, allow_special=True)) for c in completions) / max(len(completions), 1)

        greedy = score(model, tok, task, examples, budget)
        sampled = score(model, tok, task, examples, budget, temperature=1.0, samples=PROBE_SAMPLES, seed=1)
        row = {
            "greedy_accuracy": greedy.accuracy, "greedy_think_share": greedy.think_share,
            "greedy_reply_tokens": length(greedy.completions),
            "sampled_accuracy": sampled.accuracy, "sampled_think_share": sampled.think_share,
            "sampled_reply_tokens": length(sampled.completions), f"pass@{PROBE_SAMPLES}": sampled.pass_at_k,
            "think_forced_accuracy": score(model, tok, task, examples, budget, prefix=THINK_PREFIX).accuracy,
            "direct_forced_accuracy": score(model, tok, task, examples, budget, prefix=DIRECT_PREFIX).accuracy,
        }
        reasoning = self.summary.setdefault("reasoning", {"task": SFT_TASK, "problems": len(examples),
                                                          "samples_per_problem": PROBE_SAMPLES})
        reasoning[stage] = {k: round(v, 4) for k, v in row.items()}
        if stage != "sft" and "sft" in reasoning:
            reasoning[f"{stage}_reading"] = read_gain(reasoning["sft"], reasoning[stage])
        self.timed(f"probe {stage}")
        self.save_summary()
        self.say(f"{stage}: greedy {row['greedy_accuracy']:.1%} (thinks on {row['greedy_think_share']:.0%}), "
                 f"sampled {row['sampled_accuracy']:.1%} (thinks on {row['sampled_think_share']:.0%}), "
                 f"pass@{PROBE_SAMPLES} {sampled.pass_at_k:.1%}; forced think {row['think_forced_accuracy']:.1%}, "
                 f"forced direct {row['direct_forced_accuracy']:.1%}")

    def evaluate(self, ckpt: str, data_dir: Path) -> None:
        from diji.eval.quick import quickstart_eval

        self.say("evaluating the final model on the built-in tasks (ppl, mc, math, reasoning)")
        scores = quickstart_eval(ckpt, data_dir, self.out / "eval", progress=False if self.quiet else None)
        self.summary["eval"] = {k: round(v, 4) for k, v in scores.items()}
        self.timed("eval")
        self.save_summary()
        self.say("eval: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    def sample(self, ckpt: str, prompt: str = "def ") -> None:
        from diji.data.tokenizer import Tokenizer
        from diji.model.generate import SamplingParams, generate
        from diji.train.checkpoint import load_checkpoint

        loaded = load_checkpoint(ckpt)
        tok = Tokenizer.from_file(loaded.tokenizer_file)
        out = generate(loaded.model.eval(), [tok.encode(prompt)],
                       SamplingParams(max_new_tokens=48, temperature=0.8, top_k=40, stop_ids=tok.stop_ids, seed=0))
        text = tok.decode(out[0].tokens)
        self.summary["samples"]["pretrain"] = {"prompt": prompt, "text": text}
        self.say("sample continuation:\n" + prompt + text)

    def chat_samples(self, checkpoints: dict[str, str]) -> None:
        """Greedy replies of each post-trained checkpoint to the same held-out problems (for the card)."""
        from diji.data.chat import render_prompt
        from diji.data.tokenizer import Tokenizer
        from diji.eval.task import get_task
        from diji.model.generate import SamplingParams, generate
        from diji.train.checkpoint import load_checkpoint

        task = get_task(SFT_TASK)
        examples = task.examples("test", CHAT_SAMPLES, seed=1)
        rows: list[dict[str, Any]] = [{"question": e.messages[-1]["content"], "answer": e.answer} for e in examples]
        for stage, ckpt in checkpoints.items():
            loaded = load_checkpoint(ckpt)
            tok = Tokenizer.from_file(loaded.tokenizer_file)
            prompts = [render_prompt(list(e.messages), tok) for e in examples]
            budget = min(96, loaded.model.config.max_position_embeddings - max(len(p) for p in prompts))
            if budget <= 0:
                self.say(f"skipping {stage} sample replies: the prompts do not fit the model's context")
                return
            outs = generate(loaded.model.eval(), prompts,
                            SamplingParams(max_new_tokens=budget, temperature=0.0, stop_ids=tok.stop_ids),
                            pad_id=tok.pad_id)
            for row, e, g in zip(rows, examples, outs, strict=True):
                reply = tok.decode(g.tokens)  # with <think>…</think>: the card shows the reply style
                row[stage] = {"reply": reply, "correct": bool(task.grade(e, reply).correct)}
        self.summary["samples"]["chat"] = rows
        self.save_summary()

    def card(self) -> Path:
        from diji.observe.card import write_card

        html_path, _ = write_card(self.out)
        return html_path


def run_quickstart(out: Path, fast: bool = False, overwrite: bool = False, quiet: bool = False,
                   seed: int = 0) -> dict[str, Any]:
    from diji.train.loop import clear_run_dir

    qs = Quickstart(out, fast, quiet, seed)
    if (qs.out / "summary.json").is_file():
        if not overwrite:
            raise DijiError(f"{qs.out} already holds a quickstart; pass --overwrite to run it again there, "
                            "or choose another --out")
        for stage in STAGES:
            clear_run_dir(qs.out / "runs" / stage)
    qs.out.mkdir(parents=True, exist_ok=True)
    data_dir = qs.data()
    ckpt = qs.pretrain(data_dir)
    qs.sample(ckpt)
    qs.timed("base sample")
    sft_ckpt = qs.sft(ckpt)
    qs.probe("sft", sft_ckpt)
    chat = qs.grpo(sft_ckpt)
    qs.probe("grpo", chat)
    control = qs.grpo(sft_ckpt, control=True)
    qs.probe("control", control)
    qs.say(qs.summary["reasoning"]["grpo_reading"]["finding"])
    qs.evaluate(chat, data_dir)
    qs.chat_samples({"sft": sft_ckpt, "grpo": chat})
    qs.timed("samples")
    qs.save_summary()
    card = qs.card()
    qs.say(f"done in {qs.summary['seconds']:.0f}s. Report card: {card} (and report.md). Next:\n"
           f"  diji generate {ckpt} --prompt \"def \"\n"
           f"  diji chat {chat}\n"
           f"  diji lineage {ckpt}\n"
           f"  diji data report {data_dir}")
    return qs.summary


def _cmd(args: argparse.Namespace) -> int:
    summary = run_quickstart(Path(args.out), fast=args.fast, overwrite=args.overwrite, quiet=args.quiet,
                             seed=args.seed)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="the whole chain on the embedded corpus, on a CPU, in minutes")
    p.add_argument("--out", default="quickstart", help="output directory (default: ./quickstart)")
    p.add_argument("--fast", action="store_true", help="a shorter budget (used by CI)")
    p.add_argument("--overwrite", action="store_true",
                   help="run again in a directory that already holds a quickstart (replaces its runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (stage messages still print)")
    p.add_argument("--seed", type=int, default=0, help="seed of every training stage (default: 0)")
    p.set_defaults(func=_cmd)
