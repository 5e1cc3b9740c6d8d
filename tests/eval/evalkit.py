"""Helpers shared by the evaluation tests: GSM8K-style arithmetic items and JSONL writing."""

from __future__ import annotations

import json
import random
from pathlib import Path


def arithmetic_items(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        items.append({"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    return items


def arithmetic_docs(n: int, seed: int) -> list[str]:
    return [f"Question: {it['question']}\nAnswer: {it['answer']}" for it in arithmetic_items(n, seed)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
