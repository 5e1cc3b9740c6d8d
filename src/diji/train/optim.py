"""Optimizers (AdamW, Muon) and learning-rate schedules (pure functions of the step, so trivially resumable).

Every parameter group may carry `lr_scale`: the loop sets `lr = schedule(step) * lr_scale`, so groups with
their own peak rate (Muon's matrices) follow the same warmup and decay as everything else.
"""

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


def muon_param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Muon for the blocks' 2-D matrices; AdamW for embeddings, the output head, norms and biases.

    The embedding and head are excluded as in Jordan et al. (2024): their rows are per-token lookups,
    not a linear map whose singular values matter, and orthogonalising them trains worse.
    """
    muon, adam_decay, adam_plain, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() == 2 and "embed" not in name and "lm_head" not in name:
            muon.append(p)
        elif p.dim() >= 2 and "embed" not in name:
            adam_decay.append(p)
        else:
            adam_plain.append(p)
    return [
        {"params": muon, "use_muon": True, "weight_decay": cfg.weight_decay, "lr_scale": cfg.muon_lr / cfg.lr},
        {"params": adam_decay, "use_muon": False, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": adam_plain, "use_muon": False, "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def newton_schulz(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately U·Vᵀ for g = U·S·Vᵀ: the nearest semi-orthogonal matrix, by a quintic Newton-Schulz
    iteration whose coefficients (3.4445, −4.7750, 2.0315) maximise the slope at zero (Jordan et al. 2024).
    Runs in bfloat16 where the device supports it (the iteration tolerates it, and it is the costly part)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    dtype = torch.bfloat16 if _bf16_ok(g.device) else torch.float32
    x = g.to(dtype)
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the smaller Gram matrix
        x = x.t()
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1, inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.t()
    return x.to(g.dtype)


def _bf16_ok(device: torch.device) -> bool:
    from diji.compute.profile import capabilities

    return capabilities(device).supports("bfloat16")


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Jordan et al. 2024), with AdamW for non-Muon groups.

    For groups with use_muon: Nesterov momentum, then the update is orthogonalised and scaled by
    sqrt(max(1, rows/cols)) so tall and wide matrices move alike; decoupled weight decay as in AdamW.
    Under FSDP2 the (sharded) update is gathered, orthogonalised whole, and each rank keeps its shard.
    One optimizer object for both kinds keeps the loop, the schedule and the checkpoint format uniform.
    """

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                 momentum: float, ns_steps: int) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps, weight_decay=0.0,
                        use_muon=False, lr_scale=1.0)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon(group)
            else:
                self._adamw(group)

    def _muon(self, group: dict) -> None:
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mom)
            update = p.grad.lerp(buf, mom)  # Nesterov: look ahead along the momentum
            full = update.full_tensor() if hasattr(update, "full_tensor") else update
            o = newton_schulz(full, group["ns_steps"])
            o.mul_(max(1.0, o.shape[0] / o.shape[1]) ** 0.5)
            if hasattr(update, "full_tensor"):
                from torch.distributed.tensor import distribute_tensor

                o = distribute_tensor(o, update.device_mesh, update.placements, src_data_rank=None)
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(o, alpha=-lr)

    def _adamw(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = float(state["step"])
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**t)).sqrt_().add_(eps)
            if wd:
                p.mul_(1 - lr * wd)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "muon":
        return Muon(muon_param_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                    momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps)
    groups = param_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             **_adamw_impl(model, cfg))


def _adamw_impl(model: torch.nn.Module, cfg: OptimConfig) -> dict:
    """fused=True where the device's probe says it works (one kernel per step instead of a dozen)."""
    if cfg.fused == "off":
        return {}
    params = list(model.parameters())
    if any(hasattr(p, "full_tensor") for p in params):  # FSDP2 DTensors: let torch pick its foreach path
        return {}
    if cfg.fused == "on":
        return {"fused": True}
    from diji.compute.profile import capabilities

    device = params[0].device if params else torch.device("cpu")
    return {"fused": True} if capabilities(device).fused_adamw.ok else {}


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
