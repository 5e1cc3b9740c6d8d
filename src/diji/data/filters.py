"""Quality filters: pure `(text, config) -> None | reason` functions, chosen by the document's language.

- English / other Latin prose: Gopher quality rules (Rae et al. 2021, "Scaling Language Models", app.
  A.1.1: word count, mean word length, symbol-to-word ratio, bullet and ellipsis lines, alphabetic
  words, stop words) and C4 line rules (Raffel et al. 2020, §2.2: terminal punctuation, short lines,
  "javascript" and cookie/policy boilerplate, lorem ipsum, curly brackets).
- Chinese: the same intents measured in characters — a Chinese "word" is ~1.5 characters and is
  not delimited by spaces, so English word rules would reject all of it. Length in Han characters,
  CJK ratio, sentence punctuation density (keyword spam has none), function characters (的了是…) as
  stop words, and C4-style line rules with Chinese terminal punctuation and boilerplate phrases.
- Code: the line-length and alphanumeric rules used to clean The Stack / StarCoder (Li et al. 2023),
  plus an auto-generated-file marker. Prose rules are not applied to code.
- Maths: a document whose lines are mostly equations, worked steps or LaTeX (`48/2 = 24`, `\\frac{a}{b}`,
  `解：5×3=15（个）`) is judged by rules made for it — length in characters, a symbol-soup bound on the
  characters that are neither letters, digits, whitespace nor mathematical notation, some words or
  Han characters in the text, line-length bounds — and then by the Gopher repetition rules. The intent
  follows OpenWebMath (Paster et al. 2023) and FineMath (Allal et al. 2025, HuggingFaceTB), which exist
  because prose filters (Gopher's "80 % alphabetic words", C4's terminal punctuation) discard maths;
  the detection and thresholds here are diji's own.
- Repetition (Gopher app. A.1.2) for every language: duplicate line / paragraph fractions (by count and
  by characters), the share of the most frequent 2/3/4-gram, and the fraction of characters inside
  repeated 5..10-grams. Chinese uses character n-grams twice as long (one word ≈ two characters).

Thresholds live in `QualityConfig`; the defaults are the papers' values, loosened only where noted.
Each check returns the first failing rule as a short reason string used in statistics and `rejected/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from diji.data.textstats import char_classes, codepoints, ngram_keys, tokens


@dataclass(frozen=True)
class QualityConfig:
    """Quality and repetition thresholds ([quality] in TOML). Set a bound to 0 (or 1 for fractions) to disable it."""

    enabled: bool = True
    """Run the quality and repetition filters."""
    # -- Gopher quality (English and other Latin-script prose)
    min_words: int = 50
    """Gopher: fewer whitespace-separated words than this → drop."""
    max_words: int = 100_000
    """Gopher: more words than this → drop."""
    min_mean_word_length: float = 3.0
    """Gopher: mean word length (characters) below this → drop."""
    max_mean_word_length: float = 10.0
    """Gopher: mean word length above this → drop."""
    max_symbol_word_ratio: float = 0.1
    """Gopher: ('#' + '...' + '…') per word above this → drop."""
    max_bullet_lines_fraction: float = 0.9
    """Gopher: fraction of lines starting with a bullet (•, -, *, ‣ …) above this → drop."""
    max_ellipsis_lines_fraction: float = 0.3
    """Gopher: fraction of lines ending with an ellipsis above this → drop."""
    min_alpha_words_fraction: float = 0.8
    """Gopher: fraction of words containing a letter below this → drop."""
    min_stop_words: int = 2
    """Gopher: fewer distinct words from (the, be, to, of, and, that, have, with) than this → drop."""
    # -- C4 (English)
    c4_lorem_ipsum: bool = True
    """C4: drop documents containing 'lorem ipsum'."""
    c4_curly_bracket: bool = False
    """C4: drop documents containing '{' (off by default: it also removes maths and code snippets)."""
    c4_remove_boilerplate_lines: bool = True
    """C4: remove lines mentioning 'javascript' or cookie / terms-of-use / privacy-policy boilerplate."""
    c4_terminal_punctuation: bool = False
    """C4: keep only lines ending in terminal punctuation (off by default: it strips headings,
    signatures and examples from documentation; turn on for web crawls, see examples/data-web.toml)."""
    c4_min_words_per_line: int = 0
    """C4: remove lines with fewer words than this (C4 uses 3 for web crawls)."""
    c4_min_sentences: int = 0
    """C4: after line removal, fewer sentences than this → drop (C4 uses 5 for web crawls)."""
    # -- Chinese
    zh_min_chars: int = 50
    """Chinese: fewer Han characters than this → drop."""
    zh_max_chars: int = 500_000
    """Chinese: more Han characters than this → drop."""
    zh_min_cjk_fraction: float = 0.3
    """Chinese: Han characters over all non-space characters below this → drop (markup or code dumps)."""
    zh_max_chars_per_punctuation: float = 120.0
    """Chinese: Han characters per sentence punctuation mark (。！？；，、：) above this → drop (keyword spam)."""
    zh_min_stop_char_fraction: float = 0.005
    """Chinese: function characters (的 了 是 在 和 有 不 这 我 也 就 都 …) over Han characters below this → drop."""
    zh_max_symbol_ratio: float = 0.1
    """Chinese: ('#' + '...' + '…') per Han character above this → drop."""
    zh_remove_boilerplate_lines: bool = True
    """C4 for Chinese: remove lines with boilerplate (版权所有, 隐私政策, 使用条款, 请启用JavaScript, Cookie …)."""
    # -- code
    code_max_line_length: int = 1000
    """Code: a line longer than this → drop (minified or data blobs)."""
    code_max_mean_line_length: float = 100.0
    """Code: mean line length above this → drop."""
    code_min_alnum_fraction: float = 0.25
    """Code: alphanumeric characters over all characters below this → drop."""
    code_drop_autogenerated: bool = True
    """Code: drop files whose first lines say they are generated ('auto-generated', 'do not edit', …)."""
    code_min_chars: int = 20
    """Code: fewer characters than this → drop."""
    code_max_foreign_symbol_fraction: float = 0.05
    """Code: non-ASCII symbols (not letters, digits or CJK: §, ¤, •, box drawing …) over non-space characters
    above this → drop. Program text's punctuation is ASCII; a symbol dump that happens to hold a few
    assignments is not code (diji's own rule, in the spirit of The Stack's alphanumeric bound)."""
    # -- maths (documents that are mostly equations / worked solutions / LaTeX)
    math_detect: bool = True
    """Judge maths documents by the maths rules below instead of the prose word rules."""
    math_line_fraction: float = 0.25
    """A document is maths when at least this fraction of its non-blank lines hold an equation or LaTeX."""
    math_min_chars: int = 40
    """Maths: fewer non-space characters than this → drop."""
    math_max_chars: int = 500_000
    """Maths: more non-space characters than this → drop."""
    math_max_stray_symbol_fraction: float = 0.1
    """Maths: characters that are not letters, digits, whitespace or mathematical notation, over all
    non-space characters, above this → drop ("symbol soup")."""
    math_min_word_fraction: float = 0.2
    """Maths: letters and Han characters over non-space characters below this → drop (digit or operator
    dumps with no text: a worked solution names what it computes; LaTeX commands count as letters)."""
    math_min_ngram_tokens: int = 200
    """Maths: the Gopher n-gram repetition rules apply from this many tokens on (see `repetition`);
    shorter maths documents are checked for duplicate lines and paragraphs only."""
    math_max_line_length: int = 2000
    """Maths: a line longer than this → drop (minified markup, data blobs)."""
    # -- repetition (all languages)
    max_duplicate_line_fraction: float = 0.3
    """Gopher: fraction of lines that duplicate an earlier line above this → drop."""
    max_duplicate_paragraph_fraction: float = 0.3
    """Gopher: fraction of paragraphs that duplicate an earlier one above this → drop."""
    max_duplicate_line_char_fraction: float = 0.2
    """Gopher: fraction of characters in duplicated lines above this → drop."""
    max_duplicate_paragraph_char_fraction: float = 0.2
    """Gopher: fraction of characters in duplicated paragraphs above this → drop."""
    top_ngram_max_fraction: tuple[float, float, float] = (0.2, 0.18, 0.16)
    """Gopher: character share of the most frequent 2-, 3-, 4-gram above these → drop."""
    duplicate_ngram_max_fraction: tuple[float, float, float, float, float, float] = (0.30, 0.29, 0.28, 0.27, 0.26, 0.25)
    """Fraction of characters inside repeated 5-, 6-, …, 10-grams above these → drop. Gopher's values
    (0.15 … 0.10) were tuned on web pages; reference documentation legitimately repeats phrases
    (overriding methods repeat their parent's docstring: 43 % of the quickstart's docstring documents
    exceed 0.15, 17 % exceed 0.30), so the default is 0.15 looser. examples/data-web.toml restores Gopher's."""
    code_max_duplicate_line_fraction: float = 0.7
    """Code repeats lines legitimately (`pass`, `}`, `return None`); its own, looser bound on duplicate
    lines. The other repetition rules do not apply to code."""

    def __post_init__(self) -> None:
        fractions = (
            "max_bullet_lines_fraction", "max_ellipsis_lines_fraction", "min_alpha_words_fraction",
            "zh_min_cjk_fraction", "zh_min_stop_char_fraction", "code_min_alnum_fraction",
            "max_duplicate_line_fraction", "max_duplicate_paragraph_fraction", "max_duplicate_line_char_fraction",
            "max_duplicate_paragraph_char_fraction", "code_max_duplicate_line_fraction", "math_line_fraction",
            "math_max_stray_symbol_fraction", "math_min_word_fraction", "code_max_foreign_symbol_fraction",
        )
        for name in fractions:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"quality.{name} must be in [0, 1], got {v}")
        if len(self.top_ngram_max_fraction) != 3:
            raise ValueError("quality.top_ngram_max_fraction needs 3 values (for 2-, 3-, 4-grams)")
        if len(self.duplicate_ngram_max_fraction) != 6:
            raise ValueError("quality.duplicate_ngram_max_fraction needs 6 values (for 5- to 10-grams)")
        if self.min_words < 0 or self.max_words < self.min_words:
            raise ValueError(f"quality.min_words/max_words must satisfy 0 <= min <= max, got {self.min_words}/{self.max_words}")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("quality.min_mean_word_length must be <= max_mean_word_length")


Reason = str | None

GOPHER_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
ZH_STOP_CHARS = "的了是在和有不这我也就都一个们上他她它你说要到着与及或而为之其"
_TERMINAL = (".", "!", "?", '"', "'", "”", "’", ")", ":")
_ZH_TERMINAL = ("。", "！", "？", "…", "」", "』", "”", "）", "：", ".", "!", "?", '"', ")")
# Substring tests on lower-cased text: an IGNORECASE regex alternation scans ~10x slower.
_EN_BOILERPLATE = ("javascript", "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                   "use cookies")
_ZH_BOILERPLATE = ("版权所有", "隐私政策", "隐私条款", "使用条款", "服务条款", "免责声明", "javascript", "cookie",
                   "icp备", "增值电信业务")


def _has_any(text: str, phrases: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(p in low for p in phrases)
_AUTOGEN = re.compile(
    r"auto-?generated|autogenerated|generated by|do not edit|don't edit|generated from|machine generated",
    re.IGNORECASE,
)
# An equation or worked step: an operand, `=` (or ≈ ≤ ≥ ≠ <), an operand; an arithmetic operator between
# spaced or explicit-operator operands (`3 × 4`, `48/2`); or a LaTeX maths command / delimiter.
_MATH_LINE = re.compile(
    r"[\w)\]}.%²³]\s*(?:=|≈|≤|≥|≠|<=|>=)\s*[-−+(\[{$\\\w.]"
    r"|\d\s*[×÷·*/^]\s*[\d(]|\d\s+[-+−]\s+\d"
    r"|\\(?:frac|sqrt|sum|int|prod|lim|cdot|times|div|pm|leq|geq|neq|approx|alpha|beta|theta|pi|infty|"
    r"begin|end|left|right|mathbb|mathrm|text|dfrac|binom|log|sin|cos)\b|\$[^$\n]+\$|\\\(|\\\["
)
_MATH_MARK = re.compile(r"[\d\\×÷√π²³∑∫≈≤≥≠]")
# Characters that mathematical writing uses besides letters and digits (ASCII operators and brackets,
# Unicode operators, arrows, Greek, super/subscripts, CJK and full-width punctuation of Chinese solutions).
_MATH_SYMBOLS = frozenset(
    "=+-*/^()[]{}<>.,:;!?|\\$_'\"%&~×÷·≈≤≥≠±∓√∑∏∫∂∞∈∉⊂⊆∪∩→←↔⇒⇔∴∵°′″πθαβγδλμσφωΔΣΠΩ²³¹⁰⁴⁵⁶⁷⁸⁹⁺⁻₀₁₂₃₄₅₆₇₈₉"
    "。，、；：？！（）《》「」『』【】“”‘’…—－＝＋×÷％"
)
_PARA_SPLIT = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"[.!?。！？](?:\s|$)")


# ---- helpers ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _zh_table() -> np.ndarray:
    """Per code point < 0x10000: bit 1 Han character, bit 2 sentence punctuation, bit 4 function character."""
    t = np.zeros(0x10000, dtype=np.uint8)
    for lo, hi in ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00)):
        t[lo:hi] |= 1
    for c in "。！？；，、：!?;":
        t[ord(c)] |= 2
    for c in ZH_STOP_CHARS:
        t[ord(c)] |= 4
    return t


@lru_cache(maxsize=1)
def _space_table() -> np.ndarray:
    t = np.zeros(0x10000, dtype=bool)
    for c in " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000":
        t[ord(c)] = True
    t[0x2000:0x200B] = True
    return t


def _alpha_words(text: str) -> int:
    """Number of whitespace-separated words containing a letter (vectorised `\\S*[^\\W\\d_]\\S*`)."""
    cp = codepoints(text)
    cp16 = np.where(cp < 0x10000, cp, 0)
    space = _space_table()[cp16]
    letter = (char_classes(cp) > 0) & ~((cp >= 0x30) & (cp <= 0x39))
    starts = ~space & np.concatenate(([True], space[:-1]))
    word_id = np.cumsum(starts) - 1
    inword = ~space
    has = np.bincount(word_id[inword & letter], minlength=int(starts.sum()))
    return int(np.count_nonzero(has))


_BULLETS = ("•", "●", "○", "◦", "‣", "⁃", "▪", "■", "□", "- ", "* ", "· ", "-\t", "*\t")


def _line_shape(text: str, cfg: QualityConfig, prefix: str) -> Reason:
    lines = _lines(text)
    if not lines:
        return None
    bullets = sum(1 for ln in lines if ln.lstrip().startswith(_BULLETS))
    if bullets / len(lines) > cfg.max_bullet_lines_fraction:
        return f"{prefix}: bullet lines"
    ellipsis = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…")))
    if ellipsis / len(lines) > cfg.max_ellipsis_lines_fraction:
        return f"{prefix}: ellipsis lines"
    return None


@lru_cache(maxsize=1)
def _math_table() -> np.ndarray:
    t = np.zeros(0x10000, dtype=bool)
    t[[ord(c) for c in _MATH_SYMBOLS]] = True
    return t


def _lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln.strip()]


def duplicate_fractions(parts: list[str]) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier part, fraction of characters in those repeats)."""
    if not parts:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = total = 0
    for p in parts:
        total += len(p)
        if p in seen:
            dup += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    return dup / len(parts), dup_chars / max(1, total)


def _repeated(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sort order, sorted keys, per-position flag 'this key occurs more than once') with one argsort."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    same = sk[1:] == sk[:-1]
    flag_sorted = np.concatenate((same, [False])) | np.concatenate(([False], same))
    flag = np.empty(keys.size, dtype=bool)
    flag[order] = flag_sorted
    return order, sk, flag


def top_ngram_share(th: np.ndarray, lens: np.ndarray, n: int, keys: np.ndarray | None = None) -> float:
    """Gopher: characters of the most frequent n-gram (counted at every occurrence) over all token characters."""
    g = ngram_keys(th, n) if keys is None else keys
    if g.size == 0:
        return 0.0
    order, sk, _ = _repeated(g)
    starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
    counts = np.diff(np.concatenate((starts, [sk.size])))
    k = int(np.argmax(counts))
    if counts[k] <= 1:
        return 0.0
    first = int(order[starts[k]])  # stable sort: the earliest occurrence
    return float(counts[k] * lens[first : first + n].sum()) / max(1, int(lens.sum()))


def duplicate_ngram_share(th: np.ndarray, lens: np.ndarray, n: int, keys: np.ndarray | None = None) -> float:
    """Gopher: fraction of token characters covered by n-grams that occur more than once."""
    g = ngram_keys(th, n) if keys is None else keys
    if g.size == 0:
        return 0.0
    pos = np.flatnonzero(_repeated(g)[2])
    if pos.size == 0:
        return 0.0
    size = th.size + 1
    cover = np.cumsum(np.bincount(pos, minlength=size) - np.bincount(pos + n, minlength=size))[: th.size] > 0
    return float(lens[cover].sum()) / max(1, int(lens.sum()))


# ---- line rules (these edit the document; they return the new text) ------------------------------------
def c4_clean_lines(text: str, cfg: QualityConfig) -> str:
    """C4 line removal for English-like text (each rule optional)."""
    boiler = cfg.c4_remove_boilerplate_lines and _has_any(text, _EN_BOILERPLATE)
    if not (boiler or cfg.c4_terminal_punctuation or cfg.c4_min_words_per_line):
        return text  # one scan of the whole text instead of one per line
    kept = []
    for ln in text.split("\n"):
        s = ln.strip()
        if s:
            if boiler and _has_any(s, _EN_BOILERPLATE):
                continue
            if cfg.c4_terminal_punctuation and not s.endswith(_TERMINAL):
                continue
            if cfg.c4_min_words_per_line and len(s.split()) < cfg.c4_min_words_per_line:
                continue
        kept.append(ln)
    return "\n".join(kept).strip()


def zh_clean_lines(text: str, cfg: QualityConfig) -> str:
    """C4-style line removal for Chinese: boilerplate phrases."""
    if not cfg.zh_remove_boilerplate_lines or not _has_any(text, _ZH_BOILERPLATE):
        return text
    return "\n".join(ln for ln in text.split("\n") if not _has_any(ln, _ZH_BOILERPLATE)).strip()


# ---- document rules ------------------------------------------------------------------------------------
def gopher_quality(text: str, cfg: QualityConfig) -> Reason:
    """Gopher quality rules on whitespace-separated words."""
    words = text.split()
    n = len(words)
    if n < cfg.min_words:
        return "gopher: too few words"
    if cfg.max_words and n > cfg.max_words:
        return "gopher: too many words"
    mean_len = sum(map(len, words)) / n
    if mean_len < cfg.min_mean_word_length:
        return "gopher: mean word length too short"
    if mean_len > cfg.max_mean_word_length:
        return "gopher: mean word length too long"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > cfg.max_symbol_word_ratio:
        return "gopher: symbol-to-word ratio"
    reason = _line_shape(text, cfg, "gopher")
    if reason:
        return reason
    if _alpha_words(text) / n < cfg.min_alpha_words_fraction:
        return "gopher: too few alphabetic words"
    if cfg.min_stop_words and len(GOPHER_STOP_WORDS.intersection(text.lower().split())) < cfg.min_stop_words:
        return "gopher: too few stop words"
    return None


def c4_document(text: str, cfg: QualityConfig) -> Reason:
    """C4 document rules (after line cleaning)."""
    if not text.strip():
        return "c4: no lines left"
    low = text.lower()
    if cfg.c4_lorem_ipsum and "lorem ipsum" in low:
        return "c4: lorem ipsum"
    if cfg.c4_curly_bracket and "{" in text:
        return "c4: curly bracket"
    if cfg.c4_min_sentences and len(_SENTENCE_END.findall(text)) < cfg.c4_min_sentences:
        return "c4: too few sentences"
    return None


def zh_quality(text: str, cfg: QualityConfig) -> Reason:
    """Chinese-aware quality rules, measured in Han characters."""
    cp = codepoints(text)
    flags = _zh_table()[np.where(cp < 0x10000, cp, 0)]
    han = int(np.count_nonzero(flags & 1))
    if han < cfg.zh_min_chars:
        return "zh: too few characters"
    if cfg.zh_max_chars and han > cfg.zh_max_chars:
        return "zh: too many characters"
    non_space = len(text) - sum(text.count(c) for c in " \n\t")
    if han / max(1, non_space) < cfg.zh_min_cjk_fraction:
        return "zh: low CJK ratio"
    punct = int(np.count_nonzero(flags & 2))
    if cfg.zh_max_chars_per_punctuation and han / max(1, punct) > cfg.zh_max_chars_per_punctuation:
        return "zh: too little punctuation"
    if int(np.count_nonzero(flags & 4)) / han < cfg.zh_min_stop_char_fraction:
        return "zh: too few function characters"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / han > cfg.zh_max_symbol_ratio:
        return "zh: symbol ratio"
    return _line_shape(text, cfg, "zh")


def code_quality(text: str, cfg: QualityConfig) -> Reason:
    """Rules for source code (The Stack / StarCoder style)."""
    if len(text) < cfg.code_min_chars:
        return "code: too short"
    lines = text.split("\n")
    longest = max(map(len, lines))
    if cfg.code_max_line_length and longest > cfg.code_max_line_length:
        return "code: line too long"
    if cfg.code_max_mean_line_length and len(text) / len(lines) > cfg.code_max_mean_line_length:
        return "code: mean line length"
    cp = codepoints(text)
    cls = char_classes(cp)
    alnum = int(np.count_nonzero(cls))
    if alnum / len(text) < cfg.code_min_alnum_fraction:
        return "code: low alphanumeric fraction"
    foreign = int(np.count_nonzero((cls == 0) & (cp >= 0x80) & ~_space_table()[np.where(cp < 0x10000, cp, 0)]))
    non_space = len(text) - sum(text.count(c) for c in " \n\t")
    if foreign / max(1, non_space) > cfg.code_max_foreign_symbol_fraction:
        return "code: symbol soup"
    if cfg.code_drop_autogenerated and _AUTOGEN.search("\n".join(lines[:5])):
        return "code: auto-generated"
    nonblank = [ln.strip() for ln in lines if ln.strip()]
    if duplicate_fractions(nonblank)[0] > cfg.code_max_duplicate_line_fraction:
        return "code: duplicate lines"
    return None


def math_line_fraction(text: str) -> float:
    """Fraction of non-blank lines holding an equation, an arithmetic step or LaTeX."""
    lines = _lines(text)
    if not lines:
        return 0.0
    # a number or maths notation on the line keeps code assignments (`self.path = path`) out
    return sum(1 for ln in lines if _MATH_LINE.search(ln) and _MATH_MARK.search(ln)) / len(lines)


def math_quality(text: str, cfg: QualityConfig) -> Reason:
    """Rules for maths documents: length, symbol soup, some words, line length (then repetition)."""
    cp = codepoints(text)
    cls = char_classes(cp)
    space = _space_table()[np.where(cp < 0x10000, cp, 0)]
    non_space = int(np.count_nonzero(~space))
    if non_space < cfg.math_min_chars:
        return "math: too short"
    if cfg.math_max_chars and non_space > cfg.math_max_chars:
        return "math: too long"
    stray = int(np.count_nonzero((cls == 0) & ~space & ~_math_table()[np.where(cp < 0x10000, cp, 0)]))
    if stray / non_space > cfg.math_max_stray_symbol_fraction:
        return "math: symbol soup"
    digits = (cp >= 0x30) & (cp <= 0x39)
    words = int(np.count_nonzero((cls > 0) & ~digits))
    if words / non_space < cfg.math_min_word_fraction:
        return "math: too few words"
    if cfg.math_max_line_length and max(map(len, text.split("\n"))) > cfg.math_max_line_length:
        return "math: line too long"
    return _line_shape(text, cfg, "math")


def repetition(text: str, cfg: QualityConfig, chinese: bool = False, min_ngram_tokens: int = 0) -> Reason:
    """Gopher repetition rules; Chinese uses character n-grams twice as long.

    `min_ngram_tokens` (maths): the n-gram share rules apply only to documents of at least this many
    tokens. A short worked solution restates its quantities and names in every step ("Natalia sold 48/2
    = 24 clips … Natalia sold 48+24 = 72 clips"), so on ~100 tokens one repeated phrase is a large
    share: Gopher's n-gram rules dropped 20 % of GSM8K's human-written solutions. Line and paragraph
    duplication (boilerplate) is still checked at every length.
    """
    lines = _lines(text)
    frac, char_frac = duplicate_fractions([ln.strip() for ln in lines])
    if frac > cfg.max_duplicate_line_fraction:
        return "repetition: duplicate lines"
    if char_frac > cfg.max_duplicate_line_char_fraction:
        return "repetition: duplicate line characters"
    paras = [p.strip() for p in _PARA_SPLIT.split(text) if p.strip()] if "\n\n" in text or "\n \n" in text else [text]
    frac, char_frac = duplicate_fractions(paras)
    if frac > cfg.max_duplicate_paragraph_fraction:
        return "repetition: duplicate paragraphs"
    if char_frac > cfg.max_duplicate_paragraph_char_fraction:
        return "repetition: duplicate paragraph characters"
    th, lens, _ = tokens(text)
    if th.size < min_ngram_tokens:
        return None
    scale = 2 if chinese else 1
    keys: list[np.ndarray] = [th]  # keys[m - 1] are the m-gram keys, each built from the previous

    def grams(m: int) -> np.ndarray:
        while len(keys) < m:
            keys.append(ngram_keys(th, len(keys) + 1, keys[-1] if len(keys) > 1 else None))
        return keys[m - 1]

    for n, limit in zip((2, 3, 4), cfg.top_ngram_max_fraction, strict=True):
        if limit < 1.0 and top_ngram_share(th, lens, n * scale, grams(n * scale)) > limit:
            return f"repetition: top {n}-gram share"
    limits = cfg.duplicate_ngram_max_fraction
    for i, (n, limit) in enumerate(zip(range(5, 11), limits, strict=True)):
        share = duplicate_ngram_share(th, lens, n * scale, grams(n * scale))
        if share > limit:
            return f"repetition: duplicate {n}-grams"
        # a repeated longer n-gram is made of repeated shorter ones, so the share can only fall with n:
        # once it is below every remaining limit, no longer n-gram can fail
        if share <= min(limits[i + 1 :], default=1.0):
            break
    return None


@dataclass(frozen=True)
class FilterResult:
    """The (possibly line-cleaned) text, or the reason it was dropped."""

    text: str
    reason: Reason = None
    lines_removed: int = 0
    family: str = ""
    """Which rule family judged it: 'prose', 'zh', 'math' or 'code' (counted in the quality stage's stats)."""


def quality_filter(text: str, lang: str, cfg: QualityConfig) -> FilterResult:
    """Apply the rule family for `lang`: 'zh', 'code', or anything else → English/Latin rules."""
    if not cfg.enabled:
        return FilterResult(text)
    before = len(_lines(text))
    rules: list[Callable[[str, QualityConfig], Reason]]
    if lang == "code":
        reason = code_quality(text, cfg)
        return FilterResult(text, reason, family="code")
    zh = lang == "zh"
    text = zh_clean_lines(text, cfg) if zh else c4_clean_lines(text, cfg)
    removed = before - len(_lines(text))
    if cfg.math_detect and math_line_fraction(text) >= cfg.math_line_fraction:
        family = "math"
        rules = [math_quality, lambda t, c: repetition(t, c, chinese=zh, min_ngram_tokens=c.math_min_ngram_tokens)]
        if not zh:
            rules.insert(0, c4_document)  # lorem ipsum and empty-after-cleaning apply to maths pages too
    elif zh:
        family = "zh"
        rules = [zh_quality, lambda t, c: repetition(t, c, chinese=True)]
    else:
        family = "prose"
        rules = [c4_document, gopher_quality, repetition]
    for rule in rules:
        reason = rule(text, cfg)
        if reason:
            return FilterResult(text, reason, removed, family)
    return FilterResult(text, None, removed, family)
