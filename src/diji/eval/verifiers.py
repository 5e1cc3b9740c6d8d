"""Verifiers: read a final answer out of a model's reply and check it, with no model in the loop.

Rule-based rewards (DeepSeek-AI 2025, DeepSeek-R1 §2.2.2) are exact and cannot be gamed the way a learned
reward model can, which is what makes RL on a small model trustworthy. Two checks:

- **answer**: the final number, accepted in the three forms math datasets use — GSM8K's `#### 42`
  (Cobbe et al. 2021), LaTeX `\\boxed{42}` (Hendrycks et al. 2021, MATH), or a plain final number.
  Priority is `####`, then `\\boxed{}`, then the last number of the answer part; reasoning inside
  `<think>…</think>` is never read as the answer, so a model cannot score by listing guesses there.
- **format**: exactly one `<think>…</think>` block at the start, followed by a non-empty answer.

Numbers are compared as exact decimals after normalisation: thousands separators (`1,234`), a Unicode
minus (`−5`), a leading `+`, trailing zeros (`3.50` == `3.5`) and trailing text (`42 apples.`) are all
accepted; fractions and expressions are not evaluated (out of scope: these tasks have integer answers).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from diji.data.chat import THINK_CLOSE, THINK_OPEN, split_reasoning

__all__ = ["answers_equal", "extract_answer", "format_ok", "format_reward", "math_reward", "normalize_number",
           "split_reasoning"]

# A number: optional sign, digits with optional thousands groups, optional decimals.
_NUMBER = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_HASH_RE = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
_BOXED_RE = re.compile(r"\\boxed\s*\{\s*\$?\s*(" + _NUMBER + r")\s*\}")


def normalize_number(text: str) -> str | None:
    """Canonical decimal string of a number (`'1,234.50'` → `'1234.5'`, `'−3'` → `'-3'`), else None."""
    s = text.strip().replace("−", "-").replace(",", "").lstrip("+")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The final answer of a reply as a normalised number, or None when there is none."""
    _, answer = split_reasoning(text)
    for pattern in (_HASH_RE, _BOXED_RE):
        hits = pattern.findall(answer)
        if hits:
            return normalize_number(hits[-1])
    numbers = _NUMBER_RE.findall(answer)
    return normalize_number(numbers[-1]) if numbers else None


def answers_equal(predicted: str | None, reference: str) -> bool:
    """Exact numeric equality after normalisation (None never equals anything)."""
    if predicted is None:
        return False
    ref = normalize_number(reference)
    pred = normalize_number(predicted)
    return ref is not None and pred == ref


def format_ok(text: str) -> bool:
    """One <think>…</think> block first (non-empty), then a non-empty answer containing a number."""
    body = text.strip()
    if not body.startswith(THINK_OPEN) or body.count(THINK_OPEN) != 1 or body.count(THINK_CLOSE) != 1:
        return False
    reasoning, answer = split_reasoning(body)
    return bool(reasoning.strip()) and _NUMBER_RE.search(answer) is not None


def math_reward(text: str, reference: str) -> float:
    """1.0 when the final answer equals the reference, else 0.0."""
    return float(answers_equal(extract_answer(text), reference))


def format_reward(text: str) -> float:
    """1.0 for the <think>…</think>-then-answer shape, else 0.0."""
    return float(format_ok(text))
