"""Verifier edge cases: answer forms, number normalisation, missing answers, the reasoning format."""

import pytest

from diji.eval.verifiers import (
    answers_equal,
    extract_answer,
    format_ok,
    format_reward,
    math_reward,
    normalize_number,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("<think>\n3 + 4 = 7\n</think>\n#### 7", "7"),
        ("<think>x</think>#### -12", "-12"),  # negative
        ("<think>x</think>#### −12", "-12"),  # Unicode minus
        ("<think>x</think>#### 1,234", "1234"),  # thousands separator
        ("<think>x</think>#### 3.50", "3.5"),  # trailing zeros
        ("<think>x</think>#### 42 apples, I think.", "42"),  # trailing text
        ("<think>x</think>The answer is \\boxed{17}.", "17"),
        ("<think>x</think>\\boxed{ -5 } and then #### 6", "6"),  # #### wins over \boxed
        ("<think>x</think>First 3, then 4, so 9.", "9"),  # plain form: the last number
        ("The answer is 8", "8"),  # no reasoning block: the whole reply is the answer
        ("#### +5", "5"),
        ("#### $25", "25"),
    ],
)
def test_extract_answer_forms(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<think>7 + 1 = 8</think>",  # reasoning only, no answer
        "<think>7 + 1 = 8",  # unfinished thought: numbers inside are never the answer
        "<think>x</think>I do not know.",
        "<think>x</think>#### ",
    ],
)
def test_missing_answer_is_none_and_scores_zero(text):
    assert extract_answer(text) is None
    assert math_reward(text, "8") == 0.0


def test_numbers_in_reasoning_are_not_read_as_the_answer():
    assert extract_answer("<think>the answer is 8</think>#### 9") == "9"
    assert math_reward("<think>8 8 8</think>no idea", "8") == 0.0


def test_normalize_and_compare():
    assert normalize_number("1,234.500") == "1234.5"
    assert normalize_number("-0") == "0"
    assert normalize_number("abc") is None
    assert answers_equal("12", "12.0") and answers_equal("-3", "−3")
    assert not answers_equal("12", "13") and not answers_equal(None, "1")
    assert not answers_equal("1", "n/a")


def test_format_reward():
    assert format_reward("<think>\n2 + 2 = 4\n</think>\n#### 4") == 1.0
    assert format_ok("  <think>a</think> 5 ")  # surrounding whitespace is fine
    assert not format_ok("#### 4")  # answer without reasoning format
    assert not format_ok("<think></think>#### 4")  # empty reasoning
    assert not format_ok("<think>a</think>")  # reasoning without an answer
    assert not format_ok("<think>a</think><think>b</think>#### 4")  # two blocks
    assert not format_ok("so <think>a</think>#### 4")  # text before the block
    assert not format_ok("<think>a</think>no number")
    assert math_reward("#### 4", "4") == 1.0 and format_reward("#### 4") == 0.0  # correct but unformatted


def test_is_thinking_reads_the_reply_style():
    from diji.eval.verifiers import is_thinking

    assert is_thinking("<think>\n1+2=3\n</think>\n\\boxed{3}") and is_thinking("  <think>x")
    assert not is_thinking("\\boxed{3}") and not is_thinking("3 <think>")
