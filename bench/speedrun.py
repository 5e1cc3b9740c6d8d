"""Speedrun: wall-clock training time to reach a fixed validation loss on a fixed corpus.

diji's best recipe (bf16 autocast where the device supports it, the registry's fast kernels, fused AdamW or
Muon for the 2-D matrices) vs HF LlamaForCausalLM + torch AdamW in float32 — same model size (the bench
config), same data order (byte-level windows of the shared reference text), same schedule. The two train
in alternating slices of --slice steps so machine noise hits both alike; evaluation time is not counted.
Prints {"target_loss", "diji_s", "peer_s", "ratio", "diji_recipe", "diji_steps", "peer_steps"}
(ratio = peer_s / diji_s; a contender that never reaches the target within --max-steps reports null).
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
from _common import BENCH_CFG, batches, corpus_tokens, hf_twin  # noqa: E402

from diji.compute.device import autocast  # noqa: E402
from diji.kernels import ops  # noqa: E402
from diji.model.transformer import Transformer  # noqa: E402
from diji.train.config import OptimConfig  # noqa: E402
from diji.train.optim import build_optimizer, lr_at  # noqa: E402


class Contender:
    def __init__(self, name, model, opt, dtype, forward, data, cfg: OptimConfig, max_steps: int) -> None:
        self.name, self.model, self.opt, self.dtype, self.forward = name, model, opt, dtype, forward
        self.data, self.cfg, self.max_steps = data, cfg, max_steps
        self.step, self.seconds, self.done_at = 0, 0.0, None

    def train(self, n: int) -> None:
        t0 = time.perf_counter()
        for _ in range(n):
            lr = lr_at(self.step, self.max_steps, self.cfg)
            for g in self.opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            x, y = next(self.data)
            with autocast(torch.device("cpu"), self.dtype):
                loss = self.forward(self.model, x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
        self.seconds += time.perf_counter() - t0

    @torch.no_grad()
    def val_loss(self, val) -> float:
        self.model.eval()
        with autocast(torch.device("cpu"), self.dtype):
            loss = sum(float(self.forward(self.model, x, y)) for x, y in val) / len(val)
        self.model.train()
        return loss


def diji_forward(model, x, y):
    return ops.cross_entropy(model(x), y)


def peer_forward(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=2.3, help="validation loss (nats per byte) to reach")
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--slice", type=int, default=10, help="steps per turn, and between evaluations")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--optim", default="muon", choices=("adamw", "muon"), help="diji's optimizer")
    ap.add_argument("--dtype", default="bfloat16", help="diji's autocast dtype")
    args = ap.parse_args()
    tokens = corpus_tokens()
    split = int(len(tokens) * 0.9)
    train, held = tokens[:split], tokens[split:]
    val = [next(batches(held, args.batch, args.seq, seed=99 + i)) for i in range(4)]
    cfg = OptimConfig(name=args.optim, lr=args.lr, warmup_steps=20, schedule="constant", weight_decay=0.0)
    peer_cfg = OptimConfig(lr=args.lr, warmup_steps=20, schedule="constant", weight_decay=0.0)
    torch.manual_seed(0)
    diji = Transformer(BENCH_CFG)
    peer = hf_twin(diji)
    contenders = [
        Contender("diji", diji, build_optimizer(diji, cfg), args.dtype, diji_forward,
                  batches(train, args.batch, args.seq, seed=1), cfg, args.max_steps),
        Contender("peer", peer, torch.optim.AdamW(peer.parameters(), lr=args.lr, weight_decay=0.0),
                  "float32", peer_forward, batches(train, args.batch, args.seq, seed=1), peer_cfg, args.max_steps),
    ]
    while any(c.done_at is None and c.step < args.max_steps for c in contenders):
        for c in contenders:
            if c.done_at is not None or c.step >= args.max_steps:
                continue
            c.train(args.slice)
            loss = c.val_loss(val)
            print(f"{c.name} step {c.step} val {loss:.3f} {c.seconds:.1f}s", file=sys.stderr, flush=True)
            if loss <= args.target:
                c.done_at = c.seconds
    d, p = (c.done_at for c in contenders)
    print(json.dumps({"target_loss": args.target, "diji_s": None if d is None else round(d, 1),
                      "peer_s": None if p is None else round(p, 1),
                      "ratio": round(p / d, 3) if d and p else None,
                      "diji_recipe": f"{args.dtype} autocast, registry kernels, {args.optim}",
                      "diji_steps": contenders[0].step, "peer_steps": contenders[1].step}))


if __name__ == "__main__":
    main()
