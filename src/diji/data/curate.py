"""Curation stages: per chunk (parallel, pure) and global (dedup and split, in the driver).

Per document, in order: normalise → identify language (drop if not on the keep list) → quality and
repetition filters of that language (C4 line rules may remove lines) → decontamination → PII
scrubbing → keys for the global stages (exact-dup key, MinHash signature, split key).

`curate_chunk` is a pure function of (documents, config, context): whichever process or Ray task runs
it produces the same bytes, which is what makes an interrupted run resumable to identical shards.
Every stage counts documents and bytes in and out and why documents left; a few rejected documents
per reason are kept for `rejected/`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from diji.data.chunks import load_chunk
from diji.data.decontam import build_index, count_matches
from diji.data.dedup import exact_duplicates, exact_text_key, near_duplicates, signature
from diji.data.filters import quality_filter
from diji.data.langid import detect_language
from diji.data.normalize import normalize_text
from diji.data.pii import scrub_pii
from diji.data.stats import StageStats

SAMPLE_CHARS = 2000


def split_key(text: str, seed: int) -> int:
    """A uniform 64-bit key from sha256(seed, text): the document is in validation iff key < val_fraction·2⁶⁴.

    Hashing the content (not the position) keeps a document in the same split whatever else the
    corpus holds, so adding data never moves old validation text into training.
    """
    h = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest()[:8], "little")


class CurationContext:
    """Read-only data the chunk workers need besides the config: the decontamination index."""

    def __init__(self, decontam: dict[int, np.ndarray] | None = None) -> None:
        self.decontam = decontam or {}

    @classmethod
    def build(cls, cfg: Any, decontaminate: list[Path], work: Path) -> CurationContext:
        if not decontaminate:
            return cls()
        cached = work / "decontam.npz"
        if cached.exists():
            with np.load(cached, allow_pickle=False) as z:
                return cls({int(k[1:]): z[k] for k in z.files})
        index = build_index(decontaminate, cfg.decontam)
        from diji.io import atomic_open

        with atomic_open(cached, "wb") as f:
            np.savez(f, **{f"n{n}": v for n, v in index.items()})
        return cls(index)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class _Stage:
    """A StageStats plus a bounded sample of rejected documents per reason."""

    def __init__(self, name: str, samples: int) -> None:
        self.stats = StageStats(name)
        self.samples = samples
        self.rejected: dict[str, list[dict[str, str]]] = {}

    def reject(self, reason: str, text: str, where: str) -> None:
        self.stats.drop(reason)
        lst = self.rejected.setdefault(reason, [])
        if len(lst) < self.samples:
            lst.append({"source": where, "text": text[:SAMPLE_CHARS]})


def curate_chunk(
    docs: list[tuple[str, str]], cfg: Any, ctx: CurationContext | None = None
) -> tuple[list[str], dict[str, np.ndarray], dict[str, Any]]:
    """Curate `docs` ((text, "file:line") pairs) under `cfg` (a DataConfig); returns (texts, arrays, meta)."""
    ctx = ctx or CurationContext()
    names = ("normalize", "langid", "quality", "decontaminate", "pii")
    stages = {n: _Stage(n, cfg.rejected_samples) for n in names}
    langs: Counter[str] = Counter()
    pii_counts: Counter[str] = Counter()
    families: Counter[str] = Counter()
    lines_removed = 0
    out_texts: list[str] = []
    out_langs: list[str] = []
    out_where: list[str] = []
    for text, where in docs:
        size = _utf8_len(text)
        st = stages["normalize"].stats
        st.docs_in += 1
        st.bytes_in += size
        new = normalize_text(text, cfg.normalize)
        if new != text:
            text, size = new, _utf8_len(new)
        if not text.strip():
            stages["normalize"].reject("empty after normalisation", text, where)
            continue
        st.docs_out += 1
        st.bytes_out += size

        st = stages["langid"].stats
        st.docs_in += 1
        st.bytes_in += size
        lang, _ = detect_language(text, cfg.langid)
        if cfg.langid.keep and lang not in cfg.langid.keep:
            stages["langid"].reject(f"language {lang}", text, where)
            continue
        langs[lang] += 1
        st.docs_out += 1
        st.bytes_out += size

        st = stages["quality"].stats
        st.docs_in += 1
        st.bytes_in += size
        res = quality_filter(text, lang, cfg.quality)
        if res.family:
            families[res.family] += 1
        if res.reason:
            stages["quality"].reject(res.reason, text, where)
            continue
        if res.text != text:
            lines_removed += res.lines_removed
            text, size = res.text, _utf8_len(res.text)
        st.docs_out += 1
        st.bytes_out += size

        st = stages["decontaminate"].stats
        st.docs_in += 1
        st.bytes_in += size
        if ctx.decontam and count_matches(text, ctx.decontam) >= cfg.decontam.min_matches:
            stages["decontaminate"].reject("shares an n-gram with an evaluation set", text, where)
            continue
        st.docs_out += 1
        st.bytes_out += size

        st = stages["pii"].stats
        st.docs_in += 1
        st.bytes_in += size
        new, found = scrub_pii(text, cfg.pii)
        if found:
            pii_counts.update(found)
            text, size = new, _utf8_len(new)
        st.docs_out += 1
        st.bytes_out += size

        out_texts.append(text)
        out_langs.append(lang)
        out_where.append(where)

    stages["langid"].stats.extra = {f"kept {k}": v for k, v in sorted(langs.items())}
    # which rule family judged how many documents: shows at a glance that maths met the maths rules
    stages["quality"].stats.extra = {f"judged as {k}": v for k, v in sorted(families.items())}
    if lines_removed:
        stages["quality"].stats.extra["lines removed"] = lines_removed
    stages["pii"].stats.extra = dict(sorted(pii_counts.items()))
    dc = cfg.dedup
    num_perm = dc.num_perm
    sigs = np.empty((len(out_texts), num_perm), dtype=np.uint32)
    for i, (t, lang) in enumerate(zip(out_texts, out_langs, strict=True)):
        k = dc.shingle_size_zh if lang == "zh" else dc.shingle_size
        sigs[i] = signature(t, k, dc, cfg.seed) if dc.near else 0
    arrays = {
        "exact": np.array([exact_text_key(t) for t in out_texts], dtype=np.uint64),
        "split": np.array([split_key(t, cfg.seed) for t in out_texts], dtype=np.uint64),
        "minhash": sigs,
        "bytes": np.array([_utf8_len(t) for t in out_texts], dtype=np.int64),
    }
    meta = {
        "stages": [stages[n].stats.to_dict() for n in names],
        "rejected": {f"{n}\t{r}": lst for n in names for r, lst in stages[n].rejected.items()},
        "sources": out_where,
        "langs": out_langs,
    }
    return out_texts, arrays, meta


def global_stages(
    keys: list[dict[str, np.ndarray]], cfg: Any
) -> tuple[list[np.ndarray], list[dict[str, Any]], list[tuple[str, int, int]]]:
    """Exact then near-duplicate removal over all chunks (the earliest document of a cluster is kept).

    Returns (per-chunk keep masks, stage statistics, [(stage, global index, kept duplicate's index)]
    for the rejected samples).
    """
    sizes = [k["exact"].size for k in keys]
    bounds = np.cumsum([0, *sizes])
    n = int(bounds[-1])
    nbytes = np.concatenate([k["bytes"] for k in keys]) if keys else np.zeros(0, np.int64)
    keep = np.ones(n, dtype=bool)
    stages: list[dict[str, Any]] = []
    dups: list[tuple[str, int, int]] = []
    exact = np.concatenate([k["exact"] for k in keys]) if keys else np.zeros(0, np.uint64)

    def stage(name: str, before: np.ndarray, after: np.ndarray, reason: str) -> dict[str, Any]:
        return {
            "name": name,
            "docs_in": int(before.sum()),
            "docs_out": int(after.sum()),
            "bytes_in": int(nbytes[before].sum()),
            "bytes_out": int(nbytes[after].sum()),
            "dropped": {reason: int(before.sum() - after.sum())} if before.sum() != after.sum() else {},
        }

    if cfg.dedup.exact:
        before = keep.copy()
        dup = exact_duplicates(exact)
        keep &= ~dup
        first: dict[int, int] = {}
        for i in np.flatnonzero(dup)[: cfg.rejected_samples]:
            first.setdefault(int(exact[i]), int(np.flatnonzero(exact == exact[i])[0]))
            dups.append(("dedup_exact", int(i), first[int(exact[i])]))
        stages.append(stage("dedup_exact", before, keep, "exact duplicate"))
    if cfg.dedup.near:
        before = keep.copy()
        idx = np.flatnonzero(keep)
        if idx.size:
            sigs = np.concatenate([k["minhash"] for k in keys])[idx]
            dup, root = near_duplicates(sigs, cfg.dedup)
            keep[idx[dup]] = False
            for j in np.flatnonzero(dup)[: cfg.rejected_samples]:
                dups.append(("dedup_near", int(idx[j]), int(idx[root[j]])))
        stages.append(stage("dedup_near", before, keep, "near duplicate"))
    masks = [keep[bounds[i] : bounds[i + 1]] for i in range(len(keys))]
    return masks, stages, dups


def write_rejected(
    out: Path, work: Path, metas: list[dict[str, Any]], dups: list[tuple[str, int, int]], limit: int
) -> list[str]:
    """Write up to `limit` rejected documents per stage and reason as `out/<stage>.jsonl`; returns the names."""
    if limit <= 0:
        return []
    by_stage: dict[str, list[dict[str, str]]] = {}
    taken: Counter[str] = Counter()
    for meta in metas:
        for key, samples in meta["rejected"].items():
            stage, reason = key.split("\t", 1)
            for s in samples:
                if taken[key] < limit:
                    taken[key] += 1
                    by_stage.setdefault(stage, []).append({"reason": reason, **s})
    if dups:
        sizes = [len(m["sources"]) for m in metas]
        bounds = np.cumsum([0, *sizes])
        cache: dict[int, list[str]] = {}

        def text_of(g: int) -> tuple[str, str]:
            c = int(np.searchsorted(bounds, g, side="right") - 1)
            if c not in cache:
                ch = load_chunk(work / "curate" / f"chunk-{c:06d}.npz")
                cache[c] = ch.texts if ch else []
            i = g - int(bounds[c])
            return (cache[c][i] if i < len(cache[c]) else ""), metas[c]["sources"][i]

        for stage, g, kept in dups:
            text, where = text_of(g)
            _, kept_where = text_of(kept)
            by_stage.setdefault(stage, []).append(
                {"reason": "duplicate", "source": where, "duplicate_of": kept_where, "text": text[:SAMPLE_CHARS]}
            )
    names = []
    out.mkdir(parents=True, exist_ok=True)
    for stage, rows in sorted(by_stage.items()):
        name = f"{stage}.jsonl"
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        names.append(name)
    return names
