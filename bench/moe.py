"""MoE vs dense at equal *active* parameters: training tokens/s and validation loss after a fixed token
budget on the quickstart corpus.

Dense: the quickstart recipe (PRETRAIN_OVERRIDES). MoE: the same model with every MLP replaced by a
DeepSeekMoE layer — E routed experts, top-k, shared experts — whose expert width defaults to
intermediate_size // (k + shared), so a token touches as many FFN parameters as in the dense model.

Throughput: forward + backward + AdamW steps of the two models alternating in rounds (ABAB…) on the same
batches, so machine noise hits both alike. Loss: each model trained for the same token budget by the
same `diji train pretrain` loop, validation loss at the end. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def corpus(work: Path) -> Path:
    """The quickstart's embedded corpus (this machine's Python standard library), prepared once."""
    from diji.data.corpus import build_default_corpus
    from diji.data.prepare import DataConfig, prepare

    data = work / "data"
    if not (data / "manifest.json").is_file():
        files = build_default_corpus(work / "corpus", max_bytes=3 * 2**20)
        prepare(files, data, DataConfig(vocab_size=4096), show_progress=False)
    return data


def config(name: str, extra: list[str], data: Path, work: Path, args):
    from diji.config import load_config
    from diji.quickstart import PRETRAIN_OVERRIDES
    from diji.train.config import PretrainConfig

    overrides = [*PRETRAIN_OVERRIDES, f"data.path={json.dumps(str(data))}", f"run.out_dir={json.dumps(str(work))}",
                 f'run.name="{name}"', "run.progress=false", f"train.max_steps={args.steps}",
                 f"train.batch_size={args.batch}", f"data.seq_len={args.seq}", f"train.eval_every={args.steps}",
                 f"train.save_every={args.steps}", "train.log_every=10", *extra]
    return load_config(PretrainConfig, None, overrides)


def throughput(cfgs: dict, data: Path, args) -> dict[str, float]:
    """Median training tokens/s per model, timed in alternating rounds."""
    from diji.kernels import ops
    from diji.model.transformer import Transformer
    from diji.train.loader import fixed_windows

    batches = list(fixed_windows(data, "train", args.batch, args.seq, args.timed_steps))
    runs = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = Transformer(cfg.model).train()
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))

    def step(model, opt, x, y):
        ops.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for model, opt in runs.values():  # warm-up
        step(model, opt, *batches[0])
    times: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(args.rounds):
        for name, (model, opt) in runs.items():
            t0 = time.perf_counter()
            for x, y in batches:
                step(model, opt, x, y)
            times[name].append(time.perf_counter() - t0)
    tokens = sum(y.numel() for _, y in batches)
    return {n: round(tokens / statistics.median(t), 1) for n, t in times.items()}


def run(cfg, data: Path, work: Path, args) -> dict:
    from diji.train.checkpoint import load_checkpoint
    from diji.train.loader import fixed_windows
    from diji.train.pretrain import pretrain

    result = pretrain(cfg)
    out = {"params": cfg.model.num_params(), "active_params": cfg.model.num_params(active=True),
           "val_loss": round(result["val_loss"], 4)}
    model = load_checkpoint(result["checkpoint"]).model.train()
    x, _ = next(iter(fixed_windows(data, "val", args.batch, args.seq, 1)))
    with torch.no_grad():
        model(x)  # a training-mode forward records the expert load (the routing bias change is discarded)
    out.update({k: round(v, 3) for k, v in model.moe_stats().items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="a prepared data directory (default: build the quickstart corpus in --work)")
    ap.add_argument("--work", default="/tmp/diji-bench-moe")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--shared", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--timed-steps", type=int, default=3, help="optimizer steps per model per timing round")
    args = ap.parse_args()
    work = Path(args.work)
    data = Path(args.data) if args.data else corpus(work)
    moe = [f"model.n_routed_experts={args.experts}", f"model.num_experts_per_tok={args.topk}",
           f"model.n_shared_experts={args.shared}"]
    cfgs = {"dense": config("dense", [], data, work, args), "moe": config("moe", moe, data, work, args)}
    tok_s = throughput(cfgs, data, args)
    res = {name: {**run(cfg, data, work, args), "tok_s": tok_s[name]} for name, cfg in cfgs.items()}
    print(json.dumps({"tokens": args.steps * args.batch * args.seq, **res,
                      "tok_s_ratio": round(res["moe"]["tok_s"] / res["dense"]["tok_s"], 3),
                      "val_loss_delta": round(res["moe"]["val_loss"] - res["dense"]["val_loss"], 4)}))


if __name__ == "__main__":
    sys.exit(main())
