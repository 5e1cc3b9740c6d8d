"""Encoding throughput of diji's shard-writer encoder vs HF `tokenizers` `encode_batch`, same vocabulary.

Text: the quickstart's standard-library corpus (docstrings + code), paragraphs reshuffled into new
documents until there are ~50 MB. A vocab-8192 tokenizer is trained on the first few MB. Both encoders
see the same batches (the chunks the shard writer encodes), alternating, best of `--repeats`; ids are
compared on every document. Prints one JSON line: {"diji_mb_s", "peer_mb_s", "ratio", "ids_identical"}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path


def build_texts(total_bytes: int, seed: int = 0) -> list[str]:
    from diji.data.corpus import build_default_corpus

    with tempfile.TemporaryDirectory() as d:
        paths = build_default_corpus(Path(d), max_bytes=20_000_000)
        docs = [json.loads(line)["text"] for p in paths for line in p.read_text(encoding="utf-8").splitlines()]
    paras = [p for d in docs for p in d.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    out: list[str] = list(docs)
    size = sum(len(t.encode()) for t in out)
    while size < total_bytes:
        rng.shuffle(paras)
        for i in range(0, len(paras), 40):
            doc = "\n\n".join(paras[i : i + 40])
            out.append(doc)
            size += len(doc.encode())
            if size >= total_bytes:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=50.0, help="text size in MB")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--train-mb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from diji.data.tokenizer import Tokenizer, train_tokenizer

    texts = build_texts(int(args.mb * 1e6))
    nbytes = sum(len(t.encode()) for t in texts)
    with tempfile.TemporaryDirectory() as d:
        train, used = [], 0
        for t in texts:
            train.append(t)
            used += len(t.encode())
            if used >= args.train_mb * 1e6:
                break
        path = train_tokenizer(train, args.vocab_size, Path(d), show_progress=False)
        tok = Tokenizer.from_file(path)
    print(f"encoder: {tok.fast_reason}; {len(texts)} documents, {nbytes / 1e6:.1f} MB", file=sys.stderr)

    from diji.data.prepare import DataConfig

    # the shard writer encodes chunk by chunk, DataConfig.chunk_chars characters at a time
    chunk = DataConfig().chunk_chars
    batches, cur, n = [], [], 0
    for t in texts:
        cur.append(t)
        n += len(t)
        if n >= chunk:
            batches.append(cur)
            cur, n = [], 0
    if cur:
        batches.append(cur)

    best = {"diji": float("inf"), "peer": float("inf")}
    ours: list[list[int]] = []
    peer: list[list[int]] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = [ids for b in batches for ids in tok.encode_batch(b, num_threads=args.threads)]
        best["diji"] = min(best["diji"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        peer = [e.ids for b in batches for e in tok.hf.encode_batch(b, add_special_tokens=False)]
        best["peer"] = min(best["peer"], time.perf_counter() - t0)
    identical = ours == peer
    if not identical:
        bad = sum(a != b for a, b in zip(ours, peer, strict=True))
        print(f"{bad} of {len(ours)} documents differ", file=sys.stderr)
    diji = nbytes / 1e6 / best["diji"]
    hf = nbytes / 1e6 / best["peer"]
    print(json.dumps({"diji_mb_s": round(diji, 2), "peer_mb_s": round(hf, 2), "ratio": round(diji / hf, 2),
                      "ids_identical": identical}))


if __name__ == "__main__":
    main()
