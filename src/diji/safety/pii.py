"""PII redaction for model outputs, audit logs and stored feedback.

One detector serves the whole project: this module reuses the data stage's validated patterns
(`diji.data.pii`, the same code that scrubs training data) and only chooses the placeholder style
that users of the server see, `[EMAIL]`, `[PHONE]`, ….

Covered: e-mail addresses; mainland China mobile numbers (optional +86/0086); international phone
numbers (+CC …) and North-American (xxx) xxx-xxxx forms; PRC resident identity numbers (date and
ISO 7064 MOD 11-2 check digit verified); payment card numbers (Luhn-checked); IPv4 addresses.
Not covered: names, street addresses, dates of birth, passport numbers, other countries' national
numbers, PII spelled out in words or split by unusual characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from diji.data import pii as _detector

# Placeholder names shown to users (data-stage kind → label).
LABELS = {"EMAIL": "email", "PHONE": "phone", "CN_ID": "id_number", "BANK_CARD": "card", "IPV4": "ip"}


@dataclass(frozen=True)
class Redaction:
    kind: str
    start: int
    end: int


@lru_cache(maxsize=1)
def _config() -> _detector.PIIConfig:
    return _detector.PIIConfig()


def find_pii(text: str) -> list[Redaction]:
    """Non-overlapping PII spans, earliest first; the ID and card checks cut false positives."""
    return [Redaction(LABELS[kind], s, e) for s, e, kind in _detector.find_pii(text, _config())]


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
