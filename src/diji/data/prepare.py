"""`diji data prepare`: inputs → curated documents → tokenizer → token shards + manifest.json.

The run is split into stages whose results are scratch files in a sibling work directory
(`.<out>.work/`), each written atomically:

  A. curate   read inputs in a fixed order, cut them into chunks, curate each chunk in parallel
              (normalise, filter, scrub, sign) → `curate/chunk-NNNNNN.npz`
  B. global   exact + near-duplicate removal and the train/val split, from the chunks' keys (cheap,
              recomputed on every run, deterministic)
  C. tokenizer  trained on the training split unless one is given → `tokenizer.json`
  D. tokenize   per chunk → `tokens/chunk-NNNNNN.npz`
  E. publish  shards, tokenizer, manifest and rejected samples into a temporary directory that is
              renamed over `<out>` in one step.

Killing the process at any moment loses at most the chunks in flight; rerunning the same command
skips every scratch file that exists and — because every stage is a deterministic function of the
inputs and the config — produces byte-identical shards. The work directory is keyed by a fingerprint
of inputs, config and tokenizer, so a changed command starts afresh instead of mixing results.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diji import __version__
from diji.config import to_dict
from diji.data.chunks import load_chunk, save_chunk
from diji.data.curate import CurationContext, curate_chunk, global_stages, write_rejected
from diji.data.decontam import DecontamConfig
from diji.data.dedup import DedupConfig
from diji.data.filters import QualityConfig
from diji.data.langid import LangIdConfig
from diji.data.normalize import NormalizeConfig
from diji.data.pii import PIIConfig
from diji.data.readers import ReadStats, expand_inputs, iter_documents
from diji.data.report import curation_summary
from diji.data.stats import merge_stage_dicts
from diji.data.tokenizer import EOS_ID, TOKENIZER_FILE, Tokenizer, train_tokenizer
from diji.errors import DijiError
from diji.io import atomic_write_json, publish_dir, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "DataConfig",
    "curation_summary",
    "load_manifest",
    "open_shards",
    "prepare",
    "token_dtype",
    "verify_shards",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class DataConfig:
    """How `diji data prepare` reads, splits, tokenizes and shards a corpus (TOML: top-level keys)."""

    text_field: str = "text"
    """Field of each JSONL object / parquet column holding the document text."""
    val_fraction: float = 0.02
    """Fraction of documents (by content hash) held out for validation, in [0, 0.5]. 2 % leaves the
    quickstart's ~1,200-document corpus a validation split of a few dozen documents."""
    vocab_size: int = 8192
    """Vocabulary size when a tokenizer is trained (7 specials + 256 bytes + merges); at least 263."""
    num_workers: int = 0
    """Processes for curation; 0 means one per CPU core."""
    shard_tokens: int = 100_000_000
    """Maximum tokens per .bin shard (documents may continue into the next shard)."""
    seed: int = 0
    """Seed of the train/val split hash (and of the MinHash permutations)."""
    chunk_chars: int = 1_000_000
    """Documents are grouped into chunks of about this many characters: the unit of parallel work and
    of resumption. Many more chunks than workers keep every core busy to the end; the output does not
    depend on this value."""
    tokenizer_train_chars: int = 200_000_000
    """At most this many characters of the training split are used to train the tokenizer."""
    executor: str = "local"
    """'local' (multiprocessing on this machine) or 'ray' (an existing Ray cluster; extra `dist`)."""
    rejected_samples: int = 20
    """Rejected documents kept per stage and reason under `rejected/` for inspection."""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    """[normalize]: NFKC, control characters, whitespace, traditional → simplified."""
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    """[langid]: language identification and the keep list."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """[quality]: Gopher / C4 / Chinese / code quality and repetition thresholds."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """[dedup]: exact and MinHash-LSH near-duplicate removal."""
    pii: PIIConfig = field(default_factory=PIIConfig)
    """[pii]: which kinds of PII are replaced by placeholders."""
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    """[decontam]: n-gram decontamination against `--decontaminate` files."""

    def __post_init__(self) -> None:
        if not self.text_field:
            raise ValueError("text_field must be a non-empty string")
        if not 0.0 <= self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5], got {self.val_fraction}")
        if self.vocab_size < 263:
            raise ValueError(f"vocab_size must be >= 263 (7 specials + 256 bytes), got {self.vocab_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 = all cores), got {self.num_workers}")
        if self.shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {self.shard_tokens}")
        if self.chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1, got {self.chunk_chars}")
        if self.tokenizer_train_chars < 1:
            raise ValueError(f"tokenizer_train_chars must be >= 1, got {self.tokenizer_train_chars}")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {self.executor!r}")
        if self.rejected_samples < 0:
            raise ValueError(f"rejected_samples must be >= 0, got {self.rejected_samples}")

    @property
    def workers(self) -> int:
        return self.num_workers or (os.cpu_count() or 1)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the curation pool), for `timings`."""
    try:
        import resource
    except ImportError:  # not POSIX: this process only
        return time.process_time()
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _progress(iterable: Any = None, **kw: Any) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kw)


# ---- stage A: curation ------------------------------------------------------------------------------
def _iter_chunks(paths: list[Path], cfg: DataConfig, stats: ReadStats) -> Iterator[list[tuple[str, str]]]:
    buf: list[tuple[str, str]] = []
    size = 0
    for doc in iter_documents(paths, cfg.text_field, stats):
        buf.append((doc.text, f"{doc.source}:{doc.line}"))
        size += len(doc.text)
        if size >= cfg.chunk_chars:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def _curate_to_file(i: int, docs: list[tuple[str, str]], cfg: DataConfig, path: str, ctx: Any) -> int:
    texts, arrays, meta = curate_chunk(docs, cfg, ctx)
    save_chunk(Path(path), texts, arrays, meta)
    return i


def _run_curation(
    paths: list[Path], cfg: DataConfig, work: Path, stats: ReadStats, ctx: Any, show_progress: bool
) -> int:
    """Curate every chunk not already on disk; returns the number of chunks."""
    cdir = work / "curate"
    cdir.mkdir(parents=True, exist_ok=True)
    chunks = _iter_chunks(paths, cfg, stats)
    bar = _progress(desc="curate", unit="doc", disable=not show_progress)
    n = 0

    def todo() -> Iterator[tuple[int, list[tuple[str, str]], Path]]:
        nonlocal n
        for i, docs in enumerate(chunks):
            n = i + 1
            path = cdir / f"chunk-{i:06d}.npz"
            if path.exists() and load_chunk(path, with_texts=False) is not None:
                bar.update(len(docs))
                continue
            yield i, docs, path

    try:
        if cfg.executor == "ray":
            from diji.data.distributed import run_ray

            run_ray(todo(), cfg, ctx, bar)
        else:
            _run_local(todo(), cfg, ctx, bar)
    finally:
        bar.close()
    return n


def _run_local(todo: Iterator[tuple[int, list[tuple[str, str]], Path]], cfg: DataConfig, ctx: Any, bar: Any) -> None:
    first = list(itertools.islice(todo, 2))
    if cfg.workers <= 1 or len(first) < 2:
        # one chunk (or one core): a process pool would only add start-up time
        for i, docs, path in itertools.chain(first, todo):
            _curate_to_file(i, docs, cfg, str(path), ctx)
            bar.update(len(docs))
        return
    # spawn, not fork: the caller may hold torch / tokenizers thread pools that do not survive a fork
    mpctx = mp.get_context("spawn")
    window = 2 * cfg.workers  # bounded read-ahead: memory stays O(workers × chunk) for any corpus size
    with mpctx.Pool(cfg.workers) as pool:
        pending: collections.deque[tuple[Any, int]] = collections.deque()
        for i, docs, path in itertools.chain(first, todo):
            pending.append((pool.apply_async(_curate_to_file, (i, docs, cfg, str(path), ctx)), len(docs)))
            while len(pending) >= window:
                res, k = pending.popleft()
                res.get()
                bar.update(k)
        while pending:
            res, k = pending.popleft()
            res.get()
            bar.update(k)


# ---- stage B: global decisions ----------------------------------------------------------------------
@dataclass
class _Plan:
    keep: list[np.ndarray]
    """Per chunk: bool mask of documents that survive the global (dedup) stages."""
    val: list[np.ndarray]
    """Per chunk: bool mask of validation documents (a subset of `keep`)."""
    stages: list[dict[str, Any]]
    dups: list[tuple[str, int, int]]


def _must_load(path: Path, with_texts: bool = True) -> Any:
    ch = load_chunk(path, with_texts=with_texts)
    if ch is None:  # written atomically, so only outside interference gets here
        raise DijiError(f"scratch file {path} is unreadable; delete {path.parent.parent} and rerun")
    return ch


def _plan(work: Path, n_chunks: int, cfg: DataConfig) -> tuple[_Plan, list[dict[str, Any]]]:
    metas = []
    keys: list[dict[str, np.ndarray]] = []
    for i in range(n_chunks):
        ch = _must_load(work / "curate" / f"chunk-{i:06d}.npz", with_texts=False)
        metas.append(ch.meta)
        keys.append(ch.arrays)
    keep, stages, dups = global_stages(keys, cfg)
    thresh = int(cfg.val_fraction * 2**64)
    val = [(k["split"] < np.uint64(min(thresh, 2**64 - 1))) if thresh else np.zeros(len(k["split"]), bool) for k in keys]
    val = [v & m for v, m in zip(val, keep, strict=True)]
    n_kept = sum(int(m.sum()) for m in keep)
    n_val = sum(int(v.sum()) for v in val)
    if cfg.val_fraction > 0 and n_val == 0 and n_kept >= 2:
        # a tiny corpus may draw no validation document at all; hold out the one with the smallest
        # split key so that training always has a validation set (still a function of content only)
        best = None
        for c, (k, m) in enumerate(zip(keys, keep, strict=True)):
            idx = np.flatnonzero(m)
            if idx.size:
                j = idx[np.argmin(k["split"][idx])]
                if best is None or k["split"][j] < best[0]:
                    best = (k["split"][j], c, j)
        assert best is not None
        val[best[1]][best[2]] = True
    return _Plan(keep, val, stages, dups), metas


# ---- stage C/D: tokenizer and tokens ------------------------------------------------------------------
def _train_texts(work: Path, plan: _Plan, limit: int) -> Iterator[str]:
    used = 0
    for i, (keep, val) in enumerate(zip(plan.keep, plan.val, strict=True)):
        ch = _must_load(work / "curate" / f"chunk-{i:06d}.npz")
        for t, k, v in zip(ch.texts, keep, val, strict=True):
            if k and not v:
                yield t
                used += len(t)
                if used >= limit:
                    return


def _tokenize_chunks(work: Path, plan: _Plan, tok: Tokenizer, cfg: DataConfig, show_progress: bool) -> None:
    tdir = work / "tokens"
    tdir.mkdir(exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    for i in _progress(range(len(plan.keep)), desc="tokenize", unit="chunk", disable=not show_progress):
        path = tdir / f"chunk-{i:06d}.npz"
        if path.exists() and load_chunk(path, with_texts=False) is not None:
            continue
        ch = _must_load(work / "curate" / f"chunk-{i:06d}.npz")
        keep, val = plan.keep[i], plan.val[i]
        texts = [t for t, k in zip(ch.texts, keep, strict=True) if k]
        is_val = val[keep]
        ids = tok.encode_batch(texts, num_threads=cfg.workers)
        arrays = {}
        for name, want in (("train", False), ("val", True)):
            lists = [x for x, v in zip(ids, is_val, strict=True) if bool(v) == want]
            for x in lists:
                x.append(EOS_ID)  # every document ends with EOS: the loader's document boundary
            total = sum(len(x) for x in lists)
            arrays[name] = np.fromiter(itertools.chain.from_iterable(lists), dtype=dtype, count=total)
        meta = {"train_docs": int((~is_val).sum()), "val_docs": int(is_val.sum())}
        save_chunk(path, [], arrays, meta)


class _ShardWriter:
    """Streams token arrays into `<split>-NNNNN.bin` files of at most `shard_tokens` tokens."""

    def __init__(self, out: Path, split: str, shard_tokens: int) -> None:
        self.out, self.split, self.cap = out, split, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._f: Any = None
        self._h: Any = None
        self._n = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._f = open(self.out / name, "wb")  # noqa: SIM115 - spans many write() calls; closed in _close
        self._h = hashlib.sha256()
        self._n = 0
        self.shards.append({"split": self.split, "file": name, "tokens": 0, "sha256": ""})

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self.shards[-1]["tokens"] = self._n
            self.shards[-1]["sha256"] = self._h.hexdigest()
            self._f = None

    def write(self, arr: np.ndarray) -> None:
        while arr.size:
            if self._f is None:
                self._open()
            take = arr[: self.cap - self._n]
            data = take.tobytes()
            self._f.write(data)
            self._h.update(data)
            self._n += take.size
            arr = arr[take.size :]
            if self._n >= self.cap:
                self._close()

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards


# ---- the whole command --------------------------------------------------------------------------------
def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _prepare_work_dir(out_dir: Path, fingerprint: str) -> Path:
    work = out_dir.parent / f".{out_dir.name}.work"
    stamp = work / "fingerprint.json"
    if work.exists():
        try:
            same = json.loads(stamp.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            shutil.rmtree(work)
    if not work.exists():
        work.mkdir(parents=True)
        atomic_write_json(stamp, {"fingerprint": fingerprint})
    # a killed run may leave the temporary file of an unfinished atomic write (hidden, never read)
    for tmp in work.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return work


def prepare(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    cfg: DataConfig | None = None,
    tokenizer: str | Path | None = None,
    decontaminate: Iterable[str | Path] = (),
    show_progress: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Build a data directory (shards, tokenizer.json, manifest.json, rejected/) and return its manifest.

    `tokenizer` is an existing tokenizer.json (or a directory holding one); without it a tokenizer of
    `cfg.vocab_size` is trained on the training split. `decontaminate` are evaluation files whose long
    n-grams must not appear in the training data. `timings`, if given, receives the wall-clock seconds
    of each stage (curate, dedup, tokenizer, tokenize, publish) and the CPU seconds of the first two
    (`curate_and_dedup_cpu`, workers included) — kept out of the manifest, which stays a deterministic
    function of the inputs.
    """
    timings = timings if timings is not None else {}
    cfg = cfg or DataConfig()
    out_dir = Path(out_dir)
    paths = expand_inputs(inputs)
    tok_path: Path | None = None
    if tokenizer is not None:
        tok_path = Path(tokenizer)
        if tok_path.is_dir():
            tok_path = tok_path / TOKENIZER_FILE
        if not tok_path.is_file():
            raise DijiError(f"tokenizer file not found: {tok_path}")
    decon_paths = expand_inputs(decontaminate) if decontaminate else []
    input_records = [{"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in paths]
    decon_records = [{"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in decon_paths]
    config = to_dict(cfg)
    tok_sha = sha256_file(tok_path) if tok_path else None
    fingerprint = _fingerprint(
        {
            "format_version": FORMAT_VERSION,
            "diji": __version__,
            "inputs": input_records,
            "decontaminate": decon_records,
            "config": config,
            "tokenizer": tok_sha,
        }
    )
    work = _prepare_work_dir(out_dir, fingerprint)
    ctx = CurationContext.build(cfg, decon_paths, work)

    read_stats = ReadStats()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    n_chunks = _run_curation(paths, cfg, work, read_stats, ctx, show_progress)
    t1 = time.perf_counter()
    plan, metas = _plan(work, n_chunks, cfg)
    t2 = time.perf_counter()
    timings["curate"], timings["dedup"] = t1 - t0, t2 - t1
    timings["curate_and_dedup_cpu"] = _cpu_seconds() - c0
    log.info("curate: %d chunks in %.2fs; dedup and split in %.2fs", n_chunks, t1 - t0, t2 - t1)
    stages = merge_stage_dicts([m["stages"] for m in metas]) + plan.stages
    n_kept = sum(int(m.sum()) for m in plan.keep)
    if n_kept == 0:
        removed = ", ".join(
            f"{s['name']}: {s['docs_in'] - s['docs_out']}" for s in stages if s["docs_in"] != s["docs_out"]
        )
        raise DijiError(
            f"no documents left to tokenize (read {read_stats.documents} documents, "
            f"{read_stats.to_dict()['bad_total']} bad inputs; removed — {removed or 'none'}); "
            "check the inputs, --config thresholds, or the text field"
        )

    work_tok = work / TOKENIZER_FILE
    trained = tok_path is None
    if tok_path is not None:
        tok = Tokenizer.from_file(tok_path)
    else:
        if not work_tok.exists():
            train_tokenizer(
                _train_texts(work, plan, cfg.tokenizer_train_chars), cfg.vocab_size, work, show_progress=show_progress
            )
        tok = Tokenizer.from_file(work_tok)

    t3 = time.perf_counter()
    _tokenize_chunks(work, plan, tok, cfg, show_progress)
    t4 = time.perf_counter()
    timings["tokenizer"], timings["tokenize"] = t3 - t2, t4 - t3
    log.info("tokenizer in %.2fs; tokenize in %.2fs (%s)", t3 - t2, t4 - t3, tok.fast_reason)

    pub = work / "publish"
    shutil.rmtree(pub, ignore_errors=True)
    pub.mkdir()
    writers = {s: _ShardWriter(pub, s, cfg.shard_tokens) for s in ("train", "val")}
    docs = {"train": 0, "val": 0}
    for i in range(n_chunks):
        ch = _must_load(work / "tokens" / f"chunk-{i:06d}.npz", with_texts=False)
        for s in ("train", "val"):
            writers[s].write(ch.arrays[s])
            docs[s] += ch.meta[f"{s}_docs"]
    shards = writers["train"].finish() + writers["val"].finish()
    tok.save(pub)

    rejected = write_rejected(pub / "rejected", work, metas, plan.dups, cfg.rejected_samples)
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer_sha256": tok.sha256,
        "dtype": token_dtype(tok.vocab_size).name,
        "vocab_size": tok.vocab_size,
        "eos_id": EOS_ID,
        "shards": shards,
        "inputs": input_records,
        "config": config,
        "stats": {
            "read": read_stats.to_dict(),
            "stages": stages,
            "documents": docs,
            "tokens": {s: sum(x["tokens"] for x in shards if x["split"] == s) for s in ("train", "val")},
            "tokenizer": {"trained": trained, "encoder": "tiktoken" if tok.uses_fast_encoder else "tokenizers"},
            "decontaminate": decon_records,
            "rejected_files": rejected,
        },
    }
    atomic_write_json(pub / MANIFEST_FILE, manifest)
    publish_dir(pub, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    timings["publish"] = time.perf_counter() - t4
    return manifest


# ---- reading a data directory ----------------------------------------------------------------------------
def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a data directory; a one-line DijiError if it is missing, corrupt or too new."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DijiError(f"{data_dir} is not a diji data directory (no {MANIFEST_FILE}); run `diji data prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DijiError(f"{path} is corrupt: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise DijiError(f"{path}: format_version {got!r} is not supported (expected {FORMAT_VERSION})")
    return manifest


def verify_shards(data_dir: str | Path) -> dict[str, Any]:
    """Check every shard's size and sha256 and the tokenizer's sha256 against the manifest; returns it."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for s in manifest["shards"]:
        p = data_dir / s["file"]
        if not p.is_file():
            raise DijiError(f"shard {p} is missing")
        if p.stat().st_size != s["tokens"] * itemsize:
            raise DijiError(f"shard {p} has {p.stat().st_size} bytes, expected {s['tokens'] * itemsize} (truncated?)")
        if sha256_file(p) != s["sha256"]:
            raise DijiError(f"shard {p} does not match its sha256 in the manifest (corrupted)")
    tp = data_dir / TOKENIZER_FILE
    if not tp.is_file() or sha256_file(tp) != manifest["tokenizer_sha256"]:
        raise DijiError(f"{tp} is missing or does not match tokenizer_sha256 in the manifest")
    return manifest


def open_shards(data_dir: str | Path, split: str) -> list[np.memmap]:
    """Read-only memmaps of one split's shards, in order."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    dtype = np.dtype(manifest["dtype"])
    return [
        np.memmap(data_dir / s["file"], dtype=dtype, mode="r")
        for s in manifest["shards"]
        if s["split"] == split and s["tokens"] > 0
    ]
