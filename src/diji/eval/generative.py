"""Generate-and-check families: `math` (GSM8K-style files) and the built-in reasoning tasks.

Both are `Task`s (data + grader + reward in one class, STYLE.md rule 9): the reasoning tasks come from
`diji.eval.task.get_task`, and a math file becomes a `MathFileTask` whose grader is the GRPO verifier
(`diji.eval.verifiers`), so evaluation and RL can never disagree about what "correct" means.

Math file format (JSON Lines):

    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = 7 apples.\\n#### 7"}

`answer` is a worked solution ending in GSM8K's `#### <number>` (Cobbe et al. 2021), or just a number.

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

from diji.data.chat import render
from diji.errors import DijiError
from diji.eval.files import nonempty_str, read_jsonl, typed_field
from diji.eval.lm import LanguageModel
from diji.eval.result import EvalSettings, Metric, TaskResult
from diji.eval.stats import majority, pass_at_k
from diji.eval.task import Example, Grade, Task
from diji.eval.verifiers import answers_equal, extract_answer, format_ok, normalize_number

QUESTION = "Question: {question}\nAnswer:"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
COMPLETION_STOPS = ("Question:", "\n\n")
HELDOUT_DEFAULT = 200
"""Held-out problems a built-in reasoning task is scored on when --limit is not given."""


class MathFileTask(Task):
    """A GSM8K-style JSONL file as a Task: its items are the `test` split, graded by the GRPO verifier."""

    splits = ("test",)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"math:{self.path}"
        rows, self.sha256 = read_jsonl(self.path)
        self._items: list[Example] = []
        for line, obj in rows:
            where = f"{self.path}:{line}"
            question = nonempty_str(obj, "question", where)
            raw = typed_field(obj, "answer", (str, int), where)
            solution = str(raw)
            if isinstance(raw, int):
                reference = str(raw)
            elif "####" in raw:
                reference = normalize_number(raw.rsplit("####", 1)[1])
            else:
                reference = normalize_number(raw)
            if reference is None:
                raise DijiError(f"{where}: field 'answer' must end with '#### <number>' (GSM8K style) or be a "
                                f"number, got {raw[-40:]!r}")
            self._items.append(Example(id=f"line{line}", messages=({"role": "user", "content": question},),
                                       answer=reference, solution=solution, meta={"line": line}))

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """The first n items of the file (the file's order is the order; `seed` does not apply)."""
        self.check_split(split)
        return self._items[:n] if n else list(self._items)

    def grade(self, example: Example, completion: str) -> Grade:
        got = extract_answer(completion)
        return Grade(answers_equal(got, example.answer), got, format_ok(completion))


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
    task = MathFileTask(path)
    pool = task.examples("test", 0)
    if settings.num_fewshot >= len(pool):
        raise DijiError(f"{path} has {len(pool)} items: too few for {settings.num_fewshot} few-shot examples "
                        "plus the question")
    chosen = pool[: settings.limit] if settings.limit else pool
    mode = resolve_mode(settings.mode, lm)
    shots = [fewshot(pool, i, settings.num_fewshot) for i in range(len(chosen))]
    if mode == "chat":
        prompts = [render(chat_messages(ex, sh), lm.tokenizer, add_generation_prompt=True)[0]
                   for ex, sh in zip(chosen, shots, strict=True)]
        stops: tuple[str, ...] = ()
    else:
        prompts = [lm.tokenizer.encode(completion_prompt(ex, sh)) for ex, sh in zip(chosen, shots, strict=True)]
        stops = COMPLETION_STOPS
    return _run(lm, task, chosen, prompts, stops, settings, bar, name, "math", task.sha256,
                {"mode": mode, "num_fewshot": settings.num_fewshot})


def evaluate_builtin(lm: LanguageModel, task_name: str, settings: EvalSettings, bar, name: str) -> TaskResult:
    """A built-in Task's held-out (`test`) split, prompted exactly as GRPO samples it (chat, zero-shot)."""
    from diji.eval.task import get_task

    task = get_task(task_name)
    chosen = task.examples("test", settings.limit or HELDOUT_DEFAULT, seed=0)
    prompts = [render(list(ex.messages), lm.tokenizer, add_generation_prompt=True)[0] for ex in chosen]
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
        texts = lm.generate(prompts, settings.max_new_tokens, stop_ids=(tok.eos_id, tok.im_end_id),
                            stop_strings=stops, temperature=settings.temperature, top_p=settings.top_p,
                            samples=k, seed=settings.seed, progress=progress)
    pass1, fmt, maj, passk, samples = [], [], [], [], []
    for ex, outs in zip(examples, texts, strict=True):
        grades = [task.grade(ex, t) for t in outs]
        c = sum(g.correct for g in grades)
        pass1.append(c / k)
        fmt.append(sum(g.format_ok for g in grades) / k)
        voted = majority([g.extracted for g in grades])
        maj.append(float(voted is not None and answers_equal(voted, ex.answer)))
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
