"""Decontamination report: which task items already appear in the training data.

An item counts as contaminated when any run of `n` consecutive tokens of its question or of its
reference answer also occurs in the data directory's `train` split — the long-n-gram overlap test of
GPT-3 (Brown et al. 2020, App. C, 13-grams), here on tokens of the data's own tokenizer because the
training data is stored as tokens. Items whose segments are all shorter than `n` tokens cannot be tested this way; they are
counted separately, not called clean.

Method: every n-gram is reduced to a 64-bit polynomial hash, vectorised over the token stream with
numpy (wrap-around uint64 arithmetic); the task's n-gram hashes are a small sorted set and each chunk of
the stream is looked up in it. A false positive needs a 64-bit collision among ~10⁹ × 10⁴ pairs
(probability ≈ 10⁻⁶); there are no false negatives for text tokenized the same way.

What it does not catch: paraphrases, translations, reformatted numbers, or a segment tokenized
differently in context. Byte-level BPE splits words independently of what precedes them, except that a
word carries its leading space; segments are therefore encoded with one, their mid-text form, and a
segment that starts a training document can differ only in its first token (interior n-grams match).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diji.data.tokenizer import Tokenizer
from diji.errors import DijiError

DEFAULT_N = 13
_P = np.uint64(1_000_003)
_CHUNK = 1 << 24


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every n-gram of `ids` (len(ids) - n + 1 values; empty when shorter than n)."""
    ids = np.asarray(ids, dtype=np.uint64) + np.uint64(1)  # +1: a gram of pad ids (0) must not hash to 0
    m = len(ids) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _P + ids[j : j + m]
    return h


def _train_shards(data_dir: Path) -> tuple[list[np.memmap], dict]:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise DijiError(f"{data_dir} is not a diji data directory (no manifest.json)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        shards = [s for s in manifest["shards"] if s["split"] == "train"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DijiError(f"{path} is not a valid data manifest ({e})") from None
    arrays = []
    for s in shards:
        f = data_dir / s["file"]
        if not f.is_file():
            raise DijiError(f"shard {f} listed in the manifest is missing; re-run `diji data prepare`")
        if f.stat().st_size:
            arrays.append(np.memmap(f, dtype=dtype, mode="r"))
    if not arrays:
        raise DijiError(f"{data_dir} has no 'train' split to check against")
    return arrays, manifest


def contamination(items: Sequence[str | Sequence[str]], data_dir: str | Path, n: int = DEFAULT_N) -> dict[str, Any]:
    """Check each item against the data directory's train split; returns the report as a dict.

    An item is a text or a list of segments (question, answer, …). Segments are checked separately, each
    with a leading space, the form a word takes inside running text: joining them would create n-grams
    across the seam that no training document contains, and a segment's first word would otherwise be
    tokenized as if it started a document.
    """
    if n < 2:
        raise DijiError(f"the n-gram length must be at least 2, got {n}")
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    arrays, _ = _train_shards(data_dir)
    tok = Tokenizer.from_file(data_dir / "tokenizer.json")
    segments = [[it] if isinstance(it, str) else list(it) for it in items]
    flat = [(i, " " + seg.strip()) for i, segs in enumerate(segments) for seg in segs if seg.strip()]
    owners: dict[int, list[int]] = {}
    checkable = set()
    for (i, _), ids in zip(flat, tok.encode_batch([text for _, text in flat]), strict=True):
        hashes = ngram_hashes(np.asarray(ids), n)
        if len(hashes):
            checkable.add(i)
        for h in set(hashes.tolist()):
            owners.setdefault(h, []).append(i)
    too_short = len(items) - len(checkable)
    table = np.array(sorted(owners), dtype=np.uint64)
    hit_hashes: set[int] = set()
    scanned = 0
    if len(table):
        for arr in arrays:
            # Chunks overlap by n - 1 tokens so that no n-gram straddling a chunk border is missed.
            for start in range(0, max(len(arr) - n + 1, 0), _CHUNK):
                h = ngram_hashes(np.asarray(arr[start : start + _CHUNK + n - 1]), n)
                found = h[np.isin(h, table, assume_unique=False)]
                hit_hashes.update(np.unique(found).tolist())
            scanned += len(arr)
    hits = sorted({i for h in hit_hashes for i in owners[h]})
    checked = len(items) - too_short
    return {
        "data_dir": str(data_dir),
        "ngram_tokens": n,
        "items": len(items),
        "checked": checked,
        "too_short": too_short,
        "contaminated": len(hits),
        "fraction": len(hits) / checked if checked else 0.0,
        "contaminated_items": hits,
        "train_tokens_scanned": int(scanned),
        "seconds": round(time.perf_counter() - t0, 2),
    }
