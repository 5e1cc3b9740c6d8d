"""Decontamination: drop training documents that share a long n-gram with an evaluation set.

Following GPT-3 (Brown et al. 2020, app. C) a document is contaminated when it contains any 13-token
window that also occurs in an evaluation item. Tokens are those of `textstats` (lower-cased words;
single characters for Chinese), so punctuation and spacing differences do not hide a copy. Evaluation
items shorter than `ngram` tokens are matched whole. Evaluation files are read with the same readers;
for JSONL every string field (question, answer, choices…) is used unless `text_fields` names some.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diji.data.readers import ReadStats, file_kind, iter_documents, open_binary
from diji.data.textstats import ngram_hashes, tokens
from diji.errors import DijiError


@dataclass(frozen=True)
class DecontamConfig:
    """Decontamination against `--decontaminate` files ([decontam] in TOML)."""

    ngram: int = 13
    """Window length in tokens (GPT-3 used 13)."""
    min_matches: int = 1
    """A document is dropped when at least this many of its windows occur in the evaluation sets."""
    text_fields: tuple[str, ...] = ()
    """JSONL fields of the evaluation files to use; empty = every string field of each object."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"decontam.ngram must be >= 1, got {self.ngram}")
        if self.min_matches < 1:
            raise ValueError(f"decontam.min_matches must be >= 1, got {self.min_matches}")


def _eval_texts(path: Path, cfg: DecontamConfig) -> list[str]:
    if path.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")):
        out = []
        # read the raw objects: evaluation sets keep their text in several fields
        _, comp = file_kind(path)
        with open_binary(path, comp) as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if not isinstance(obj, dict):
                    continue
                fields = cfg.text_fields or tuple(k for k, v in obj.items() if isinstance(v, str))
                parts = [obj[k] for k in fields if isinstance(obj.get(k), str)]
                if parts:
                    out.append("\n".join(parts))
        return out
    stats = ReadStats()
    return [d.text for d in iter_documents([path], "text", stats)]


def build_index(paths: list[Path], cfg: DecontamConfig) -> dict[int, np.ndarray]:
    """{window length: sorted unique n-gram hashes} over all evaluation items."""
    by_len: dict[int, list[np.ndarray]] = {}
    items = 0
    for p in paths:
        for text in _eval_texts(p, cfg):
            th, _, _ = tokens(text)
            if th.size == 0:
                continue
            n = min(cfg.ngram, th.size)
            by_len.setdefault(n, []).append(ngram_hashes(th, n))
            items += 1
    if paths and not items:
        raise DijiError(f"no evaluation text found in {', '.join(map(str, paths))} (check --decontaminate)")
    return {n: np.unique(np.concatenate(parts)) for n, parts in sorted(by_len.items())}


def count_matches(text: str, index: dict[int, np.ndarray]) -> int:
    """Number of the document's windows (of every indexed length) found in the evaluation sets."""
    if not index:
        return 0
    th, _, _ = tokens(text)
    total = 0
    for n, table in index.items():
        g = ngram_hashes(th, n)
        if g.size == 0:
            continue
        pos = np.searchsorted(table, g)
        pos[pos == table.size] = 0
        total += int(np.count_nonzero(table[pos] == g))
    return total
