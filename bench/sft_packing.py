"""Packed vs padded SFT on the quickstart's SFT data: tokens/s and loss per token, same process.

Data: the quickstart's SFT set — worked solutions of the embedded arithmetic word problems (task
"arith", en+zh) rendered by the chat renderer — with a byte-level BPE trained on them (4096 tokens, the
quickstart's vocabulary size) and the quickstart's model shape (4 layers, 256 wide). Both modes start
from the same weights and train with the same optimizer on the same conversation order:
- padded: batch_size=16 conversations per row-batch, padded to the batch's longest (what SFT did);
- packed: the same 16 conversations per step, first-fit into rows of seq_len=256 tokens (several per
  row, block-diagonal mask, positions restarting at 0) — the same trajectory, without the pad compute;
- packed_tight: the same 16 again, first-fit decreasing into rows as long as their longest one.
tokens/s counts real (non-pad) tokens per second of training (forward + backward + step). Loss per
token is measured twice: on identical examples with the initial weights (must agree to ~1e-6: packing
changes nothing a token sees) and as the held-out loss after each mode has trained on the same number
of conversations. Prints one JSON line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from diji.data.chat import render
from diji.data.tokenizer import Tokenizer, train_tokenizer
from diji.kernels import ops
from diji.model.transformer import ModelConfig, Transformer
from diji.train.sft import IGNORE, pack_rows, pad_batch, task_records


def batches(rows, mode: str, seq_len: int):
    """Consecutive batches over `rows` in order (the stage's packing rule, without epochs)."""
    i = 0
    while i < len(rows):
        if mode == "padded":
            yield pad_batch(rows[i : i + 16], 0)
            i += 16
            continue
        # the same 16 conversations as the padded batch, first-fit into as few seq_len rows as they need:
        # identical gradients (tests/train/test_sft.py), so the two runs follow the same trajectory and
        # only the computation spent on padding differs
        group = rows[i : i + 16]
        i += 16
        if mode == "packed":
            packed: list[list] = [[]]
            used = 0
            for ex in group:
                n = len(ex[0]) - 1
                if used + n > seq_len:
                    packed.append([])
                    used = 0
                packed[-1].append(ex)
                used += n
            yield pack_rows(packed, seq_len, 0)
            continue
        # packed_tight: rows as long as the group's longest conversation, first-fit decreasing, so the
        # attention area shrinks with the padding instead of growing to seq_len²
        width = max(len(ex[0]) - 1 for ex in group)
        bins: list[list] = []
        room: list[int] = []
        for ex in sorted(group, key=lambda e: -len(e[0])):
            n = len(ex[0]) - 1
            j = next((k for k, r in enumerate(room) if r >= n), None)
            if j is None:
                bins.append([])
                room.append(width)
                j = len(bins) - 1
            bins[j].append(ex)
            room[j] -= n
        yield pack_rows(bins, width, 0)


def loss_of(model, batch) -> torch.Tensor:
    if len(batch) == 5:
        x, y, pos, attn, _ = batch
        return ops.cross_entropy(model(x, position_ids=pos, attention_mask=attn), y, ignore_index=IGNORE)
    x, y = batch
    return ops.cross_entropy(model(x), y, ignore_index=IGNORE)


def real_tokens(batch) -> int:
    if len(batch) == 5:
        return int(batch[4].sum())
    return int((batch[0] != 0).sum())  # pad id 0 (the bench tokenizer never emits it inside text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=1600, help="training conversations per mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="", help="an SFT file instead of the quickstart's (any diji.data.records format)")
    ap.add_argument("--columns", nargs="*", default=[], help="column mapping for --data, e.g. prompt=question")
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.data:
        from diji.data.records import load_conversations

        convs = load_conversations(args.data, columns=args.columns).conversations[: args.examples + 200]
    else:
        convs = task_records("arith", args.examples + 200, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [m["content"] for c in convs for m in c]
        tok = Tokenizer.from_file(train_tokenizer(texts, 4096, Path(tmp), show_progress=False))
    rows = [render(c, tok) for c in convs]
    seq_len = args.seq_len
    rows = [r for r in rows if len(r[0]) <= seq_len + 1]
    train, val = rows[200:], rows[:200]
    cfg = ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=704, max_position_embeddings=512)
    init = Transformer(cfg)
    init.init_weights(seed=0)
    state = {k: v.clone() for k, v in init.state_dict().items()}
    same = val[:12]
    with torch.no_grad():
        padded0 = float(loss_of(init, pad_batch(same, 0)))
        packed0 = float(loss_of(init, next(batches(same, "packed", seq_len))))
    out: dict[str, object] = {"bench": "sft_packing", "data": args.data or "quickstart arith", "examples": len(train), "seq_len": seq_len,
                              "mean_tokens_per_example": round(sum(len(r[0]) for r in train) / len(train), 1),
                              "init_loss_padded": round(padded0, 6), "init_loss_packed": round(packed0, 6)}
    for mode in ("padded", "packed", "packed_tight"):
        model = Transformer(cfg)
        model.load_state_dict(state)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        tokens, steps, t0 = 0, 0, time.perf_counter()
        for batch in batches(train, mode, seq_len):
            loss = loss_of(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tokens += real_tokens(batch)
            steps += 1
        secs = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            total = count = 0.0
            for b in batches(val, "padded", seq_len):
                n = int((b[1] != IGNORE).sum())
                total += float(loss_of(model, b)) * n
                count += n
        out[mode] = {"tokens_per_s": round(tokens / secs, 1), "steps": steps, "seconds": round(secs, 2),
                     "val_loss_per_token": round(total / count, 4),
                     "padding_fraction": round(1 - tokens / sum(b[0].numel() for b in batches(train, mode, seq_len)), 3)}
    p, q = out["packed"], out["padded"]
    out["tokens_per_s_ratio"] = round(p["tokens_per_s"] / q["tokens_per_s"], 3)  # type: ignore[index]
    out["val_loss_ratio"] = round(p["val_loss_per_token"] / q["val_loss_per_token"], 4)  # type: ignore[index]
    t = out["packed_tight"]
    out["tight_tokens_per_s_ratio"] = round(t["tokens_per_s"] / q["tokens_per_s"], 3)  # type: ignore[index]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
