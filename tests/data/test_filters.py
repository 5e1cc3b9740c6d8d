from __future__ import annotations

import pytest

from diji.data import filters as F
from diji.data.filters import QualityConfig, quality_filter

CFG = QualityConfig()

EN_GOOD = (
    "The village sat at the edge of a wide river, and most of the families who lived there had worked "
    "on the water for generations. In the spring the river rose with melted snow from the mountains, "
    "and the children were told to keep away from the banks.\n\n"
    "Every morning the ferry left before sunrise with a load of vegetables, chickens and a few sleepy "
    "travellers. The ferryman knew each passenger by name, and he liked to talk about the weather, the "
    "price of grain and the strange habits of the people who lived in the city across the water."
)
ZH_GOOD = (
    "我们村子坐落在一条大河的旁边，村里的大多数人家世世代代都靠这条河生活。每到春天，山上的积雪融化，"
    "河水就会上涨，大人们总是叮嘱孩子不要到河边去玩。\n\n"
    "每天清晨，渡船在太阳升起之前就出发了，船上装着蔬菜、鸡鸭，还有几个睡眼惺忪的旅客。"
    "摆渡的老人认识每一位乘客，他喜欢和大家聊天气、聊粮食的价格，也聊河对岸城里人的那些奇怪习惯。"
)
CODE_GOOD = (
    "import json\n\n\nclass Store:\n    \"\"\"A tiny key-value store.\"\"\"\n\n    def __init__(self, path):\n"
    "        self.path = path\n        self.data = {}\n\n    def get(self, key, default=None):\n"
    "        return self.data.get(key, default)\n\n    def save(self):\n"
    "        with open(self.path, \"w\") as f:\n            json.dump(self.data, f)\n"
)


def reason(text: str, lang: str = "en", cfg: QualityConfig = CFG) -> str | None:
    return quality_filter(text, lang, cfg).reason


def test_good_documents_pass() -> None:
    assert reason(EN_GOOD) is None
    assert reason(ZH_GOOD, "zh") is None
    assert reason(CODE_GOOD, "code") is None


def test_english_rules_would_reject_chinese_and_code() -> None:
    """Why the language-aware variants exist: English rules applied blindly keep nothing."""
    assert reason(ZH_GOOD, "en") is not None
    assert reason(CODE_GOOD, "en") is not None


# ---- Gopher quality (en) ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Too short to be a document.", "gopher: too few words"),
        ("a an is it of to be by " * 20, "gopher: mean word length too short"),
        ("the and of with " + "incomprehensibilities extraordinarily " * 40, "gopher: mean word length too long"),
        (EN_GOOD + " #tag" * 40, "gopher: symbol-to-word ratio"),
        ("\n".join(f"- the important point number {i} concerns careful preparation with attention" for i in range(20)),
         "gopher: bullet lines"),
        ("\n".join(f"and then the story of this particular line {i} continues with the travellers and their..."
                   for i in range(20)), "gopher: ellipsis lines"),
        (EN_GOOD + " 12345 67890 ----" * 60, "gopher: too few alphabetic words"),
        (" ".join(f"word{i}x alpha beta gamma delta" for i in range(30)), "gopher: too few stop words"),
    ],
)
def test_gopher_rules(text: str, want: str) -> None:
    assert F.gopher_quality(text, CFG) == want


# ---- C4 (en) -----------------------------------------------------------------------------------------------
def test_c4_lorem_ipsum_and_curly_bracket() -> None:
    assert reason(EN_GOOD + "\nLorem ipsum dolor sit amet.") == "c4: lorem ipsum"
    assert reason(EN_GOOD + " {x}") is None  # off by default
    assert reason(EN_GOOD + " {x}", cfg=QualityConfig(c4_curly_bracket=True)) == "c4: curly bracket"


def test_c4_line_removal() -> None:
    text = EN_GOOD + "\nPlease enable JavaScript to view this page.\nRead our privacy policy.\nMenu\n"
    res = quality_filter(text, "en", CFG)
    assert res.reason is None and res.text == EN_GOOD + "\nMenu" and res.lines_removed == 2  # "Menu" stays by default
    strict = QualityConfig(c4_terminal_punctuation=True, c4_min_words_per_line=3, c4_min_sentences=3)
    res = quality_filter(text, "en", strict)
    assert res.reason is None and "Menu" not in res.text and "privacy" not in res.text
    assert reason("Home\nAbout us\nContact", cfg=strict) == "c4: no lines left"
    assert reason("This single line has a full stop at its end.", cfg=strict) == "c4: too few sentences"


# ---- Chinese -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("今天天气很好。", "zh: too few characters"),
        (ZH_GOOD + " abcdefghij" * 60, "zh: low CJK ratio"),
        ("手机 电脑 平板 耳机 充电器 数据线 " * 30, "zh: too little punctuation"),
        ("春夏秋冬，东南西北，金木水火土，日月星辰，山川河流，" * 10, "zh: too few function characters"),
        (ZH_GOOD + "#" * 60, "zh: symbol ratio"),
    ],
)
def test_chinese_rules(text: str, want: str) -> None:
    assert F.zh_quality(text, CFG) == want


def test_chinese_boilerplate_lines_removed() -> None:
    res = quality_filter(ZH_GOOD + "\n版权所有 © 2024 某某公司\n请启用JavaScript以获得最佳体验", "zh", CFG)
    assert res.reason is None and res.text == ZH_GOOD


# ---- code --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("x = 1", "code: too short"),
        (CODE_GOOD + "DATA = '" + "a" * 1200 + "'\n", "code: line too long"),
        (("x = [" + ", ".join(["1"] * 60) + "]\n") * 3, "code: mean line length"),
        ("{}[]();;;;{}[]()=+-*/" * 10 + "\nx = 1\n", "code: low alphanumeric fraction"),
        ("# Auto-generated by protoc. DO NOT EDIT.\n" + CODE_GOOD, "code: auto-generated"),
        ("def f():\n" + "    pass\n" * 40, "code: duplicate lines"),
    ],
)
def test_code_rules(text: str, want: str) -> None:
    assert F.code_quality(text, CFG) == want


# ---- repetition --------------------------------------------------------------------------------------------
def test_repetition_english() -> None:
    assert F.repetition(EN_GOOD, CFG) is None
    lines = "\n".join(["Buy cheap watches now."] * 10 + [EN_GOOD])
    assert F.repetition(lines, CFG) == "repetition: duplicate lines"
    para = EN_GOOD + "\n\n" + EN_GOOD.split("\n\n")[1]
    assert F.repetition(para, CFG).startswith("repetition: duplicate")
    spam = "click here to win " * 30 + EN_GOOD
    assert F.repetition(spam, CFG) == "repetition: top 2-gram share"
    chorus = EN_GOOD + " " + " ".join(["we will we will rock you and sing along with the band tonight"] * 3)
    assert F.repetition(chorus, CFG).startswith("repetition: duplicate")


def test_repetition_chinese_uses_characters() -> None:
    assert F.repetition(ZH_GOOD, CFG, chinese=True) is None
    spam = "点击这里领取大奖" * 30 + ZH_GOOD
    assert F.repetition(spam, CFG, chinese=True) == "repetition: top 2-gram share"
    half = ZH_GOOD + "摆渡的老人认识每一位乘客，他喜欢和大家聊天气、聊粮食的价格，也聊河对岸城里人的那些奇怪习惯。" * 2
    assert F.repetition(half, CFG, chinese=True).startswith("repetition: duplicate")


def test_ngram_shares_are_exact_on_small_input() -> None:
    import numpy as np

    from diji.data.textstats import tokens

    th, lens, _ = tokens("a b a b a b c")
    # most frequent 2-gram "a b" occurs 3 times, 2 chars each, over 7 token characters
    assert F.top_ngram_share(th, lens, 2) == pytest.approx(6 / 7)
    # repeated 2-grams "a b", "b a" cover tokens 0..5 → 6 of 7 characters
    assert F.duplicate_ngram_share(th, lens, 2) == pytest.approx(6 / 7)
    assert F.duplicate_ngram_share(np.zeros(0, np.uint64), np.zeros(0, np.int64), 5) == 0.0


def test_disabled_and_validation() -> None:
    assert quality_filter("x", "en", QualityConfig(enabled=False)).reason is None
    with pytest.raises(ValueError, match="quality.zh_min_cjk_fraction"):
        QualityConfig(zh_min_cjk_fraction=2.0)
    with pytest.raises(ValueError, match="top_ngram_max_fraction"):
        QualityConfig(top_ngram_max_fraction=(0.1,))


# ---- maths (documents of equations / worked solutions / LaTeX) ------------------------------------------
MATH_EN = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.\n"
    "In May she sold 48/2 = 24 clips.\n"
    "Altogether she sold 48 + 24 = 72 clips in April and May.\n"
    "#### 72"
)
MATH_ZH = "题目：小明买了3盒苹果，每盒12个，吃了5个，还剩多少个？\n解：3×12=36（个）\n36-5=31（个）\n答：还剩31个。"
MATH_LATEX = (
    "The discriminant is $\\Delta = b^2 - 4ac$.\n"
    "Hence $x = \\frac{-b \\pm \\sqrt{\\Delta}}{2a}$ for $a \\neq 0$.\n"
    "With $a = 1, b = -3, c = 2$ we get $x = 1$ or $x = 2$."
)


@pytest.mark.parametrize(("text", "lang"), [(MATH_EN, "en"), (MATH_ZH, "zh"), (MATH_LATEX, "en")])
def test_worked_solutions_meet_the_maths_rules_and_pass(text: str, lang: str) -> None:
    res = quality_filter(text, lang, CFG)
    assert (res.family, res.reason) == ("math", None)
    # the prose rules alone would have dropped every one of them
    assert quality_filter(text, lang, QualityConfig(math_detect=False)).reason is not None


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("x = 1\ny = 2", "math: too short"),
        ("\n".join(f"x{i} = {i * 7} @@##§§¤¤~~•• value" for i in range(10)), "math: symbol soup"),
        ("\n".join(f"{i} + {i * 3} = {i * 4} ; {i * 9} - {i} = {i * 8}" for i in range(12)), "math: too few words"),
        ("\n".join(["Then 2 + 2 = 4 and the answer follows from it."] * 12), "repetition: duplicate lines"),
    ],
)
def test_maths_junk_is_dropped_by_the_rule_named(text: str, want: str) -> None:
    assert quality_filter(text, "en", CFG).reason == want


def test_code_symbol_soup() -> None:
    text = "\n".join(f"value_{i} = compute(index_{i})  # §¤¶•" for i in range(10))
    assert F.code_quality(text, CFG) == "code: symbol soup"
    assert F.code_quality(CODE_GOOD, CFG) is None
