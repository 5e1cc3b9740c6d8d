"""Decode tokens/s: diji's KV-cached generate vs HF `generate` (greedy, same weights, same dtype).

Prompt 64 tokens, 128 new tokens, batch 1 and 16, alternating in one process. Also checks that the
greedy tokens are identical (float32), and adds a bfloat16 row (both sides in bf16; tokens may differ
there, so only the agreement is reported). `--model quickstart` (default) is the quickstart's size
(4 layers, 256 wide, 4096 vocab, tied: 16 MB of fp32 weights, cache-resident on this CPU); `--model bench`
the larger BENCH_CFG (63 MB, bound by DRAM bandwidth at batch 1). The load average is printed: the
machine is shared, so only the same-process ratios mean much. diji decodes through the registry's `decode` op (the packed fast path on
the CPU; DIJI_KERNELS=decode:reference measures the model's plain forward instead). Prints one JSON line:
{"ratio_b1", "ratio_b16", "tokens_identical", ...}: peer = HF at the process's thread setting (what a user
gets), peer_1thread = HF with diji's decode-thread policy applied by hand (generate.decode_threads).
`compiled_*` keys: the opt-in compiled decode step (DIJI_KERNELS=decode:compiled: Inductor, C++ wrapper,
frozen weights — a second copy of the matrices; it keeps the process's threads), its tokens vs HF's, and
its compile seconds (first call). Rounds alternate the four runs; the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import BENCH_CFG, hf_twin  # noqa: E402

from diji.kernels.registry import REGISTRY  # noqa: E402
from diji.model.generate import SamplingParams, compiled_decode_stats, generate  # noqa: E402
from diji.model.transformer import ModelConfig, Transformer  # noqa: E402

QUICKSTART_CFG = ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=704, max_position_embeddings=512)
"""The size `diji quickstart` trains (the model overrides in quickstart.py)."""


def measure(diji, peer, cfg, args, batch: int, dtype: torch.dtype) -> tuple:
    gen = torch.Generator().manual_seed(batch)
    prompts = torch.randint(3, cfg.vocab_size, (batch, args.prompt), generator=gen)
    params = SamplingParams(max_new_tokens=args.new)

    def run_diji():
        return [g.tokens for g in generate(diji, prompts.tolist(), params)]

    def run_compiled():
        with REGISTRY.forced({"decode": "compiled"}):
            return run_diji()

    def run_peer():
        with torch.inference_mode():
            out = peer.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new,
                                min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[:, args.prompt:].tolist()

    def run_peer_1thread():  # the peer with diji's decode-thread policy, to show what the rest is worth
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run_peer()
        finally:
            torch.set_num_threads(saved)

    peer_tokens = run_peer()
    identical = run_diji() == peer_tokens  # warm-up, and the identity check
    before = compiled_decode_stats(diji)["compile_s"]
    t0 = time.perf_counter()
    compiled_identical = run_compiled() == peer_tokens  # compiles the step
    first_call = time.perf_counter() - t0
    compile_s = compiled_decode_stats(diji)["compile_s"] - before
    times: dict[str, list[float]] = {"diji": [], "peer": [], "peer1": [], "compiled": []}
    for _ in range(args.rounds):
        for name, fn in (("diji", run_diji), ("peer", run_peer), ("peer1", run_peer_1thread),
                         ("compiled", run_compiled)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    d = batch * args.new / statistics.median(times["diji"])
    p = batch * args.new / statistics.median(times["peer"])
    p1 = batch * args.new / statistics.median(times["peer1"])
    c = batch * args.new / statistics.median(times["compiled"])
    return d, p, p1, identical, {"tok_s": round(c, 1), "ratio": round(c / p, 3), "identical": compiled_identical,
                                 "compile_s": round(compile_s, 1), "first_call_s": round(first_call, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--model", choices=["quickstart", "bench"], default="quickstart")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 row")
    args = ap.parse_args()
    cfg = QUICKSTART_CFG if args.model == "quickstart" else BENCH_CFG
    torch.manual_seed(0)
    diji = Transformer(cfg).eval()
    peer = hf_twin(diji).eval()
    result: dict = {"model": args.model, "threads": torch.get_num_threads(),
                    "load_avg_start": round(os.getloadavg()[0], 2)}
    identical = True
    for batch in (1, 16):
        d, p, p1, same, comp = measure(diji, peer, cfg, args, batch, torch.float32)
        identical &= same
        result.update({f"compiled_{k}_b{batch}": v for k, v in comp.items()})
        result.update({f"diji_tok_s_b{batch}": round(d, 1), f"peer_tok_s_b{batch}": round(p, 1),
                       f"ratio_b{batch}": round(d / p, 3), f"peer_1thread_tok_s_b{batch}": round(p1, 1),
                       f"ratio_vs_peer_1thread_b{batch}": round(d / p1, 3)})
    result["tokens_identical"] = identical
    result["diji_decode"] = REGISTRY.choose("decode", "cpu", torch.float32).impl.name
    if not args.no_bf16:
        diji.to(torch.bfloat16)
        peer.to(torch.bfloat16)
        for batch in (1, 16):
            d, p, _, same, comp = measure(diji, peer, cfg, args, batch, torch.bfloat16)
            result.update({f"bf16_compiled_{k}_b{batch}": v for k, v in comp.items()})
            result.update({f"bf16_diji_tok_s_b{batch}": round(d, 1), f"bf16_peer_tok_s_b{batch}": round(p, 1),
                           f"bf16_ratio_b{batch}": round(d / p, 3), f"bf16_tokens_identical_b{batch}": same})
    result["load_avg_end"] = round(os.getloadavg()[0], 2)
    result["compiled_failed"] = compiled_decode_stats(diji)["failed"]
    head = ("ratio_b1", "ratio_b16", "tokens_identical", "compiled_ratio_b1", "compiled_ratio_b16",
            "compiled_identical_b1", "compiled_identical_b16")
    print(json.dumps({k: result[k] for k in head} | result))


if __name__ == "__main__":
    main()
