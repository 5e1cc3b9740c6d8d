"""Supervised fine-tuning on conversations — the stage's own part of the one training loop.

Data: a file or `save_to_disk` folder of messages / sharegpt / alpaca / prompt-response records
(`diji.data.records`: JSONL, JSON, parquet, CSV, arrow; the detected format is printed), or a built-in
task's worked solutions (`data.task`). Every record is rendered by the one chat renderer into
(ids, loss_mask); the loss is next-token cross-entropy on assistant tokens only (the mask), averaged over
those tokens. Records longer than data.seq_len are dropped or truncated (data.overlong; the count is
printed when training starts).

Batches are either padded — one conversation per row, right padding, plain causal attention (a token
only sees its own conversation; pad positions are out of the loss) — or packed (data.packing): rows of
exactly seq_len tokens, each holding several conversations back to back, with a block-diagonal causal
mask and position ids restarting at 0 per conversation, so every token sees exactly what it would see
alone and the per-token loss equals the padded one (tests/train/test_sft.py) without computing pads.
Conversations are taken in a per-epoch permutation fixed by (seed, epoch); the resumable state is just
(epoch, cursor) in both modes, because packing is a deterministic function of that order.

Full fine-tuning or LoRA (`[lora] rank > 0`): with LoRA only the adapters train and the checkpoints are
adapter checkpoints (`diji lora merge` folds them into a plain one).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diji.config import to_dict
from diji.errors import DijiError
from diji.kernels import ops
from diji.train.config import LoopConfig, OptimConfig, RunConfig
from diji.train.loop import Job, Trainer, seed_everything
from diji.train.lora import LoRAConfig, apply_lora, load_model, trainable_parameters

IGNORE = -100


@dataclass(frozen=True)
class SFTData:
    path: str = ""
    """A file (.jsonl, .json, .parquet, .csv, .tsv, .arrow) or `datasets.save_to_disk` folder of records in
    messages, sharegpt, alpaca or prompt/response format (see diji.data.records)."""
    format: str = "auto"
    """Record format: auto (detected from the first record and printed), messages, sharegpt, alpaca,
    prompt_response."""
    columns: tuple[str, ...] = ()
    """Column mapping for other layouts, 'field=column' (e.g. ["prompt=question", "response=answer"]);
    fields: messages, conversations, instruction, input, output, history, system, prompt, response."""
    overlong: str = "drop"
    """Records longer than seq_len: 'drop' (default: every trained example ends with its stop token, so
    the model never learns to stop mid-answer) or 'truncate' (keep the first seq_len tokens)."""
    packing: bool = False
    """Pack several conversations into each row of seq_len tokens (block-diagonal attention, positions
    restarting per conversation); with packing, train.batch_size counts rows, not conversations."""
    task: str = ""
    """Instead of a file: a built-in task (e.g. "arith") whose train split's worked solutions are the data."""
    task_examples: int = 4000
    """With data.task: how many training problems to generate."""
    val_fraction: float = 0.05
    """Fraction of records held out for val_loss (at least one record)."""
    seq_len: int = 256
    """Longest rendered conversation in tokens (longer ones: see overlong); with packing, the row length."""
    eval_task: str = "auto"
    """Also report held-out accuracy on this task's test split at every evaluation: a task name, "auto" (the
    built-in data.task's own test split; nothing when training on a file) or empty (off)."""
    eval_examples: int = 100
    """Test problems per accuracy evaluation."""
    eval_max_new_tokens: int = 96
    """Generation budget per test problem."""

    def __post_init__(self) -> None:
        if bool(self.path) == bool(self.task):
            raise ValueError("set exactly one of data.path (a JSONL file) and data.task (a built-in task)")
        if self.overlong not in ("drop", "truncate"):
            raise ValueError(f"data.overlong must be 'drop' or 'truncate', got {self.overlong!r}")
        if self.format not in ("auto", "messages", "sharegpt", "alpaca", "prompt_response"):
            raise ValueError(f"data.format must be auto, messages, sharegpt, alpaca or prompt_response, "
                             f"got {self.format!r}")
        if self.seq_len < 8:
            raise ValueError(f"data.seq_len must be >= 8, got {self.seq_len}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.task_examples <= 0 or self.eval_examples <= 0 or self.eval_max_new_tokens <= 0:
            raise ValueError("data.task_examples, data.eval_examples and data.eval_max_new_tokens must be positive")


@dataclass(frozen=True)
class SFTConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="sft"))
    data: SFTData = field(default_factory=lambda: SFTData(task="arith"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=10))
    train: LoopConfig = field(default_factory=LoopConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        if not self.train.init_from:
            raise ValueError("train.init_from is required: the checkpoint to fine-tune (e.g. a pretrain run's)")


# ---- shared by SFT and GRPO: start from a parent checkpoint, optionally with adapters --------------
def start_from(ckpt: str, lora: LoRAConfig, seed: int) -> tuple[torch.nn.Module, Path, dict]:
    """(model, tokenizer file, extra lineage) for a stage that fine-tunes `ckpt` (plain or adapter)."""
    loaded = load_model(ckpt)
    model = loaded.model
    extra: dict[str, Any] = {}
    if lora.enabled:
        apply_lora(model, lora, seed=seed)
        trainable, total = trainable_parameters(model)
        extra = {"lora": to_dict(lora), "trainable_params": trainable, "total_params": total}
    return model, loaded.tokenizer_file, extra


def read_records(path: str | Path, fmt: str = "auto", columns: tuple[str, ...] = ()) -> list[list[dict[str, str]]]:
    """Conversations from any supported file or folder; one clear error naming the record on bad input."""
    from diji.data.records import load_conversations

    return load_conversations(path, fmt, columns).conversations


def task_records(task_name: str, n: int, seed: int) -> list[list[dict[str, str]]]:
    from diji.eval.task import get_task

    return [e.conversation() for e in get_task(task_name).examples("train", n, seed=seed)]


def fit(rendered: list[tuple[list[int], list[int]]], seq_len: int, policy: str
        ) -> tuple[list[tuple[list[int], list[int]]], dict[str, int]]:
    """Apply the over-long policy; drop records with nothing to learn. Returns (kept, counts)."""
    keep, counts = [], {"overlong_dropped": 0, "overlong_truncated": 0, "no_target": 0}
    for ids, mask in rendered:
        if len(ids) > seq_len:
            if policy == "drop":
                counts["overlong_dropped"] += 1
                continue
            ids, mask = ids[:seq_len], mask[:seq_len]
            counts["overlong_truncated"] += 1
        if sum(mask[1:]) == 0:
            counts["no_target"] += 1
            continue
        keep.append((ids, mask))
    return keep, counts


def pack_rows(rows: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conversations (each ≤ seq_len + 1 tokens, grouped per row) → (inputs, targets, positions, mask, real).

    `rows` is a list of rows, each a list of (ids, loss_mask). A conversation of n tokens contributes
    n - 1 inputs and targets, position ids 0..n-2, and attends only to itself (block-diagonal causal
    mask (B, 1, T, T)); the row's tail is padding that attends only to itself and is out of the loss.
    `real` (B, T) marks the non-pad positions (for the tokens/s count).
    """
    B, T = len(rows), seq_len
    x = torch.full((B, T), pad_id, dtype=torch.long)
    y = torch.full((B, T), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        at = 0
        for k, (ids, mask) in enumerate(row):
            n = len(ids) - 1
            t = torch.tensor(ids, dtype=torch.long)
            m = torch.tensor(mask[1:], dtype=torch.bool)
            x[b, at : at + n] = t[:-1]
            y[b, at : at + n] = torch.where(m, t[1:], torch.full_like(t[1:], IGNORE))
            pos[b, at : at + n] = torch.arange(n)
            seg[b, at : at + n] = k
            at += n
        pos[b, at:] = torch.arange(T - at)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    attn = (seg[:, :, None] == seg[:, None, :]) & causal  # pads (seg -1) form one causal block of their own
    return x, y, pos, attn[:, None], seg >= 0


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) rows → inputs (B, T) and targets (B, T) with IGNORE wherever the mask is 0 or padding."""
    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        t = torch.tensor(ids, dtype=torch.long)
        m = torch.tensor(mask[1:], dtype=torch.bool)
        x[i, : len(ids) - 1] = t[:-1]
        y[i, : len(ids) - 1] = torch.where(m, t[1:], torch.full_like(t[1:], IGNORE))
    return x, y


class SFTStage:
    def __init__(self, cfg: SFTConfig, tokenizer: Any, device: torch.device) -> None:
        from diji.data.chat import render

        self.cfg, self.tok, self.device = cfg, tokenizer, device
        d = cfg.data
        if d.path:
            from diji.data.records import load_conversations

            intake = load_conversations(d.path, d.format, d.columns)
            convs, self.source = intake.conversations, intake.describe()
        else:
            convs = task_records(d.task, d.task_examples, cfg.run.seed)
            self.source = f"task {d.task}: {len(convs)} records"
        # +1: a conversation of seq_len + 1 tokens gives seq_len inputs and targets
        keep, self.counts = fit([render(c, tokenizer) for c in convs], d.seq_len + 1, d.overlong)
        self.skipped = self.counts["overlong_dropped"] + self.counts["no_target"]
        if len(keep) < 2:
            raise DijiError(
                f"only {len(keep)} of {len(convs)} records fit data.seq_len={d.seq_len} with an "
                "assistant turn to learn; raise data.seq_len, set data.overlong='truncate', or check the data"
            )
        n_val = max(1, int(len(keep) * cfg.data.val_fraction))
        # The split is a fixed shuffle of the records (seeded), so val never changes between runs/resumes.
        order = list(range(len(keep)))
        random.Random(f"sft-split/{cfg.run.seed}").shuffle(order)
        self.val = [keep[i] for i in order[:n_val]]
        self.train = [keep[i] for i in order[n_val:]]
        self.data_sha256 = hashlib.sha256(json.dumps([r[0] for r in keep]).encode()).hexdigest()
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)
        self.eval_task = None
        # "auto" follows the data: switching data.task to your own data.path stops arithmetic accuracy.
        eval_name = (cfg.data.task or "") if cfg.data.eval_task == "auto" else cfg.data.eval_task
        if eval_name:
            from diji.eval.task import get_task

            self.eval_task = get_task(eval_name)
            self.eval_examples = self.eval_task.examples("test", cfg.data.eval_examples, seed=0)

    def _permutation(self, epoch: int) -> list[int]:
        perm = list(range(len(self.train)))
        random.Random(f"sft/{self.cfg.run.seed}/{epoch}").shuffle(perm)
        return perm

    def summary(self) -> str:
        """One line for the start of training: what was read and what the over-long policy did."""
        c, d = self.counts, self.cfg.data
        over = (f"{c['overlong_dropped']} over-long records dropped" if d.overlong == "drop"
                else f"{c['overlong_truncated']} over-long records truncated")
        return (f"sft data: {self.source}; {len(self.train)} train / {len(self.val)} val; {over} "
                f"(data.overlong={d.overlong}, seq_len {d.seq_len}); {c['no_target']} without an assistant "
                f"token skipped; {'packed' if d.packing else 'padded'} batches")

    def _next(self) -> tuple[list[int], list[int]]:
        if self.cursor == len(self._perm):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        return self.train[self._perm[self.cursor]]

    def next_batch(self):
        if not self.cfg.data.packing:
            rows = []
            for _ in range(self.cfg.train.batch_size):
                rows.append(self._next())
                self.cursor += 1
            return pad_batch(rows, self.tok.pad_id)
        # greedy first-fit in permutation order: a conversation that does not fit the current row opens
        # the next one; one that does not fit the last row waits for the next batch (cursor unchanged)
        T = self.cfg.data.seq_len
        packed: list[list[tuple[list[int], list[int]]]] = [[] for _ in range(self.cfg.train.batch_size)]
        row, used = 0, 0
        while row < len(packed):
            ex = self._next()
            n = len(ex[0]) - 1
            if used + n > T:
                row, used = row + 1, 0
                continue
            packed[row].append(ex)
            used += n
            self.cursor += 1
        return pack_rows(packed, T, self.tok.pad_id)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        if len(batch) == 5:
            x, y, pos, attn, real = (t.to(self.device) for t in batch)
            logits = model(x, position_ids=pos, attention_mask=attn)
            tokens = int(real.sum())
        else:
            x, y = (t.to(self.device) for t in batch)
            logits = model(x)
            tokens = int((x != self.tok.pad_id).sum())
        loss = ops.cross_entropy(logits, y, ignore_index=IGNORE)
        return loss, {"tokens": tokens, "target_tokens": int((y != IGNORE).sum())}

    def evaluate(self, model) -> dict[str, float]:
        total, count = 0.0, 0
        bs = self.cfg.train.batch_size
        for i in range(0, min(len(self.val), bs * self.cfg.train.eval_batches), bs):
            x, y = (t.to(self.device) for t in pad_batch(self.val[i : i + bs], self.tok.pad_id))
            n = int((y != IGNORE).sum())
            total += float(ops.cross_entropy(model(x), y, ignore_index=IGNORE)) * n
            count += n
        out = {"val_loss": total / max(count, 1)}
        if self.eval_task is not None:
            from diji.eval.task import score

            s = score(model, self.tok, self.eval_task, self.eval_examples, self.cfg.data.eval_max_new_tokens)
            out.update(val_accuracy=s.accuracy, val_format=s.format_rate)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._perm = self._permutation(self.epoch)


def sft(cfg: SFTConfig, resume: bool = False) -> dict[str, Any]:
    from diji.data.tokenizer import Tokenizer

    seed_everything(cfg.run.seed)
    model, tokenizer_file, extra = start_from(cfg.train.init_from, cfg.lora, cfg.run.seed)
    if cfg.data.seq_len > model.config.max_position_embeddings:
        raise DijiError(f"data.seq_len ({cfg.data.seq_len}) exceeds the model's context "
                        f"({model.config.max_position_embeddings})")
    tok = Tokenizer.from_file(tokenizer_file)
    stage = SFTStage(cfg, tok, torch.device("cpu"))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"diji: {stage.summary()}", file=sys.stderr)
    job = Job(run=cfg.run, optim=cfg.optim, loop=cfg.train, config=to_dict(cfg), tokenizer_file=tokenizer_file,
              data_sha256=stage.data_sha256, parent=Path(cfg.train.init_from), stage_name="sft",
              extra_lineage={**extra, "records_skipped": stage.skipped, **stage.counts})
    trainer = Trainer(model, stage, job)
    stage.device = trainer.device
    return trainer.run(resume=resume)
