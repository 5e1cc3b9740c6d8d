"""Standard errors for evaluation scores and paired differences between checkpoints.

Every score diji reports is a ratio of sums over *units* (items, or text windows for perplexity):
`score = Σ xᵢ / Σ wᵢ`. For accuracy wᵢ = 1 and this is the mean; for bits-per-byte xᵢ is a window's
negative log-likelihood in bits and wᵢ its UTF-8 byte count. One formula then serves both: the
linearised (delta-method) standard error of a ratio estimator (Cochran, *Sampling Techniques*, 1977,
§6.3), which for wᵢ = 1 is exactly the familiar sample-std / √n.

Two checkpoints scored on the same units are compared through the per-unit differences, not by
combining two independent error bars: most of the item-to-item variance is shared, so the paired
standard error is much smaller and the test much sharper (Miller 2024, "Adding Error Bars to Evals:
A Statistical Approach to Language Model Evaluations", §4).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95 % normal quantile: a difference is flagged when it exceeds this many standard errors.
Z95 = 1.959963984540054


def ratio_stderr(x: Sequence[float], w: Sequence[float] | None = None) -> float:
    """Standard error of Σx/Σw treating units as an i.i.d. sample; 0.0 with fewer than two units."""
    m = len(x)
    if w is None:
        w = [1.0] * m
    if m != len(w):
        raise ValueError(f"x and w have different lengths ({m} vs {len(w)})")
    total_w = math.fsum(w)
    if m < 2 or total_w == 0:
        return 0.0
    r = math.fsum(x) / total_w
    resid = math.fsum((xi - r * wi) ** 2 for xi, wi in zip(x, w, strict=True))
    return math.sqrt(resid * m / (m - 1)) / total_w


def mean_stderr(x: Sequence[float]) -> float:
    """sample std (ddof=1) / √n — what lm-evaluation-harness reports as `_stderr` for a mean."""
    return ratio_stderr(x)


@dataclass(frozen=True)
class Difference:
    """`b - a` for one metric: the difference, its standard error and whether it exceeds noise."""

    diff: float
    stderr: float
    paired: bool
    significant: bool

    @property
    def z(self) -> float:
        return self.diff / self.stderr if self.stderr > 0 else (math.inf if self.diff else 0.0)


def paired_difference(xa: Sequence[float], xb: Sequence[float], w: Sequence[float] | None = None) -> Difference:
    """Difference of two ratio scores on the same units (same items, same prompts, same weights)."""
    if len(xa) != len(xb):
        raise ValueError("paired comparison needs the same units for both checkpoints")
    w = list(w) if w is not None else [1.0] * len(xa)
    d = [b - a for a, b in zip(xa, xb, strict=True)]
    total = math.fsum(w)
    diff = math.fsum(d) / total if total else 0.0
    se = ratio_stderr(d, w)
    return Difference(diff, se, True, _significant(diff, se))


def unpaired_difference(a: float, se_a: float, b: float, se_b: float) -> Difference:
    """Difference when the units differ (e.g. different tokenizers give different text windows)."""
    se = math.sqrt(se_a**2 + se_b**2)
    return Difference(b - a, se, False, _significant(b - a, se))


def _significant(diff: float, se: float) -> bool:
    if se > 0:
        return abs(diff) > Z95 * se
    # With zero variance (every unit moved by the same amount, or too few units) only an exact tie is noise.
    return diff != 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code", eq. 1): 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common non-missing answer; ties go to the answer seen first (deterministic)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)
