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
accepted. A `\\boxed{}` whose content is not a plain number (MATH's `\\frac{1}{2}`, `x^2+1`) is read
whole, braces balanced; an integer fraction (`\\frac{1}{2}`, `\\dfrac12`, `1/2`) compares by value, any
other expression as text with spacing and `\\left`/`\\right`/`$` removed — expressions are not
simplified, so `2x` and `x\\cdot 2` differ (a `module:function` verifier can do better; `load_verifier`).

**Plug-ins.** A verifier is any function `reward(completion: str, reference: str) -> float`;
`math_reward` below is the built-in one (`--verifier math`). A task counts a completion correct when
its reward is at least 1 (full credit), so a plug-in may give partial credit to shape the RL signal.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

from diji.data.chat import THINK_CLOSE, THINK_OPEN, split_reasoning
from diji.errors import DijiError

__all__ = ["Verifier", "answers_equal", "extract_answer", "format_ok", "format_reward", "is_thinking", "load_verifier",
           "math_reward", "normalize_answer", "normalize_number", "reference_answer", "split_reasoning"]

Verifier = Callable[[str, str], float]
"""reward(completion, reference) -> float; a reward >= 1 counts as correct."""

# A number: optional sign, digits with optional thousands groups, optional decimals.
_NUMBER = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_HASH_RE = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
_BOXED_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(-?\d+)\}?$")
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{3,}")
_SLASH_RE = re.compile(r"^(-?\d+)/(\d+)$")


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


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}` (nested braces balanced), or None."""
    starts = [m.end() for m in _BOXED_OPEN_RE.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def normalize_answer(text: str) -> str | None:
    """Canonical form of a final answer: a number as `normalize_number` gives it, an integer fraction
    by value (`_fraction_text`), anything else as LaTeX with spacing removed; None if empty."""
    s = text.strip().strip("$").strip()
    for junk in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", " "):
        s = s.replace(junk, "")
    s = s.rstrip(".").replace("−", "-")
    if not s:
        return None
    number = normalize_number(s)
    if number is not None:
        return number
    frac = _FRAC_RE.match(s) or _SLASH_RE.match(s)
    if frac is not None:
        groups = frac.groups()
        sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
        num, den = int(groups[-2]), int(groups[-1])
        if den != 0:
            return _fraction_text(Fraction(sign * num, den))
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _fraction_text(q: Fraction) -> str:
    """A fraction as the decimal it equals when that decimal ends (`1/2` → `0.5`, like the number 0.5
    normalises), else `p/q` in lowest terms."""
    d = q.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return f"{q.numerator}/{q.denominator}"
    return normalize_number(str(Decimal(q.numerator) / Decimal(q.denominator))) or f"{q.numerator}/{q.denominator}"


def extract_answer(text: str) -> str | None:
    """The final answer of a reply, normalised (`normalize_answer`), or None when there is none."""
    _, answer = split_reasoning(text)
    hits = _HASH_RE.findall(answer)
    if hits:
        return normalize_number(hits[-1])
    boxed = last_boxed(answer)
    if boxed is not None:
        return normalize_answer(boxed)
    numbers = _NUMBER_RE.findall(answer)
    return normalize_number(numbers[-1]) if numbers else None


def reference_answer(value: str | int | float) -> str | None:
    """The final answer a dataset's answer field holds, normalised: GSM8K's worked solution ending in
    `#### n`, MATH's solution with a `\\boxed{…}`, or a bare answer (`42`, `\\frac{1}{2}`); None when
    a long text holds neither marker (its last number is not trusted to be the answer)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return normalize_number(str(value)) if math.isfinite(value) else None
    if "####" in value:
        return normalize_number(value.rsplit("####", 1)[1])
    boxed = last_boxed(value)
    if boxed is not None:
        return normalize_answer(boxed)
    short = value.strip()
    # A bare answer must look like mathematics: a word ("no idea", "He has 7") is not an answer.
    if len(short) <= 32 and "\n" not in short and not _WORD_RE.search(_LATEX_CMD_RE.sub("", short)):
        return normalize_answer(short)
    return None


def answers_equal(predicted: str | None, reference: str) -> bool:
    """Equality after normalisation: numbers and integer fractions by value, other answers as normalised
    text (None never equals anything)."""
    if predicted is None:
        return False
    ref = normalize_answer(reference)
    pred = normalize_answer(predicted)
    return ref is not None and pred == ref


def format_ok(text: str) -> bool:
    """One <think>…</think> block first (non-empty), then a non-empty answer containing a number."""
    body = text.strip()
    if not body.startswith(THINK_OPEN) or body.count(THINK_OPEN) != 1 or body.count(THINK_CLOSE) != 1:
        return False
    reasoning, answer = split_reasoning(body)
    return bool(reasoning.strip()) and _NUMBER_RE.search(answer) is not None


def is_thinking(text: str) -> bool:
    """The reply starts by reasoning (`<think>`) rather than answering directly."""
    return text.lstrip().startswith(THINK_OPEN)


def math_reward(text: str, reference: str) -> float:
    """1.0 when the final answer equals the reference, else 0.0."""
    return float(answers_equal(extract_answer(text), reference))


def format_reward(text: str) -> float:
    """1.0 for the <think>…</think>-then-answer shape, else 0.0."""
    return float(format_ok(text))


BUILTIN_VERIFIERS = {"math": "diji.eval.verifiers:math_reward"}


def load_verifier(spec: str) -> Verifier:
    """A verifier by name: `math` (the built-in), `package.module:function`, or `path/to/file.py:function`.

    The function is called as `fn(completion, reference)` and must return a finite number; `checked`
    wraps it so that a plug-in returning anything else fails with one line naming it.
    """
    target = BUILTIN_VERIFIERS.get(spec, spec)
    module, sep, name = target.rpartition(":")
    if not sep or not module or not name:
        raise DijiError(f"verifier '{spec}' must be 'math', 'module:function' or 'path/file.py:function'")
    try:
        if module.endswith(".py"):
            path = Path(module)
            if not path.is_file():
                raise DijiError(f"verifier file not found: {path}")
            mod_spec = importlib.util.spec_from_file_location(f"diji_verifier_{path.stem}", path)
            mod = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
            mod_spec.loader.exec_module(mod)  # type: ignore[union-attr]
        else:
            mod = importlib.import_module(module)
    except ImportError as e:
        raise DijiError(f"verifier '{spec}': cannot import {module} ({e}); is it on PYTHONPATH?") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise DijiError(f"verifier '{spec}': {module} has no function '{name}'")
    if target == BUILTIN_VERIFIERS["math"]:
        return fn

    def checked(completion: str, reference: str) -> float:
        value = fn(completion, reference)
        try:
            reward = float(value)
        except (TypeError, ValueError):
            reward = math.nan
        if isinstance(value, bool) or not math.isfinite(reward):
            raise DijiError(f"verifier '{spec}' must return a finite number, got {value!r}")
        return reward

    checked.__name__ = f"verifier[{spec}]"
    return checked
