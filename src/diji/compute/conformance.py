"""`diji conformance`: does this device compute what the float64 reference computes?

Two levels, because per-op tests can all pass while the whole model drifts:
1. **Ops.** Every implementation of every registered op that applies to the device/dtype, forward and
   backward, on representative and odd shapes, against the *reference* implementation run in float64
   on the CPU. Errors are normalised by the reference's largest magnitude and compared with a per-dtype
   tolerance. Each op runs in its own try block (or, with `isolate=True`, its own process, which also
   survives a hard crash in native code), so one broken kernel never hides the others.
2. **Golden trajectory.** A fixed-seed tiny model trained for a few AdamW steps on the device (with the
   kernels the registry chooses there, autocast in the low dtype) and in float64 on the CPU with the
   reference kernels; the loss curve, gradient norms and final weights must agree within tolerance.

The model is passed in by the caller (`make_model`) so that compute/ never imports the model package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from diji.compute.device import DTYPES, autocast
from diji.kernels.registry import REFERENCE, REGISTRY
from diji.kernels.specs import SPECS, Case

OP_TOL = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
"""Largest allowed |impl − ref| / max|ref| per output or gradient. float32 allows for reassociated sums
(fused kernels reduce in a different order); bf16 has 8 mantissa bits (2⁻⁸ ≈ 4e-3 per rounding) and a
few roundings compound inside attention and softmax."""

TRAJ_TOL = {
    "float32": {"loss": 1e-4, "grad_norm": 1e-3, "weights": 1e-4},
    "float16": {"loss": 1e-2, "grad_norm": 5e-2, "weights": 5e-3},
    "bfloat16": {"loss": 3e-2, "grad_norm": 1e-1, "weights": 2e-2},
}
"""Golden-trajectory tolerances: relative for loss and gradient norm, absolute (in weight units, after
lr·steps of movement) for the final weights. Adam normalises updates, so a low-precision gradient whose
sign flips on a tiny component moves that weight by up to 2·lr per step; the bf16 bound allows that."""


@dataclass
class OpResult:
    op: str
    impl: str
    case: str
    device: str
    dtype: str
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    tol: float = float("nan")
    speed_vs_ref: float = float("nan")
    passed: bool = False
    error: str = ""


def _to(x, device, dtype, cast: bool):
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() and cast:
            return x.to(device=device, dtype=dtype)
        return x.to(device)
    if isinstance(x, torch.dtype):
        return dtype
    return x


def _call(fn, case: Case, device, dtype, upstream_seed: int = 0):
    """Run fn on the case in (device, dtype); return (outputs, grads) as float64 CPU tensors."""
    cast = set(range(len(case.args))) if case.cast is None else set(case.cast)
    args = [_to(a, device, dtype, i in cast) for i, a in enumerate(case.args)]
    for i in case.grad:
        args[i] = args[i].detach().requires_grad_(True)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in case.kwargs.items()}
    out = fn(*args, **kwargs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    grads: list[torch.Tensor] = []
    if case.grad:
        gen = torch.Generator().manual_seed(upstream_seed)
        ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(device, o.dtype) for o in outs]
        torch.autograd.backward(outs, ups)
        grads = [args[i].grad.detach().to("cpu", torch.float64) for i in case.grad]
    return [o.detach().to("cpu", torch.float64) for o in outs], grads


def _compare(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[float, float]:
    max_abs = max_rel = 0.0
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise ValueError(f"shape {tuple(g.shape)} != reference {tuple(w.shape)}")
        diff = (g - w).abs().max().item() if g.numel() else 0.0
        if diff != diff:  # NaN where the reference has none
            return float("nan"), float("nan")
        scale = max(w.abs().max().item() if w.numel() else 0.0, 1e-12)
        max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / scale)
    return max_abs, max_rel


def _time(fn, case: Case, device, dtype, reps: int = 3) -> float:
    from diji.compute.device import synchronize

    _call(fn, case, device, dtype)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        _call(fn, case, device, dtype)
    synchronize(device)
    return (time.perf_counter() - t0) / reps


def check_op(op: str, device: torch.device, dtype_name: str, timing: bool = True,
             slow_start: bool = False) -> list[OpResult]:
    """All applicable implementations of one op on all its cases. Never raises: errors become rows."""
    dtype = DTYPES.get(dtype_name, getattr(torch, dtype_name, None))
    rows: list[OpResult] = []
    try:
        impls = REGISTRY.impls(op)
        if op not in SPECS:
            return [OpResult(op, "*", "-", str(device), dtype_name, error="no conformance cases in kernels/specs.py")]
        cases = SPECS[op]()
        ref = impls[REFERENCE].fn
        expected = [_call(ref, c, torch.device("cpu"), torch.float64) for c in cases]
    except Exception as e:
        return [OpResult(op, REFERENCE, "-", str(device), dtype_name, error=_err(e))]
    tol = OP_TOL[dtype_name]
    for impl in impls.values():
        ok, _ = impl.applies(device.type, dtype)
        if not ok or (impl.slow_start and not slow_start):
            continue
        ref_time = None
        for ci, (case, (want_out, want_grad)) in enumerate(zip(cases, expected, strict=True)):
            row = OpResult(op, impl.name, case.name, str(device), dtype_name, tol=tol)
            try:
                got_out, got_grad = _call(impl.fn, case, device, dtype)
                row.max_abs, row.max_rel = _compare(got_out + got_grad, want_out + want_grad)
                row.passed = row.max_rel <= tol
                if not row.passed and row.max_rel != row.max_rel:
                    row.error = "NaN in output or gradient"
                if timing and ci == 0:
                    if ref_time is None:
                        ref_time = _time(ref, case, device, dtype)
                    row.speed_vs_ref = ref_time / max(_time(impl.fn, case, device, dtype), 1e-12)
            except Exception as e:
                row.passed, row.error = False, _err(e)
            rows.append(row)
    return rows


def _err(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:160]


def check_ops(device: torch.device, dtype_name: str, ops: list[str] | None = None, isolate: bool = False,
              timing: bool = True, slow_start: bool = False) -> list[OpResult]:
    rows: list[OpResult] = []
    for op in ops or REGISTRY.ops():
        if isolate:
            rows += _isolated(op, device, dtype_name, timing, slow_start)
        else:
            rows += check_op(op, device, dtype_name, timing, slow_start)
    return rows


def _isolated(op: str, device: torch.device, dtype_name: str, timing: bool, slow_start: bool) -> list[OpResult]:
    """One op in a fresh interpreter: a segfault or abort in a kernel becomes a failed row, not our death."""
    cmd = [sys.executable, "-m", "diji.compute.conformance", op, str(device), dtype_name, "1" if timing else "0",
           "1" if slow_start else "0"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return [OpResult(op, "*", "-", str(device), dtype_name, error="timed out after 600 s")]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:160]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        return [OpResult(op, "*", "-", str(device), dtype_name, error=f"process died ({how}) {tail}".strip())]
    return [OpResult(**r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


# ---- golden trajectory ---------------------------------------------------------------------------------


@dataclass
class TrajectoryResult:
    device: str
    dtype: str
    steps: int
    losses: list[float]
    ref_losses: list[float]
    loss_err: float
    grad_norm_err: float
    weight_err: float
    tol: dict
    passed: bool
    error: str = ""


def _train(model: torch.nn.Module, batches, device, dtype_name: str, lr: float) -> tuple[list, list]:
    from diji.kernels import ops

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, foreach=False)
    losses, norms = [], []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype_name):
            loss = ops.cross_entropy(model(x), y)
        loss.backward()
        norms.append(float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters()))))
        losses.append(loss.item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms


def golden_trajectory(make_model: Callable[[], torch.nn.Module], device: torch.device, dtype_name: str,
                      steps: int = 8, lr: float = 3e-3, batch: int = 4, seq: int = 32) -> TrajectoryResult:
    """Train a fresh model (`make_model()`: float32, seeded init) on device vs float64 CPU reference."""
    tol = TRAJ_TOL.get(dtype_name, TRAJ_TOL["float32"])
    try:
        ref_model = make_model().double()
        vocab = ref_model.config.vocab_size
        gen = torch.Generator().manual_seed(1234)
        batches = []
        for _ in range(steps):
            t = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
            batches.append((t[:, :-1], t[:, 1:]))
        with REGISTRY.forced({"all": REFERENCE}):
            ref_losses, ref_norms = _train(ref_model, batches, torch.device("cpu"), "float32", lr)
        model = make_model().to(device)
        losses, norms = _train(model, batches, device, dtype_name, lr)
        loss_err = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
        norm_err = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(norms, ref_norms, strict=True))
        ref_state = ref_model.state_dict()
        weight_err = max(float((v.detach().to("cpu", torch.float64) - ref_state[k]).abs().max())
                         for k, v in model.state_dict().items())
    except Exception as e:
        return TrajectoryResult(str(device), dtype_name, steps, [], [], float("nan"), float("nan"), float("nan"),
                                tol, False, _err(e))
    passed = loss_err <= tol["loss"] and norm_err <= tol["grad_norm"] and weight_err <= tol["weights"]
    return TrajectoryResult(str(device), dtype_name, steps, losses, ref_losses, loss_err, norm_err, weight_err,
                            tol, passed)


# ---- report ----------------------------------------------------------------------------------------------


def format_table(rows: list[OpResult], traj: TrajectoryResult | None) -> str:
    head = f"{'op':<22}{'impl':<11}{'case':<38}{'max abs':>10}{'max rel':>10}{'tol':>8}{'speed':>8}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = f"{r.speed_vs_ref:.2f}x" if r.speed_vs_ref == r.speed_vs_ref else ""
        res = "pass" if r.passed else f"FAIL {r.error}".strip()
        lines.append(f"{r.op:<22}{r.impl:<11}{r.case[:37]:<38}{r.max_abs:>10.2e}{r.max_rel:>10.2e}"
                     f"{r.tol:>8.0e}{speed:>8}  {res}")
    if traj is not None:
        lines.append("")
        if traj.error:
            lines.append(f"golden trajectory ({traj.steps} steps, {traj.dtype}): FAIL {traj.error}")
        else:
            lines.append(
                f"golden trajectory ({traj.steps} AdamW steps, {traj.dtype} on {traj.device} vs float64 cpu): "
                f"loss rel {traj.loss_err:.1e} (tol {traj.tol['loss']:.0e}), grad-norm rel {traj.grad_norm_err:.1e} "
                f"(tol {traj.tol['grad_norm']:.0e}), weights abs {traj.weight_err:.1e} "
                f"(tol {traj.tol['weights']:.0e}): {'pass' if traj.passed else 'FAIL'}")
    return "\n".join(lines)


def to_json(rows: list[OpResult], traj: TrajectoryResult | None) -> dict:
    def clean(d: dict) -> dict:
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}

    return {
        "ops": [clean(asdict(r)) for r in rows],
        "trajectory": clean(asdict(traj)) if traj is not None else None,
        "passed": all(r.passed for r in rows) and (traj is None or traj.passed),
    }


if __name__ == "__main__":  # the child side of check_ops(isolate=True)
    _op, _dev, _dtype, _timing, _slow = sys.argv[1:6]
    _rows = check_op(_op, torch.device(_dev), _dtype, timing=_timing == "1", slow_start=_slow == "1")
    print(json.dumps([asdict(r) for r in _rows]))
