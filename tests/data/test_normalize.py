from __future__ import annotations

import pytest

from diji.data.normalize import NormalizeConfig, normalize_text

CFG = NormalizeConfig()


def test_nfkc_folds_fullwidth_but_keeps_chinese_punctuation() -> None:
    text = "Ｐｙｔｈｏｎ３ 很好用，对吧？（是的）ﬁ"
    assert normalize_text(text, CFG) == "Python3 很好用，对吧？（是的）fi"
    folded = normalize_text(text, NormalizeConfig(keep_cjk_punctuation=False))
    assert folded == "Python3 很好用,对吧?(是的)fi"


def test_control_characters_and_newlines() -> None:
    text = "a\x00b\x07c\u200bd\ufeffe\u00adf\r\ng\rh\u2028i\tj"
    assert normalize_text(text, CFG) == "abcdef\ng\nh\ni\tj"


def test_zero_width_joiner_kept_for_emoji() -> None:
    family = "👨\u200d👩\u200d👧"
    assert normalize_text(family, CFG) == family


def test_whitespace_keeps_indentation() -> None:
    text = "\n\ndef f():   \n    return 1\t\n\n\n\n\n\nx = 2   \n"
    assert normalize_text(text, CFG) == "def f():\n    return 1\n\n\nx = 2"


def test_ideographic_space_becomes_space() -> None:
    assert normalize_text("第一章\u3000开始", CFG) == "第一章 开始"


def test_disabled_is_identity() -> None:
    text = "Ｆｕｌｌ\x00\r\n  "
    assert normalize_text(text, NormalizeConfig(enabled=False)) == text


def test_traditional_to_simplified() -> None:
    pytest.importorskip("zhconv")
    cfg = NormalizeConfig(traditional_to_simplified=True)
    assert normalize_text("這是繁體中文的測試。", cfg) == "这是繁体中文的测试。"
    assert normalize_text("plain English", cfg) == "plain English"
