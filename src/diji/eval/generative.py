"""Generate-and-check families: `math` (GSM8K-style files) and the built-in reasoning tasks.

Both are `Task`s (data + grader + reward in one class, STYLE.md rule 9): the reasoning tasks come from
`diji.eval.task.get_task`, and a math file becomes a `MathFileTask` whose grader is the GRPO verifier
(`diji.eval.verifiers`), so evaluation and RL can never disagree about what "correct" means.

Math file format (JSON Lines), GSM8K's (Cobbe et al. 2021) or MATH's (Hendrycks et al. 2021) fields:

    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = 7 apples.\\n#### 7"}
    {"problem": "What is $1/4 + 1/4$?", "solution": "… so the sum is $\\boxed{\\frac{1}{2}}$."}

The question is the first of QUESTION_FIELDS present, the reference the first of ANSWER_FIELDS that
holds a readable final answer (`diji.eval.verifiers.reference_answer`: `#### n`, `\\boxed{…}` or a
bare answer). Items without one are skipped and counted (`skipped`), the same ones every time so
scores stay comparable; a file with none fails with one line. With a plug-in verifier
(`module:function`) the reference is the answer field's raw text and is not parsed.

Prompting, in `completion` mode (lm-eval's gsm8k format, few-shot examples from the start of the file):

    [ "Question: <q>\\nAnswer: <worked answer>\\n\\n" × K ] "Question: <q>\\nAnswer:"   … until "Question:" / "\\n\\n"

and in `chat` mode the few-shot pairs become user/assistant turns rendered by the one chat renderer,
generation stopping at <|im_end|>. Scores: pass@1 (greedy exact match with one sample; the mean
correctness of the samples otherwise), and with k > 1 samples maj@k (self-consistency, Wang et al. 2023)
and unbiased pass@k (Chen et al. 2021).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

from diji.data.chat import render_prompt
from diji.errors import DijiError
from diji.eval.files import nonempty_str, read_jsonl, typed_field
from diji.eval.lm import LanguageModel
from diji.eval.result import EvalSettings, Metric, TaskResult
from diji.eval.stats import majority, pass_at_k
from diji.eval.task import Example, Grade, Task
from diji.eval.verifiers import answers_equal, extract_answer, format_ok

QUESTION = "Question: {question}\nAnswer:"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
COMPLETION_STOPS = ("Question:", "\n\n")
HELDOUT_DEFAULT = 200
"""Held-out problems a built-in reasoning task is scored on when --limit is not given."""


QUESTION_FIELDS = ("question", "problem", "prompt", "input", "query")
ANSWER_FIELDS = ("answer", "final_answer", "solution", "target", "output")


class MathFileTask(Task):
    """A GSM8K/MATH-style JSONL file as a Task: data (its items), grader and reward (a verifier).

    The file is one split: `train` (GRPO's prompts) and `test` (evaluation) both give its items in
    file order; hold problems out by giving GRPO a different file for `grpo.eval_task`.
    """

    splits = ("train", "test")

    def __init__(self, path: str | Path, verifier: str = "math") -> None:
        from diji.eval.verifiers import load_verifier

        self.path = Path(path)
        self.name = f"math:{self.path}"
        self.verifier_name = verifier or "math"
        self.builtin = self.verifier_name == "math"
        self.verifier = load_verifier(self.verifier_name)
        rows, self.sha256 = read_jsonl(self.path)
        self._items: list[Example] = []
        self.skipped = 0
        """Items left out because no answer field held a readable final answer."""
        example_bad = ""
        for line, obj in rows:
            where = f"{self.path}:{line}"
            qfield = next((f for f in QUESTION_FIELDS if f in obj), QUESTION_FIELDS[0])
            question = nonempty_str(obj, qfield, where)
            reference, solution = self._reference(obj, where)
            if reference is None:
                self.skipped += 1
                example_bad = example_bad or where
                continue
            self._items.append(Example(id=f"line{line}", messages=({"role": "user", "content": question},),
                                       answer=reference, solution=solution, meta={"line": line}))
        if not self._items:
            fields = "/".join(ANSWER_FIELDS)
            raise DijiError(f"{self.path}: no item has a usable answer (first: {example_bad}); each line needs a "
                            f"field {fields} holding '#### <n>' (GSM8K), '\\boxed{{…}}' (MATH) or a bare answer")

    def _reference(self, obj: dict[str, Any], where: str) -> tuple[str | None, str]:
        """(normalised reference or None, worked solution) from the first answer field that has one."""
        from diji.eval.verifiers import reference_answer

        solution = ""
        for f in ANSWER_FIELDS:
            if f not in obj:
                continue
            raw = typed_field(obj, f, (str, int, float), where)
            solution = solution or str(raw)
            if not self.builtin:  # a plug-in reads its own reference
                return str(raw), solution
            ref = reference_answer(raw)
            if ref is not None:
                # The worked solution (GSM8K's answer, MATH's solution) is the SFT text and the few-shot
                # example, not a bare answer: the longest field that agrees on the reference.
                agree = [str(obj[g]) for g in ANSWER_FIELDS if isinstance(obj.get(g), str)
                         and reference_answer(obj[g]) == ref]
                return ref, max(agree, key=len, default=solution)
        if not self.builtin:
            return "", solution
        return None, solution

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """The first n items of the file (the file's order is the order; `seed` does not apply)."""
        self.check_split(split)
        return self._items[:n] if n else list(self._items)

    def grade(self, example: Example, completion: str) -> Grade:
        got = extract_answer(completion)
        if self.builtin:
            return Grade(answers_equal(got, example.answer), got, format_ok(completion))
        return Grade(self.verifier(completion, example.answer) >= 1.0, got, format_ok(completion))

    def reward(self, example: Example, completion: str) -> float:
        """The plug-in's reward as it is; the built-in one plus `format_weight` for a well-formed reply."""
        if self.builtin:
            return super().reward(example, completion)
        return self.verifier(completion, example.answer)


def fewshot(pool: list[Example], index: int, k: int) -> list[Example]:
    """The first k items that differ from item `index` (lm-eval's first_n sampler: copies of the
    evaluated item are dropped too, so an item never answers itself)."""
    me = pool[index]
    key = (me.messages, me.solution)
    return list(itertools.islice((ex for ex in pool if (ex.messages, ex.solution) != key), k))


def completion_prompt(example: Example, shots: list[Example]) -> str:
    parts = [QUESTION.format(question=s.messages[-1]["content"]) + TARGET_DELIMITER + s.solution for s in shots]
    return "".join(p + FEWSHOT_DELIMITER for p in parts) + QUESTION.format(question=example.messages[-1]["content"])


def chat_messages(example: Example, shots: list[Example]) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    for s in shots:
        turns += [dict(m) for m in s.messages] + [{"role": "assistant", "content": s.solution}]
    return turns + [dict(m) for m in example.messages]


def resolve_mode(mode: str, lm: LanguageModel) -> str:
    """`auto` → chat for checkpoints trained on conversations (sft, grpo), completion otherwise."""
    if mode != "auto":
        return mode
    return "chat" if lm.lineage.get("stage") in ("sft", "grpo", "lora") else "completion"


def evaluate_math(lm: LanguageModel, path: str | Path, settings: EvalSettings, bar, name: str) -> TaskResult:
    task = MathFileTask(path, settings.verifier)
    pool = task.examples("test", 0)
    if settings.num_fewshot >= len(pool):
        raise DijiError(f"{path} has {len(pool)} items: too few for {settings.num_fewshot} few-shot examples "
                        "plus the question")
    chosen = pool[: settings.limit] if settings.limit else pool
    mode = resolve_mode(settings.mode, lm)
    shots = [fewshot(pool, i, settings.num_fewshot) for i in range(len(chosen))]
    if mode == "chat":
        prompts = [render_prompt(chat_messages(ex, sh), lm.tokenizer)
                   for ex, sh in zip(chosen, shots, strict=True)]
        stops: tuple[str, ...] = ()
    else:
        prompts = [lm.tokenizer.encode(completion_prompt(ex, sh)) for ex, sh in zip(chosen, shots, strict=True)]
        stops = COMPLETION_STOPS
    return _run(lm, task, chosen, prompts, stops, settings, bar, name, "math", task.sha256,
                {"mode": mode, "num_fewshot": settings.num_fewshot, "verifier": task.verifier_name,
                 "skipped_items": task.skipped})


def evaluate_builtin(lm: LanguageModel, task_name: str, settings: EvalSettings, bar, name: str) -> TaskResult:
    """A built-in Task's held-out (`test`) split, prompted exactly as GRPO samples it (chat, zero-shot)."""
    from diji.eval.task import get_task

    if settings.verifier not in ("", "math"):
        raise DijiError(f"--verifier applies to math:FILE tasks; the built-in task {task_name} has its own")
    task = get_task(task_name)
    chosen = task.examples("test", settings.limit or HELDOUT_DEFAULT, seed=0)
    prompts = [render_prompt(list(ex.messages), lm.tokenizer) for ex in chosen]
    digest = hashlib.sha256(json.dumps([[ex.id, ex.messages, ex.answer] for ex in chosen],
                                       ensure_ascii=False).encode("utf-8")).hexdigest()
    return _run(lm, task, chosen, prompts, (), settings, bar, name, "reasoning", digest,
                {"mode": "chat", "split": "test", "num_fewshot": 0})


def _run(lm: LanguageModel, task: Task, examples: list[Example], prompts: list[list[int]], stops: tuple[str, ...],
         settings: EvalSettings, bar, name: str, family: str, digest: str, extra: dict[str, Any]) -> TaskResult:
    t0 = time.perf_counter()
    k = settings.samples
    tok = lm.tokenizer
    with bar(len(prompts), name) as progress:
        texts = lm.generate(prompts, settings.max_new_tokens, stop_ids=tok.stop_ids,
                            stop_strings=stops, temperature=settings.temperature, top_p=settings.top_p,
                            samples=k, seed=settings.seed, progress=progress)
    pass1, fmt, maj, passk, samples = [], [], [], [], []
    for ex, outs in zip(examples, texts, strict=True):
        grades = [task.grade(ex, t) for t in outs]
        c = sum(g.correct for g in grades)
        pass1.append(c / k)
        fmt.append(sum(g.format_ok for g in grades) / k)
        voted = majority([g.extracted for g in grades])
        # The vote is right when the task graded a completion with that answer right (a plug-in
        # verifier's reference need not be comparable with extracted answers).
        maj.append(float(voted is not None and any(g.correct for g in grades if g.extracted == voted)))
        passk.append(pass_at_k(k, c, k))
        samples.append({"id": ex.id, "answer": ex.answer, "responses": outs,
                        "extracted": [g.extracted for g in grades], "correct": [g.correct for g in grades]})
    metrics = {"pass@1": Metric(pass1)}
    if extra.get("mode") == "chat":  # the <think>…</think>-then-answer shape only applies to chat replies
        metrics["format"] = Metric(fmt)
    if k > 1:
        metrics[f"maj@{k}"] = Metric(maj)
        metrics[f"pass@{k}"] = Metric(passk)
    return TaskResult(
        task=name, family=family, main="pass@1", metrics=metrics, unit_ids=[ex.id for ex in examples],
        data_sha256=digest,
        settings={**extra, "limit": settings.limit, "samples": k, "temperature": settings.temperature,
                  "top_p": settings.top_p, "max_new_tokens": settings.max_new_tokens, "seed": settings.seed},
        samples=samples, seconds=time.perf_counter() - t0,
    )
