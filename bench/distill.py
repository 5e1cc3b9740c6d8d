"""Distillation throughput: `diji data distill` against a live `diji serve`, concurrent requests against
one at a time (the peer), in the same process on the same prompts, alternating rounds (ABAB…).

The teacher is a randomly initialised model of the quickstart's size with a tokenizer trained on the
arithmetic problems (speed does not depend on the weights); each round writes a fresh output, so both
sides sample every prompt. Prints one JSON line: prompts/s for both and their ratio, plus how many
replies the verifier kept (near 0 here: the weights are random).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from diji.data.distill import DistillConfig, distill
    from diji.data.tokenizer import train_tokenizer
    from diji.eval.task import get_task
    from diji.model.transformer import ModelConfig, Transformer
    from diji.serve.engine import EngineConfig
    from diji.serve.server import ServeConfig, ServerThread, load_server
    from diji.train.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        examples = get_task("arith").examples("train", 2000, seed=0)
        texts = (e.messages[0]["content"] + "\n" + e.solution for e in examples)
        tok_file = train_tokenizer(texts, 4096, root / "tok", show_progress=False)
        model = Transformer(ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=704, max_position_embeddings=512))
        model.init_weights(seed=0)
        ckpt = save_checkpoint(root / "ckpt", model, tok_file, {"stage": "init"})
        prompts = root / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"question": e.messages[0]["content"], "answer": e.answer}) + "\n"
                                   for e in examples[: args.prompts]), encoding="utf-8")
        server = ServerThread(load_server(ckpt, ServeConfig(model_name="bench", engine=EngineConfig(max_batch_size=16)),
                                          None, device="cpu")).start()
        rates: dict[str, list[float]] = {"diji": [], "peer": []}
        kept = 0
        try:
            for r in range(args.rounds):
                for side, conc in (("diji", args.concurrency), ("peer", 1)):
                    cfg = DistillConfig(teacher=server.url, prompts=str(prompts), out=str(root / f"{side}-{r}.jsonl"),
                                        samples=args.samples, max_tokens=args.max_tokens, temperature=1.0,
                                        concurrency=conc)
                    t0 = time.perf_counter()
                    stats = distill(cfg, progress=False)
                    rates[side].append(stats.processed / (time.perf_counter() - t0))
                    kept += stats.kept
        finally:
            server.stop()
    diji, peer = statistics.median(rates["diji"]), statistics.median(rates["peer"])
    print(json.dumps({"diji_prompts_s": round(diji, 3), "peer_prompts_s": round(peer, 3), "ratio": round(diji / peer, 3),
                      "concurrency": args.concurrency, "samples": args.samples, "max_tokens": args.max_tokens,
                      "prompts": args.prompts, "kept": kept}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
