"""Fast paths written in plain PyTorch: fewer passes over memory and fewer saved activations.

Each function has exactly the signature of its reference in `reference.py` and is registered in
`registry.py`; tests and `diji conformance` check that the two agree. These are device-neutral torch
code (they help most on the CPU, where every elementwise pass is a trip through RAM); accelerator
kernels (Triton, vendor libraries) register beside them as optional extras.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---- RMSNorm ---------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """torch's fused RMSNorm (one kernel forward and backward instead of five elementwise passes).

    Statistics are in float32 as in the reference; low-precision inputs are normalised in float32 and
    the weight applied before rounding (the reference rounds first), a difference within bf16's epsilon.
    """
    if x.dtype == weight.dtype:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(torch.promote_types(x.dtype, weight.dtype))


# ---- RoPE ------------------------------------------------------------------------------------------


class _Rope(torch.autograd.Function):
    """Rotary embedding on the two halves directly: y1 = x1·c − x2·s, y2 = x2·c + x1·s.

    The reference builds rotate_half(x) with a negation and a concatenation (two full-size temporaries)
    and saves x for backward. The rotation is orthogonal, so the gradient is the inverse rotation of the
    output gradient and only the (half-width) tables are saved — no activation is kept alive.
    """

    @staticmethod
    def forward(ctx, x, cos, sin):
        h = x.shape[-1] // 2
        c, s = cos[..., :h], sin[..., :h]
        x1, x2 = x[..., :h], x[..., h:]
        out = torch.empty_like(x)
        torch.addcmul(x1 * c, x2, s, value=-1, out=out[..., :h])
        torch.addcmul(x2 * c, x1, s, out=out[..., h:])
        ctx.save_for_backward(c, s)
        return out

    @staticmethod
    def backward(ctx, g):
        c, s = ctx.saved_tensors
        h = g.shape[-1] // 2
        g1, g2 = g[..., :h], g[..., h:]
        dx = torch.empty_like(g)
        torch.addcmul(g1 * c, g2, s, out=dx[..., :h])
        torch.addcmul(g2 * c, g1, s, value=-1, out=dx[..., h:])
        return dx, None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Same contract as reference.apply_rope; x (B, H, T, D), cos/sin (T, D) or (B, T, D)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    if cos.requires_grad or sin.requires_grad:  # tables are constants in the model; stay exact otherwise
        from diji.kernels import reference

        return reference.apply_rope(x, cos, sin)
    # Compute in x's dtype. Under bf16 autocast q/k arrive in bf16 and the float32 tables would promote
    # them to float32 (the reference does), only for attention to cast them straight back: two full
    # copies of q and k per layer for no precision gained.
    return _Rope.apply(x, cos.to(x.dtype), sin.to(x.dtype))


# ---- SwiGLU ----------------------------------------------------------------------------------------


class _SwiGLU(torch.autograd.Function):
    """silu(gate)·up, saving only gate and up (the reference also keeps silu(gate) alive).

    Backward recomputes silu(gate) — cheaper on a memory-bound CPU than storing another (B, T, F)
    activation — and uses aten's fused silu_backward for d/dg silu(g) = σ(g)·(1 + g·(1 − σ(g)))
    (Elfwing et al. 2018).
    """

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, g):
        gate, up = ctx.saved_tensors
        d_gate = torch.ops.aten.silu_backward(g * up, gate)
        d_up = F.silu(gate).mul_(g)
        return d_gate, d_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.dtype != up.dtype:
        dtype = torch.promote_types(gate.dtype, up.dtype)
        gate, up = gate.to(dtype), up.to(dtype)
    return _SwiGLU.apply(gate, up)


# ---- cross-entropy ---------------------------------------------------------------------------------

CHUNK_ROWS = 1024
"""Rows of logits processed at once: big enough for efficient kernels, small enough that the float32
working set (rows × vocab × 4 bytes) stays in cache-sized pieces instead of one vocabulary-sized copy."""


class _ChunkedCE(torch.autograd.Function):
    """Mean cross-entropy over (N, V) logits, in float32, one chunk of rows at a time.

    The reference upcasts all logits to float32 and keeps the softmax for backward: two extra (N, V)
    float32 tensors. Here only the per-row log-sum-exp (N floats) is saved; backward rebuilds softmax one
    chunk at a time and writes the gradient directly in the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        valid = targets != ignore_index
        count = valid.sum()
        safe_t = targets.clamp_min(0)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for i in range(0, n, CHUNK_ROWS):
            z = logits[i : i + CHUNK_ROWS].float()
            lse[i : i + CHUNK_ROWS] = torch.logsumexp(z, dim=-1)
            picked = z.gather(1, safe_t[i : i + CHUNK_ROWS, None]).squeeze(1)
            total += ((lse[i : i + CHUNK_ROWS] - picked) * valid[i : i + CHUNK_ROWS]).sum()
        ctx.save_for_backward(logits, safe_t, valid, lse, count)
        return total / count  # 0/0 = NaN when every target is ignored, like F.cross_entropy

    @staticmethod
    def backward(ctx, g):
        logits, safe_t, valid, lse, count = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = (g / count).float()
        for i in range(0, logits.shape[0], CHUNK_ROWS):
            sl = slice(i, i + CHUNK_ROWS)
            p = (logits[sl].float() - lse[sl, None]).exp_()
            p.scatter_add_(1, safe_t[sl, None], torch.full_like(p[:, :1], -1.0))
            p.mul_((valid[sl].float() * scale)[:, None])
            grad[sl] = p
        return grad, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    logits = logits.reshape(-1, logits.shape[-1])
    return _ChunkedCE.apply(logits, targets.reshape(-1), ignore_index)


class _LinearCE(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T` without ever holding the (N, V) logits or their gradient.

    For each chunk of rows: logits = h·Wᵀ (float32), log-sum-exp, loss; backward recomputes the chunk's
    logits, turns them into softmax − onehot and accumulates dh = G·W and dW += Gᵀ·h. Peak memory is
    one chunk of logits instead of the full N×V (the trick of Wijmans et al. 2024, "Cut Your Losses",
    done chunk-wise in plain PyTorch). Costs one extra matmul (the recompute) for the memory saved.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index):
        n = hidden.shape[0]
        valid = targets != ignore_index
        count = valid.sum()
        safe_t = targets.clamp_min(0)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, n, CHUNK_ROWS):
            sl = slice(i, i + CHUNK_ROWS)
            z = (hidden[sl] @ weight.t()).float()
            lse[sl] = torch.logsumexp(z, dim=-1)
            picked = z.gather(1, safe_t[sl, None]).squeeze(1)
            total += ((lse[sl] - picked) * valid[sl]).sum()
        ctx.save_for_backward(hidden, weight, safe_t, valid, lse, count)
        return total / count

    @staticmethod
    def backward(ctx, g):
        hidden, weight, safe_t, valid, lse, count = ctx.saved_tensors
        dh = torch.empty_like(hidden)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        scale = (g / count).float()
        for i in range(0, hidden.shape[0], CHUNK_ROWS):
            sl = slice(i, i + CHUNK_ROWS)
            z = (hidden[sl] @ weight.t()).float()
            p = (z - lse[sl, None]).exp_()
            p.scatter_add_(1, safe_t[sl, None], torch.full_like(p[:, :1], -1.0))
            p.mul_((valid[sl].float() * scale)[:, None])
            p = p.to(hidden.dtype)
            dh[sl] = p @ weight
            dw.addmm_(p.t().float(), hidden[sl].float())
        return dh, dw.to(weight.dtype), None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Same contract as reference.linear_cross_entropy: hidden (..., C), weight (V, C), targets (...)."""
    h = hidden.reshape(-1, hidden.shape[-1])
    if torch.is_autocast_enabled(h.device.type):
        # Under autocast the reference's lm_head matmul runs in the autocast dtype; do the same here
        # explicitly, since a custom Function's body runs with autocast's casting rules but our own
        # float32 accumulations must not be downcast.
        dtype = torch.get_autocast_dtype(h.device.type)
        with torch.autocast(h.device.type, enabled=False):
            return _LinearCE.apply(h.to(dtype), weight.to(dtype), targets.reshape(-1), ignore_index)
    return _LinearCE.apply(h, weight, targets.reshape(-1), ignore_index)


# ---- torch.compile regions (opt-in) --------------------------------------------------------------------


class Compiled:
    """A reference op compiled with torch.compile on first call (never at import or registration).

    Inductor fuses the elementwise chains into one loop, but costs 30-70 s of compilation per shape on a
    CPU, so these are opt-in (DIJI_KERNELS=swiglu:compiled); a failure to compile is a recorded fallback.
    """

    def __init__(self, fn) -> None:
        self.fn, self._compiled = fn, None
        self.__name__ = f"compiled_{fn.__name__}"

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=False)
        return self._compiled(*args, **kwargs)
