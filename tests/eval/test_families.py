"""Every task family on a tiny checkpoint: scores are well-formed, deterministic and independent of batch size."""

from __future__ import annotations

import math

import pytest
from evalkit import arithmetic_items, write_jsonl

from diji.eval.harness import progress_bar
from diji.eval.lm import LanguageModel
from diji.eval.result import EvalSettings

BAR = progress_bar(False)

# The fixtures (eval_data, tiny_ckpt, early_ckpt, ckpt) live in eval_fixtures.py, loaded as a plugin: a
# nested conftest.py would clash with tests/conftest.py under pytest's default import mode.
pytest_plugins = ("eval_fixtures",)


@pytest.fixture(scope="module")
def lm(tiny_ckpt):
    return LanguageModel.from_checkpoint(tiny_ckpt, device="cpu", batch_size=4)


def mc_rows(n: int = 12) -> list[dict]:
    rows = []
    for it in arithmetic_items(n, seed=9):
        a_plus_b = it["answer"].rsplit("#### ", 1)[1]
        wrong = str(int(a_plus_b) + 3)
        rows.append({"question": it["question"], "choices": [wrong, a_plus_b, "the model"], "answer": 1})
    return rows


def test_mc_scores_match_a_direct_forward_pass(lm, tmp_path):
    from diji.eval.mc import evaluate_mc, fewshot, load_mc, prompt

    path = write_jsonl(tmp_path / "mc.jsonl", mc_rows())
    res = evaluate_mc(lm, path, EvalSettings(num_fewshot=2), BAR, "mc")
    assert res.main == "acc" and len(res.unit_ids) == 12
    assert 0 <= res.score <= 1 and res.metrics["acc_norm"].score >= 0
    # Recompute one item's log-likelihoods with a plain unbatched forward pass.
    import torch

    items, _ = load_mc(path)
    text = prompt(items[5], fewshot(items, 5, 2))
    assert "What is" in text and text.count("Question:") == 3 and items[5].question in text.splitlines()[-2]
    for j, choice in enumerate(items[5].choices):
        ctx, cont = lm.encode_pair(text, " " + choice)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(ids[:, :-1]).float(), -1)[0]
        want = sum(float(logp[len(ctx) - 1 + t, cont[t]]) for t in range(len(cont)))
        assert res.samples[5]["loglikelihoods"][j] == pytest.approx(want, abs=1e-4)
    # The stderr is the sample std / sqrt(n) of the per-item 0/1 scores.
    acc = res.metrics["acc"].values
    p = sum(acc) / len(acc)
    assert res.stderr == pytest.approx(math.sqrt(sum((a - p) ** 2 for a in acc) / (len(acc) - 1) / len(acc)))


def test_mc_is_independent_of_batch_size(tiny_ckpt, tmp_path):
    from diji.eval.mc import evaluate_mc

    path = write_jsonl(tmp_path / "mc.jsonl", mc_rows(8))
    a = evaluate_mc(LanguageModel.from_checkpoint(tiny_ckpt, "cpu", batch_size=1), path, EvalSettings(), BAR, "mc")
    b = evaluate_mc(LanguageModel.from_checkpoint(tiny_ckpt, "cpu", batch_size=7), path, EvalSettings(), BAR, "mc")
    for sa, sb in zip(a.samples, b.samples, strict=True):
        assert sa["loglikelihoods"] == pytest.approx(sb["loglikelihoods"], abs=1e-5)
    assert a.score == b.score


def test_ppl_data_dir_and_text_file_agree(lm, eval_data, tmp_path):
    from diji.eval.ppl import evaluate_ppl

    res = evaluate_ppl(lm, eval_data, EvalSettings(window=64), BAR, "ppl")
    assert res.main == "bits_per_byte" and not res.metrics["bits_per_byte"].higher_is_better
    assert res.extra["perplexity"] == pytest.approx(math.exp(res.metrics["nll_per_token"].score))
    # bits/byte = nats/token * tokens / bytes / ln 2
    nll = res.metrics["nll_per_token"].score
    assert res.score == pytest.approx(nll * res.extra["tokens"] / res.extra["bytes"] / math.log(2))
    assert 0 < res.stderr < res.score
    # The same documents as a JSONL file give the same numbers (EOS targets are not scored in either).
    import numpy as np

    from diji.data.tokenizer import Tokenizer

    tok = Tokenizer.from_file(eval_data / "tokenizer.json")
    val = np.fromfile(eval_data / "val-00000.bin", dtype="<u2").tolist()
    docs, cur = [], []
    for t in val:
        if t == tok.eos_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    path = write_jsonl(tmp_path / "val.jsonl", [{"text": d} for d in docs])
    again = evaluate_ppl(lm, path, EvalSettings(window=64), BAR, "ppl2")
    assert again.extra["bytes"] == res.extra["bytes"] == sum(len(d.encode()) for d in docs)
    assert again.score == pytest.approx(res.score, rel=1e-9)


def test_math_greedy_is_deterministic_and_graded_by_the_verifier(lm, tmp_path):
    from diji.eval.generative import evaluate_math
    from diji.eval.verifiers import extract_answer

    path = write_jsonl(tmp_path / "math.jsonl", arithmetic_items(10, seed=11))
    s = EvalSettings(num_fewshot=1, max_new_tokens=24, mode="completion")
    a = evaluate_math(lm, path, s, BAR, "math")
    b = evaluate_math(LanguageModel.from_checkpoint(lm.path, "cpu", batch_size=3), path, s, BAR, "math")
    assert [x["responses"] for x in a.samples] == [x["responses"] for x in b.samples]
    for sample in a.samples:
        assert "Question:" not in sample["responses"][0] and "\n\n" not in sample["responses"][0]
        assert sample["extracted"][0] == extract_answer(sample["responses"][0])
        assert sample["correct"][0] == (sample["extracted"][0] == sample["answer"])
    assert a.settings["mode"] == "completion" and a.score == b.score
    # The tiny model learned the "#### n" format from its training text and gets some sums right.
    assert sum(x["extracted"][0] is not None for x in a.samples) >= 5 and a.score > 0


class ScriptedLM:
    """Stands in for the model (nanochat's test_engine idea): returns fixed replies, records the call."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.calls, self.lineage = tokenizer, replies, [], {}

    def generate(self, prompts, max_new_tokens, stop_ids, stop_strings=(), temperature=0.0, top_p=1.0,
                 samples=1, seed=0, progress=None):
        self.calls.append({"n": len(prompts), "samples": samples, "stops": stop_strings, "prompts": prompts})
        return self.replies


def test_math_metrics_from_known_replies(lm, tmp_path):
    from diji.eval.generative import MathFileTask, _run

    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q1", "answer": "#### 7"},
                                              {"question": "q2", "answer": "so 1,200\n#### 1,200"},
                                              {"question": "q3", "answer": 5}])
    task = MathFileTask(path)
    exs = task.examples("test", 0)
    assert [e.answer for e in exs] == ["7", "1200", "5"]
    replies = [["#### 7", "It is 8", "the answer is 7.", "\\boxed{7}"],   # 3 of 4 right, majority 7
               ["1200", "#### 1,200", "12", "12"],                       # 2 right, tie 1200 vs 12 -> first seen
               ["<think>5</think> 6", "none", "6", "4"]]                  # 0 right (reasoning is not the answer)
    fake = ScriptedLM(lm.tokenizer, replies)
    s = EvalSettings(samples=4, temperature=0.7)
    res = _run(fake, task, exs, [[1]] * 3, (), s, BAR, "m", "math", task.sha256, {})
    assert res.metrics["pass@1"].values == [0.75, 0.5, 0.0]
    assert res.metrics["maj@4"].values == [1.0, 1.0, 0.0]
    assert res.metrics["pass@4"].values == [1.0, 1.0, 0.0]
    assert res.score == pytest.approx(1.25 / 3)
    assert res.samples[1]["extracted"] == ["1200", "1200", "12", "12"]
    assert [(c["n"], c["samples"], c["stops"]) for c in fake.calls] == [(3, 4, ())]


def test_math_sampling_gives_maj_and_pass_at_k(lm, tmp_path):
    from diji.eval.generative import evaluate_math

    path = write_jsonl(tmp_path / "math.jsonl", arithmetic_items(4, seed=12))
    s = EvalSettings(samples=4, temperature=1.0, max_new_tokens=16, mode="completion", seed=3)
    a = evaluate_math(lm, path, s, BAR, "m")
    assert set(a.metrics) == {"pass@1", "maj@4", "pass@4"}  # no <think> format rate in completion mode
    assert a.metrics["pass@4"].score >= a.metrics["pass@1"].score
    assert all(len(x["responses"]) == 4 for x in a.samples)
    b = evaluate_math(LanguageModel.from_checkpoint(lm.path, "cpu", batch_size=2), path, s, BAR, "m")
    assert [x["responses"] for x in a.samples] == [x["responses"] for x in b.samples]


def test_math_chat_mode_renders_few_shot_turns(lm, tmp_path):
    from diji.data.chat import render_text
    from diji.eval.generative import evaluate_math

    rows = arithmetic_items(3, seed=13)
    path = write_jsonl(tmp_path / "math.jsonl", rows)
    fake = ScriptedLM(lm.tokenizer, [["#### 1"]] * 3)
    res = evaluate_math(fake, path, EvalSettings(mode="chat", num_fewshot=1), BAR, "m")
    want = render_text([{"role": "user", "content": rows[1]["question"]},
                        {"role": "assistant", "content": rows[1]["answer"]},
                        {"role": "user", "content": rows[0]["question"]}], lm.tokenizer, add_generation_prompt=True)
    assert lm.tokenizer.decode(fake.calls[0]["prompts"][0]) == want
    assert fake.calls[0]["stops"] == () and res.settings["mode"] == "chat" and "format" in res.metrics
    # auto mode picks chat for chat-trained checkpoints and completion otherwise
    fake.lineage = {"stage": "grpo"}
    assert evaluate_math(fake, path, EvalSettings(), BAR, "m").settings["mode"] == "chat"
    fake.lineage = {"stage": "pretrain"}
    assert evaluate_math(fake, path, EvalSettings(), BAR, "m").settings["mode"] == "completion"


def test_builtin_reasoning_task_held_out_split(lm):
    from diji.eval.generative import evaluate_builtin
    from diji.eval.task import get_task

    res = evaluate_builtin(lm, "arith", EvalSettings(limit=6, max_new_tokens=12), BAR, "arith")
    held_out = get_task("arith").examples("test", 6, seed=0)
    assert res.unit_ids == [ex.id for ex in held_out] and res.family == "reasoning"
    assert res.settings["split"] == "test" and 0 <= res.score <= 1


def test_builtin_task_scores_like_the_training_stages_own_held_out_check(lm):
    """`diji eval arith` and the accuracy SFT/GRPO log (`diji.eval.task.score`) are the same measurement."""
    from diji.eval.generative import evaluate_builtin
    from diji.eval.task import get_task, score

    task = get_task("arith")
    res = evaluate_builtin(lm, "arith", EvalSettings(limit=8, max_new_tokens=20), BAR, "arith")
    theirs = score(lm.model, lm.tokenizer, task, task.examples("test", 8, seed=0), max_new_tokens=20)
    assert [s["responses"][0] for s in res.samples] == theirs.completions
    assert res.score == theirs.accuracy and res.metrics["format"].score == theirs.format_rate
