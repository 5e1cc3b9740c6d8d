"""Each registered fast path vs its reference at the shapes of the bench model (batch 8 × 256 tokens,
hidden 384, 6 heads of 64, intermediate 1024, vocab 8192): forward+backward time (median of interleaved
repetitions) and the activation memory each keeps for backward (bytes saved by autograd, measured exactly
with saved-tensor hooks — on the CPU that is what bounds batch size). Prints one JSON line:
{"float32": {"op:impl": {"speedup", "ref_ms", "fast_ms", "saved_mb_ref", "saved_mb_fast"}}, "bfloat16": {...}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from diji.kernels import reference
from diji.kernels.registry import REGISTRY


def inputs(op: str, dtype: torch.dtype) -> tuple[list, tuple[int, ...]]:
    g = torch.Generator().manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype)

    if op == "rms_norm":
        return [r(8, 256, 384), torch.ones(384, dtype=dtype), 1e-5], (0, 1)
    if op == "apply_rope":
        cos, sin = reference.rope_cos_sin(torch.arange(256), 64, 1e4, dtype)
        return [r(8, 6, 256, 64), cos, sin], (0,)
    if op == "swiglu":
        return [r(8, 256, 1024), r(8, 256, 1024)], (0, 1)
    if op == "cross_entropy":
        return [r(2048, 8192, scale=2), torch.randint(0, 8192, (2048,), generator=g)], (0,)
    if op == "linear_cross_entropy":
        return [r(2048, 384), r(8192, 384, scale=0.05), torch.randint(0, 8192, (2048,), generator=g)], (0, 1)
    if op == "attention":
        return [r(8, 6, 256, 64), r(8, 2, 256, 64), r(8, 2, 256, 64)], (0, 1, 2)
    raise KeyError(op)


def run(fn, args, grad) -> int:
    """One forward+backward; returns the bytes autograd saved for backward."""
    args = [a.detach().requires_grad_(True) if i in grad else a for i, a in enumerate(args)]
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()  # count each buffer once, inputs included
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    (out.float().sum() if out.dim() else out).backward()
    return sum(saved.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    result: dict = {}
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        result[dname] = {}
        for op in REGISTRY.ops():
            impls = REGISTRY.impls(op)
            try:
                xs, grad = inputs(op, dtype)
            except KeyError:
                continue
            for name, impl in impls.items():
                if name == "reference" or not impl.applies("cpu", dtype)[0]:
                    continue
                ref = impls["reference"].fn
                saved = {"ref": run(ref, xs, grad), "fast": run(impl.fn, xs, grad)}  # also warms up
                times = {"ref": [], "fast": []}
                for _ in range(args.reps):
                    for key, fn in (("ref", ref), ("fast", impl.fn)):
                        t0 = time.perf_counter()
                        run(fn, xs, grad)
                        times[key].append(time.perf_counter() - t0)
                ref_ms, fast_ms = (statistics.median(times[k]) * 1e3 for k in ("ref", "fast"))
                result[dname][f"{op}:{name}"] = {
                    "speedup": round(ref_ms / fast_ms, 2), "ref_ms": round(ref_ms, 2), "fast_ms": round(fast_ms, 2),
                    "saved_mb_ref": round(saved["ref"] / 2**20, 1), "saved_mb_fast": round(saved["fast"] / 2**20, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
