"""Text normalisation: Unicode NFKC, control characters, whitespace, optional traditional → simplified.

NFKC (Unicode TR #15) folds compatibility forms — fullwidth Ｌａｔｉｎ and digits, ligatures, the
no-break and ideographic spaces — so that the same word is one token sequence and exact/near-duplicate
detection sees through them. Its one harmful effect on Chinese is that it also turns the fullwidth
punctuation Chinese is written with (，！？：；（）) into ASCII; `keep_cjk_punctuation` protects those
characters, which is what Chinese readers (and evaluation sets) expect.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from diji.data.textstats import codepoints
from diji.errors import DijiError


@dataclass(frozen=True)
class NormalizeConfig:
    """Normalisation applied to every document before any filter ([normalize] in TOML)."""

    enabled: bool = True
    """Run this stage at all."""
    nfkc: bool = True
    """Apply Unicode NFKC normalisation."""
    keep_cjk_punctuation: bool = True
    """Under NFKC, keep fullwidth punctuation (，！？：；（）etc.) instead of folding it to ASCII."""
    control_chars: bool = True
    """Remove C0/C1 control characters (keeping tab and newline), zero-width spaces, soft hyphens and BOMs;
    turn \\r\\n, \\r and U+2028/2029 into \\n. Zero-width joiners are kept: emoji sequences need them."""
    whitespace: bool = True
    """Strip trailing spaces on each line, strip the document's leading blank lines and trailing
    whitespace, and shorten runs of more than two blank lines to two (indentation is kept: code)."""
    traditional_to_simplified: bool = False
    """Convert traditional Chinese characters to simplified (needs the `zhconv` package, extra `data`;
    its dictionary ships with it, nothing is downloaded)."""


# Fullwidth punctuation (U+FF01–FF0F, FF1A–FF20, FF3B–FF40, FF5B–FF65) that NFKC would fold to ASCII.
_CJK_PUNCT = re.compile("[\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u200e\u200f\u2060\ufeff]")
_NEWLINES = re.compile("\r\n?|[\u2028\u2029\x85]")
_BLANKS = re.compile(r"\n{4,}")
_CJK = re.compile("[\u4e00-\u9fff]")


def _nfkc(text: str, keep_cjk_punct: bool) -> str:
    if text.isascii() or unicodedata.is_normalized("NFKC", text):
        return text
    if not keep_cjk_punct or not _CJK_PUNCT.search(text):
        return unicodedata.normalize("NFKC", text)
    out = []
    pos = 0
    for m in _CJK_PUNCT.finditer(text):
        out.append(unicodedata.normalize("NFKC", text[pos : m.start()]))
        out.append(m.group())
        pos = m.end()
    out.append(unicodedata.normalize("NFKC", text[pos:]))
    return "".join(out)


def _zhconv():
    try:
        import zhconv
    except ImportError:
        raise DijiError(
            "normalize.traditional_to_simplified needs the 'zhconv' package: pip install 'diji[data]'"
        ) from None
    return zhconv


@lru_cache(maxsize=1)
def _control_table() -> np.ndarray:
    """True for the code points (< 0x10000) that the control-character rule removes or rewrites."""
    t = np.zeros(0x10000, dtype=bool)
    for lo, hi in ((0x00, 0x09), (0x0B, 0x0D), (0x0D, 0x20), (0x7F, 0xA0)):
        t[lo:hi] = True
    for c in "\u00ad\u200b\u200e\u200f\u2060\ufeff\u2028\u2029":
        t[ord(c)] = True
    return t


def _has_controls(text: str) -> bool:
    cp = codepoints(text)
    return bool(_control_table()[cp[cp < 0x10000]].any())


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    """Apply the enabled normalisations; a pure function of (text, cfg)."""
    if not cfg.enabled:
        return text
    # Python's `re` scans at ~50 MB/s; one vectorised look-up decides whether any regex is needed.
    if cfg.control_chars and _has_controls(text):
        text = _NEWLINES.sub("\n", text)
        text = _CONTROL.sub("", text)
    if cfg.nfkc:
        text = _nfkc(text, cfg.keep_cjk_punctuation)
    if cfg.traditional_to_simplified and _CJK.search(text):
        text = _zhconv().convert(text, "zh-cn")
    if cfg.whitespace:
        if any(s in text for s in (" \n", "\t\n", "\u00a0\n", "\u3000\n")) or text.endswith((" ", "\t")):
            text = "\n".join(ln.rstrip(" \t\u00a0\u3000") for ln in text.split("\n"))
        if "\n\n\n\n" in text:
            text = _BLANKS.sub("\n\n\n", text)
        text = text.lstrip("\n").rstrip()
    return text
