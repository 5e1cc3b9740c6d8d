"""Weight-only int8 (diji quantize) vs the float32 checkpoint it came from: bytes, perplexity, greedy agreement.

    python bench/quantize.py [--ckpt CKPT --data DATA_DIR] [--steps N]

Without --ckpt, builds the quickstart's data (embedded corpus, 4096-token BPE) and pretrains the
quickstart-size model for --steps steps in a temporary directory (a trained model: random weights would
make the perplexity comparison meaningless). Perplexity is over the data directory's validation shard in
windows of --seq tokens, both models in float32 activations. Prints one JSON line:
{"weight_bytes_ratio", "ppl_fp32", "ppl_int8", "ppl_rel_change", "greedy_token_agreement",
 "greedy_exact_rows", "int8_impl"}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from diji.deploy_commands import quantize_checkpoint
from diji.kernels.registry import REGISTRY
from diji.model.generate import SamplingParams, generate
from diji.model.quantize import weight_bytes
from diji.train.checkpoint import load_checkpoint, load_quantized


def build_trained(root: Path, steps: int) -> tuple[Path, Path]:
    from diji.config import load_config
    from diji.data.corpus import build_default_corpus
    from diji.data.prepare import DataConfig, prepare
    from diji.quickstart import PRETRAIN_OVERRIDES
    from diji.train.config import PretrainConfig
    from diji.train.pretrain import pretrain

    files = build_default_corpus(root / "corpus", max_bytes=2 * 2**20)
    data = root / "data"
    prepare(files, data, DataConfig(vocab_size=4096))
    overrides = [*PRETRAIN_OVERRIDES, f"data.path={json.dumps(str(data))}", f"run.out_dir={json.dumps(str(root))}",
                 'run.name="q"', "run.progress=false", f"train.max_steps={steps}", "train.eval_every=1000",
                 "train.save_every=1000", "data.seq_len=128", "train.batch_size=8"]
    result = pretrain(load_config(PretrainConfig, None, overrides))
    return Path(result["checkpoint"]), data


@torch.inference_mode()
def perplexity(model, data: Path, seq: int, max_windows: int) -> float:
    val = sorted(data.glob("val-*.bin"))
    if not val:
        sys.exit(f"no val-*.bin in {data}")
    dtype = json.loads((data / "manifest.json").read_text()).get("dtype", "uint16")
    ids = np.concatenate([np.fromfile(p, dtype=np.dtype(dtype).newbyteorder("<")) for p in val]).astype(np.int64)
    n = min(max_windows, (len(ids) - 1) // seq)
    total, count = 0.0, 0
    for i in range(n):
        w = torch.from_numpy(ids[i * seq : i * seq + seq + 1])
        logits = model(w[None, :-1])[0].float()
        total += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
        count += seq
    return math.exp(total / count)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt")
    ap.add_argument("--data")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.ckpt:
            ckpt, data = Path(args.ckpt), Path(args.data or "")
        else:
            ckpt, data = build_trained(root, args.steps)
        fp = load_checkpoint(ckpt).model.float().eval()
        quantize_checkpoint(ckpt, root / "int8")
        q = load_quantized(root / "int8").model
        ppl_fp, ppl_q = perplexity(fp, data, args.seq, args.windows), perplexity(q, data, args.seq, args.windows)
        val = np.fromfile(sorted(data.glob("val-*.bin"))[0], dtype="<u2").astype(np.int64)
        prompts = [val[i * 97 : i * 97 + 16].tolist() for i in range(args.prompts)]
        params = SamplingParams(max_new_tokens=args.new)
        a = [g.tokens for g in generate(fp, prompts, params)]
        b = [g.tokens for g in generate(q, prompts, params)]
        agree = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=False))
        result = {
            "weight_bytes_ratio": round(weight_bytes(q) / weight_bytes(fp), 4),
            "ppl_fp32": round(ppl_fp, 3), "ppl_int8": round(ppl_q, 3),
            "ppl_rel_change": round(ppl_q / ppl_fp - 1, 4),
            "greedy_token_agreement": round(agree / max(1, sum(len(r) for r in a)), 4),
            "greedy_exact_rows": sum(ra == rb for ra, rb in zip(a, b, strict=True)), "rows": len(a),
            "int8_impl": REGISTRY.chosen().get("int8_linear on cpu/float32", {}).get("impl", "?"),
            "trained_here_steps": None if args.ckpt else args.steps,
            "weight_bytes_fp32": weight_bytes(fp), "weight_bytes_int8": weight_bytes(q),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
