"""Training configuration sections shared by every stage (pretrain, SFT, GRPO)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from diji.model.transformer import ModelConfig

DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    """Run directory name under out_dir: runs/<name>/."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    seed: int = 1337
    """Seed for initialisation, batch order and sampling: the same seed gives the same run."""
    device: str = "auto"
    """'auto' (the accelerator if torch sees one, else cpu) or an explicit device string."""
    dtype: str = "float32"
    """Compute dtype: float32, or bfloat16/float16 autocast (weights and optimizer stay float32)."""
    progress: bool = True
    """Show a progress bar on the terminal."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under `torchrun --nproc-per-node N`: ddp (every rank holds the weights, gradients
    are averaged) or fsdp (FSDP2 fully_shard: weights, gradients and optimizer state sharded across ranks).
    Ignored in a single process."""
    loggers: tuple[str, ...] = ("jsonl",)
    """Where metrics go: jsonl (metrics.jsonl, always written), tensorboard (RUN_DIR/tensorboard/),
    mlflow (OUT_DIR/mlflow.db). tensorboard and mlflow need the `track` extra."""

    def __post_init__(self) -> None:
        from diji.observe.loggers import LOGGERS

        bad = [n for n in self.loggers if n not in LOGGERS]
        if bad:
            raise ValueError(f"run.loggers: unknown logger '{bad[0]}'; choose from {', '.join(LOGGERS)}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"run.parallel must be 'ddp' or 'fsdp', got '{self.parallel}'")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"run.dtype must be one of {', '.join(DTYPE_NAMES)}, got '{self.dtype}'")
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty name without '/', got '{self.name}'")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "muon"] = "adamw"
    """Optimizer: adamw (decoupled weight decay, Loshchilov & Hutter 2019), or muon — Muon (Jordan et al.
    2024) for the 2-D weight matrices of the blocks, AdamW for embeddings, output head, norms and biases."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.1
    """Decoupled weight decay for matrices (norms, biases and embeddings are not decayed)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    eps: float = 1e-8
    """AdamW ε."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = off)."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """cosine: warmup then cosine decay; wsd: warmup-stable-decay (Hu et al. 2024, MiniCPM); constant."""
    warmup_steps: int = 20
    """Linear warmup steps from 0 to lr."""
    decay_fraction: float = 0.2
    """wsd only: the final fraction of steps over which lr decays linearly to min_lr."""
    muon_lr: float = 0.02
    """muon only: peak learning rate of the Muon-updated matrices (follows the same schedule as lr)."""
    muon_momentum: float = 0.95
    """muon only: Nesterov momentum of Muon."""
    muon_ns_steps: int = 5
    """muon only: Newton-Schulz iterations used to orthogonalise each update."""
    fused: Literal["auto", "on", "off"] = "auto"
    """AdamW's fused single-kernel step: auto (use it where the device's capability probe says it works)."""

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "muon"):
            raise ValueError(f"optim.name must be 'adamw' or 'muon', got '{self.name}'")
        if self.muon_lr <= 0 or not 0 <= self.muon_momentum < 1 or self.muon_ns_steps < 1:
            raise ValueError("optim.muon_lr must be > 0, optim.muon_momentum in [0, 1), optim.muon_ns_steps >= 1")
        if self.fused not in ("auto", "on", "off"):
            raise ValueError(f"optim.fused must be auto, on or off, got '{self.fused}'")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.warmup_steps, optim.grad_clip and optim.weight_decay must be >= 0")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("optim.beta1 and optim.beta2 must be in [0, 1)")


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int = 200
    """Optimizer steps to run."""
    batch_size: int = 8
    """Sequences per micro-batch, in total over all processes (each of N torchrun ranks gets batch_size / N,
    so the same config gives the same loss curve on any number of processes)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    log_every: int = 10
    """Write a metrics line every this many steps."""
    eval_every: int = 50
    """Run validation every this many steps (and at the end); 0 = only at the end."""
    eval_batches: int = 8
    """Validation micro-batches per evaluation."""
    save_every: int = 100
    """Write a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep (the newest); older ones are deleted."""
    init_from: str = ""
    """Start from this checkpoint's weights (the parent in lineage); empty = random init."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "eval_batches", "save_every",
                     "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be a positive integer, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0, got {self.eval_every}")


@dataclass(frozen=True)
class PretrainData:
    path: str = ""
    """A data directory written by `diji data prepare` (manifest.json, train-*.bin, val-*.bin)."""
    seq_len: int = 256
    """Tokens per training sequence."""

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2, got {self.seq_len}")


@dataclass(frozen=True)
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainData = field(default_factory=PretrainData)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        if not self.data.path:
            raise ValueError("data.path is required: the directory written by `diji data prepare`")
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_position_embeddings "
                f"({self.model.max_position_embeddings})"
            )
