"""A task is data + grader + reward in one class, shared by evaluation and GRPO (STYLE.md rule 9).

    task.examples("test", n)          → [Example(id, messages, answer, solution)]
    task.grade(example, completion)   → Grade(correct, extracted, format_ok)   (evaluation: exact match)
    task.reward(example, completion)  → float                                   (GRPO: the same grader)

Because GRPO optimises `reward` and evaluation reports `grade`, both come from the same verifier and
cannot drift apart. `score` runs a model on a list of examples (KV-cached batch generation, chat-rendered
prompts) and returns accuracy; the harness and GRPO's held-out evaluation both call it.

Tasks are looked up with `get_task`: a built-in name (the registry maps names to import paths, so
nothing is imported until a task is asked for) or `math:FILE` — a GSM8K/MATH-style file of the user's
own problems, optionally graded by a plug-in verifier (`diji.eval.generative.MathFileTask`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from diji.errors import DijiError


@dataclass(frozen=True)
class Example:
    """One problem: the prompt conversation, the reference answer and (for SFT) a worked solution."""

    id: str
    """Stable identifier (unique within a task and split)."""
    messages: tuple[dict[str, str], ...]
    """The prompt: system/user turns, without the assistant's reply."""
    answer: str
    """The reference final answer the grader compares against."""
    solution: str = ""
    """A full assistant reply (reasoning in <think>…</think>, then the answer) for supervised training."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task-specific details (language, number of steps, …) for breakdowns."""

    def conversation(self) -> list[dict[str, str]]:
        """The prompt plus the reference solution as the assistant turn (an SFT record)."""
        return [*self.messages, {"role": "assistant", "content": self.solution}]


@dataclass(frozen=True)
class Grade:
    correct: bool
    """The extracted answer equals the reference."""
    extracted: str | None
    """What the grader read as the final answer (None when it found none)."""
    format_ok: bool
    """The completion has the expected shape (for reasoning tasks: <think>…</think> then an answer)."""


class Task(ABC):
    """Subclass and implement `examples` and `grade`; override `reward` to shape the RL signal."""

    name: str = "task"
    splits: tuple[str, ...] = ("train", "test")
    format_weight: float = 0.0
    """Weight of the format term in the default reward (0 = pure correctness)."""

    @abstractmethod
    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split`; the same (split, n, seed) always gives the same list."""

    @abstractmethod
    def grade(self, example: Example, completion: str) -> Grade:
        """Judge one completion (the assistant's text, special tokens kept) against the example."""

    def reward(self, example: Example, completion: str) -> float:
        """The GRPO reward: 1 for a correct answer, plus `format_weight` for a well-formed reply."""
        g = self.grade(example, completion)
        return float(g.correct) + self.format_weight * float(g.format_ok)

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DijiError(f"task {self.name} has no split '{split}' (splits: {', '.join(self.splits)})")


# name → "module:Class"; imported on first use only.
BUILTIN_TASKS: dict[str, str] = {
    "arith": "diji.eval.reasoning:ArithmeticTask",
    "arith_en": "diji.eval.reasoning:ArithmeticTaskEn",
    "arith_zh": "diji.eval.reasoning:ArithmeticTaskZh",
    "arith_mix": "diji.eval.reasoning:ArithmeticMixTask",
}


def task_names() -> list[str]:
    return sorted(BUILTIN_TASKS)


FILE_FAMILIES = ("math",)
"""Task specs of the form `family:FILE` that GRPO can train on (a file of problems with answers)."""


def get_task(name: str, verifier: str = "", **kwargs: Any) -> Task:
    """A task by spec — a built-in name or `math:FILE` (kwargs go to the constructor); `verifier`
    (`math`, `module:function`) grades a file task. One clear error for unknown names."""
    family, sep, path = name.partition(":")
    if sep and family in FILE_FAMILIES:
        from diji.eval.generative import MathFileTask

        if not path:
            raise DijiError(f"task '{name}' needs a path after '{family}:'")
        return MathFileTask(path, verifier=verifier, **kwargs)
    target = BUILTIN_TASKS.get(name)
    if target is None:
        raise DijiError(f"unknown task '{name}' (known: {', '.join(task_names())}, or math:FILE.jsonl)")
    if verifier not in ("", "math"):
        raise DijiError(f"a verifier plug-in applies to math:FILE tasks; the built-in task {name} has its own")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


@dataclass
class Scored:
    accuracy: float
    """Fraction of examples graded correct."""
    format_rate: float
    """Fraction of completions with a well-formed reply."""
    completions: list[str]
    """Every completion, example after example (`samples` per example), with the forced prefix."""
    grades: list[Grade]
    think_share: float = 0.0
    """Fraction of completions that start by reasoning (`<think>`)."""
    pass_at_k: float = 0.0
    """Fraction of examples with at least one correct completion among their `samples`."""


def score(
    model: Any,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    max_new_tokens: int = 96,
    batch_size: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    samples: int = 1,
    prefix: str = "",
) -> Scored:
    """Generate a reply to every example (greedy by default) and grade it.

    With `samples` > 1 (and a temperature), each example gets that many sampled replies: `accuracy` is
    their mean and `pass_at_k` the share of examples solved at least once. A `prefix` (e.g. `<think>`)
    is written at the start of every reply before the model continues, and graded as part of it: the
    accuracy of one reply style, whatever the model would have chosen.

    Prompts are rendered with the one chat renderer and `add_generation_prompt`, so evaluation sees
    exactly what SFT trained on and what GRPO samples from. Generation is the evaluation harness's own
    (`LanguageModel.generate`, stopping at the tokenizer's `stop_ids`), so the accuracy a training stage
    logs is the number `diji eval` reports for the same items and budget.
    """
    import torch

    from diji.data.chat import render_prompt
    from diji.eval.lm import LanguageModel

    was_training = model.training
    try:
        lm = LanguageModel(model, tokenizer, batch_size=batch_size)
        forced = tokenizer.encode(prefix, allow_special=True) if prefix else []
        prompts = [render_prompt(list(e.messages), tokenizer) + forced for e in examples]
        with torch.no_grad():
            texts = lm.generate(prompts, max_new_tokens, stop_ids=tokenizer.stop_ids, temperature=temperature,
                                seed=seed, samples=samples)
    finally:
        model.train(was_training)
    from diji.eval.verifiers import is_thinking

    k = samples if temperature > 0 else 1
    completions = [prefix + t for group in texts for t in group[:k]]
    grades = [task.grade(e, c) for e, group in zip(examples, texts, strict=True)
              for c in (prefix + t for t in group[:k])]
    n = max(len(grades), 1)
    solved = sum(any(g.correct for g in grades[i * k : (i + 1) * k]) for i in range(len(examples)))
    return Scored(sum(g.correct for g in grades) / n, sum(g.format_ok for g in grades) / n, completions, grades,
                  think_share=sum(is_thinking(c) for c in completions) / n,
                  pass_at_k=solved / max(len(examples), 1))
