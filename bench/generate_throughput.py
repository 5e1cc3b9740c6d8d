"""Decode tokens/s: diji's KV-cached generate vs HF `generate` (greedy, same weights, same dtype).

Prompt 64 tokens, 128 new tokens, batch 1 and 16, alternating in one process. Also checks that the
greedy tokens are identical. diji decodes through the registry's `decode` op (the packed fast path on
the CPU; DIJI_KERNELS=decode:reference measures the model's plain forward instead). Prints one JSON line:
{"ratio_b1", "ratio_b16", "tokens_identical", "diji_tok_s_b1", "peer_tok_s_b1", "diji_tok_s_b16", "peer_tok_s_b16"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import BENCH_CFG, hf_twin  # noqa: E402

from diji.kernels.registry import REGISTRY  # noqa: E402
from diji.model.generate import SamplingParams, generate  # noqa: E402
from diji.model.transformer import Transformer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    diji = Transformer(BENCH_CFG).eval()
    peer = hf_twin(diji).eval()
    result: dict = {}
    identical = True
    for batch in (1, 16):
        prompts = torch.randint(3, BENCH_CFG.vocab_size, (batch, args.prompt))
        params = SamplingParams(max_new_tokens=args.new)

        def run_diji(prompts=prompts, params=params):
            return [g.tokens for g in generate(diji, prompts.tolist(), params)]

        def run_peer(prompts=prompts):
            with torch.inference_mode():
                out = peer.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new,
                                    min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
            return out[:, args.prompt:].tolist()

        a, b = run_diji(), run_peer()  # warm-up, and the identity check
        identical &= a == b
        times = {"diji": [], "peer": []}
        for _ in range(args.rounds):
            for name, fn in (("diji", run_diji), ("peer", run_peer)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        d = batch * args.new / statistics.median(times["diji"])
        p = batch * args.new / statistics.median(times["peer"])
        result.update({f"diji_tok_s_b{batch}": round(d, 1), f"peer_tok_s_b{batch}": round(p, 1),
                       f"ratio_b{batch}": round(d / p, 3)})
    result["tokens_identical"] = identical
    result["diji_decode"] = REGISTRY.chosen().get("decode on cpu/float32", {}).get("impl", "?")
    print(json.dumps({k: result[k] for k in ("ratio_b1", "ratio_b16", "tokens_identical")} | result))


if __name__ == "__main__":
    main()
