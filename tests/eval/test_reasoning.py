"""The embedded arithmetic task: deterministic, disjoint splits, correct solutions, both languages."""

import pytest

from diji.errors import DijiError
from diji.eval.reasoning import ArithmeticTask, is_test_problem
from diji.eval.task import get_task, task_names


def test_same_seed_same_examples_and_different_seed_differs():
    t = ArithmeticTask()
    a, b = t.examples("train", 50, seed=1), t.examples("train", 50, seed=1)
    assert a == b
    assert [e.messages for e in a] != [e.messages for e in t.examples("train", 50, seed=2)]


def test_no_test_problem_is_seen_in_training():
    t = ArithmeticTask()
    train = {e.messages[0]["content"] for s in (0, 1) for e in t.examples("train", 3000, seed=s)}
    test = {e.messages[0]["content"] for e in t.examples("test", 500, seed=0)}
    assert not train & test
    assert all(is_test_problem(q) for q in test) and not any(is_test_problem(q) for q in train)
    assert len(test) > 400  # the held-out set is mostly distinct problems, not a few repeated


def test_solutions_are_correct_and_well_formed_in_both_languages():
    t = ArithmeticTask(max_steps=4, max_value=40)
    examples = t.examples("train", 400, seed=3)
    assert {e.meta["lang"] for e in examples} == {"en", "zh"}
    assert {e.meta["steps"] for e in examples} == {1, 2, 3, 4}
    for e in examples:
        g = t.grade(e, e.solution)
        assert g.correct and g.format_ok, e
        # Every line of the reasoning is a true equation and stays within the task's range.
        for line in e.solution.split("</think>")[0].removeprefix("<think>").strip().splitlines():
            lhs, rhs = line.split("=")
            op = "+" if "+" in lhs else "-"
            a, b = lhs.split(op)
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(rhs)
            assert 0 <= int(rhs) <= 40
    zh = next(e for e in examples if e.meta["lang"] == "zh")
    assert "？" in zh.messages[0]["content"]


def test_grading_and_reward():
    t = ArithmeticTask(format_weight=0.1)
    e = t.examples("test", 1)[0]
    wrong = str(int(e.answer) + 1)
    assert t.reward(e, e.solution) == pytest.approx(1.1)
    assert t.reward(e, f"#### {e.answer}") == pytest.approx(1.0)  # right but unformatted
    assert t.reward(e, f"<think>guess</think>#### {wrong}") == pytest.approx(0.1)
    assert not t.grade(e, "").correct


def test_registry_and_bad_arguments():
    assert {"arith", "arith_en", "arith_zh"} <= set(task_names())
    assert {e.meta["lang"] for e in get_task("arith_zh").examples("train", 20)} == {"zh"}
    with pytest.raises(DijiError, match="unknown task"):
        get_task("nope")
    with pytest.raises(DijiError, match="no split"):
        ArithmeticTask().examples("dev", 1)
    with pytest.raises(ValueError, match="languages"):
        ArithmeticTask(languages=("fr",))
    with pytest.raises(ValueError, match="min_steps"):
        ArithmeticTask(min_steps=3, max_steps=2)


def test_mixed_styles_share_the_problems_and_only_the_reply_differs():
    """arith_mix: `think_share` of train replies reason in <think>, the rest answer directly; the problems
    themselves do not depend on the share (the style has its own random stream) and test replies are worked."""
    mix, worked = get_task("arith_mix"), get_task("arith_mix", think_share=1.0)
    train = mix.examples("train", 1000, seed=3)
    assert [e.messages for e in train] == [e.messages for e in worked.examples("train", 1000, seed=3)]
    share = sum(e.meta["think"] for e in train) / len(train)
    assert abs(share - mix.think_share) < 0.05, share
    for e in train[:50]:
        assert e.solution.startswith("<think>") == e.meta["think"]
        if not e.meta["think"]:
            assert e.solution == "\\boxed{" + e.answer + "}"
        assert mix.grade(e, e.solution).correct and e.meta["steps"] == 3
    assert all(e.meta["think"] for e in mix.examples("test", 50))
    # One phrasing per operation and language: the English stories use only "buys" and "gives".
    verbs = {w for e in train if e.meta["lang"] == "en" for w in e.messages[0]["content"].split()
             if w in ("buys", "finds", "gets", "gives", "loses", "sells", "uses")}
    assert verbs == {"buys", "gives"}
    # English equations spell each number as the story does (" 7", with its space); Chinese has no spaces.
    en = next(e for e in train if e.meta["think"] and e.meta["lang"] == "en")
    zh = next(e for e in train if e.meta["think"] and e.meta["lang"] == "zh")
    first = en.solution.split("\n")[1]
    assert first.startswith(" ") and f" {first.split()[0]} " in en.messages[0]["content"] + " "
    assert " " not in zh.solution
    with pytest.raises(ValueError, match="think_share"):
        ArithmeticTask(think_share=1.5)
    with pytest.raises(ValueError, match="phrasings"):
        ArithmeticTask(phrasings=0)
