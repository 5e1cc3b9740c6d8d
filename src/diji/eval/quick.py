"""The quickstart's evaluation: every built-in task family on the final model, offline, in about a minute.

The task files are generated, never downloaded, and written next to the results so anyone can rerun
`diji eval` on them:

  * ppl:   the data directory's val split (held out from training), first 32 context-sized windows;
  * mc:    "which is the real next line" items cut from the val split's documents: the true line
           against three word-shuffled copies of it (chance = 25 %);
  * math:  GSM8K-style word problems from templates worded differently from the reasoning task's, so
           they measure transfer rather than recall (chat mode for chat-trained models, else 3-shot);
  * reasoning: the quickstart reasoning task's held-out split (`arith_mix`, 100 problems).
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import sys
from pathlib import Path

from diji.data.tokenizer import Tokenizer
from diji.errors import DijiError
from diji.eval.generative import resolve_mode
from diji.eval.harness import (
    CheckpointResults,
    Report,
    TaskSpec,
    append_lineage,
    lineage_entries,
    progress_bar,
    run_task,
)
from diji.eval.lm import LanguageModel
from diji.eval.ppl import documents_from_ids, val_stream
from diji.eval.result import EvalSettings
from diji.io import atomic_write_json, atomic_write_text

CLOZE_ITEMS = 100
MATH_ITEMS = 60
HELDOUT = 100
PPL_WINDOWS = 32

_NAMES = ("Ava", "Noah", "Zoe", "Omar", "Iris", "Kai", "Ruth", "Finn")
# (question template, operation signs): every problem keeps all quantities between 0 and 40.
_TEMPLATES = (
    ("{n} had {a} marbles and won {b} more in a game. How many marbles does {n} have now?", (1,)),
    ("There are {a} birds on a tree. {b} of them fly away. How many birds are left on the tree?", (-1,)),
    ("A shelf holds {a} books. {n} puts {b} more books on it. How many books are on the shelf now?", (1,)),
    ("{n} baked {a} cookies and ate {b} of them. How many cookies are left?", (-1,)),
    ("{n} had {a} stickers, got {b} more, then gave away {c}. How many stickers does {n} have now?", (1, -1)),
    ("A bus carries {a} people. At the first stop {b} get off and {c} get on. How many people are on the bus?",
     (-1, 1)),
)


def word_problems(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n GSM8K-style items {"question", "answer"}: a worked answer ending in `#### <number>`."""
    rng = random.Random(f"quick-math/{seed}")
    items = []
    while len(items) < n:
        template, signs = rng.choice(_TEMPLATES)
        start = value = rng.randint(5, 30)
        operands, steps = [], []
        for sign in signs:
            b = rng.randint(1, min(9, value) if sign < 0 else 9)
            steps.append(f"{value} {'+' if sign > 0 else '-'} {b} = {value + sign * b}")
            operands.append(b)
            value += sign * b
        keys = dict(zip("bc", operands, strict=False))
        question = template.format(n=rng.choice(_NAMES), a=start, **keys)
        items.append({"question": question, "answer": "\n".join(steps) + f"\n#### {value}"})
    return items


def cloze_items(data_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """"Which is the real next line?" from the val split: up to three lines of context, the true next
    line, and three copies of it with the words shuffled — minimal pairs in the style of BLiMP
    (Warstadt et al. 2020). Every choice has the same words and the same number of tokens, so a model
    that knows nothing scores them alike (chance, 25 %) and only knowledge of word order lifts accuracy;
    comparing against lines from other documents instead rewards mere word frequency."""
    tok = Tokenizer.from_file(data_dir / "tokenizer.json")
    stream, _ = val_stream(data_dir)
    docs = [tok.decode(d.tolist()) for d in documents_from_ids(stream, tok.eos_id)]
    cands = []
    for di, doc in enumerate(docs):
        lines = doc.split("\n")
        for j in range(3, len(lines)):
            line = " ".join(lines[j].split())
            context = [x for x in lines[j - 3 : j] if x.strip()]
            if 20 <= len(line) <= 80 and len(set(line.split())) >= 4 and len(context) >= 2:
                cands.append((di, "\n".join(context), line))
    rng = random.Random(f"quick-cloze/{seed}")
    rng.shuffle(cands)
    # Round-robin over documents, so one long file (a codec table, say) cannot supply most of the items.
    by_doc: dict[int, list] = {}
    for c in cands:
        by_doc.setdefault(c[0], []).append(c)
    queues = list(by_doc.values())
    order = [q[i] for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)]
    items, used = [], set()
    for _, context, line in order:
        if len(items) == n:
            break
        if line in used:
            continue
        n_tokens = len(tok.encode(" " + line))
        words, shuffled = line.split(), set()
        for _ in range(30):
            variant = " ".join(rng.sample(words, len(words)))
            if variant != line and len(tok.encode(" " + variant)) == n_tokens:
                shuffled.add(variant)
            if len(shuffled) == 3:
                break
        if len(shuffled) < 3:
            continue
        choices = [line, *sorted(shuffled)]
        rng.shuffle(choices)
        used.add(line)
        items.append({"question": context, "choices": choices, "answer": choices.index(line)})
    if len(items) < 10:
        raise DijiError(f"{data_dir}'s val split is too small to build a cloze task ({len(items)} items)")
    return items


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def quickstart_eval(checkpoint: str, data_dir: Path, out_dir: Path, progress: bool | None = None) -> dict[str, float]:
    """Evaluate `checkpoint` on every built-in family; writes tasks/, eval.json and eval.txt in `out_dir`,
    appends the scores to the checkpoint's lineage.json and returns {task: headline score}."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tasks = out_dir / "tasks"
    mc_path = _write_jsonl(tasks / "cloze_mc.jsonl", cloze_items(data_dir, CLOZE_ITEMS))
    math_path = _write_jsonl(tasks / "word_math.jsonl", word_problems(MATH_ITEMS))
    lm = LanguageModel.from_checkpoint(checkpoint, batch_size=16)
    chat = resolve_mode("auto", lm) == "chat"
    plan = [
        ("ppl_bits_per_byte", TaskSpec("ppl", str(data_dir), f"ppl:{data_dir}"), EvalSettings(limit=PPL_WINDOWS)),
        ("mc_acc", TaskSpec("mc", str(mc_path), f"mc:{mc_path}"), EvalSettings()),
        ("math_pass@1", TaskSpec("math", str(math_path), f"math:{math_path}"),
         EvalSettings(num_fewshot=0 if chat else 3, max_new_tokens=96)),
        ("reasoning_pass@1", TaskSpec("reasoning", "arith_mix", "arith_mix"), EvalSettings(limit=HELDOUT, max_new_tokens=96)),
    ]
    bar = progress_bar(progress)
    entry = CheckpointResults(str(checkpoint), lm.lineage.get("weights_sha256", ""))
    scores = {}
    for key, spec, settings in plan:
        result = run_task(lm, spec, settings, bar)
        entry.results[spec.name] = result
        scores[key] = round(result.score, 4)
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    report = Report([entry], EvalSettings(), date=date)
    atomic_write_json(out_dir / "eval.json", report.to_json())
    atomic_write_text(out_dir / "eval.txt", report.table() + "\n")
    try:
        append_lineage(checkpoint, [lineage_entries(r, date) for r in entry.results.values()])
    except OSError as e:
        print(f"note: could not record results in {checkpoint}/lineage.json ({e.strerror})", file=sys.stderr)
    return scores
