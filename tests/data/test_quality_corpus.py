"""Acceptance on a generated mixed zh/en corpus: clean prose, maths and code kept; junk and near-duplicates gone."""

from __future__ import annotations

import pytest
from mixed_corpus import curate_ids, generate, score

from diji.data.filters import QualityConfig
from diji.data.prepare import DataConfig


@pytest.fixture(scope="module")
def docs():
    return generate(n_clean=300, n_junk=70, n_families=24, copies=2, seed=3)


def test_clean_kept_junk_and_near_duplicates_dropped(docs) -> None:
    s = score(docs, curate_ids(docs, DataConfig()))
    assert s.clean_kept >= 0.85, s
    assert s.near_dup_recall >= 0.95, s
    assert s.junk_dropped >= 0.95, s
    for kind in ("math-en", "math-zh", "math-latex", "code", "prose-en", "prose-zh"):
        assert s.by_kind[kind] >= 0.85, (kind, s.by_kind)


def test_prose_rules_alone_drop_the_maths(docs) -> None:
    """The peer: without the maths family the same corpus loses its worked solutions."""
    s = score(docs, curate_ids(docs, DataConfig(quality=QualityConfig(math_detect=False))))
    assert s.by_kind["math-en"] < 0.2 and s.by_kind["math-zh"] < 0.2, s.by_kind
