"""Exact and near-duplicate removal: normalised-text hashes, MinHash signatures and LSH banding.

MinHash (Broder 1997) estimates the Jaccard similarity of two documents' shingle sets as the fraction
of equal signature entries; LSH banding (Leskovec et al., "Mining of Massive Datasets", ch. 3) makes
documents whose `rows` consecutive entries agree in any of `bands` bands candidates, which selects
pairs above ≈ (1/bands)^(1/rows) similarity; candidates are then confirmed against
`jaccard_threshold` on the full signature, which removes most LSH false positives.

Shingles are `shingle_size` consecutive tokens: words for Latin-script text, single characters for
Chinese (see `textstats`), so a lightly edited Chinese sentence still shares most of its shingles.

Signatures are computed per chunk in parallel; the default `oph` method is one-permutation hashing
with rotation densification (Li, Owen & Zhang 2012; Shrivastava & Li 2014): one hash per shingle,
binned, instead of `bands*rows` hashes per shingle — the same estimator at a fraction of the cost.
`classic` computes `bands*rows` independent universal hashes per shingle (the reference path; tests
check that both estimate Jaccard similarity alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diji.data.textstats import NGRAM_MULT, codepoints, mix64, ngram_hashes, token_hashes, tokens

_MAX32 = np.uint32(0xFFFFFFFF)


@dataclass(frozen=True)
class DedupConfig:
    """Exact and near-duplicate removal ([dedup] in TOML)."""

    exact: bool = True
    """Drop documents whose normalised text (lower-cased, whitespace collapsed) was seen before."""
    near: bool = True
    """Drop near-duplicates found by MinHash-LSH (the earliest document of each cluster is kept)."""
    shingle_size: int = 5
    """Tokens per shingle for Latin-script and code documents (words)."""
    shingle_size_zh: int = 5
    """Tokens per shingle for Chinese documents (characters)."""
    bands: int = 32
    """LSH bands. With `rows` = 4, pairs above ≈ (1/32)^(1/4) = 0.42 similarity become candidates, so
    recall is decided by the exact `jaccard_threshold` check rather than by banding luck."""
    rows: int = 4
    """Signature entries per band; bands × rows is the signature length (a power of two for 'oph')."""
    jaccard_threshold: float = 0.7
    """Candidate pairs whose estimated Jaccard similarity is below this are not duplicates."""
    method: str = "oph"
    """'oph' (one-permutation hashing, fast) or 'classic' (bands×rows hash functions, reference)."""

    def __post_init__(self) -> None:
        if self.shingle_size < 1 or self.shingle_size_zh < 1:
            raise ValueError("dedup.shingle_size and dedup.shingle_size_zh must be >= 1")
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"dedup.bands and dedup.rows must be >= 1, got {self.bands} and {self.rows}")
        n = self.bands * self.rows
        if self.method == "oph" and n & (n - 1):
            raise ValueError(f"dedup.bands × dedup.rows must be a power of two for method 'oph', got {n}")
        if not 0.0 < self.jaccard_threshold <= 1.0:
            raise ValueError(f"dedup.jaccard_threshold must be in (0, 1], got {self.jaccard_threshold}")
        if self.method not in ("oph", "classic"):
            raise ValueError(f"dedup.method must be 'oph' or 'classic', got {self.method!r}")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


def exact_text_key(text: str) -> int:
    """64-bit key of the text lower-cased with whitespace runs collapsed."""
    cp = codepoints(" ".join(text.lower().split()))
    if cp.size == 0:
        return 0
    return int(token_hashes(cp, np.zeros(1, np.int64), np.array([cp.size]))[0])


def shingles(text: str, k: int) -> np.ndarray:
    """Hashes of the k-token shingles of the lower-cased text (the whole text if it has fewer tokens)."""
    th = tokens(text)[0]
    if th.size == 0:
        return th
    return ngram_hashes(th, min(k, th.size))


def _seeds(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    return a, b


def minhash_classic(sh: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """`num_perm` multiply-shift hashes per shingle, minimum of each (reference path)."""
    sig = np.full(num_perm, _MAX32, dtype=np.uint32)
    if sh.size == 0:
        return sig
    a, b = _seeds(seed, num_perm)
    with np.errstate(over="ignore"):
        for i in range(0, sh.size, 4096):
            block = sh[i : i + 4096]
            hv = ((a[:, None] * block[None, :] + b[:, None]) >> np.uint64(32)).astype(np.uint32)
            np.minimum(sig, hv.min(axis=1), out=sig)
    return sig


def minhash_oph(sh: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """One-permutation hashing: hash once, bin by the top bits, keep each bin's minimum, densify."""
    sig = np.full(num_perm, _MAX32, dtype=np.uint32)
    if sh.size == 0:
        return sig
    shift = np.uint64(64 - (num_perm.bit_length() - 1))
    with np.errstate(over="ignore"):
        h = mix64(sh ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64))
    bins = (h >> shift).astype(np.intp)
    vals = ((h >> np.uint64(8)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    np.minimum.at(sig, bins, vals)
    empty = sig == _MAX32
    if empty.any():
        # rotation densification: an empty bin borrows the next non-empty bin's value (circularly),
        # salted by the distance so that two documents agree there only if they agree at the source
        full = np.flatnonzero(~empty)
        j = np.flatnonzero(empty)
        pos = np.searchsorted(full, j) % full.size
        src = full[pos]
        dist = ((src - j) % num_perm).astype(np.uint64)
        with np.errstate(over="ignore"):
            salted = mix64(sig[src].astype(np.uint64) + dist * NGRAM_MULT[1])
        sig[j] = (salted >> np.uint64(32)).astype(np.uint32)
    return sig


def signature(text: str, k: int, cfg: DedupConfig, seed: int) -> np.ndarray:
    sh = shingles(text, k)
    if cfg.method == "classic":
        return minhash_classic(sh, cfg.num_perm, seed)
    return minhash_oph(sh, cfg.num_perm, seed)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature entries (row-wise for 2-D inputs)."""
    return (a == b).mean(axis=-1)


def exact_duplicates(keys: np.ndarray) -> np.ndarray:
    """True for every document whose key occurred at a lower index."""
    _, first = np.unique(keys, return_index=True)
    dup = np.ones(keys.size, dtype=bool)
    dup[first] = False
    return dup


def near_duplicates(sigs: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(dup mask, index of the kept document of each one's cluster) for signatures [N, bands*rows].

    Within each band, documents with equal band keys are linked to the lowest-indexed document of the
    bucket; a link survives if the full signatures' estimated Jaccard reaches the threshold; clusters are
    the connected components (union-find), and each keeps its lowest index.
    """
    n = sigs.shape[0]
    root = np.arange(n)
    if n < 2:
        return np.zeros(n, dtype=bool), root
    src_parts, dst_parts = [], []
    mult = NGRAM_MULT[: cfg.rows] if cfg.rows <= NGRAM_MULT.size else np.resize(NGRAM_MULT, cfg.rows)
    for b in range(cfg.bands):
        block = sigs[:, b * cfg.rows : (b + 1) * cfg.rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            key = mix64((block * mult[None, :]).sum(axis=1, dtype=np.uint64) + np.uint64(b))
        order = np.argsort(key, kind="stable")
        sk = key[order]
        starts = np.concatenate(([True], sk[1:] != sk[:-1]))
        first_pos = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        first = order[first_pos]
        linked = ~starts
        if linked.any():
            src_parts.append(order[linked])
            dst_parts.append(first[linked])
    if not src_parts:
        return np.zeros(n, dtype=bool), root
    src = np.concatenate(src_parts)
    dst = np.concatenate(dst_parts)
    pair = np.unique(src.astype(np.int64) * n + dst)
    src, dst = pair // n, pair % n
    ok = estimated_jaccard(sigs[src], sigs[dst]) >= cfg.jaccard_threshold
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s, d in zip(src[ok].tolist(), dst[ok].tolist(), strict=True):
        rs, rd = find(s), find(d)
        if rs != rd:
            lo, hi = (rs, rd) if rs < rd else (rd, rs)
            parent[hi] = lo
    root = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    return root != np.arange(n), root
