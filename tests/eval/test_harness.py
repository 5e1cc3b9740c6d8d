"""`diji eval` end to end: table + JSON, lineage records, multi-checkpoint comparison, decontamination,
and bad input giving one clear line."""

from __future__ import annotations

import json

import pytest
from evalkit import arithmetic_items, write_jsonl

from diji.cli import main
from diji.train.checkpoint import verify_checkpoint

# The fixtures (eval_data, tiny_ckpt, early_ckpt, ckpt) live in eval_fixtures.py, loaded as a plugin: a
# nested conftest.py would clash with tests/conftest.py under pytest's default import mode.
pytest_plugins = ("eval_fixtures",)


def mc_file(path, n=6):
    rows = [{"question": it["question"], "choices": [it["answer"][-1], "x", "y"], "answer": 0}
            for it in arithmetic_items(n, seed=21)]
    return write_jsonl(path, rows)


def test_cli_evaluates_every_family_and_records_lineage(ckpt, eval_data, tmp_path, capsys):
    mc = mc_file(tmp_path / "mc.jsonl")
    math_file = write_jsonl(tmp_path / "math.jsonl", arithmetic_items(5, seed=22))
    out = tmp_path / "results.json"
    tasks = f"mc:{mc},math:{math_file},ppl:{eval_data},arith"
    rc = main(["eval", str(ckpt), "--tasks", tasks, "--limit", "4", "--num-fewshot", "1",
               "--max-new-tokens", "12", "--window", "64", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in (f"mc:{mc}", f"math:{math_file}", f"ppl:{eval_data}", "arith", "bits_per_byte ↓", "acc_norm"):
        assert name in printed
    data = json.loads(out.read_text())
    res = data["checkpoints"][0]["results"]
    assert set(res) == {f"mc:{mc}", f"math:{math_file}", f"ppl:{eval_data}", "arith"}
    assert res[f"mc:{mc}"]["n"] == 4 and res["arith"]["n"] == 4
    assert res[f"math:{math_file}"]["settings"]["mode"] == "completion"  # a pretrain checkpoint
    assert data["settings"]["num_fewshot"] == 1 and len(data["samples"][str(ckpt)][f"mc:{mc}"]) == 4
    lineage = verify_checkpoint(ckpt)  # appending did not break verification
    evals = lineage["evals"]
    assert [e["task"] for e in evals] == list(res)
    for e in evals:
        assert {"task", "score", "stderr", "data_sha256", "code_version", "date", "metric", "n"} <= set(e)
        assert e["score"] == pytest.approx(res[e["task"]]["score"])
    # A second run appends; nothing is lost.
    assert main(["eval", str(ckpt), "--tasks", "arith", "--limit", "2", "--max-new-tokens", "4",
                 "--no-progress"]) == 0
    assert len(json.loads((ckpt / "lineage.json").read_text())["evals"]) == len(evals) + 1


def test_comparison_pairs_items_and_flags_real_differences(tiny_ckpt, early_ckpt, eval_data, tmp_path):
    from diji.eval.harness import evaluate
    from diji.eval.result import EvalSettings

    mc = mc_file(tmp_path / "mc.jsonl", 8)
    report = evaluate([early_ckpt, tiny_ckpt, tiny_ckpt], [f"ppl:{eval_data}", f"mc:{mc}"],
                      EvalSettings(window=64, limit=24), progress=False, record=False, log=lambda _: None)
    by = {(c.task, c.metric, c.checkpoint, i): c for i, c in enumerate(report.comparisons)}
    ppl = [c for (t, m, _, _), c in by.items() if t.startswith("ppl") and m == "bits_per_byte"]
    assert len(ppl) == 2 and all(c.difference.paired for c in ppl)
    # 20 more steps of training lower bits/byte by far more than the noise of 24 windows.
    assert ppl[0].difference.diff < 0 and ppl[0].verdict == "better"
    text = report.table()
    assert "[1] " + str(early_ckpt) in text and "Δ[2]-[1]" in text and "▲" in text
    # The same checkpoint twice has identical per-item scores: its difference to [2] is exactly the one of [2].
    assert ppl[1].difference.diff == ppl[0].difference.diff
    data = report.to_json()
    assert {c["verdict"] for c in data["comparisons"]} <= {"better", "worse", "within noise"}


def test_decontamination_finds_items_copied_from_training_data(eval_data, tmp_path, capsys):
    from diji.eval.decontam import contamination

    # The data directory holds arithmetic_docs(400, seed=2), the first 360 in its train split.
    seen = arithmetic_items(400, seed=2)[:3]
    novel = [{"question": f"How many {w} stones weigh seventeen kilograms altogether in the old {w} mine?",
              "answer": "#### 17"} for w in ("granite", "basalt")]
    # Question and answer are separate segments: in the training text a "\nAnswer:" line sits between them.
    rep = contamination([[r["question"], r["answer"]] for r in seen + novel] + ["7?"], eval_data, n=8)
    assert rep["contaminated_items"] == [0, 1, 2] and rep["too_short"] == 1
    assert rep["fraction"] == pytest.approx(3 / 5) and rep["train_tokens_scanned"] > 0
    # Through the CLI without a checkpoint: the report alone.
    path = write_jsonl(tmp_path / "m.jsonl", seen + novel)
    out = tmp_path / "d.json"
    assert main(["eval", "--tasks", f"math:{path}", "--decontaminate", str(eval_data), "--ngram", "8",
                 "--output", str(out)]) == 0
    assert "3/5 items (60.0%)" in capsys.readouterr().out
    assert json.loads(out.read_text())["decontamination"][f"math:{path}"]["contaminated"] == 3


@pytest.mark.parametrize(("family", "line", "message"), [
    ("mc", '{"question": "q", "choices": ["a", "b"]}', "missing field 'answer'"),
    ("mc", '{"question": "q", "choices": "ab", "answer": 0}', "field 'choices' must be a list, got string"),
    ("mc", '{"question": "q", "choices": ["a", "b"], "answer": 2}', "'answer' = 2 is not an index into 2"),
    ("mc", '{"question": "q", "choices": ["a", "b"], "answer": true}', "must be an integer or a string, got boolean"),
    ("mc", '{"question": 3, "choices": ["a", "b"], "answer": 0}', "field 'question' must be a string"),
    ("math", '{"answer": "#### 4"}', "missing field 'question'"),
    ("math", '{"question": "q", "answer": [4]}', "field 'answer' must be a string or an integer or a number, got list"),
    ("math", '{"question": "q", "answer": "#### 4"', "not valid JSON"),
    ("math", '["q", "#### 4"]', "each line must be a JSON object"),
])
def test_bad_task_files_give_one_clear_line(tmp_path, capsys, family, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "fine", "choices": ["a", "b"], "answer": "a"}\n' if family == "mc"
                    else '{"question": "fine", "answer": "#### 1"}\n')
    with open(path, "a") as f:
        f.write(line + "\n")
    # No checkpoint is loaded: the file is checked first, so even a missing checkpoint is not reached.
    assert main(["eval", str(tmp_path / "nowhere"), "--tasks", f"{family}:{path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"diji: error: {path}:2: ") and message in err


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "nope"], "unknown task 'nope'"),
    (["--tasks", "mc"], "needs a file: write mc:PATH"),
    (["--tasks", "arith", "--samples", "3"], "samples > 1 needs temperature > 0"),
    (["--tasks", "arith", "--limit", "-1"], "limit must be >= 0"),
    (["--tasks", "mc:/no/such.jsonl"], "task file not found"),
    (["--tasks", "arith,arith"], "listed twice"),
])
def test_bad_arguments_give_one_clear_line(ckpt, capsys, args, message):
    assert main(["eval", str(ckpt), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_a_damaged_checkpoint_is_refused(ckpt, capsys):
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    assert main(["eval", str(ckpt), "--tasks", "arith", "--no-progress"]) == 2
    assert "does not match its sha256" in capsys.readouterr().err


def test_concurrent_lineage_appends_lose_nothing(ckpt):
    import threading

    from diji.eval.harness import append_lineage

    threads = [threading.Thread(target=append_lineage, args=(ckpt, [{"task": f"t{i}", "score": i}]))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evals = verify_checkpoint(ckpt)["evals"]
    assert sorted(e["task"] for e in evals) == [f"t{i}" for i in range(8)]


def test_comparison_falls_back_to_unpaired_when_units_differ():
    from diji.eval.harness import CheckpointResults, compare
    from diji.eval.result import Metric, TaskResult

    def result(ids, values):
        return TaskResult("ppl:x", "ppl", "bits_per_byte", {"bits_per_byte": Metric(values, [10.0] * len(values),
                          higher_is_better=False)}, ids, "sha", {})

    a = CheckpointResults("a", "", {"ppl:x": result(["t1:0", "t1:1", "t1:2"], [5.0, 6.0, 7.0])})
    b = CheckpointResults("b", "", {"ppl:x": result(["t2:0", "t2:1"], [4.0, 4.5])})  # another tokenizer
    (c,) = compare([a, b])
    assert not c.difference.paired
    assert c.difference.diff == pytest.approx(8.5 / 20 - 18.0 / 30)
    # se = sqrt(se_a² + se_b²) = sqrt((√3/30)² + (0.5/20)²) ≈ 0.063; |Δ| = 0.175 > 1.96 se, and lower is better
    assert c.difference.stderr == pytest.approx(((3 ** 0.5 / 30) ** 2 + (0.5 / 20) ** 2) ** 0.5)
    assert c.verdict == "better"
