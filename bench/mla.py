"""MLA vs GQA (and MHA): KV-cache bytes per token and greedy decode tokens/s with diji's KV cache.

Same width, depth and heads; only the attention differs. MLA follows DeepSeek-V2's proportions
(kv_lora_rank = 2·head_dim here for a small model, decoupled rope dim = head_dim / 2). Decoding runs
through `diji.model.generate` with the model's own forward for every variant (`decode:reference`), so
only the attention differs and MLA decodes in the absorbed form against the cached latents. (The packed
GQA decoder of the compute issue is faster still and does not cover MLA.) Models alternate in rounds
(ABAB…) so machine noise hits all alike. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from diji.kernels.registry import REGISTRY
from diji.model.generate import SamplingParams, generate
from diji.model.transformer import ModelConfig, Transformer

BASE = dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1376,
            max_position_embeddings=1024, tie_word_embeddings=False)
VARIANTS = {
    "mha": ModelConfig(**BASE, num_key_value_heads=8),
    "gqa": ModelConfig(**BASE, num_key_value_heads=2),
    "mla": ModelConfig(**BASE, num_key_value_heads=8, kv_lora_rank=128, q_lora_rank=192, qk_rope_head_dim=32,
                       qk_nope_head_dim=64, v_head_dim=64),
}


def main() -> None:
    with REGISTRY.forced({"decode": "reference"}):
        run()


def run() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {}
    for name, cfg in VARIANTS.items():
        m = Transformer(cfg)
        m.init_weights(seed=0)
        models[name] = m.eval()
    params = SamplingParams(max_new_tokens=args.new)
    out: dict = {"prompt": args.prompt, "new_tokens": args.new}
    for name, cfg in VARIANTS.items():
        out[f"{name}_kv_bytes_per_token_bf16"] = cfg.kv_cache_bytes_per_token(2)
        out[f"{name}_params"] = cfg.num_params()
    for B in args.batch:
        prompts = torch.randint(3, BASE["vocab_size"], (B, args.prompt)).tolist()
        times: dict[str, list[float]] = {n: [] for n in models}
        prefill: dict[str, list[float]] = {n: [] for n in models}
        for m in models.values():  # warm-up
            generate(m, prompts, SamplingParams(max_new_tokens=4))
        for _ in range(args.rounds):
            for name, m in models.items():
                t0 = time.perf_counter()
                generate(m, prompts, SamplingParams(max_new_tokens=1))  # prefill (+ one sample) only
                t1 = time.perf_counter()
                generate(m, prompts, params)
                prefill[name].append(t1 - t0)
                times[name].append(time.perf_counter() - t1)
        for name in models:
            # Decode rate: the extra new-1 steps beyond a prefill-only call.
            decode_s = statistics.median(times[name]) - statistics.median(prefill[name])
            out[f"{name}_decode_tok_s_b{B}"] = round(B * (args.new - 1) / max(decode_s, 1e-9), 1)
            out[f"{name}_prefill_s_b{B}"] = round(statistics.median(prefill[name]), 3)
        out[f"mla_vs_gqa_tok_s_b{B}"] = round(out[f"mla_decode_tok_s_b{B}"] / out[f"gqa_decode_tok_s_b{B}"], 3)
    out["mla_vs_gqa_kv_bytes"] = round(out["mla_kv_bytes_per_token_bf16"] / out["gqa_kv_bytes_per_token_bf16"], 3)
    out["mla_vs_mha_kv_bytes"] = round(out["mla_kv_bytes_per_token_bf16"] / out["mha_kv_bytes_per_token_bf16"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
