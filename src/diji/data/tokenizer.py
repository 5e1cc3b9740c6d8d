"""Byte-level BPE tokenizer: trained with HF `tokenizers`, encoded fast with an exact `tiktoken` twin.

Byte-level BPE (Radford et al. 2019, GPT-2) works on UTF-8 bytes, so every string — Chinese, emoji,
NUL, `\\r\\n` — has an encoding and `decode(encode(x)) == x`. We use no normalizer and
`add_prefix_space=False` because either would change the text and break that round trip.

The special tokens have fixed ids 0..6 so that every checkpoint, chat renderer and server agrees on
them without reading the vocabulary. A special token's string inside ordinary text is encoded as the
special token: the chat renderer builds prompts as text and relies on it.

HF `tokenizers` encodes about 2 MB/s per process here. `tiktoken` runs the same algorithm — the same
pre-tokenization regex, then BPE over byte pieces — several times faster, so `encode_batch` uses a
`tiktoken.Encoding` built from our vocabulary when `tiktoken` is installed (the `fast` extra) and
gives ids identical to HF on a probe set at construction; otherwise it falls back, logging why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from diji.errors import DijiError
from diji.io import atomic_write_bytes, sha256_bytes

log = logging.getLogger(__name__)

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK = "<think>"
THINK_END = "</think>"
# Order defines the ids: PAD=0, BOS=1, EOS=2, IM_START=3, IM_END=4, THINK=5, THINK_END=6.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, IM_START, IM_END, THINK, THINK_END)
PAD_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID, THINK_ID, THINK_END_ID = range(len(SPECIAL_TOKENS))

TOKENIZER_FILE = "tokenizer.json"

# The regex HF's ByteLevel pre-tokenizer applies (GPT-2's); the tiktoken twin must use the same one.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Texts the fast encoder must encode exactly like HF before we trust it: scripts, digits, code,
# whitespace runs, specials glued to words, contractions.
_PROBES = (
    "Hello, world! It's a test: don't, we'll, they've, I'm, she'd, you're.\n",
    "def f(x):\n    return x ** 2  # square\n\n\n\tif x != 0:\r\n        pass\n",
    "中文分词测试：今天天气很好，我们去公园散步吧。《红楼梦》第1回，2024年。",
    "emoji 😀👍🏽 👨‍👩‍👧 mixed中英文text 123456789 3.14159 ١٢٣ ½ Ⅻ",
    "   leading and trailing spaces   \n\n  \u00a0nbsp\u3000ideographic\u2028sep\x00nul\x0b\x0c",
    f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n{THINK}ok{THINK_END}yes{EOS}{PAD}{BOS}",
    "Ünïcödé façade naïve résumé Ελληνικά русский язык हिन्दी 日本語のテキスト 한국어",
    "'''''' ''' s's 'S 'LL <|not special|> <|endoftext <think >",
)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (the table ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _hf():
    try:
        import tokenizers
    except ImportError as e:  # a core dependency, but say so clearly if the environment lacks it
        raise DijiError("the 'tokenizers' package is required: pip install tokenizers") from e
    return tokenizers


def _new_hf_tokenizer() -> Any:
    tk = _hf()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tk.decoders.ByteLevel()
    return tok


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: Path, show_progress: bool = True
) -> Path:
    """Train a byte-level BPE on `texts` and write `out_dir/tokenizer.json` atomically; returns its path."""
    min_vocab = len(SPECIAL_TOKENS) + 256
    if not isinstance(vocab_size, int) or vocab_size < min_vocab:
        raise DijiError(f"vocab_size must be an integer >= {min_vocab} (specials + 256 bytes), got {vocab_size}")
    tk = _hf()
    tok = _new_hf_tokenizer()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols up front, so text never seen in training still encodes (no UNK).
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:  # the trainer's contract; checked because every stage depends on it
            raise DijiError(f"tokenizer training put special token {s} at id {tok.token_to_id(s)}, expected {i}")
    out = Path(out_dir) / TOKENIZER_FILE
    atomic_write_bytes(out, tok.to_str(pretty=True).encode("utf-8"))
    return out


class Tokenizer:
    """A trained byte-level BPE: encode/decode, special ids, and a fast exact batch encoder."""

    def __init__(self, raw: bytes, source: str = "<memory>", fast: bool = True) -> None:
        tk = _hf()
        try:
            self._tok = tk.Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception subclasses with multi-line text
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DijiError(f"{source} is not a valid tokenizer.json: {first}") from None
        self._raw = raw
        self._source = source
        self._sha256 = sha256_bytes(raw)
        for i, s in enumerate(SPECIAL_TOKENS):
            if self._tok.token_to_id(s) != i:
                raise DijiError(f"{source}: special token {s} must have id {i} (found {self._tok.token_to_id(s)})")
        self._fast: Any = None
        self.fast_reason = "disabled by caller"
        if fast:
            self._fast, self.fast_reason = self._build_fast()
            log.info("tokenizer batch encoder: %s", self.fast_reason)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, fast: bool = True) -> Tokenizer:
        """Load `tokenizer.json` (or a directory containing it)."""
        p = Path(path)
        if p.is_dir():
            p = p / TOKENIZER_FILE
        if not p.is_file():
            raise DijiError(f"tokenizer file not found: {p}")
        return cls(p.read_bytes(), source=str(p), fast=fast)

    def _build_fast(self) -> tuple[Any, str]:
        try:
            import tiktoken
        except ImportError:
            return None, "HF tokenizers (tiktoken not installed; pip install 'diji[fast]' for ~5x faster encoding)"
        model = json.loads(self._raw.decode("utf-8"))["model"]
        dec = _byte_decoder()
        specials = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
        ranks: dict[bytes, int] = {}
        for token, idx in model["vocab"].items():
            if token in specials:
                continue
            try:
                ranks[bytes(dec[c] for c in token)] = idx
            except KeyError:
                return None, f"HF tokenizers (vocab token {token!r} is not byte-level)"
        try:
            enc = tiktoken.Encoding(
                name=f"diji-{self._sha256[:12]}",
                pat_str=GPT2_PATTERN,
                mergeable_ranks=ranks,
                special_tokens=specials,
            )
        except Exception as e:  # tiktoken validates ranks; any complaint means "do not use it"
            return None, f"HF tokenizers (tiktoken refused the vocabulary: {e})"
        # tiktoken merges by the rank of the merged token, HF by the rank of the merge rule; for BPE
        # trained greedily these agree, but we check instead of assuming. The probes include every
        # vocabulary token spelled out, which exercises each merge path at least once.
        vocab_text = self.decode(list(range(len(SPECIAL_TOKENS), self.vocab_size)))
        probes = list(_PROBES) + [vocab_text[i : i + 2000] for i in range(0, len(vocab_text), 2000)]
        for text in probes:
            want = self._tok.encode(text, add_special_tokens=False).ids
            if enc.encode(text, allowed_special="all") != want:
                return None, f"HF tokenizers (tiktoken disagrees with HF on probe {text[:40]!r})"
        return enc, "tiktoken (ids verified identical to HF tokenizers on probes)"

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS added; special-token strings in the text become specials."""
        if self._fast is not None:
            return self._fast.encode(text, allowed_special="all")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """Encode many texts; uses the fast exact encoder when available."""
        if self._fast is not None:
            return self._fast.encode_batch(list(texts), num_threads=num_threads, allowed_special="all")
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batch_reference(self, texts: list[str]) -> list[list[int]]:
        """Always HF `tokenizers` (the reference path the fast one is compared with)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def iter_vocab(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]))

    # ---- properties ---------------------------------------------------------------------------
    @property
    def uses_fast_encoder(self) -> bool:
        return self._fast is not None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def im_start_id(self) -> int:
        return IM_START_ID

    @property
    def im_end_id(self) -> int:
        return IM_END_ID

    @property
    def think_id(self) -> int:
        return THINK_ID

    @property
    def think_end_id(self) -> int:
        return THINK_END_ID

    @property
    def sha256(self) -> str:
        """sha256 of the tokenizer.json bytes (what manifests and lineage record)."""
        return self._sha256

    @property
    def hf(self) -> Any:
        """The underlying `tokenizers.Tokenizer` (for HF export)."""
        return self._tok

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    def save(self, out_dir: str | Path) -> Path:
        """Write the exact tokenizer.json bytes into `out_dir` (atomically); returns the path."""
        out = Path(out_dir) / TOKENIZER_FILE
        atomic_write_bytes(out, self._raw)
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self._sha256[:12]}, source={self._source!r})"

