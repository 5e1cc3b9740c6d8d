"""The quickstart's evaluation: every family, generated task files, results recorded, in seconds on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import diji
from diji.train.checkpoint import verify_checkpoint
from testkit import write_data_dir

# The fixtures (eval_data, tiny_ckpt, early_ckpt, ckpt) live in eval_fixtures.py, loaded as a plugin.
pytest_plugins = ("eval_fixtures",)


@pytest.fixture(scope="module")
def code_data(tmp_path_factory) -> Path:
    """A data directory of multi-line text (diji's own source files), like the quickstart's corpus."""
    src = Path(diji.__file__).parent
    docs = [p.read_text(encoding="utf-8") for p in sorted(src.rglob("*.py")) if p.stat().st_size > 2000][:60]
    return write_data_dir(tmp_path_factory.mktemp("code"), docs, vocab_size=400)


def test_word_problems_are_well_formed_and_deterministic():
    from diji.eval.quick import word_problems
    from diji.eval.verifiers import extract_answer

    items = word_problems(40)
    assert items == word_problems(40) and items != word_problems(40, seed=1)
    for it in items:
        *steps, final = it["answer"].split("\n")
        value = int(steps[0].split()[0])
        for step in steps:  # every worked step is true arithmetic and chains from the previous one
            a, op, b, _, c = step.split()
            assert int(a) == value and int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
            value = int(c)
        assert extract_answer(final) == str(value)


def test_cloze_items_are_real_held_out_lines_against_shuffled_copies(code_data):
    import numpy as np

    from diji.data.tokenizer import Tokenizer
    from diji.eval.quick import cloze_items

    items = cloze_items(code_data, 30)
    assert len(items) == 30 and items == cloze_items(code_data, 30)
    tok = Tokenizer.from_file(code_data / "tokenizer.json")
    val_lines = tok.decode(np.fromfile(code_data / "val-00000.bin", dtype="<u2").tolist()).split("\n")
    normalised = [" ".join(x.split()) for x in val_lines]
    for it in items:
        right = it["choices"][it["answer"]]
        # The true line is a line of a val document, right after its context (a line such as
        # "import json" can occur several times, so any occurrence with the context before it counts).
        spots = [j for j, x in enumerate(normalised) if x == right]
        assert spots
        assert any(it["question"].split("\n")[-1] in val_lines[max(j - 3, 0) : j] for j in spots)
        assert len(set(it["choices"])) == 4
        for c in it["choices"]:  # the distractors are the same words in another order, as many tokens
            assert sorted(c.split()) == sorted(right.split())
            assert len(tok.encode(" " + c)) == len(tok.encode(" " + right))


def test_quickstart_eval_scores_every_family_and_records_them(ckpt, code_data, tmp_path):
    from diji.eval.quick import quickstart_eval

    scores = quickstart_eval(str(ckpt), code_data, tmp_path / "eval", progress=False)
    assert set(scores) == {"ppl_bits_per_byte", "mc_acc", "math_pass@1", "reasoning_pass@1"}
    assert scores["ppl_bits_per_byte"] > 0 and all(0 <= v <= 1 for k, v in scores.items() if k != "ppl_bits_per_byte")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    results = report["checkpoints"][0]["results"]
    assert len(results) == 4
    # The checkpoint's tokenizer differs from the data's: ppl re-encoded the text, so bytes are still exact.
    ppl = next(r for r in results.values() if r["family"] == "ppl")
    assert "re-encoded" in ppl["settings"]["source"]
    assert (tmp_path / "eval" / "tasks" / "cloze_mc.jsonl").is_file()
    assert "bits_per_byte" in (tmp_path / "eval" / "eval.txt").read_text()
    assert len(verify_checkpoint(ckpt)["evals"]) == 4
