"""PII redaction for model outputs and stored feedback: patterns with validation, not a classifier.

Covered: e-mail addresses; mainland China mobile numbers (1[3-9] + 9 digits, optional +86); other
phone numbers written in international form (+CC …, 8–15 digits); PRC resident identity numbers
(18 characters, ISO 7064 MOD 11-2 check digit verified, GB 11643-1999); payment card numbers (13–19
digits, Luhn-checked); IPv4 addresses. Not covered: names, street addresses, dates of birth, passport
numbers, national numbers of other countries, PII spelled out in words or split by unusual characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Digits must not continue on either side, so a longer number is not partly redacted as a phone.
_CN_MOBILE = re.compile(r"(?<![\d+])(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)")
_INTL_PHONE = re.compile(r"(?<![\w+])\+\d{1,3}[ -]?(?:\(?\d{1,4}\)?[ -]?){1,4}\d{2,4}(?!\d)")
_CN_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def _cn_id_valid(s: str) -> bool:
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == s[17].upper()


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class Redaction:
    kind: str
    start: int
    end: int


def find_pii(text: str) -> list[Redaction]:
    """Non-overlapping PII spans, earliest first; the ID and card checks cut false positives."""
    found: list[Redaction] = []
    for kind, pat, ok in (
        ("email", _EMAIL, None),
        ("id_number", _CN_ID, _cn_id_valid),
        ("phone", _CN_MOBILE, None),
        ("phone", _INTL_PHONE, lambda s: 8 <= len(re.sub(r"\D", "", s)) <= 15),
        ("card", _CARD, lambda s: 13 <= len(re.sub(r"\D", "", s)) <= 19 and _luhn(re.sub(r"\D", "", s))),
        ("ip", _IPV4, None),
    ):
        for m in pat.finditer(text):
            if ok is not None and not ok(m.group()):
                continue
            if any(m.start() < r.end and r.start < m.end() for r in found):
                continue
            found.append(Redaction(kind, m.start(), m.end()))
    return sorted(found, key=lambda r: r.start)


def redact(text: str) -> tuple[str, list[str]]:
    """Replace each PII span with `[KIND]`; returns the new text and the kinds replaced."""
    spans = find_pii(text)
    if not spans:
        return text, []
    out, pos = [], 0
    for r in spans:
        out.append(text[pos : r.start])
        out.append(f"[{r.kind.upper()}]")
        pos = r.end
    out.append(text[pos:])
    return "".join(out), [r.kind for r in spans]
