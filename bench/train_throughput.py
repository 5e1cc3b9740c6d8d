"""Training tokens/s: diji's model vs HF LlamaForCausalLM (sdpa), same config, fp32, AdamW.

The two alternate in one process (ABAB…) so machine noise hits both alike; we report the ratio of
medians and MFU against the fastest fp32 GEMM measured in this same run.
Prints one JSON line: {"diji_tok_s", "peer_tok_s", "ratio", "mfu", "peak_gflops"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import BENCH_CFG, hf_twin  # noqa: E402

from diji.compute.perf import matmul_peak_flops  # noqa: E402
from diji.kernels import reference as ops  # noqa: E402
from diji.model.transformer import Transformer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    diji = Transformer(BENCH_CFG)
    peer = hf_twin(diji)
    x = torch.randint(0, BENCH_CFG.vocab_size, (args.batch, args.seq + 1))
    inp, tgt = x[:, :-1], x[:, 1:]

    def diji_step(opt):
        loss = ops.cross_entropy(diji(inp), tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def peer_step(opt):
        logits = peer(input_ids=inp).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    runs = {"diji": (diji_step, torch.optim.AdamW(diji.parameters(), lr=1e-4)),
            "peer": (peer_step, torch.optim.AdamW(peer.parameters(), lr=1e-4))}
    times = {k: [] for k in runs}
    for name, (fn, opt) in runs.items():  # warm-up
        fn(opt)
    for _ in range(args.rounds):
        for name, (fn, opt) in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn(opt)
            times[name].append((time.perf_counter() - t0) / args.steps)
    tokens = args.batch * args.seq
    diji_tok_s = tokens / statistics.median(times["diji"])
    peer_tok_s = tokens / statistics.median(times["peer"])
    peak = matmul_peak_flops("cpu", torch.float32, seconds=1.0)
    mfu = diji_tok_s * BENCH_CFG.flops_per_token(args.seq) / peak
    print(json.dumps({"diji_tok_s": round(diji_tok_s, 1), "peer_tok_s": round(peer_tok_s, 1),
                      "ratio": round(diji_tok_s / peer_tok_s, 3), "mfu": round(mfu, 3),
                      "peak_gflops": round(peak / 1e9, 1)}))


if __name__ == "__main__":
    main()
