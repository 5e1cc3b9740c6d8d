"""The embedded reasoning task: generated multi-step arithmetic word problems, in English and Chinese.

    Tom has 7 apples. Tom buys 5 more. Tom gives 3 to a friend. How many apples does Tom have now?
    <think>
    7+5=12
    12-3=9
    </think>
    \\boxed{9}

Each problem is a start quantity and 1–`max_steps` additions or subtractions told as a story; the
worked solution writes one equation per step inside <think>…</think> (chain of thought, Wei et al. 2022)
and the answer as `\\boxed{n}`. It needs no download, has an exact verifier and a difficulty knob
(steps, number size), so a 4M-parameter model can learn it partly by SFT and further by RL.

Equations are written without spaces (`12-3=9`) because byte-level BPE splits on spaces: a vocabulary
trained on code has single tokens for the bare numbers 0–25 but splits ` 15` into ` 1`+`5`. Keeping
every intermediate result one token turns each step into one lookup, not a digit-by-digit carry.

**No test problem is seen in training.** Splits are decided by the problem itself, not by luck: a
problem belongs to the test split iff the sha256 of its canonical text falls in the held-out bucket
(1 in `TEST_BUCKETS`). Train and test sampling use different seeds and each rejects the other's
problems, so they are disjoint by construction for any seeds and sizes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from diji.eval.task import Example, Grade, Task
from diji.eval.verifiers import answers_equal, extract_answer, format_ok

TEST_BUCKETS = 5
"""One problem in TEST_BUCKETS (by hash) is held out for testing."""
LANGUAGES = ("en", "zh")

_EN_NAMES = ("Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Leo", "Emma")
_EN_ITEMS = ("apples", "books", "coins", "pens", "cards", "eggs", "stones", "stamps")
_EN_ADD = ("{n} buys {b} more.", "{n} finds {b} more.", "A friend gives {n} {b} more.", "{n} gets {b} more.")
_EN_SUB = ("{n} gives {b} to a friend.", "{n} loses {b}.", "{n} sells {b}.", "{n} uses {b}.")

_ZH_NAMES = ("小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小强")
_ZH_ITEMS = ("苹果", "本书", "枚硬币", "支笔", "张卡片", "个鸡蛋", "块石头", "张邮票")
_ZH_ADD = ("{n}又买了{b}{u}。", "{n}又捡到{b}{u}。", "朋友送给{n}{b}{u}。", "{n}又得到{b}{u}。")
_ZH_SUB = ("{n}送给朋友{b}{u}。", "{n}丢了{b}{u}。", "{n}卖掉了{b}{u}。", "{n}用掉了{b}{u}。")


def _zh_unit(item: str) -> tuple[str, str]:
    """(measure word, noun): 苹果 takes 个; the others carry their own measure word."""
    return ("个", item) if item == "苹果" else (item[0], item[1:])


@dataclass(frozen=True)
class Problem:
    lang: str
    name: int
    item: int
    start: int
    ops: tuple[tuple[int, int, int], ...]
    """(sign +1/-1, amount, phrasing template index) per step."""

    def values(self) -> list[int]:
        out = [self.start]
        for sign, b, _ in self.ops:
            out.append(out[-1] + sign * b)
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def question(self) -> str:
        if self.lang == "en":
            n, items = _EN_NAMES[self.name], _EN_ITEMS[self.item]
            parts = [f"{n} has {self.start} {items}."]
            for sign, b, t in self.ops:
                parts.append((_EN_ADD if sign > 0 else _EN_SUB)[t].format(n=n, b=b))
            parts.append(f"How many {items} does {n} have now?")
            return " ".join(parts)
        n = _ZH_NAMES[self.name]
        unit, noun = _zh_unit(_ZH_ITEMS[self.item])
        parts = [f"{n}有{self.start}{unit}{noun}。"]
        for sign, b, t in self.ops:
            parts.append((_ZH_ADD if sign > 0 else _ZH_SUB)[t].format(n=n, b=b, u=unit))
        parts.append(f"{n}现在有多少{unit}{noun}？")
        return "".join(parts)

    def solution(self, think: bool = True, spaced: bool = False) -> str:
        """The worked reply: one equation per step in <think>…</think>, then the boxed answer; with
        `think=False` the direct reply, the boxed answer alone. `spaced` writes English equations as
        ` 7 + 5 = 12`, so every number is the token the story spells it with (` 7`, as in "has 7")."""
        if not think:
            return "\\boxed{" + str(self.answer) + "}"
        vals = self.values()
        sp = " " if spaced and self.lang == "en" else ""
        steps = [f"{sp}{vals[i]}{sp}{'+' if s > 0 else '-'}{sp}{b}{sp}={sp}{vals[i + 1]}"
                 for i, (s, b, _) in enumerate(self.ops)]
        return "<think>\n" + "\n".join(steps) + "\n</think>\n\\boxed{" + str(self.answer) + "}"


def is_test_problem(text: str) -> bool:
    """The split rule: a problem is held out iff its text hashes into bucket 0."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") % TEST_BUCKETS == 0


class ArithmeticTask(Task):
    """Multi-step add/subtract word problems with exact-match grading on the final number.

    The defaults (1–2 steps, values ≤ 12, operands ≤ 5) are the quickstart's: hard enough that a
    4M-parameter model fine-tuned for a few minutes gets only some right, so RL has room to improve.
    """

    name = "arith"

    def __init__(
        self,
        languages: tuple[str, ...] = LANGUAGES,
        min_steps: int = 1,
        max_steps: int = 2,
        max_value: int = 12,
        max_operand: int = 5,
        format_weight: float = 0.1,
        think_share: float = 1.0,
        phrasings: int = 4,
        spaced: bool = False,
    ) -> None:
        if not languages or any(lang not in LANGUAGES for lang in languages):
            raise ValueError(f"languages must be a non-empty subset of {LANGUAGES}, got {languages}")
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        if max_operand < 1 or max_value < max_operand + 1:
            raise ValueError(f"need max_operand >= 1 and max_value > max_operand, got {max_operand}, {max_value}")
        if not 0.0 <= think_share <= 1.0:
            raise ValueError(f"think_share must be in [0, 1], got {think_share}")
        if not 1 <= phrasings <= len(_EN_ADD):
            raise ValueError(f"phrasings must be in 1..{len(_EN_ADD)}, got {phrasings}")
        self.think_share, self.phrasings, self.spaced = think_share, phrasings, spaced
        self.languages = tuple(languages)
        self.min_steps, self.max_steps = min_steps, max_steps
        self.max_value, self.max_operand = max_value, max_operand
        self.format_weight = format_weight

    def _problem(self, rng: random.Random) -> Problem:
        lang = rng.choice(self.languages)
        k = rng.randint(self.min_steps, self.max_steps)
        start = rng.randint(2, self.max_value)
        value, ops = start, []
        for _ in range(k):
            # Pick a direction that keeps 0 <= value <= max_value, so every story is physically possible.
            can_add, can_sub = value + 1 <= self.max_value, value >= 1
            sign = 1 if (can_add and (not can_sub or rng.random() < 0.5)) else -1
            limit = min(self.max_operand, self.max_value - value if sign > 0 else value)
            b = rng.randint(1, limit)
            value += sign * b
            ops.append((sign, b, rng.randrange(self.phrasings)))
        names = _EN_NAMES if lang == "en" else _ZH_NAMES
        return Problem(lang, rng.randrange(len(names)), rng.randrange(len(_EN_ITEMS)), start, tuple(ops))

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        self.check_split(split)
        # Different seed streams per split; the hash rule makes them disjoint whatever the seeds.
        rng = random.Random(f"{self.name}/{split}/{seed}")
        style = random.Random(f"{self.name}/{split}/{seed}/style")
        want_test = split == "test"
        out: list[Example] = []
        while len(out) < n:
            p = self._problem(rng)
            text = p.question()
            if is_test_problem(text) != want_test:
                continue
            # The reply style is drawn per problem from its own stream, so the problems do not depend on it.
            think = split == "test" or style.random() < self.think_share
            out.append(Example(
                id=f"{split}-{seed}-{len(out)}",
                messages=({"role": "user", "content": text},),
                answer=str(p.answer),
                solution=p.solution(think, self.spaced),
                meta={"lang": p.lang, "steps": len(p.ops), "think": think},
            ))
        return out

    def grade(self, example: Example, completion: str) -> Grade:
        got = extract_answer(completion)
        return Grade(answers_equal(got, example.answer), got, format_ok(completion))


class ArithmeticTaskEn(ArithmeticTask):
    name = "arith_en"

    def __init__(self, **kwargs) -> None:
        super().__init__(languages=("en",), **kwargs)


class ArithmeticTaskZh(ArithmeticTask):
    name = "arith_zh"

    def __init__(self, **kwargs) -> None:
        super().__init__(languages=("zh",), **kwargs)


class ArithmeticMixTask(ArithmeticTask):
    """The quickstart's reasoning task: three-step problems whose training replies mix two styles.

    A `think_share` of the worked solutions reasons step by step in <think>…</think>; the rest answer
    directly (`\\boxed{9}`), so the reply style is the first token the model chooses. Thinking is a chain
    of one-token lookups (` 7 + 5 = 12`, numbers spelled as in the story), while a direct answer must add
    three numbers in one token; one phrasing per operation and language keeps each step's sign a lookup,
    not a reading skill. After SFT the model thinks on a minority of samples and is right far more often
    when it does — a behaviour RL with a correctness-only reward can select (DeepSeek-R1's rising think
    share and length, in miniature; docs/LOG.md). Test solutions are worked; grading reads the answer only.
    """

    name = "arith_mix"

    def __init__(self, **kwargs) -> None:
        defaults = {"min_steps": 3, "max_steps": 3, "max_value": 12, "max_operand": 5, "think_share": 0.4,
                    "phrasings": 1, "format_weight": 0.0, "spaced": True}
        super().__init__(**{**defaults, **kwargs})
