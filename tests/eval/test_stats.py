"""Standard errors, paired differences, pass@k and majority voting against direct computations."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from diji.eval.stats import (
    Z95,
    majority,
    mean_stderr,
    paired_difference,
    pass_at_k,
    ratio_stderr,
    unpaired_difference,
)


def test_mean_stderr_is_sample_std_over_sqrt_n():
    x = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    m = sum(x) / len(x)
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))
    assert mean_stderr(x) == pytest.approx(sd / math.sqrt(len(x)))
    assert mean_stderr([1.0]) == 0.0 and mean_stderr([]) == 0.0


def test_ratio_stderr_matches_a_bootstrap():
    rng = random.Random(0)
    w = [rng.randint(50, 150) for _ in range(400)]
    x = [wi * (1.0 + 0.3 * rng.random()) for wi in w]
    se = ratio_stderr(x, w)
    boot = []
    for _ in range(2000):
        idx = [rng.randrange(len(x)) for _ in x]
        boot.append(sum(x[i] for i in idx) / sum(w[i] for i in idx))
    mean = sum(boot) / len(boot)
    boot_se = math.sqrt(sum((b - mean) ** 2 for b in boot) / (len(boot) - 1))
    assert se == pytest.approx(boot_se, rel=0.1)


def test_paired_difference_sees_what_unpaired_misses():
    rng = random.Random(1)
    difficulty = [rng.random() for _ in range(300)]
    a = [float(d > 0.5) for d in difficulty]
    b = [float(d > 0.45) for d in difficulty]  # b solves everything a solves, plus a few more
    paired = paired_difference(a, b)
    assert paired.diff == pytest.approx((sum(b) - sum(a)) / len(a)) and paired.paired
    unpaired = unpaired_difference(sum(a) / 300, mean_stderr(a), sum(b) / 300, mean_stderr(b))
    assert paired.stderr < unpaired.stderr / 2
    assert paired.significant and not unpaired.significant
    assert paired.z > Z95
    same = paired_difference(a, a)
    assert same.diff == 0 and not same.significant


def test_pass_at_k_equals_the_combinatorial_definition():
    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 4), (4, 4, 2), (10, 1, 10)]:
        subsets = list(itertools.combinations(range(n), k))
        want = sum(any(i < c for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(want)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_majority_ignores_missing_answers_and_breaks_ties_by_first_seen():
    assert majority(["3", None, "4", "4", "3"]) == "3"
    assert majority([None, "4", "4", "3"]) == "4"
    assert majority([None, None]) is None
