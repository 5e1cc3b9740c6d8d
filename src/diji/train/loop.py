"""The one training loop, shared by pretraining, SFT and GRPO.

A *stage* supplies only what is its own — batches, a loss, an evaluation — through the `Stage` protocol;
the loop owns everything else: schedule, accumulation, clipping, autocast, logging, checkpoints, exact
resume and data parallelism. Resumable state is one dict (model, optimizer, step, RNG, the stage's data
cursor) written atomically with every checkpoint, so a run killed at any moment continues on the same loss
curve.

Under `torchrun --nproc-per-node N` the same loop runs data-parallel (run.parallel = ddp or fsdp). Every
rank draws the same *global* micro-batch from the stage and trains on its 1/N slice of the rows, so the
data order — and the checkpoint's cursor — do not depend on N. Checkpoints always hold full, unsharded
weights and optimizer state keyed by parameter name, written by rank 0: a run saved on 2 ranks resumes on
1 (or 4) and continues on the same loss curve, up to the float rounding of a different reduction order.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from diji.compute import distributed as dist
from diji.compute.device import autocast, select_device
from diji.compute.fallback import FALLBACKS
from diji.compute.perf import matmul_peak_flops
from diji.config import dumps_toml, flatten, read_toml
from diji.errors import DijiError
from diji.io import atomic_write_text, sha256_file
from diji.observe.loggers import open_loggers
from diji.observe.metrics import truncate_after
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

    # Optional: `shard_batch(batch, rank, world_size)` returns this rank's part of a global micro-batch.
    # Without it, the loop slices every tensor in the batch (tuple, list or dict) along dimension 0.


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


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rows [rank·n, (rank+1)·n) of every tensor in a (nested) batch, n = rows / world."""
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        rows = batch.shape[0]
        if rows % world:
            raise DijiError(f"a batch of {rows} rows cannot be split evenly over {world} processes; "
                            f"make train.batch_size a multiple of {world}")
        n = rows // world
        return batch[rank * n : (rank + 1) * n]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_batch(b, rank, world) for b in batch)
    if isinstance(batch, dict):
        return {k: shard_batch(v, rank, world) for k, v in batch.items()}
    return batch


# ---- run directories: never reuse one silently ---------------------------------------------------------
# What a resumed run may change: the step budget, and how (not what) it computes and shows — the process
# layout (a run saved on 2 ranks resumes on 1), the device, progress bars and loggers. Anything else would
# splice two different experiments into one loss curve.
RESUMABLE_CHANGES = frozenset({"train.max_steps", "run.parallel", "run.device", "run.progress", "run.loggers"})
# Everything the loop writes into a run directory (what --overwrite removes; nothing else is touched).
RUN_ARTIFACTS = ("metrics.jsonl", "checkpoints", "latest", "config.toml", "report.html", "tensorboard",
                 "mlflow_run_id")


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, except RESUMABLE_CHANGES."""
    a, b = flatten(json.loads(json.dumps(saved))), flatten(json.loads(json.dumps(current)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def run_in_use(run_dir: Path) -> bool:
    """True when a previous run left its metrics or checkpoints here."""
    metrics = run_dir / "metrics.jsonl"
    return (metrics.is_file() and metrics.stat().st_size > 0) or (run_dir / "checkpoints").is_dir() \
        or (run_dir / "latest").exists()


def clear_run_dir(run_dir: Path) -> None:
    """--overwrite: delete what a previous run wrote here (only the loop's own artifacts)."""
    for name in RUN_ARTIFACTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def saved_config(run_dir: Path) -> dict | None:
    """The config a run directory's latest checkpoint was trained with (else its config.toml)."""
    latest = ckpt_io.latest_checkpoint(run_dir)
    if latest is not None:
        config = ckpt_io.read_lineage(latest).get("config")
        if config is not None:
            return config
    return read_toml(run_dir / "config.toml") if (run_dir / "config.toml").is_file() else None


def check_run_dir(run_dir: Path, config: dict, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a used run directory unless told how (--resume or --overwrite), and refuse to
    resume with a config that differs from the saved one in anything but RESUMABLE_CHANGES."""
    if resume and overwrite:
        raise DijiError("--resume and --overwrite exclude each other: continue the run, or start it over")
    if overwrite:
        clear_run_dir(run_dir)
        return
    if not run_in_use(run_dir):
        return
    if not resume:
        raise DijiError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start "
                        f"over, or choose another run.name")
    saved = saved_config(run_dir)
    diff = config_differences(saved, config) if saved is not None else []
    if diff:
        raise DijiError(f"cannot --resume {run_dir}: the config differs from the saved one in "
                        f"{', '.join(diff)} (only {', '.join(sorted(RESUMABLE_CHANGES))} may change); "
                        f"use --overwrite to start over or another run.name")


class _FullWeights:
    """What save_checkpoint needs from a model (config + state_dict), holding gathered full weights."""

    def __init__(self, config, state: dict[str, torch.Tensor]) -> None:
        self.config, self._state = config, state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class Trainer:
    def __init__(self, model: torch.nn.Module, stage: Stage, job: Job) -> None:
        self.job, self.stage = job, stage
        world = dist.env_world_size()
        if job.loop.batch_size % world:  # checked before joining the group, so every rank fails alike
            raise DijiError(f"train.batch_size ({job.loop.batch_size}) must be divisible by the number of "
                            f"processes ({world}): it is the global micro-batch, split evenly")
        self.device = select_device(job.run.device).device
        self.dist = dist.init_distributed(self.device)
        self.device = dist.rank_device(self.device, self.dist.local_rank)
        self.fsdp = self.dist.enabled and job.run.parallel == "fsdp"
        self.model = model.to(self.device)
        if self.fsdp:
            self._fully_shard()
        self.optimizer = build_optimizer(self.model, job.optim)
        self.step = 0
        self.tokens_seen = 0
        self.last_eval: dict[str, float] = {}
        self.run_dir = job.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._kernels_logged = False

    def _fully_shard(self) -> None:
        """FSDP2: shard each repeated block (every element of a ModuleList), then the root (embedding,
        head, final norm — tied weights stay together in the root's unit)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.dist.world_size,))
        for module in list(self.model.modules()):
            if isinstance(module, torch.nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    # ---- resumable state -------------------------------------------------------------------------
    def _state_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def state_dict(self) -> dict:
        """Resumable state; optimizer state is full and keyed by parameter name (layout-independent).
        Under FSDP this is a collective: every rank must call it."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=self._state_options()),
            "stage": self.stage.state_dict(),
            "rng": rng_state(),
            "last_eval": self.last_eval,
        }

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        self.stage.load_state_dict(state["stage"])
        set_rng_state(state["rng"])
        self.last_eval = state.get("last_eval", {})

    def resume(self) -> bool:
        """Continue from runs/<name>/latest; False when there is nothing to resume from."""
        latest = ckpt_io.latest_checkpoint(self.run_dir)
        if latest is None:
            return False
        if self.fsdp:
            self._load_full_weights(latest)
        else:
            ckpt_io.load_weights(self.model, latest)
            self.model.to(self.device)
        self.load_state_dict(ckpt_io.load_train_state(latest))
        if self.dist.is_main:
            truncate_after(self.run_dir / "metrics.jsonl", self.step)
            print(f"diji: resumed {self.run_dir} from {latest.name} (step {self.step})", file=sys.stderr)
        return True

    def _load_full_weights(self, ckpt: Path) -> None:
        """Full weights from disk into a sharded model: each rank keeps its shard."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        ckpt_io.verify_checkpoint(ckpt)
        state = load_file(str(ckpt / ckpt_io.WEIGHTS))
        if getattr(self.model.config, "tie_word_embeddings", False):
            state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))

    def _full_weights(self) -> _FullWeights | torch.nn.Module:
        if not self.fsdp:
            return self.model
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return _FullWeights(self.model.config, get_model_state_dict(self.model, options=self._state_options()))

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
        """Gather full state (collective under FSDP), write it on rank 0, then let every rank go on."""
        path = self.ckpt_dir / f"step-{self.step:06d}"
        weights, state = self._full_weights(), self.state_dict()
        if self.dist.is_main:
            ckpt_io.save_checkpoint(path, weights, self.job.tokenizer_file, self.lineage(), state)
            ckpt_io.write_latest(self.run_dir, path)
            ckpt_io.prune_checkpoints(self.ckpt_dir, self.job.loop.keep_checkpoints)
        dist.barrier(self.dist)
        return path

    # ---- the loop --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.job.run.dtype):
            metrics = self.stage.evaluate(self.model)
        self.model.train()
        self.last_eval = {k: float(v) for k, v in metrics.items()}
        return self.last_eval

    def _local(self, batch: Any) -> Any:
        if not self.dist.enabled:
            return batch
        custom = getattr(self.stage, "shard_batch", None)
        if custom is not None:
            return custom(batch, self.dist.rank, self.dist.world_size)
        return shard_batch(batch, self.dist.rank, self.dist.world_size)

    def _reduce_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of every metric (sum for token counts), in one collective."""
        if not self.dist.enabled:
            return totals
        keys = sorted(totals)
        vals = torch.tensor([totals[k] for k in keys], dtype=torch.float64)
        dist.all_reduce_sum(vals, self.dist)
        return {k: float(v) if k == "tokens" else float(v) / self.dist.world_size
                for k, v in zip(keys, vals.tolist(), strict=True)}

    def train_step(self) -> dict[str, float]:
        cfg = self.job.loop
        lr = lr_at(self.step, cfg.max_steps, self.job.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        totals: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            batch = self._local(self.stage.next_batch())
            with autocast(self.device, self.job.run.dtype):
                loss, metrics = self.stage.loss(self.model, batch)
            (loss / cfg.grad_accum).backward()
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + (float(v) if k == "tokens" else float(v) / cfg.grad_accum)
        if self.dist.enabled and not self.fsdp:
            dist.average_gradients([p for p in self.model.parameters() if p.requires_grad], self.dist)
        clip = self.job.optim.grad_clip if self.job.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        # Expert load of MoE models (max/min load, dropped tokens, aux loss) goes into metrics.jsonl.
        stats = getattr(self.model, "moe_stats", None)
        if callable(stats):
            totals.update(stats())
        totals = self._reduce_metrics(totals)
        self.tokens_seen += int(totals.get("tokens", 0))
        if not self._kernels_logged:
            self._kernels_logged = True
            self._log_kernels()
        return {**totals, "lr": lr, "grad_norm": float(grad_norm)}

    def _log_kernels(self) -> None:
        """Once per run, after the first step chose them: which implementation each op runs."""
        from diji.kernels.registry import REGISTRY

        if self.dist.is_main and self.job.run.progress:
            chosen = ", ".join(f"{k.split(' on ')[0]}={v['impl']}" for k, v in REGISTRY.chosen().items())
            print(f"diji: kernels on {self.device.type}: {chosen or 'none dispatched'}", file=sys.stderr)

    def run(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train to loop.max_steps. A used run directory needs `resume` (continue; the config must match)
        or `overwrite` (delete the previous run's artifacts first)."""
        job, cfg = self.job, self.job.loop
        main = self.dist.is_main
        if main:  # a refusal here ends rank 0; torchrun then stops the other ranks
            check_run_dir(self.run_dir, job.config, resume, overwrite)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier(self.dist)
        if not (resume and self.resume()):
            if resume and main:
                print(f"diji: nothing to resume in {self.run_dir}; starting fresh", file=sys.stderr)
            if main:
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if main:
            atomic_write_text(self.run_dir / "config.toml", dumps_toml(job.config))
        log = open_loggers(job.run.loggers, self.run_dir, job.config, self.step) if main else None
        flops_per_token = self.model.config.flops_per_token(job.config.get("data", {}).get("seq_len", 256))
        peak = matmul_peak_flops(str(self.device)) * self.dist.world_size
        fallbacks_before = FALLBACKS.total()
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
                    if FALLBACKS.total() > fallbacks_before:
                        record["fallbacks"] = FALLBACKS.total() - fallbacks_before
                    window_tokens, window_start = 0, time.perf_counter()
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps:
                    record.update(self.evaluate())
                if record and log is not None:
                    log.log(self.step, record)
                if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save()
                    window_start = time.perf_counter()  # checkpoint time is not training throughput
        finally:
            bar.close()
            if log is not None:
                log.close()
        if main:
            write_report(self.run_dir)
        dist.barrier(self.dist)
        final = ckpt_io.latest_checkpoint(self.run_dir)
        return {"checkpoint": str(final.resolve()) if final else None, "step": self.step, **self.last_eval}

    def _progress(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.step, desc=self.job.stage_name, unit="step",
                    disable=not (self.job.run.progress and self.dist.is_main), dynamic_ncols=True, mininterval=0.5)


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
