"""`math:FILE` as one Task for evaluation and GRPO: field names, skipped items, plug-in verifiers, and
the accuracy GRPO logs equal to what `diji eval` reports for the same checkpoint."""

from __future__ import annotations

import json

import pytest
from evalkit import arithmetic_items, write_jsonl

from diji.cli import main
from diji.errors import DijiError
from diji.eval.generative import MathFileTask
from diji.eval.task import get_task

pytest_plugins = ("eval_fixtures",)

HAS_DIGIT = '''
def reward(completion, reference):
    """Full credit for any digit, a little for a reply that merely is not empty."""
    return 1.0 if any(c.isdigit() for c in completion) else (0.1 if completion.strip() else 0.0)
'''


def test_gsm8k_and_math_fields_and_skipped_items(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"question": "q1", "answer": "3 + 4 = 7\n#### 7"},
        {"problem": "q2", "solution": "So it is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
        {"problem": "q3", "solution": "a long worked solution that never states its final answer"},
        {"question": "q4", "answer": 12},
        {"question": "q5", "answer": "\\dfrac{3}{4}", "solution": "We get $\\boxed{\\frac34}$, as shown."},
    ])
    task = get_task(f"math:{path}")
    assert isinstance(task, MathFileTask) and task.skipped == 1
    exs = task.examples("train", 0)
    assert [e.answer for e in exs] == ["7", "0.5", "12", "0.75"]
    assert [e.messages[-1]["content"] for e in exs] == ["q1", "q2", "q4", "q5"]
    assert exs[3].solution.startswith("We get")  # the worked solution, not the bare answer, is the SFT text
    assert task.examples("test", 2) == exs[:2]
    assert task.grade(exs[1], "<think>1/2</think> \\boxed{0.5}").correct
    assert task.grade(exs[3], "\\boxed{\\frac{3}{4}}").correct and not task.grade(exs[3], "\\boxed{3/5}").correct
    assert task.reward(exs[0], "#### 7") == 1.0 and task.reward(exs[0], "#### 8") == 0.0


def test_a_file_with_no_usable_answers_is_one_clear_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "none.jsonl", [{"question": "q", "answer": "no idea"},
                                                 {"problem": "p", "solution": "It is what it is."}])
    with pytest.raises(DijiError, match="no item has a usable answer"):
        MathFileTask(path)
    assert main(["eval", str(tmp_path), "--tasks", f"math:{path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no item has a usable answer (first: " in err and "#### <n>" in err


def test_plugin_verifier_by_file_and_by_module(tmp_path, monkeypatch):
    (tmp_path / "myverify.py").write_text(HAS_DIGIT + "\ndef bad(c, r):\n    return 'yes'\n")
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "anything, not parsed"}])
    by_file = MathFileTask(path, verifier=f"{tmp_path / 'myverify.py'}:reward")
    ex = by_file.examples("test", 1)[0]
    assert ex.answer == "anything, not parsed"  # a plug-in reads the raw reference itself
    assert by_file.reward(ex, "a 1") == 1.0 and by_file.grade(ex, "a 1").correct
    assert by_file.reward(ex, "abc") == 0.1 and not by_file.grade(ex, "abc").correct  # partial credit
    monkeypatch.syspath_prepend(str(tmp_path))
    assert MathFileTask(path, verifier="myverify:reward").reward(ex, "7") == 1.0
    with pytest.raises(DijiError, match="must return a finite number"):
        MathFileTask(path, verifier="myverify:bad").reward(ex, "7")
    with pytest.raises(DijiError, match="has no function 'nope'"):
        MathFileTask(path, verifier="myverify:nope")
    with pytest.raises(DijiError, match="cannot import"):
        MathFileTask(path, verifier="no_such_module_xyz:f")
    with pytest.raises(DijiError, match="applies to math:FILE"):
        get_task("arith", verifier="myverify:reward")


@pytest.mark.parametrize("plugin", [False, True])
def test_grpo_on_a_math_file_reports_what_diji_eval_reports(tiny_ckpt, tmp_path, capsys, plugin):
    """Acceptance: `diji train grpo` with grpo.task="math:FILE" trains and reports accuracy, and
    `diji eval CKPT --tasks math:FILE` gives the same number as GRPO's own evaluation."""
    from diji.observe.metrics import read_metrics

    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_items(12, seed=31))
    test = write_jsonl(tmp_path / "test.jsonl", arithmetic_items(10, seed=32))
    verifier = []
    if plugin:
        (tmp_path / "v.py").write_text(HAS_DIGIT)
        verifier = [f"grpo.verifier={json.dumps(str(tmp_path / 'v.py') + ':reward')}"]
    sets = [f"train.init_from={json.dumps(str(tiny_ckpt))}", f"run.out_dir={json.dumps(str(tmp_path))}",
            'run.name="g"', "run.progress=false", f"grpo.task={json.dumps('math:' + str(train))}",
            f"grpo.eval_task={json.dumps('math:' + str(test))}", "grpo.group_size=4", "grpo.max_new_tokens=12",
            "grpo.eval_examples=8", "train.max_steps=3", "train.batch_size=2", "train.log_every=1",
            "train.eval_every=0", "train.save_every=3", "optim.lr=1e-3", "optim.warmup_steps=0", *verifier]
    assert main(["train", "grpo", *[a for s in sets for a in ("--set", s)]]) == 0
    rows = read_metrics(tmp_path / "g" / "metrics.jsonl")
    assert all("accuracy" in r and "reward_mean" in r for r in rows if "loss" in r) and len(rows) == 3
    logged = rows[-1]["val_accuracy"]
    ckpt = tmp_path / "g" / "checkpoints" / "step-000003"
    capsys.readouterr()
    args = ["eval", str(ckpt), "--tasks", f"math:{test}", "--max-new-tokens", "12", "--limit", "8", "--json",
            "--no-record", "--no-progress"]
    if plugin:
        args += ["--verifier", f"{tmp_path / 'v.py'}:reward"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    result = report["checkpoints"][0]["results"][f"math:{test}"]
    assert result["settings"]["mode"] == "chat"
    assert result["metrics"]["pass@1"]["score"] == logged
    if plugin:  # the plug-in makes the number non-trivial, so the equality is not 0 == 0
        assert 0 < logged <= 1
