"""Per-chunk curation: the embarrassingly parallel part of `diji data prepare`.

`curate_chunk` takes a list of documents and returns the survivors with the per-document keys the
global stages need later (exact-dup hash, split key). It is a pure function of its inputs, so a chunk
computed by any worker — a local process or a Ray task — is byte-identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from diji.data.stats import StageStats


def split_key(text: str, seed: int) -> int:
    """A uniform 64-bit key from sha256(seed, text): the train/val split is `key < val_fraction * 2**64`.

    Hashing the content (not the position) keeps a document in the same split whatever else the
    corpus holds, so adding data never moves old validation text into training.
    """
    h = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest()[:8], "little")


def exact_key(text: str) -> int:
    """64-bit hash of the (normalised) text for exact deduplication."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def curate_chunk(docs: list[tuple[str, str]], cfg: Any, extra: Any = None) -> tuple[list[str], dict[str, np.ndarray], dict[str, Any]]:
    """Curate `docs` ((text, "file:line") pairs) under `cfg` (a DataConfig); returns (texts, arrays, meta)."""
    stages: list[StageStats] = []
    kept = [t for t, _ in docs]
    st = StageStats("read")
    st.count_in(kept)
    st.count_out(kept)
    stages.append(st)
    arrays = {
        "exact": np.array([exact_key(t) for t in kept], dtype=np.uint64),
        "split": np.array([split_key(t, cfg.seed) for t in kept], dtype=np.uint64),
    }
    meta = {"stages": [s.to_dict() for s in stages], "rejected": {}}
    return kept, arrays, meta


class CurationContext:
    """Read-only data every chunk worker needs besides the config (e.g. decontamination n-grams)."""

    def __init__(self) -> None:
        pass

    @classmethod
    def build(cls, cfg: Any, decontaminate: list[Path], work: Path) -> CurationContext:
        return cls()


def global_stages(keys: list[dict[str, np.ndarray]], cfg: Any, extra: Any) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Decisions that need every chunk at once: exact duplicates (first occurrence wins)."""
    exact = np.concatenate([k["exact"] for k in keys]) if keys else np.zeros(0, np.uint64)
    _, first = np.unique(exact, return_index=True)
    keep_all = np.zeros(exact.size, dtype=bool)
    keep_all[first] = True
    bounds = np.cumsum([0] + [k["exact"].size for k in keys])
    keep = [keep_all[bounds[i] : bounds[i + 1]] for i in range(len(keys))]
    st = {"name": "dedup_exact", "docs_in": int(exact.size), "docs_out": int(keep_all.sum()),
          "bytes_in": 0, "bytes_out": 0, "dropped": {"exact duplicate": int(exact.size - keep_all.sum())}}
    return keep, [st]


def write_rejected(out: Path, metas: list[dict[str, Any]], limit: int) -> list[str]:
    """Write up to `limit` rejected samples per stage/reason as `out/<stage>.jsonl`; returns the file names."""
    return []
