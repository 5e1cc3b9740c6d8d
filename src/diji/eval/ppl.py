"""`ppl`: perplexity and bits-per-byte on held-out text.

Sources:
  * a diji data directory (`manifest.json`): its `val` split, documents separated by EOS;
  * a `.txt` file (the whole file is one document) or a `.jsonl` file with one {"text": …} per line.

The token stream is `EOS doc₁ EOS doc₂ EOS …` — the layout the model was trained on — cut into disjoint
windows of the model's context (lm-eval's rolling log-likelihood does the same: every token scored
exactly once). Document-end (EOS) targets are not scored: text files have no such token, and leaving it
out makes a data directory and the same text in a file score the same.

Bits-per-byte = Σ NLL / (ln 2 · UTF-8 bytes). Unlike perplexity it does not depend on the tokenizer, so
models with different vocabularies can be compared (Gao et al. 2020, "The Pile", §4). When the data
directory was tokenized with another tokenizer than the checkpoint's, the text is decoded and re-encoded
with the checkpoint's, so the score is still about the same bytes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from diji.data.tokenizer import Tokenizer
from diji.errors import DijiError
from diji.eval.files import nonempty_str, read_jsonl
from diji.eval.lm import LanguageModel
from diji.eval.result import EvalSettings, Metric, TaskResult
from diji.io import sha256_file

LN2 = math.log(2)


def val_stream(data_dir: Path) -> tuple[np.ndarray, dict]:
    manifest_path = data_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        shards = [s for s in manifest["shards"] if s["split"] == "val" and s.get("tokens", 1)]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DijiError(f"{manifest_path} is not a valid data manifest ({e}); re-run `diji data prepare`") from None
    arrays = []
    for shard in shards:
        path = data_dir / shard["file"]
        if not path.is_file():
            raise DijiError(f"shard {path} listed in the manifest is missing; re-run `diji data prepare`")
        arrays.append(np.fromfile(path, dtype=dtype).astype(np.int64))
    if not arrays or sum(len(a) for a in arrays) == 0:
        raise DijiError(f"{data_dir} has no 'val' split to measure perplexity on")
    return np.concatenate(arrays), manifest


def documents_from_ids(stream: np.ndarray, eos: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(stream == eos)
    docs, start = [], 0
    for c in [*cuts.tolist(), len(stream)]:
        if c > start:
            docs.append(stream[start:c])
        start = c + 1
    return docs


def load_stream(source: str | Path, tok: Tokenizer) -> tuple[np.ndarray, str, str]:
    """(token stream `EOS doc EOS doc …` in `tok`'s ids, data sha256, a description of the source)."""
    src = Path(source)
    if src.is_dir():
        if not (src / "manifest.json").is_file():
            raise DijiError(f"{src} is not a diji data directory (no manifest.json)")
        stream, manifest = val_stream(src)
        digest = sha256_file(src / "manifest.json")
        if manifest.get("tokenizer_sha256") == tok.sha256:
            return np.concatenate([[tok.eos_id], stream]), digest, f"{src} (val split)"
        data_tok = Tokenizer.from_file(src / "tokenizer.json")
        texts = [data_tok.decode(d.tolist()) for d in documents_from_ids(stream, data_tok.eos_id)]
        return _join(tok, texts), digest, f"{src} (val split, re-encoded with the checkpoint's tokenizer)"
    if not src.is_file():
        raise DijiError(f"ppl source not found: {src} (give a data directory, a .txt file or a .jsonl file)")
    if src.suffix == ".jsonl":
        rows, digest = read_jsonl(src)
        texts = [nonempty_str(obj, "text", f"{src}:{line}") for line, obj in rows]
    else:
        try:
            texts = [src.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise DijiError(f"{src}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not texts[0].strip():
            raise DijiError(f"{src} is empty")
        digest = sha256_file(src)
    return _join(tok, texts), digest, str(src)


def _join(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    ids: list[int] = [tok.eos_id]
    for enc in tok.encode_batch(texts):
        ids += enc + [tok.eos_id]
    return np.asarray(ids, dtype=np.int64)


def byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for: byte-level BPE spells every byte as one character of the
    token's string, so the string's length is the byte count; special tokens stand for no text."""
    table = np.zeros(tok.vocab_size, dtype=np.int64)
    for token, idx in tok.iter_vocab():
        if not tok.is_special(idx):
            table[idx] = len(token)
    return table


def evaluate_ppl(lm: LanguageModel, source: str | Path, settings: EvalSettings, bar, name: str) -> TaskResult:
    t0 = time.perf_counter()
    tok = lm.tokenizer
    stream, digest, described = load_stream(source, tok)
    L = min(settings.window or lm.max_length, lm.max_length)
    starts = list(range(0, len(stream) - 1, L))
    if settings.limit:
        starts = starts[: settings.limit]
    windows = [stream[s : s + L + 1].tolist() for s in starts]
    with bar(len(windows), name) as progress:
        losses = lm.token_losses(windows, progress)
    nbytes = byte_lengths(tok)
    bits, nats, byte_counts, token_counts = [], [], [], []
    for w, loss in zip(windows, losses, strict=True):
        targets = np.asarray(w[1:])
        keep = targets != tok.eos_id
        nll = float(loss.numpy()[keep].sum())
        nats.append(nll)
        bits.append(nll / LN2)
        token_counts.append(float(keep.sum()))
        byte_counts.append(float(nbytes[targets[keep]].sum()))
    if sum(byte_counts) == 0:
        raise DijiError(f"{described} holds no text to score")
    nll_tok = Metric(nats, token_counts, higher_is_better=False)
    return TaskResult(
        task=name, family="ppl", main="bits_per_byte",
        metrics={"bits_per_byte": Metric(bits, byte_counts, higher_is_better=False), "nll_per_token": nll_tok},
        unit_ids=[f"{tok.sha256[:12]}:{L}:{s}" for s in starts], data_sha256=digest,
        settings={"window": L, "limit": settings.limit, "source": described},
        extra={"perplexity": math.exp(nll_tok.score), "tokens": int(sum(token_counts)),
               "bytes": int(sum(byte_counts))},
        seconds=time.perf_counter() - t0,
    )
