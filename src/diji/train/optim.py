"""Optimizer construction and learning-rate schedules (pure functions of the step, so trivially resumable)."""

from __future__ import annotations

import math

import torch

from diji.train.config import OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay only 2-D weight matrices of linear layers; norms, biases and embeddings are left alone
    (decaying the embedding shrinks rare tokens' vectors toward zero, hurting small-vocab models)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )


def lr_at(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warm = min(cfg.warmup_steps, max(max_steps - 1, 0))
    if step < warm:
        return peak * (step + 1) / warm
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(max_steps - warm, 1)
        progress = min((step - warm) / span, 1.0)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    # wsd: hold the peak, then decay linearly to the floor over the last decay_fraction of training.
    decay_steps = max(int(round(max_steps * cfg.decay_fraction)), 1)
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return peak
    return peak + (floor - peak) * min((step - decay_start + 1) / decay_steps, 1.0)
