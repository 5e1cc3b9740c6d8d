"""The evaluation harness: task specs → results for one or more checkpoints, a side-by-side table with
paired differences, JSON, and a record of every score in the checkpoint's lineage.json.

Task specs (comma-separated on the command line):

    ppl:PATH      perplexity + bits-per-byte; PATH = a data directory (val split), a .txt or a .jsonl file
    mc:FILE       multiple choice by log-likelihood (diji.eval.mc)
    math:FILE     GSM8K-style generate-and-check (diji.eval.generative)
    arith …       a built-in Task's held-out split (`reasoning` is an alias of `arith`)

Every checkpoint sees the same items, prompts and settings, so differences between checkpoints are
compared item by item (paired standard errors, diji.eval.stats) and flagged only when they exceed noise.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diji import __version__
from diji.errors import DijiError
from diji.eval.lm import LanguageModel
from diji.eval.result import EvalSettings, TaskResult
from diji.eval.stats import Difference, paired_difference, unpaired_difference
from diji.io import atomic_write_json

FAMILIES = ("ppl", "mc", "math")
ALIASES = {"reasoning": "arith"}


@dataclass(frozen=True)
class TaskSpec:
    family: str
    """ppl, mc, math, or reasoning (a built-in Task)."""
    target: str
    """The path (ppl, mc, math) or the built-in task's name."""
    name: str
    """The spec as the user wrote it (the key in tables, JSON and lineage)."""


def parse_tasks(text: str | Sequence[str]) -> list[TaskSpec]:
    """Parse `mc:a.jsonl,math:b.jsonl,arith` (or a list of such specs); unknown names raise DijiError."""
    from diji.eval.task import task_names

    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    if not parts:
        raise DijiError("no tasks given; use --tasks NAME[,NAME] (e.g. mc:questions.jsonl,arith)")
    builtin = task_names()
    specs = []
    for p in parts:
        family, sep, target = p.partition(":")
        if sep and family in FAMILIES:
            if not target:
                raise DijiError(f"task '{p}' needs a path after '{family}:'")
            specs.append(TaskSpec(family, target, p))
        elif not sep and (ALIASES.get(p, p) in builtin):
            specs.append(TaskSpec("reasoning", ALIASES.get(p, p), p))
        elif not sep and p in FAMILIES:
            raise DijiError(f"task '{p}' needs a file: write {p}:PATH")
        else:
            raise DijiError(f"unknown task '{p}': use ppl:PATH, mc:FILE, math:FILE or one of "
                            f"{', '.join(sorted([*builtin, *ALIASES]))}")
    if len({s.name for s in specs}) != len(specs):
        raise DijiError("a task is listed twice in --tasks")
    return specs


def validate(specs: Sequence[TaskSpec], settings: EvalSettings | None = None) -> None:
    """Read every task file (and load the verifier) now, so a bad input fails before any model is loaded."""
    from diji.eval.generative import MathFileTask
    from diji.eval.mc import load_mc

    verifier = settings.verifier if settings is not None else ""
    if verifier not in ("", "math") and not any(s.family == "math" for s in specs):
        raise DijiError("--verifier grades math:FILE tasks; none is listed in --tasks")
    for s in specs:
        if s.family == "mc":
            load_mc(s.target)
        elif s.family == "math":
            MathFileTask(s.target, verifier)
        elif s.family == "ppl" and not Path(s.target).exists():
            raise DijiError(f"ppl source not found: {s.target} (give a data directory, a .txt or a .jsonl file)")


Bar = Callable[[int, str], contextlib.AbstractContextManager[Callable[[int], None]]]


def progress_bar(enabled: bool | None) -> Bar:
    """A tqdm bar per task on stderr; `None` shows it only on a terminal."""

    @contextlib.contextmanager
    def bar(total: int, desc: str) -> Iterator[Callable[[int], None]]:
        from tqdm import tqdm

        disable = None if enabled is None else not enabled
        with tqdm(total=total, desc=desc, unit="req", file=sys.stderr, leave=False, disable=disable,
                  dynamic_ncols=True) as t:
            yield t.update

    return bar


def run_task(lm: LanguageModel, spec: TaskSpec, settings: EvalSettings, bar: Bar) -> TaskResult:
    from diji.eval.generative import evaluate_builtin, evaluate_math
    from diji.eval.mc import evaluate_mc
    from diji.eval.ppl import evaluate_ppl

    try:
        if spec.family == "ppl":
            return evaluate_ppl(lm, spec.target, settings, bar, spec.name)
        if spec.family == "mc":
            return evaluate_mc(lm, spec.target, settings, bar, spec.name)
        if spec.family == "math":
            return evaluate_math(lm, spec.target, settings, bar, spec.name)
        return evaluate_builtin(lm, spec.target, settings, bar, spec.name)
    except ValueError as e:  # model-side limits (a continuation longer than the context, …)
        raise DijiError(f"task {spec.name}: {e}") from None


@dataclass
class CheckpointResults:
    path: str
    weights_sha256: str
    results: dict[str, TaskResult] = field(default_factory=dict)


@dataclass
class Comparison:
    task: str
    metric: str
    checkpoint: str
    """The checkpoint compared with the first one (the baseline)."""
    difference: Difference
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        if not self.difference.significant:
            return "within noise"
        better = (self.difference.diff > 0) == self.higher_is_better
        return "better" if better else "worse"


@dataclass
class Report:
    checkpoints: list[CheckpointResults]
    settings: EvalSettings
    comparisons: list[Comparison] = field(default_factory=list)
    decontamination: dict[str, dict] = field(default_factory=dict)
    date: str = ""

    def to_json(self, include_samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": 1,
            "code_version": __version__,
            "date": self.date,
            "settings": asdict(self.settings),
            "checkpoints": [
                {"path": c.path, "weights_sha256": c.weights_sha256,
                 "results": {name: r.summary() for name, r in c.results.items()}}
                for c in self.checkpoints
            ],
        }
        if self.comparisons:
            out["comparisons"] = [
                {"task": c.task, "metric": c.metric, "baseline": self.checkpoints[0].path, "checkpoint": c.checkpoint,
                 "difference": c.difference.diff, "stderr": c.difference.stderr, "paired": c.difference.paired,
                 "significant": c.difference.significant, "verdict": c.verdict}
                for c in self.comparisons
            ]
        if self.decontamination:
            out["decontamination"] = self.decontamination
        if include_samples:
            out["samples"] = {c.path: {n: r.samples for n, r in c.results.items()} for c in self.checkpoints}
        return out

    def table(self) -> str:
        return format_table(self)


def compare(checkpoints: Sequence[CheckpointResults]) -> list[Comparison]:
    """Every metric of every later checkpoint against the first: paired on identical units, else unpaired."""
    if len(checkpoints) < 2:
        return []
    base = checkpoints[0]
    out = []
    for other in checkpoints[1:]:
        for name, ra in base.results.items():
            rb = other.results.get(name)
            if rb is None:
                continue
            for metric, ma in ra.metrics.items():
                mb = rb.metrics.get(metric)
                if mb is None:
                    continue
                same_units = ra.unit_ids == rb.unit_ids and ma.weights == mb.weights
                d = (paired_difference(ma.values, mb.values, ma.weights) if same_units
                     else unpaired_difference(ma.score, ma.stderr, mb.score, mb.stderr))
                out.append(Comparison(name, metric, other.path, d, ma.higher_is_better))
    return out


def _fmt(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 100 else f"{x:.2f}"


def format_table(report: Report) -> str:
    """Plain-text table: one row per task × metric, one column per checkpoint, then Δ vs the first."""
    cks = report.checkpoints
    header = ["task", "metric", "n"] + [f"[{i + 1}]" for i in range(len(cks))]
    header += [f"Δ[{i + 1}]-[1]" for i in range(1, len(cks))]
    diffs = {(c.task, c.metric, c.checkpoint): c for c in report.comparisons}
    rows = []
    for name, first in cks[0].results.items():
        for metric, m in first.metrics.items():
            row = [name, metric + ("" if m.higher_is_better else " ↓"), str(len(first.unit_ids))]
            for c in cks:
                r = c.results.get(name)
                row.append(f"{_fmt(r.metrics[metric].score)} ± {_fmt(r.metrics[metric].stderr)}" if r else "-")
            for c in cks[1:]:
                cmp = diffs.get((name, metric, c.path))
                if cmp is None:
                    row.append("-")
                    continue
                d = cmp.difference
                flag = {"better": " ▲", "worse": " ▼"}.get(cmp.verdict, "")
                row.append(f"{d.diff:+.4f} ± {d.stderr:.4f}{'' if d.paired else ' (unpaired)'}{flag}")
            rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = [f"[{i + 1}] {c.path}" for i, c in enumerate(cks)]
    notes = ["score ± standard error; ↓ lower is better"]
    if len(cks) > 1:
        notes.append("Δ: paired difference on the same items; ▲/▼ better/worse beyond noise (|Δ| > 1.96 stderr)")
    extra = []
    for name, first in cks[0].results.items():
        if first.family == "ppl":
            ppl = ", ".join(f"[{i + 1}] {c.results[name].extra['perplexity']:.3f}" for i, c in enumerate(cks)
                            if name in c.results)
            extra.append(f"{name}: perplexity {ppl}")
        if first.family == "mc":
            extra.append(f"{name}: chance accuracy {first.extra['chance']:.4f}")
    for name, rep in report.decontamination.items():
        extra.append(f"{name}: {rep['contaminated']}/{rep['checked']} items ({rep['fraction']:.1%}) share a "
                     f"{rep['ngram_tokens']}-token n-gram with {rep['data_dir']} train"
                     + (f"; {rep['too_short']} too short to check" if rep["too_short"] else ""))
    return "\n".join(legend + [""] + lines + [""] + extra + notes)


def lineage_entries(result: TaskResult, date: str) -> dict[str, Any]:
    """What one result adds to lineage.json's `evals` list."""
    return {
        "task": result.task, "family": result.family, "metric": result.main, "score": result.score,
        "stderr": result.stderr, "n": len(result.unit_ids),
        "metrics": {k: m.score for k, m in result.metrics.items()},
        "data_sha256": result.data_sha256, "settings": result.settings, "code_version": __version__, "date": date,
    }


def append_lineage(ckpt: str | Path, entries: list[dict[str, Any]]) -> None:
    """Append evaluation records to `ckpt/lineage.json` under "evals", atomically and under a lock.

    Safe for the checkpoint's integrity: verification hashes the files listed in lineage["files"], and
    lineage.json is not among them. The lock (a sibling file, so the atomic rename cannot bypass it) keeps
    two concurrent evaluations from losing each other's records.
    """
    from diji.train.checkpoint import read_lineage

    ckpt = Path(ckpt)
    with _locked(ckpt / ".lineage.lock"):
        lineage = read_lineage(ckpt)
        evals = lineage.get("evals")
        lineage["evals"] = (evals if isinstance(evals, list) else []) + entries
        atomic_write_json(ckpt / "lineage.json", lineage)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: concurrent appends are then the user's care
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def task_texts(spec: TaskSpec, settings: EvalSettings) -> list[list[str]]:
    """Each evaluated item as [question, reference answer] for the decontamination check."""
    from diji.eval.generative import HELDOUT_DEFAULT, MathFileTask
    from diji.eval.mc import load_mc
    from diji.eval.task import get_task

    if spec.family == "mc":
        items, _ = load_mc(spec.target)
        items = items[: settings.limit] if settings.limit else items
        return [[it.question, it.choices[it.answer]] for it in items]
    if spec.family == "math":
        exs = MathFileTask(spec.target, settings.verifier).examples("test", settings.limit)
    elif spec.family == "reasoning":
        exs = get_task(spec.target).examples("test", settings.limit or HELDOUT_DEFAULT, seed=0)
    else:
        raise DijiError(f"decontamination applies to task files and built-in tasks, not to {spec.name}")
    return [[ex.messages[-1]["content"], ex.solution] for ex in exs]


def evaluate(
    checkpoints: Sequence[str | Path],
    tasks: str | Sequence[str],
    settings: EvalSettings | None = None,
    device: str = "auto",
    progress: bool | None = None,
    record: bool = True,
    dtype: str = "auto",
    decontaminate: str | Path | None = None,
    ngram: int = 13,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Evaluate every checkpoint on every task with the same items and settings.

    record: append each score to the checkpoint's lineage.json. decontaminate: a data directory whose
    train split the task items are checked against (reported once, since it does not depend on the model).
    """
    from diji.eval.decontam import contamination

    settings = settings or EvalSettings()
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    specs = parse_tasks(tasks)
    validate(specs, settings)
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    report = Report([], settings, date=date)
    if decontaminate is not None:
        for s in specs:
            if s.family != "ppl":
                report.decontamination[s.name] = contamination(task_texts(s, settings), decontaminate, ngram)
    bar = progress_bar(progress)
    for ck in checkpoints:
        lm = LanguageModel.from_checkpoint(ck, device=device, batch_size=settings.batch_size, dtype=dtype)
        entry = CheckpointResults(str(ck), lm.lineage.get("weights_sha256", ""))
        for s in specs:
            t0 = time.perf_counter()
            entry.results[s.name] = run_task(lm, s, settings, bar)
            r = entry.results[s.name]
            say(f"{ck}: {s.name} {r.main} = {r.score:.4f} ± {r.stderr:.4f} ({time.perf_counter() - t0:.1f}s)")
        report.checkpoints.append(entry)
        if record:
            try:
                append_lineage(ck, [lineage_entries(r, date) for r in entry.results.values()])
            except OSError as e:
                say(f"note: could not record results in {ck}/lineage.json ({e.strerror}); they are still reported")
    report.comparisons = compare(report.checkpoints)
    return report
