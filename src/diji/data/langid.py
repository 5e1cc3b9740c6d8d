"""Language identification without downloads: a script + stop-word heuristic, or py3langid's shipped model.

The default `script` backend answers the question the pipeline actually asks — which filter family
applies and is the language on the keep list — for zh, en and source code:

- `code`: at least `code_line_fraction` of the non-blank lines look like program text (a keyword at
  the start, an assignment, a call or definition ending in `:`/`{`/`;`/`)`, a comment marker, or a
  closing bracket). Code is a language of its own here because English prose rules (stop words, word
  length, terminal punctuation) would reject all of it;
- `zh` / `ja` / `ko`: by script — Han characters without kana are Chinese, kana means Japanese, hangul
  Korean. One Han character carries about as much as one English word, so Han characters are weighed
  against Latin *words*, not letters;
- `en`: Latin script with at least `en_min_stopword_fraction` of words from a list of English function
  words (other Latin-script languages use few of them), else `other`.

`py3langid` (Lui & Baldwin 2012's langid.py, its model inside the wheel) covers 97 languages; the code
rule still runs first because no natural-language identifier knows code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from diji.data.textstats import char_classes, codepoints
from diji.errors import DijiError

LANGS = ("zh", "en", "code", "ja", "ko", "other", "unknown")


@dataclass(frozen=True)
class LangIdConfig:
    """Language identification and the keep list ([langid] in TOML)."""

    enabled: bool = True
    """Identify languages (filters pick their rules by language; when False every document is 'en')."""
    backend: str = "script"
    """'script' (built-in heuristic, zh/en/code/ja/ko/other) or 'py3langid' (extra `data`)."""
    keep: tuple[str, ...] = ("zh", "en", "code")
    """Languages kept; an empty list keeps every language. Labels: zh, en, code, ja, ko, other, unknown
    (and any ISO 639-1 code py3langid returns)."""
    code_line_fraction: float = 0.4
    """A document is code when at least this fraction of its non-blank lines look like code."""
    en_min_stopword_fraction: float = 0.08
    """Latin-script text is English when at least this fraction of its words are English function words."""
    sample_chars: int = 20_000
    """Only the first this-many characters are examined (language rarely changes mid-document)."""

    def __post_init__(self) -> None:
        if self.backend not in ("script", "py3langid"):
            raise ValueError(f"langid.backend must be 'script' or 'py3langid', got {self.backend!r}")
        if not 0.0 < self.code_line_fraction <= 1.0:
            raise ValueError(f"langid.code_line_fraction must be in (0, 1], got {self.code_line_fraction}")
        if not 0.0 <= self.en_min_stopword_fraction <= 1.0:
            raise ValueError(f"langid.en_min_stopword_fraction must be in [0, 1], got {self.en_min_stopword_fraction}")
        if self.sample_chars < 100:
            raise ValueError(f"langid.sample_chars must be >= 100, got {self.sample_chars}")


EN_STOPWORDS = frozenset(
    ["the", "of", "and", "to", "in", "is", "that", "it", "for", "was", "on", "are", "as", "with", "be", "by", "this", "at", "from", "or", "an", "have", "not", "but", "what", "all", "were", "when", "we", "there", "can", "which", "their", "if", "will", "has", "been", "one", "would", "you", "they", "he", "she", "his", "her", "its", "our", "who", "do", "does", "did", "so", "than", "then", "these", "those", "them", "into", "only", "also", "may", "should", "could", "about", "more", "other"]
)
_CODE_START = re.compile(
    r"(?:def|class|import|from|return|elif|else|try|except|finally|raise|yield|async|await|lambda|pass|"
    r"break|continue|assert|global|nonlocal|with|while|for|if|del|print|"
    r"public|private|protected|static|void|int|char|bool|const|let|var|function|package|fn|use|impl|"
    r"struct|enum|namespace|template|typedef|switch|case|default|SELECT|INSERT|UPDATE|CREATE)\b"
    r"|[\w.\[\]]+\s*(?:[-+*/%&|^]|<<|>>|//|\*\*)?=(?!=)\s*\S"  # an assignment
)
_CALL = re.compile(r"\w\(")
_COMMENT_START = ("#", "//", "/*", "*/", "-- ", "@", "<!--", "<?")
_CLOSERS = frozenset(("}", ")", "]", "};", ");", "),", "],", "},", "})", "])", "end"))
_CODE_END = ("{", "}", ";")
_CALL_END = (")", ":", ";", "{", ",", "):", "),")
_QUOTES = ("'", '"', "b'", 'b"', "r'", 'r"', "f'", 'f"', "u'", 'u"')
_MAX_LINES = 200


def _is_code_line(s: str) -> bool:
    """Cheap tests on a stripped, non-empty line (string methods first; regexes are anchored)."""
    if s.startswith(_COMMENT_START) or s.endswith(_CODE_END) or s in _CLOSERS:
        return True
    if s.startswith(_QUOTES) and s.rstrip(",:)]").endswith(("'", '"')):
        return True  # a string literal in a data table
    if " # " in s and not s.startswith("#"):
        return True  # code with a trailing comment
    if s.endswith(_CALL_END) and _CALL.search(s):
        return True  # a call or a definition
    return _CODE_START.match(s) is not None


def _code_fraction(sample: str) -> float:
    n = code = 0
    for ln in sample.split("\n", 4 * _MAX_LINES):
        s = ln.strip()
        if not s:
            continue
        n += 1
        code += _is_code_line(s)
        if n >= _MAX_LINES or (n >= 40 and code <= n // 20):
            break  # enough lines, or 40 lines of clear prose: the answer will not change
    return code / n if n >= 3 else 0.0


_HAN, _KANA, _HANGUL, _LATIN = 1, 2, 3, 4


@lru_cache(maxsize=1)
def _script_table() -> np.ndarray:
    """Script of each code point below 0x10000 (0: other)."""
    t = np.zeros(0x10000, dtype=np.uint8)
    for lo, hi in ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00)):
        t[lo:hi] = _HAN
    t[0x3040:0x3100] = _KANA
    t[0xAC00:0xD7B0] = _HANGUL
    t[0x41:0x5B] = t[0x61:0x7B] = t[0xC0:0x250] = _LATIN
    t[0xD7] = t[0xF7] = 0
    return t


def detect_script(text: str, cfg: LangIdConfig) -> tuple[str, float]:
    """(label, confidence in [0, 1]) by the script heuristic described in the module docstring."""
    sample = text[: cfg.sample_chars]
    code = _code_fraction(sample)
    if code >= cfg.code_line_fraction:
        return "code", code
    cp = codepoints(sample)
    script = _script_table()[np.where(cp < 0x10000, cp, 0)]
    counts = np.bincount(script, minlength=5)
    han, kana, hangul = int(counts[_HAN]), int(counts[_KANA]), int(counts[_HANGUL])
    word = char_classes(cp) == 1
    # a word starts where a word character follows a non-word character; its script is its first letter's
    starts = word & ~np.concatenate(([False], word[:-1]))
    first = script[starts]
    n_latin = int(np.count_nonzero(first == _LATIN))
    n_other = int(np.count_nonzero((first == 0) & (cp[starts] >= 0x250)))
    total = han + kana + hangul + n_latin + n_other
    if total < 5:
        return "unknown", 0.0
    if kana and kana >= 0.1 * (han + kana) and (han + kana) / total >= 0.3:
        return "ja", (han + kana) / total
    if hangul / total >= 0.3:
        return "ko", hangul / total
    if han / total >= 0.3:
        return "zh", han / total
    if n_latin / total >= 0.5:
        words = sample.lower().split()
        # map() over a frozenset's __contains__ runs in C; function words rarely carry punctuation
        stop = sum(map(EN_STOPWORDS.__contains__, words)) / max(1, len(words))
        if stop >= cfg.en_min_stopword_fraction:
            return "en", n_latin / total
        return "other", n_latin / total
    return "other", n_other / total


def detect_py3langid(text: str, cfg: LangIdConfig) -> tuple[str, float]:
    sample = text[: cfg.sample_chars]
    code = _code_fraction(sample)
    if code >= cfg.code_line_fraction:
        return "code", code
    try:
        import py3langid
    except ImportError:
        raise DijiError("langid.backend = 'py3langid' needs the 'py3langid' package: pip install 'diji[data]'") from None
    lang, score = py3langid.classify(sample)
    return lang, float(score)


def detect_language(text: str, cfg: LangIdConfig) -> tuple[str, float]:
    """(label, confidence) with the configured backend."""
    if not cfg.enabled:
        return "en", 1.0
    if cfg.backend == "py3langid":
        return detect_py3langid(text, cfg)
    return detect_script(text, cfg)
