"""Training tokens/s: diji (fast kernels, fused AdamW) vs HF LlamaForCausalLM (sdpa) + torch AdamW, same
config, same data, alternating in one process (ABAB…) so machine noise hits both alike.

One JSON line per dtype: float32, and bfloat16 autocast (weights and optimizer in float32 for both):
{"dtype", "diji_tok_s", "peer_tok_s", "ratio", "mfu"}, the bf16 line adding "speedup_vs_fp32" and
"loss_gap": the largest relative gap between diji's bf16 and fp32 loss curves (smoothed over 10 steps)
over --loss-steps steps of real training on the shared reference text. MFU is against the fastest GEMM
of that dtype measured in this same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import BENCH_CFG, batches, corpus_tokens, hf_twin, median  # noqa: E402

from diji.compute.device import autocast  # noqa: E402
from diji.compute.perf import matmul_peak_flops  # noqa: E402
from diji.kernels import ops  # noqa: E402
from diji.model.transformer import Transformer  # noqa: E402
from diji.train.config import OptimConfig  # noqa: E402
from diji.train.optim import build_optimizer  # noqa: E402


def diji_step(model, opt, inp, tgt, dtype):
    with autocast(torch.device("cpu"), dtype):
        loss = ops.cross_entropy(model(inp), tgt)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def peer_step(model, opt, inp, tgt, dtype):
    with autocast(torch.device("cpu"), dtype):
        logits = model(input_ids=inp).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def throughput(dtype: str, args, data) -> tuple[float, float]:
    torch.manual_seed(0)
    diji = Transformer(BENCH_CFG)
    peer = hf_twin(diji)
    runs = {"diji": (diji_step, diji, build_optimizer(diji, OptimConfig(lr=1e-4, weight_decay=0.0))),
            "peer": (peer_step, peer, torch.optim.AdamW(peer.parameters(), lr=1e-4, weight_decay=0.0))}
    inp, tgt = next(data)
    times = {k: [] for k in runs}
    for fn, model, opt in runs.values():  # warm-up
        fn(model, opt, inp, tgt, dtype)
    for _ in range(args.rounds):
        for name, (fn, model, opt) in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn(model, opt, inp, tgt, dtype)
            times[name].append((time.perf_counter() - t0) / args.steps)
    tokens = args.batch * args.seq
    return tokens / median(times["diji"]), tokens / median(times["peer"])


def loss_curve(dtype: str, args, tokens) -> list[float]:
    torch.manual_seed(0)
    model = Transformer(BENCH_CFG)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.0))
    data = batches(tokens, args.batch, args.seq, seed=1)
    return [diji_step(model, opt, *next(data), dtype) for _ in range(args.loss_steps)]


def smooth(xs: list[float], k: int = 10) -> list[float]:
    return [sum(xs[i : i + k]) / k for i in range(0, len(xs) - k + 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--loss-steps", type=int, default=200, help="steps of the fp32-vs-bf16 loss comparison (0 = skip)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    tokens = corpus_tokens()
    rows = {}
    for dtype in args.dtypes.split(","):
        d, p = throughput(dtype, args, batches(tokens, args.batch, args.seq, seed=0))
        peak = matmul_peak_flops("cpu", getattr(torch, dtype), seconds=1.0)
        row = {"dtype": dtype, "diji_tok_s": round(d, 1), "peer_tok_s": round(p, 1), "ratio": round(d / p, 3),
               "mfu": round(d * BENCH_CFG.flops_per_token(args.seq) / peak, 3), "peak_gflops": round(peak / 1e9, 1)}
        if dtype != "float32" and "float32" in rows:
            row["speedup_vs_fp32"] = round(d / rows["float32"]["diji_tok_s"], 3)
            if args.loss_steps:
                ref, low = smooth(loss_curve("float32", args, tokens)), smooth(loss_curve(dtype, args, tokens))
                row["loss_gap"] = round(max(abs(a - b) / b for a, b in zip(low, ref, strict=True)), 4)
                row["final_loss"] = {"float32": round(ref[-1], 4), dtype: round(low[-1], 4)}
        rows[dtype] = row
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
