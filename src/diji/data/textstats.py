"""Vectorised tokens and stable hashes for filters, MinHash and decontamination.

Per-token Python loops dominate the cost of curation in peers (datatrove spends ~90 % of its MinHash
time in a word tokenizer), so a document is turned into a numpy array of code points once and every
token, n-gram and shingle below is computed with array operations:

- a *token* is a run of letters/digits (a Latin, Cyrillic, … word) or one CJK / kana / hangul
  character — Chinese has no spaces, and single characters are its natural shingle unit;
- a token's hash is a polynomial hash of its code points, taken from prefix sums with precomputed
  inverse powers (all arithmetic mod 2**64, which is what numpy's uint64 overflow does), then mixed;
- hashes are pure functions of the text, identical in every process and on every machine, which
  MinHash signatures computed by different workers need.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_B = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible mod 2**64
_B_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3 fmix64 constants
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
NGRAM_MULT = np.array(
    [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F,
     0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F, 0xC2B2AE3D27D4EB4F,
     0x165667B19E3779F9, 0x27D4EB2F165667C5, 0x85EBCA77C2B2AE63, 0xCC9E2D51B873593F, 0x1B87359368E6546B,
     0x3C6EF372FE94F82B, 0xDAA66D2B9E3779B9, 0x61C8864680B583EB, 0x7FEB352D4B1C9B25, 0x2545F4914F6CDD1D],
    dtype=np.uint64,
)


def mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads polynomial hashes over all bits."""
    h = h ^ (h >> np.uint64(33))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(33))
    h = h * _MIX2
    return h ^ (h >> np.uint64(33))


@lru_cache(maxsize=1)
def _word_table() -> np.ndarray:
    """For code points below 0x10000: 0 = separator, 1 = word character, 2 = single-character token."""
    t = np.ones(0x10000, dtype=np.uint8)
    ascii_word = np.zeros(128, dtype=np.uint8)
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        ascii_word[ord(c)] = 1
    t[:128] = ascii_word
    t[0x80:0xC0] = 0  # Latin-1 punctuation and symbols
    t[0xD7] = t[0xF7] = 0  # × ÷
    t[0x2000:0x2070] = 0  # general punctuation, spaces
    t[0x20A0:0x2C00] = 0  # currency, arrows, maths, box drawing, dingbats
    t[0x3000:0x3040] = 0  # CJK punctuation (、。「」 …)
    t[0xFE30:0xFE70] = 0  # CJK compatibility forms
    t[0xFF00:0xFF10] = t[0xFF1A:0xFF21] = t[0xFF3B:0xFF41] = t[0xFF5B:0xFF66] = 0  # fullwidth punctuation
    t[0xD800:0xE000] = 0  # surrogates
    t[0x3040:0x3100] = 2  # hiragana, katakana
    t[0x3400:0x4DC0] = 2  # CJK extension A
    t[0x4E00:0xA000] = 2  # CJK unified ideographs
    t[0xAC00:0xD7B0] = 2  # hangul syllables
    t[0xF900:0xFB00] = 2  # CJK compatibility ideographs
    return t


def codepoints(text: str) -> np.ndarray:
    """The text's code points as uint32 (surrogates, which cannot be encoded, become U+FFFD)."""
    return np.frombuffer(text.encode("utf-32-le", "replace"), dtype=np.uint32)


def char_classes(cp: np.ndarray) -> np.ndarray:
    """0 separator / 1 word char / 2 single-char token, per code point."""
    table = _word_table()
    high = cp >= 0x10000
    if not high.any():  # the common case: one table look-up
        return table[cp]
    cls = table[np.where(high, 0, cp)]
    hi = cp[high]
    # supplementary planes: CJK extensions B–H are single-char tokens; emoji and symbols separate
    cls[high] = np.where((hi >= 0x20000) & (hi < 0x32000), 2, np.where(hi >= 0x1F000, 0, 1)).astype(np.uint8)
    return cls


def token_spans(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the tokens in `cp`."""
    if cp.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cls = char_classes(cp)
    word = cls == 1
    single = cls == 2
    prev_word = np.concatenate(([False], word[:-1]))
    next_word = np.concatenate((word[1:], [False]))
    start_mask = (word & ~prev_word) | single
    end_mask = (word & ~next_word) | single
    return np.flatnonzero(start_mask), np.flatnonzero(end_mask) + 1


@lru_cache(maxsize=8)
def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    pw = np.empty(n, dtype=np.uint64)
    inv = np.empty(n, dtype=np.uint64)
    pw[0] = inv[0] = 1
    if n > 1:
        pw[1:] = _B
        inv[1:] = _B_INV
        with np.errstate(over="ignore"):
            np.cumprod(pw, out=pw)
            np.cumprod(inv, out=inv)
    return pw, inv


def _pow_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    size = 1 << max(12, (n - 1).bit_length())  # round up so the cache is reused across documents
    pw, inv = _powers(size)
    return pw[:n], inv[:n]


def token_hashes(cp: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Stable 64-bit hash of each token (of lower-cased text, if the caller lower-cased it)."""
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64)
    pw, inv = _pow_tables(cp.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(cp.size + 1, dtype=np.uint64)
        np.cumsum((cp.astype(np.uint64) + np.uint64(1)) * pw[: cp.size], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * inv[starts]
    return mix64(h)


def ngram_keys(th: np.ndarray, n: int, prev: np.ndarray | None = None) -> np.ndarray:
    """Unmixed keys of every window of `n` token hashes: equal windows give equal keys, and distinct
    windows collide with probability ~2⁻⁶⁴. `prev` (the keys for n-1) makes the next length one step."""
    m = th.size - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        if prev is not None and prev.size == m + 1:
            return prev[:m] + th[n - 1 : n - 1 + m] * NGRAM_MULT[(n - 1) % NGRAM_MULT.size]
        g = th[:m] * NGRAM_MULT[0]
        for k in range(1, n):
            g = g + th[k : k + m] * NGRAM_MULT[k % NGRAM_MULT.size]
    return g


def ngram_hashes(th: np.ndarray, n: int) -> np.ndarray:
    """Well-mixed 64-bit hash of every window of `n` consecutive token hashes (order-sensitive)."""
    return mix64(ngram_keys(th, n) + np.uint64(n))


@lru_cache(maxsize=4)
def tokens(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, char lengths, starts) of the lower-cased text's tokens.

    Cached for the last few texts: the repetition filter, decontamination and MinHash all tokenize the
    same document, and a str is its own cache key (its hash is computed once per object).
    """
    cp = codepoints(text.lower())
    s, e = token_spans(cp)
    out = (token_hashes(cp, s, e), (e - s), s)
    for a in out:
        a.setflags(write=False)  # shared through the cache: nobody may modify them
    return out
