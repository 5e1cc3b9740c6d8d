"""Scratch files of the resumable pipeline: one `.npz` per chunk, written atomically.

A chunk holds texts (one UTF-8 blob plus offsets, so no pickle is ever loaded), named numpy arrays and
a JSON `meta` dict. Because each file appears only through an atomic rename, a file that exists is a
finished unit of work, and a killed run resumes by skipping the chunks whose file exists.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from diji.io import atomic_open


def save_chunk(path: Path, texts: list[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    blobs = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    if blobs:
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
    payload = {
        "text_blob": np.frombuffer(b"".join(blobs), dtype=np.uint8),
        "text_offsets": offsets,
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
    }
    for k, v in arrays.items():
        payload[f"a_{k}"] = np.ascontiguousarray(v)
    with atomic_open(path, "wb") as f:
        np.savez(f, **payload)


class Chunk:
    """A loaded chunk: `texts`, `arrays` and `meta`."""

    def __init__(self, texts: list[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.texts = texts
        self.arrays = arrays
        self.meta = meta


def load_chunk(path: Path, with_texts: bool = True) -> Chunk | None:
    """Load a chunk, or None if it is unreadable (then the caller recomputes it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
            texts: list[str] = []
            if with_texts:
                blob = z["text_blob"].tobytes()
                off = z["text_offsets"].tolist()
                texts = [blob[off[i] : off[i + 1]].decode("utf-8") for i in range(len(off) - 1)]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return Chunk(texts, arrays, meta)
