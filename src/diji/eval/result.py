"""What evaluating one task on one checkpoint produces, and the settings every family shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from diji.eval.stats import ratio_stderr


@dataclass(frozen=True)
class EvalSettings:
    """Knobs shared by all task families; recorded with every result so a score can be reproduced."""

    limit: int = 0
    """Evaluate only the first N items (windows for `ppl`); 0 means all."""
    num_fewshot: int = 0
    """Solved examples put before each question (mc, math); taken from the start of the task file."""
    batch_size: int = 16
    """Sequences per forward pass; scores do not depend on it beyond float rounding."""
    mode: Literal["auto", "chat", "completion"] = "auto"
    """How `math` prompts the model: ChatML turns, a plain "Question: …\\nAnswer:" completion, or auto
    (chat when the checkpoint's lineage shows chat training — sft or grpo — else completion)."""
    samples: int = 1
    """Completions per `math` item; 1 with temperature 0 is greedy pass@1, more gives maj@k and pass@k."""
    temperature: float = 0.0
    """Sampling temperature for generation (0 = greedy); must be > 0 when samples > 1."""
    top_p: float = 1.0
    """Nucleus sampling for generation (1 = off)."""
    max_new_tokens: int = 256
    """Upper bound on generated tokens per completion."""
    seed: int = 0
    """Seed for sampling; item i draws from a generator seeded by (seed, i)."""
    window: int = 0
    """Tokens per `ppl` window; 0 means the model's context length."""
    verifier: str = ""
    """What grades `math:FILE` completions: "" or `math` (the built-in final-answer check), or a plug-in
    `module:function` / `path/file.py:function` returning a reward (>= 1 counts as correct)."""

    def __post_init__(self) -> None:
        for name in ("limit", "num_fewshot", "seed", "window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mode not in ("auto", "chat", "completion"):
            raise ValueError(f"mode must be one of auto, chat, completion, got {self.mode!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy decoding gives the same answer every time)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.window == 1:
            raise ValueError("window must be 0 (the model's context) or at least 2 tokens")


@dataclass
class Metric:
    """One score as a ratio of sums over units (items or text windows), kept per unit for comparisons."""

    values: list[float]
    """Per-unit numerators (1/0 for a correct/incorrect item, bits for a perplexity window)."""
    weights: list[float] | None = None
    """Per-unit denominators (None: every unit weighs 1, the score is a mean)."""
    higher_is_better: bool = True

    @property
    def score(self) -> float:
        total = sum(self.weights) if self.weights is not None else len(self.values)
        return sum(self.values) / total if total else float("nan")

    @property
    def stderr(self) -> float:
        return ratio_stderr(self.values, self.weights)


@dataclass
class TaskResult:
    """One task evaluated on one checkpoint."""

    task: str
    """The task's name as given to --tasks (e.g. `mc:arc.jsonl`)."""
    family: str
    """ppl, mc, math or reasoning."""
    main: str
    """The headline metric (what lineage.json and the comparison table lead with)."""
    metrics: dict[str, Metric]
    """All metrics by name."""
    unit_ids: list[str]
    """Identifies each unit, so that two checkpoints are compared only on the same units."""
    data_sha256: str
    """sha256 of the task's data (file bytes or the data directory's manifest)."""
    settings: dict[str, Any]
    """The settings that produced the score (fewshot, mode, limit, window…)."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Per-item records for inspection (prompt tail, response, extracted answer, correctness)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Scalars that are not scores with a stderr (perplexity, token and byte counts)."""
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return self.metrics[self.main].score

    @property
    def stderr(self) -> float:
        return self.metrics[self.main].stderr

    def summary(self) -> dict[str, Any]:
        """The JSON form (without per-item samples)."""
        return {
            "task": self.task,
            "family": self.family,
            "main": self.main,
            "score": self.score,
            "stderr": self.stderr,
            "n": len(self.unit_ids),
            "metrics": {k: {"score": m.score, "stderr": m.stderr, "higher_is_better": m.higher_is_better}
                        for k, m in self.metrics.items()},
            **self.extra,
            "data_sha256": self.data_sha256,
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
        }
