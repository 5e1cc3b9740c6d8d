"""Peak RSS of loading a checkpoint and generating from it: a float32 vs a bfloat16 copy of the same model.

Each side runs in its own subprocess (peak RSS is per process and never goes down), loading with
`load_checkpoint(dtype=...)` as `diji serve --dtype` does and generating --new tokens at batch 1.
Reports the whole-process peak and the peak above the process's RSS after `import torch, diji` (the
runtime's own resident memory, the same for both) and `rss_ratio_floor`, the ratio if each process held
exactly the runtime plus one copy of its weights (the runtime's ~220 MB keeps a 127 M-parameter model's
whole-process ratio above ~0.66 whatever serving does). Peaks are VmHWM, not ru_maxrss, which on Linux
survives fork + exec and so reported the parent's size for a child that stayed smaller. Also says
whether this CPU computes bf16 fast (compute.device.fast_low_precision): without AVX512-BF16/AMX, bf16
saves memory but decodes slower, so serving defaults to float32 there. Prints one JSON line {"rss_ratio", "rss_above_runtime_ratio", ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = r"""
import json, sys, time
import torch
from diji.model.generate import SamplingParams, generate
from diji.train.checkpoint import load_checkpoint
def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
base = status_kb("VmRSS")  # the current resident set: the runtime's own memory
ckpt, dtype, new = sys.argv[1], getattr(torch, sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
model = load_checkpoint(ckpt, dtype=dtype).model.eval()
load_s = time.perf_counter() - t0
t0 = time.perf_counter()
generate(model, [[5, 6, 7, 8]], SamplingParams(max_new_tokens=new))
gen_s = time.perf_counter() - t0
# VmHWM, this process image's peak: ru_maxrss survives fork + exec on Linux, so a child would report the
# parent's resident set at the fork (the parent holds the model it saved) whenever its own peak is lower.
peak = status_kb("VmHWM")
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"peak_kb": peak, "runtime_kb": base, "load_s": load_s, "tok_s": new / gen_s,
                  "weights_kb": weights / 1024, "param_dtype": str(next(model.parameters()).dtype)}))
"""


def make_checkpoints(root: Path, hidden: int, layers: int, vocab: int) -> tuple[Path, Path]:
    from diji.data.tokenizer import train_tokenizer
    from diji.model.transformer import ModelConfig, Transformer
    from diji.train.checkpoint import save_checkpoint

    train_tokenizer(iter(["a tiny corpus for a tokenizer", "only the ids matter here"] * 50), 300, root,
                    show_progress=False)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8,
                      num_key_value_heads=4, intermediate_size=hidden * 8 // 3 // 64 * 64,
                      max_position_embeddings=256, tie_word_embeddings=False)
    model = Transformer(cfg).eval()
    fp32 = save_checkpoint(root / "fp32", model, root / "tokenizer.json", {"stage": "bench"})
    bf16 = save_checkpoint(root / "bf16", model.to(torch.bfloat16), root / "tokenizer.json", {"stage": "bench"})
    return Path(fp32), Path(bf16)


def run(ckpt: Path, dtype: str, new: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), dtype, str(new)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--new", type=int, default=16)
    args = ap.parse_args()
    from diji.compute.device import fast_low_precision

    fast, why = fast_low_precision(torch.device("cpu"), torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, bf16 = make_checkpoints(Path(tmp), args.hidden, args.layers, args.vocab)
        a, b = run(fp32, "float32", args.new), run(bf16, "bfloat16", args.new)
    above = (b["peak_kb"] - b["runtime_kb"]) / max(1, a["peak_kb"] - a["runtime_kb"])
    # What the ratio would be if each process held exactly the runtime plus one copy of its weights.
    floor = (b["runtime_kb"] + b["weights_kb"]) / (a["runtime_kb"] + a["weights_kb"])
    result = {"rss_ratio": round(b["peak_kb"] / a["peak_kb"], 3), "rss_above_runtime_ratio": round(above, 3),
              "fp32_peak_mb": round(a["peak_kb"] / 1024, 1), "bf16_peak_mb": round(b["peak_kb"] / 1024, 1),
              "runtime_mb": round(a["runtime_kb"] / 1024, 1), "rss_ratio_floor": round(floor, 3),
              "fp32_weights_mb": round(a["weights_kb"] / 1024, 1), "bf16_weights_mb": round(b["weights_kb"] / 1024, 1), "fp32_tok_s": round(a["tok_s"], 1),
              "bf16_tok_s": round(b["tok_s"], 1), "bf16_param_dtype": b["param_dtype"],
              "fast_bf16": fast, "fast_bf16_why": why}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
