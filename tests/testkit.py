"""Helpers shared by the tests: learnable synthetic text, a tiny data directory in the DESIGN.md shard
format, and overrides for a tiny pretraining run. (A module of its own, not conftest.py, so that
sub-folder conftest files cannot shadow it.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from diji.data.tokenizer import Tokenizer, train_tokenizer
from diji.io import sha256_file

WORDS = ["the", "model", "reads", "tokens", "and", "learns", "to", "predict", "the", "next", "one", ".", "data", "flows", "through", "filters", "into", "shards", ";", "training", "resumes", "after", "a", "crash", ".", "模型", "读取", "数据", "并", "学习", "预测", "下", "一个", "词", "。"]


def synthetic_docs(n: int, seed: int = 0) -> list[str]:
    """Learnable text: sentences from a small vocabulary with a fixed local structure."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        start = rng.randrange(len(WORDS))
        k = rng.randint(20, 60)
        docs.append(" ".join(WORDS[(start + i) % len(WORDS)] for i in range(k)))
    return docs


def write_data_dir(root: Path, docs: list[str], vocab_size: int = 300) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train_tokenizer(iter(docs), vocab_size, root, show_progress=False)
    tok = Tokenizer.from_file(root / "tokenizer.json")
    shards = []
    for split, part in (("train", docs[: int(len(docs) * 0.9)]), ("val", docs[int(len(docs) * 0.9):])):
        ids = [i for d in part for i in tok.encode(d) + [tok.eos_id]]
        name = f"{split}-00000.bin"
        np.asarray(ids, dtype="<u2").tofile(root / name)
        shards.append({"split": split, "file": name, "tokens": len(ids), "sha256": sha256_file(root / name)})
    manifest = {"format_version": 1, "tokenizer_sha256": tok.sha256, "dtype": "uint16",
                "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "shards": shards, "inputs": [],
                "config": {}, "stats": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def tiny_overrides(data_dir: Path, out_dir: Path, name: str = "t", steps: int = 12) -> list[str]:
    return [
        f"data.path={json.dumps(str(data_dir))}", "data.seq_len=32",
        f"run.out_dir={json.dumps(str(out_dir))}", f'run.name="{name}"', "run.progress=false",
        "model.vocab_size=300", "model.hidden_size=32", "model.num_hidden_layers=2",
        "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.intermediate_size=64",
        "model.max_position_embeddings=64",
        f"train.max_steps={steps}", "train.batch_size=4", "train.log_every=1", "train.eval_every=4",
        "train.eval_batches=2", "train.save_every=4", "optim.warmup_steps=2", "optim.lr=1e-2",
    ]
