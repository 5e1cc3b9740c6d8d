"""Supervised fine-tuning on conversations — the stage's own part of the one training loop.

Data: a JSONL file of `{"messages": [...]}` or `{"prompt", "response"}` records, or a built-in task's
worked solutions (`data.task`). Every record is rendered by the one chat renderer into (ids, loss_mask);
the loss is next-token cross-entropy on assistant tokens only (the mask), averaged over those tokens.

Batches are padded, one conversation per row, never packed: with right padding and causal attention a
token only ever sees its own conversation, so there is no cross-sample leak and no mask is needed (the
pad positions are excluded from the loss). Rows are drawn in a per-epoch permutation fixed by
(seed, epoch); the resumable state is just (epoch, cursor).

Full fine-tuning or LoRA (`[lora] rank > 0`): with LoRA only the adapters train and the checkpoints are
adapter checkpoints (`diji lora merge` folds them into a plain one).
"""

from __future__ import annotations

import hashlib
import json
import random
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
    """JSONL file of conversations ({"messages": [...]}) or {"prompt", "response"} pairs."""
    task: str = ""
    """Instead of a file: a built-in task (e.g. "arith") whose train split's worked solutions are the data."""
    task_examples: int = 4000
    """With data.task: how many training problems to generate."""
    val_fraction: float = 0.05
    """Fraction of records held out for val_loss (at least one record)."""
    seq_len: int = 256
    """Longest rendered conversation in tokens; longer records are skipped (and counted)."""
    eval_task: str = ""
    """Also report held-out accuracy on this task's test split at every evaluation (empty = off)."""
    eval_examples: int = 100
    """Test problems per accuracy evaluation."""
    eval_max_new_tokens: int = 96
    """Generation budget per test problem."""

    def __post_init__(self) -> None:
        if bool(self.path) == bool(self.task):
            raise ValueError("set exactly one of data.path (a JSONL file) and data.task (a built-in task)")
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


def read_records(path: str | Path) -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file; one clear error naming the line on bad input."""
    from diji.data.chat import conversation_from_record

    p = Path(path)
    if not p.is_file():
        raise DijiError(f"SFT data file not found: {p}")
    out = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DijiError(f"{p} is not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(conversation_from_record(json.loads(line)))
        except json.JSONDecodeError as e:
            raise DijiError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        except ValueError as e:
            raise DijiError(f"{p}:{n}: {e}") from None
    if not out:
        raise DijiError(f"{p} holds no records")
    return out


def task_records(task_name: str, n: int, seed: int) -> list[list[dict[str, str]]]:
    from diji.eval.task import get_task

    return [e.conversation() for e in get_task(task_name).examples("train", n, seed=seed)]


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
        convs = (read_records(cfg.data.path) if cfg.data.path
                 else task_records(cfg.data.task, cfg.data.task_examples, cfg.run.seed))
        rendered = [render(c, tokenizer) for c in convs]
        keep = [r for r in rendered if len(r[0]) <= cfg.data.seq_len and sum(r[1][1:]) > 0]
        self.skipped = len(rendered) - len(keep)
        if len(keep) < 2:
            raise DijiError(
                f"only {len(keep)} of {len(rendered)} records fit data.seq_len={cfg.data.seq_len} with an "
                "assistant turn to learn; raise data.seq_len or check the data"
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
        if cfg.data.eval_task:
            from diji.eval.task import get_task

            self.eval_task = get_task(cfg.data.eval_task)
            self.eval_examples = self.eval_task.examples("test", cfg.data.eval_examples, seed=0)

    def _permutation(self, epoch: int) -> list[int]:
        perm = list(range(len(self.train)))
        random.Random(f"sft/{self.cfg.run.seed}/{epoch}").shuffle(perm)
        return perm

    def next_batch(self):
        rows = []
        for _ in range(self.cfg.train.batch_size):
            if self.cursor == len(self._perm):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            rows.append(self.train[self._perm[self.cursor]])
            self.cursor += 1
        return pad_batch(rows, self.tok.pad_id)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(self.device) for t in batch)
        loss = ops.cross_entropy(model(x), y, ignore_index=IGNORE)
        return loss, {"tokens": int((x != self.tok.pad_id).sum()), "target_tokens": int((y != IGNORE).sum())}

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
    job = Job(run=cfg.run, optim=cfg.optim, loop=cfg.train, config=to_dict(cfg), tokenizer_file=tokenizer_file,
              data_sha256=stage.data_sha256, parent=Path(cfg.train.init_from), stage_name="sft",
              extra_lineage={**extra, "records_skipped": stage.skipped})
    trainer = Trainer(model, stage, job)
    stage.device = trainer.device
    return trainer.run(resume=resume)
