"""One GRPO step — rollout, then the policy-gradient forward + backward — in diji's layout against the
common one, on the quickstart's model size and arithmetic word problems.

diji: each prompt is prefilled once for its G samples (`generate(..., n=G)`) and each group is trained as
one packed row (`pack_groups`: the prompt once, then every completion, with a per-segment mask).
Peer: the layout of most GRPO implementations — the prompt repeated G times for sampling and one
right-padded row per completion for the loss. Both score the same completions: the benchmark checks the
loss and gradient agree, then times the two in alternating rounds (ABAB…). Prints one JSON line.
The model is randomly initialised with a real tokenizer (trained on the problems): speed does not
depend on the weights, and completions are sampled with a fixed length so both sides do equal work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def setup(args):
    from diji.data.chat import render
    from diji.data.tokenizer import Tokenizer, train_tokenizer
    from diji.eval.task import get_task
    from diji.model.transformer import ModelConfig, Transformer

    task = get_task("arith")
    examples = task.examples("train", args.prompts * 50, seed=0)
    with tempfile.TemporaryDirectory() as d:
        texts = (e.messages[0]["content"] + "\n" + e.solution for e in examples)
        tok = Tokenizer.from_file(train_tokenizer(texts, 4096, Path(d), show_progress=False))
    model = Transformer(ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=704, max_position_embeddings=512))
    model.init_weights(seed=0)
    prompts = [render(list(e.messages), tok, add_generation_prompt=True)[0] for e in examples[: args.prompts]]
    return model, tok, prompts


def diji_step(model, prompts, params, G, pad_id):
    from diji.model.generate import generate
    from diji.train.grpo import pack_groups, token_logprobs

    gens = generate(model, prompts, params, pad_id=pad_id, n=G)
    adv = torch.linspace(-1, 1, len(gens))
    ids, pos, attn, targets, mask, tok_adv = pack_groups(prompts, [g.tokens for g in gens], adv, pad_id)
    model.zero_grad()
    logp = token_logprobs(model, ids, targets, 1.0, pos, attn)
    loss = -(tok_adv * logp * mask).sum() / mask.sum()
    loss.backward()
    return loss.item(), [g.tokens for g in gens]


def peer_step(model, prompts, params, G, pad_id):
    from diji.model.generate import generate
    from diji.train.grpo import token_logprobs

    rows = [p for p in prompts for _ in range(G)]
    gens = generate(model, rows, params, pad_id=pad_id)
    adv = torch.linspace(-1, 1, len(gens))
    T = max(len(p) + len(g.tokens) for p, g in zip(rows, gens, strict=True)) - 1
    ids = torch.full((len(rows), T), pad_id)
    targets = torch.full((len(rows), T), -1)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for r, (p, g) in enumerate(zip(rows, gens, strict=True)):
        full = torch.tensor(p + g.tokens)
        ids[r, : len(full) - 1], targets[r, : len(full) - 1] = full[:-1], full[1:]
        mask[r, len(p) - 1 : len(full) - 1] = True
    model.zero_grad()
    logp = token_logprobs(model, ids, targets)
    loss = -(adv[:, None] * logp * mask).sum() / mask.sum()
    loss.backward()
    return loss.item(), [g.tokens for g in gens]


def main() -> None:
    from diji.model.generate import SamplingParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok, prompts = setup(args)
    # No stop tokens: every completion is exactly --new-tokens long, so both layouts score the same work.
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=1)
    l1, c1 = diji_step(model, prompts, params, args.group, tok.pad_id)
    g1 = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
    l2, c2 = peer_step(model, prompts, params, args.group, tok.pad_id)
    g2 = torch.cat([p.grad.flatten() for p in model.parameters()])
    times: dict[str, list[float]] = {"diji": [], "peer": []}
    for _ in range(args.rounds):
        for name, f in (("diji", diji_step), ("peer", peer_step)):
            t = time.perf_counter()
            f(model, prompts, params, args.group, tok.pad_id)
            times[name].append(time.perf_counter() - t)
    d, p = statistics.median(times["diji"]), statistics.median(times["peer"])
    samples = args.prompts * args.group
    print(json.dumps({
        "diji_samples_s": round(samples / d, 1), "peer_samples_s": round(samples / p, 1), "ratio": round(p / d, 3),
        "same_completions": c1 == c2, "loss_diff": abs(l1 - l2),
        "grad_rel_diff": float((g1 - g2).norm() / g2.norm()),
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1), "group": args.group,
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
