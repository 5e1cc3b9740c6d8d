"""The one training loop, shared by pretraining, SFT and GRPO.

A *stage* supplies only what is its own — batches, a loss, an evaluation — through the `Stage` protocol;
the loop owns everything else: schedule, accumulation, clipping, autocast, logging, checkpoints and exact
resume. Resumable state is one dict (model, optimizer, step, RNG, the stage's data cursor) written
atomically with every checkpoint, so a run killed at any moment continues on the same loss curve.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from diji.compute.device import autocast, select_device
from diji.compute.perf import matmul_peak_flops
from diji.config import dumps_toml
from diji.errors import DijiError
from diji.io import atomic_write_text, sha256_file
from diji.observe.metrics import MetricsLog, truncate_after
from diji.observe.report import write_report
from diji.train import checkpoint as ckpt_io
from diji.train.config import LoopConfig, OptimConfig, RunConfig
from diji.train.optim import build_optimizer, lr_at


class Stage(Protocol):
    """What a training stage adds to the loop."""

    def next_batch(self) -> Any:
        """The next micro-batch (advances the stage's cursor)."""

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise, and metrics for the log; metrics['tokens'] counts processed tokens."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation metrics (e.g. val_loss), computed without gradients."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Job:
    """Everything the loop needs besides the model and the stage."""

    run: RunConfig
    optim: OptimConfig
    loop: LoopConfig
    config: dict
    """The resolved configuration (written to config.toml and lineage.json)."""
    tokenizer_file: Path
    data_sha256: str | None = None
    """sha256 of the data manifest (or dataset file) this run trains on."""
    parent: Path | None = None
    """Checkpoint the weights started from, if any."""
    stage_name: str = "pretrain"
    extra_lineage: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, model: torch.nn.Module, stage: Stage, job: Job) -> None:
        self.job, self.stage = job, stage
        self.device = select_device(job.run.device).device
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, job.optim)
        self.step = 0
        self.tokens_seen = 0
        self.last_eval: dict[str, float] = {}
        self.run_dir = job.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"

    # ---- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": self.optimizer.state_dict(),
            "stage": self.stage.state_dict(),
            "rng": rng_state(),
            "last_eval": self.last_eval,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.stage.load_state_dict(state["stage"])
        set_rng_state(state["rng"])
        self.last_eval = state.get("last_eval", {})

    def resume(self) -> bool:
        """Continue from runs/<name>/latest; False when there is nothing to resume from."""
        latest = ckpt_io.latest_checkpoint(self.run_dir)
        if latest is None:
            return False
        ckpt_io.load_weights(self.model, latest)
        self.model.to(self.device)
        self.load_state_dict(ckpt_io.load_train_state(latest))
        truncate_after(self.run_dir / "metrics.jsonl", self.step)
        print(f"diji: resumed {self.run_dir} from {latest.name} (step {self.step})", file=sys.stderr)
        return True

    # ---- checkpoints -----------------------------------------------------------------------------
    def lineage(self) -> dict:
        return {
            "stage": self.job.stage_name,
            "data_manifest_sha256": self.job.data_sha256,
            "parent_sha256": (ckpt_io.read_lineage(self.job.parent).get("weights_sha256") if self.job.parent else None),
            "parent": str(self.job.parent) if self.job.parent else None,
            "config": self.job.config,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "metrics": self.last_eval,
            **self.job.extra_lineage,
        }

    def save(self) -> Path:
        path = self.ckpt_dir / f"step-{self.step:06d}"
        ckpt_io.save_checkpoint(path, self.model, self.job.tokenizer_file, self.lineage(), self.state_dict())
        ckpt_io.write_latest(self.run_dir, path)
        ckpt_io.prune_checkpoints(self.ckpt_dir, self.job.loop.keep_checkpoints)
        return path

    # ---- the loop --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.job.run.dtype):
            metrics = self.stage.evaluate(self.model)
        self.model.train()
        self.last_eval = {k: float(v) for k, v in metrics.items()}
        return self.last_eval

    def train_step(self) -> dict[str, float]:
        cfg = self.job.loop
        lr = lr_at(self.step, cfg.max_steps, self.job.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            batch = self.stage.next_batch()
            with autocast(self.device, self.job.run.dtype):
                loss, metrics = self.stage.loss(self.model, batch)
            (loss / cfg.grad_accum).backward()
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + (float(v) if k == "tokens" else float(v) / cfg.grad_accum)
        clip = self.job.optim.grad_clip if self.job.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += int(totals.get("tokens", 0))
        return {**totals, "lr": lr, "grad_norm": float(grad_norm)}

    def run(self, resume: bool = False) -> dict[str, Any]:
        job, cfg = self.job, self.job.loop
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and self.resume()):
            if resume:
                print(f"diji: nothing to resume in {self.run_dir}; starting fresh", file=sys.stderr)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        atomic_write_text(self.run_dir / "config.toml", dumps_toml(job.config))
        log = MetricsLog(self.run_dir / "metrics.jsonl")
        flops_per_token = self.model.config.flops_per_token(job.config.get("data", {}).get("seq_len", 256))
        peak = matmul_peak_flops(str(self.device))
        bar = self._progress(cfg.max_steps)
        self.model.train()
        window_tokens, window_start = 0, time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                m = self.train_step()
                window_tokens += int(m.get("tokens", 0))
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", refresh=False)
                record: dict[str, Any] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    dt = max(time.perf_counter() - window_start, 1e-9)
                    tok_s = window_tokens / dt
                    record.update({k: v for k, v in m.items() if k != "tokens"})
                    record.update(tokens_per_s=tok_s, mfu=tok_s * flops_per_token / peak, tokens_seen=self.tokens_seen)
                    window_tokens, window_start = 0, time.perf_counter()
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps:
                    record.update(self.evaluate())
                if record:
                    log.write({"step": self.step, **record})
                if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save()
                    window_start = time.perf_counter()  # checkpoint time is not training throughput
        finally:
            bar.close()
            log.close()
        write_report(self.run_dir)
        final = ckpt_io.latest_checkpoint(self.run_dir)
        return {"checkpoint": str(final.resolve()) if final else None, "step": self.step, **self.last_eval}

    def _progress(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.step, desc=self.job.stage_name, unit="step",
                    disable=not self.job.run.progress, dynamic_ncols=True, mininterval=0.5)


def init_model(model: torch.nn.Module, job: Job) -> None:
    """Fresh weights from the run seed, or the parent checkpoint's weights."""
    if job.parent is not None:
        ckpt_io.verify_checkpoint(job.parent)
        ckpt_io.load_weights(model, job.parent)
    else:
        model.init_weights(seed=job.run.seed)


def manifest_sha(data_dir: str | Path) -> str:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DijiError(f"{data_dir} has no manifest.json; run `diji data prepare` first")
    return sha256_file(path)
