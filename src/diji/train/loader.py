"""Pretraining batches from token shards, with a deterministic cursor.

Batch number `i` is a pure function of (seed, i, rank): random windows drawn by a generator seeded with
those three numbers. Resuming therefore only needs the cursor `i`, and a resumed run sees exactly the
batches an uninterrupted one would have seen (nanoGPT-style random windows, made reproducible).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diji.errors import DijiError


def _open_split(data_dir: Path, split: str) -> tuple[list[np.memmap], dict]:
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise DijiError(f"{data_dir} is not a diji data directory (no manifest.json); run `diji data prepare`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DijiError(f"{manifest_path} is corrupt ({e}); re-run `diji data prepare`") from None
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    arrays = []
    for shard in manifest["shards"]:
        if shard["split"] != split or shard["tokens"] == 0:
            continue
        path = data_dir / shard["file"]
        if not path.is_file():
            raise DijiError(f"shard {path} listed in the manifest is missing; re-run `diji data prepare`")
        if path.stat().st_size != shard["tokens"] * dtype.itemsize:
            raise DijiError(f"shard {path} has the wrong size (truncated?); re-run `diji data prepare`")
        arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return arrays, manifest


class TokenBatches:
    """Random (seq_len + 1)-token windows from one split; `next()` returns (inputs, targets) (B, T)."""

    def __init__(self, data_dir: str | Path, split: str, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.arrays, self.manifest = _open_split(self.data_dir, split)
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)
        if not self.arrays or self.lengths.max() <= seq_len + 1:
            raise DijiError(
                f"the '{split}' split of {self.data_dir} has no shard longer than seq_len+1 = {seq_len + 1} "
                "tokens; add more text or lower data.seq_len"
            )
        self.split, self.batch_size, self.seq_len, self.seed, self.rank = split, batch_size, seq_len, seed, rank
        usable = np.maximum(self.lengths - seq_len - 1, 0)
        self.weights = usable / usable.sum()
        self.cursor = 0

    def batch_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index, self.rank])
        shards = rng.choice(len(self.arrays), size=self.batch_size, p=self.weights)
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for r, s in enumerate(shards):
            start = int(rng.integers(0, self.lengths[s] - self.seq_len - 1))
            rows[r] = self.arrays[s][start : start + self.seq_len + 1]
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.cursor)
        self.cursor += 1
        return batch

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "seed": self.seed, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])


def fixed_windows(data_dir: str | Path, split: str, batch_size: int, seq_len: int, max_batches: int):
    """Consecutive non-overlapping windows from the start of a split: the same validation set every time."""
    arrays, _ = _open_split(Path(data_dir), split)
    stream = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]) if arrays else np.zeros(0, np.int64)
    n = min((len(stream) - 1) // seq_len, batch_size * max_batches)
    if n == 0:
        raise DijiError(f"the '{split}' split of {data_dir} is shorter than one sequence of {seq_len + 1} tokens")
    for b in range(0, n, batch_size):
        rows = [stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(b, min(b + batch_size, n))]
        t = torch.from_numpy(np.stack(rows))
        yield t[:, :-1], t[:, 1:]
