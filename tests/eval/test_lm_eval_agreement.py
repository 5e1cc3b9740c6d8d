"""Agreement with lm-evaluation-harness: the same model, items and few-shot settings give the same scores.

lm-eval (`--model local-completions`) talks to `diji serve` over HTTP exactly as it would to any
OpenAI-compatible server: token-id prompts, `echo` + `logprobs` to score choices, `stop` for generation.
diji's harness scores the same files in-process. We require
  * the harness's log-likelihoods to equal the server's echoed token log-probabilities (1e-4) directly;
  * mc through lm-eval: per-item, per-choice log-likelihoods within 1e-4 and identical acc / acc_norm;
  * math: identical greedy generations per item and identical exact match (both sides grade with diji's
    verifier, via lm-eval's `process_results` hook, so a mismatch can only come from prompting or decoding),
    in completion mode (local-completions) and in chat mode (local-chat-completions, few-shot as turns).

External and slow (1–3 min: lm-eval's start-up dominates). CI runs it with `make test-slow` after
`pip install "lm-eval[api]"` (tested with lm-eval 0.4.13, whose request format NOTES.md describes); it
needs no network: the task files are local JSON and the tokenizer comes from the server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from evalkit import arithmetic_items, write_jsonl

from diji.eval.harness import progress_bar
from diji.eval.lm import LanguageModel
from diji.eval.result import EvalSettings

pytestmark = [pytest.mark.external, pytest.mark.slow]
pytest_plugins = ("eval_fixtures",)  # tiny_ckpt (see eval_fixtures.py)
lm_eval = pytest.importorskip("lm_eval", reason='needs pip install "lm-eval[api]"')

FEWSHOT = 2
MAX_GEN = 24

MC_YAML = """\
task: diji_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

MATH_YAML = """\
task: diji_math
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
fewshot_config:
  sampler: first_n
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
generation_kwargs:
  until: ["Question:", "\\n\\n", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_gen}
process_results: !function diji_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

UTILS = """\
from diji.eval.verifiers import answers_equal, extract_answer, normalize_number


def process_results(doc, results):
    reference = normalize_number(str(doc["answer"]).rsplit("####", 1)[-1])
    return {"exact_match": float(answers_equal(extract_answer(results[0]), reference))}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "diji", "serve", str(tiny_ckpt), "--port", str(port),
                                 "--device", "cpu", "--model-name", "tiny"], stdout=f, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"diji serve exited: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("diji serve did not become healthy within 60 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run_lm_eval(base: str, task: str, include: Path, out: Path, model: str = "local-completions",
                endpoint: str = "/v1/completions", extra: tuple[str, ...] | list[str] = ()) -> dict[int, dict]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(out / "hf-cache"), "OMP_NUM_THREADS": "1"}
    args = f"model=tiny,base_url={base}{endpoint},num_concurrent=1,max_retries=1"
    if model == "local-completions":
        args += ",tokenized_requests=True"
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", args,
           "--tasks", task, "--include_path", str(include), "--num_fewshot", str(FEWSHOT), "--batch_size", "1",
           "--output_path", str(out), "--log_samples", "--seed", "0", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"lm-eval wrote no samples for {task}: {proc.stderr[-2000:]}"
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return {r["doc_id"]: r for r in rows}


def mc_rows() -> list[dict]:
    """Choices share prefixes and differ in length, so acc and acc_norm can disagree."""
    rows = []
    for i, it in enumerate(arithmetic_items(12, seed=31)):
        right = it["answer"].rsplit("#### ", 1)[1]
        choices = [str(int(right) + 1), right, f"{right} apples", "the model reads tokens"]
        rows.append({"question": it["question"], "choices": choices[i % 2:] + choices[: i % 2], "answer": 1 - i % 2})
    return rows


def test_loglikelihoods_equal_the_servers_echo_logprobs(server, tiny_ckpt, tmp_path):
    """The harness's own scoring against `diji serve` directly, without lm-eval's slicing in between."""
    from diji.eval.mc import evaluate_mc, fewshot, load_mc, prompt

    path = write_jsonl(tmp_path / "mc.jsonl", mc_rows())
    lm = LanguageModel.from_checkpoint(tiny_ckpt, "cpu", batch_size=5)
    ours = evaluate_mc(lm, path, EvalSettings(num_fewshot=FEWSHOT), progress_bar(False), "mc")
    items, _ = load_mc(path)
    for i, item in enumerate(items):
        text = prompt(item, fewshot(items, i, FEWSHOT))
        for j, choice in enumerate(item.choices):
            ctx, cont = lm.encode_pair(text, " " + choice)
            body = json.dumps({"model": "tiny", "prompt": [ctx + cont], "max_tokens": 1, "temperature": 0,
                               "logprobs": 1, "echo": True}).encode()
            req = urllib.request.Request(server + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                lp = json.load(r)["choices"][0]["logprobs"]["token_logprobs"]
            theirs = sum(lp[len(ctx) : len(ctx) + len(cont)])
            assert ours.samples[i]["loglikelihoods"][j] == pytest.approx(theirs, abs=1e-4)


def test_mc_loglikelihoods_and_accuracy_match_lm_eval(server, tiny_ckpt, tmp_path):
    rows = mc_rows()
    path = write_jsonl(tmp_path / "mc.jsonl", rows)
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "diji_mc.yaml").write_text(MC_YAML.format(path=path))
    theirs = run_lm_eval(server, "diji_mc", include, tmp_path / "out")

    lm = LanguageModel.from_checkpoint(tiny_ckpt, "cpu", batch_size=5)
    from diji.eval.mc import evaluate_mc

    ours = evaluate_mc(lm, path, EvalSettings(num_fewshot=FEWSHOT), progress_bar(False), "mc")
    assert len(theirs) == len(ours.samples) == 12
    worst, where = 0.0, None
    for i, sample in enumerate(ours.samples):
        their_lls = [float(resp[0][0]) for resp in theirs[i]["resps"]]  # logged as strings
        assert len(their_lls) == 4
        for j, (a, b) in enumerate(zip(sample["loglikelihoods"], their_lls, strict=True)):
            if abs(a - b) > worst:
                worst, where = abs(a - b), (i, j, a, b)
    # lm-eval sums token_logprobs[ctxlen:-1]: the server must echo the prompt *and* the one sampled token
    # (even when that token is EOS); one missing entry silently drops a continuation token (an exact 0.0
    # for one-token choices).
    assert worst < 1e-4, f"largest log-likelihood difference {worst} at (item, choice, ours, lm-eval) = {where}"
    for i in range(len(ours.samples)):
        assert ours.metrics["acc"].values[i] == theirs[i]["acc"]
        assert ours.metrics["acc_norm"].values[i] == theirs[i]["acc_norm"]


def test_math_greedy_generations_and_exact_match_match_lm_eval(server, tiny_ckpt, tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", arithmetic_items(10, seed=32))
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "diji_math.yaml").write_text(MATH_YAML.format(path=path, max_gen=MAX_GEN))
    (include / "diji_utils.py").write_text(UTILS)
    theirs = run_lm_eval(server, "diji_math", include, tmp_path / "out")

    from diji.eval.generative import evaluate_math

    lm = LanguageModel.from_checkpoint(tiny_ckpt, "cpu", batch_size=4)
    ours = evaluate_math(lm, path, EvalSettings(num_fewshot=FEWSHOT, max_new_tokens=MAX_GEN, mode="completion"),
                         progress_bar(False), "math")
    assert len(theirs) == len(ours.samples) == 10
    # The tiny model writes real answers (not empty strings), so agreement means something.
    assert sum("####" in s["responses"][0] for s in ours.samples) >= 5
    for i, sample in enumerate(ours.samples):
        assert sample["responses"][0] == theirs[i]["filtered_resps"][0], f"item {i}"
        assert float(sample["correct"][0]) == theirs[i]["exact_match"]


CHAT_YAML = """\
task: diji_math_chat
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
fewshot_config:
  sampler: first_n
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
fewshot_delimiter: ""
generation_kwargs:
  until: ["<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_gen}
process_results: !function diji_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_math_chat_mode_matches_lm_eval_chat_completions(server, tiny_ckpt, tmp_path):
    """Chat mode: lm-eval sends the few-shot pairs as user/assistant turns to /v1/chat/completions, which
    renders them with the same ChatML renderer diji's harness uses in-process."""
    path = write_jsonl(tmp_path / "math.jsonl", arithmetic_items(6, seed=33))
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "diji_math_chat.yaml").write_text(CHAT_YAML.format(path=path, max_gen=MAX_GEN))
    (include / "diji_utils.py").write_text(UTILS)
    theirs = run_lm_eval(server, "diji_math_chat", include, tmp_path / "out", model="local-chat-completions",
                         endpoint="/v1/chat/completions", extra=["--apply_chat_template", "--fewshot_as_multiturn"])

    from diji.eval.generative import evaluate_math

    lm = LanguageModel.from_checkpoint(tiny_ckpt, "cpu", batch_size=4)
    ours = evaluate_math(lm, path, EvalSettings(num_fewshot=FEWSHOT, max_new_tokens=MAX_GEN, mode="chat"),
                         progress_bar(False), "math")
    assert len(theirs) == len(ours.samples) == 6
    assert sum(bool(s["responses"][0].strip()) for s in ours.samples) >= 3
    for i, sample in enumerate(ours.samples):
        assert sample["responses"][0] == theirs[i]["filtered_resps"][0], f"item {i}"
        assert float(sample["correct"][0]) == theirs[i]["exact_match"]
