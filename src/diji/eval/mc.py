"""`mc`: multiple choice by log-likelihood, the way lm-evaluation-harness scores ARC, HellaSwag or MMLU.

File format (JSON Lines, one item per line):

    {"question": "Which keyword defines a function in Python?", "choices": ["def", "func", "lambda"], "answer": 0}

`answer` is the 0-based index of the correct choice (or the correct choice's exact text). Each choice is
scored as the continuation " <choice>" after the prompt

    [few-shot: "Question: <q>\\nAnswer: <correct choice>\\n\\n" × K] "Question: <q>\\nAnswer:"

and the model picks the choice with the highest total log-probability (`acc`) or the highest
log-probability per character of the choice (`acc_norm`, lm-eval's length normalisation, which removes
the bias toward short answers; Gao et al. 2021). Few-shot examples are the first K items of the file
that differ from the item itself, the rule lm-eval's `first_n` sampler applies, so both harnesses build
byte-identical prompts.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from diji.errors import DijiError
from diji.eval.files import nonempty_str, read_jsonl, typed_field
from diji.eval.lm import LanguageModel
from diji.eval.result import EvalSettings, Metric, TaskResult

QUESTION = "Question: {question}\nAnswer:"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class MCItem:
    question: str
    choices: tuple[str, ...]
    answer: int
    line: int


def load_mc(path: str | Path) -> tuple[list[MCItem], str]:
    """Items of an mc task file and its sha256; a malformed item raises DijiError naming file:line."""
    rows, digest = read_jsonl(path)
    items = []
    for line, obj in rows:
        where = f"{path}:{line}"
        question = nonempty_str(obj, "question", where)
        choices = typed_field(obj, "choices", list, where)
        if len(choices) < 2:
            raise DijiError(f"{where}: field 'choices' needs at least 2 entries, got {len(choices)}")
        for j, c in enumerate(choices):
            if not isinstance(c, str) or not c.strip():
                raise DijiError(f"{where}: choices[{j}] must be a non-empty string, got {c!r}")
        answer = typed_field(obj, "answer", (int, str), where)
        if isinstance(answer, str):
            if answer not in choices:
                raise DijiError(f"{where}: field 'answer' is the text {answer!r}, which is not one of the choices")
            answer = choices.index(answer)
        elif not 0 <= answer < len(choices):
            raise DijiError(f"{where}: field 'answer' = {answer} is not an index into {len(choices)} choices")
        items.append(MCItem(question, tuple(choices), answer, line))
    return items, digest


def fewshot(items: list[MCItem], index: int, k: int) -> list[MCItem]:
    """The first k items of the file that differ from item `index` (lm-eval's first_n sampler, which
    drops every copy of the evaluated item, so a duplicated item never answers itself)."""
    me = items[index]
    key = (me.question, me.choices, me.answer)
    return list(itertools.islice((it for it in items if (it.question, it.choices, it.answer) != key), k))


def prompt(item: MCItem, shots: list[MCItem]) -> str:
    parts = [QUESTION.format(question=s.question) + TARGET_DELIMITER + s.choices[s.answer] for s in shots]
    return "".join(p + FEWSHOT_DELIMITER for p in parts) + QUESTION.format(question=item.question)


def evaluate_mc(lm: LanguageModel, path: str | Path, settings: EvalSettings, bar, name: str) -> TaskResult:
    t0 = time.perf_counter()
    items, digest = load_mc(path)
    if settings.num_fewshot >= len(items):
        raise DijiError(f"{path} has {len(items)} items: too few for {settings.num_fewshot} few-shot examples "
                        "plus the question")
    chosen = items[: settings.limit] if settings.limit else items
    requests, prompts = [], []
    for i, item in enumerate(chosen):
        text = prompt(item, fewshot(items, i, settings.num_fewshot))
        prompts.append(text)
        for choice in item.choices:
            requests.append(lm.encode_pair(text, TARGET_DELIMITER + choice))
    with bar(len(requests), name) as progress:
        results = lm.loglikelihood(requests, progress)
    acc, acc_norm, samples = [], [], []
    k = 0
    for i, item in enumerate(chosen):
        lls = [r.logprob for r in results[k : k + len(item.choices)]]
        k += len(item.choices)
        pred = _argmax(lls)
        pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, item.choices, strict=True)])
        acc.append(float(pred == item.answer))
        acc_norm.append(float(pred_norm == item.answer))
        samples.append({"line": item.line, "gold": item.answer, "pred": pred, "pred_norm": pred_norm,
                        "loglikelihoods": lls, "prompt_tail": prompts[i][-200:]})
    return TaskResult(
        task=name, family="mc", main="acc",
        metrics={"acc": Metric(acc), "acc_norm": Metric(acc_norm)},
        unit_ids=[f"line{item.line}" for item in chosen], data_sha256=digest,
        settings={"num_fewshot": settings.num_fewshot, "limit": settings.limit, "prompt": QUESTION},
        samples=samples, extra={"chance": sum(1 / len(it.choices) for it in chosen) / len(chosen)},
        seconds=time.perf_counter() - t0,
    )


def _argmax(values: list[float]) -> int:
    """Index of the largest value, the first on ties (numpy's argmax rule, which lm-eval uses)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best
