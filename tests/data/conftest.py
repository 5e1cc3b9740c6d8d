"""Shared fixtures for the data tests: a tiny mixed zh/en/code corpus and a tokenizer trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from diji.data.tokenizer import Tokenizer, train_tokenizer

_EN = (
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times. "
    "We hold these truths to be self-evident, that all men are created equal. "
)
_ZH = "今天天气很好，我们一起去公园散步吧。中文分词是自然语言处理中的一个基础问题。学而时习之，不亦说乎？"
_CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok")
    texts = [_EN * 3, _ZH * 3, _CODE * 3, "emoji 😀👍 naïve café 123 456"] * 5
    path = train_tokenizer(texts, 600, Path(out), show_progress=False)
    return Tokenizer.from_file(path)
