"""A generated mixed zh/en corpus with known labels, for measuring the curation pipeline.

Kinds: clean English and Chinese prose, clean worked maths solutions (English, Chinese, LaTeX),
clean source code, junk (symbol soup, repeated boilerplate, keyword spam, digit dumps, lorem ipsum,
operator soup) and near-duplicate families (a clean document plus a few lightly edited copies).
Every document carries its label and id, so a test or benchmark can score what the pipeline kept:
clean unique documents kept, near-duplicate copies removed, junk removed.

Pure function of the seed; no files are needed (used by tests/data/test_quality_corpus.py and
bench/data_quality.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NOUNS = ["river", "village", "ferry", "market", "teacher", "station", "harbour", "winter", "summer", "letter", "garden", "bridge", "farmer", "doctor", "mountain", "forest", "library", "student", "kitchen", "window", "museum", "bicycle", "painter", "engineer", "island", "factory", "journey", "season", "company", "festival", "theatre", "hospital", "orchard", "valley", "merchant", "lantern", "railway", "castle", "meadow", "workshop", "newspaper", "captain", "scientist"]
ADJS = ["old", "quiet", "busy", "narrow", "bright", "cold", "warm", "distant", "small", "heavy", "careful", "patient", "strange", "gentle", "famous", "simple", "ancient", "modern", "crowded", "empty"]
VERBS = ["carried", "visited", "described", "repaired", "opened", "painted", "followed", "remembered", "watched", "built", "measured", "discovered", "explained", "crossed", "studied", "collected"]
NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam", "Maya", "Noah", "Olga", "Pavel", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Yara", "Zoe"]
ITEMS = ["apples", "pencils", "books", "marbles", "stickers", "cookies", "tickets", "stamps", "shells", "cards"]

ZH_NOUNS = ["村子", "河流", "渡船", "市场", "老师", "车站", "港口", "冬天", "夏天", "书信", "花园", "桥梁", "农民", "医生", "大山", "森林", "图书馆", "学生", "厨房", "窗户", "博物馆", "自行车", "画家", "工程师", "小岛", "工厂", "旅程", "季节", "公司", "节日", "剧院", "医院", "果园", "山谷", "商人", "灯笼", "铁路"]
ZH_ADJS = ["古老", "安静", "热闹", "狭窄", "明亮", "寒冷", "温暖", "遥远", "小小", "沉重", "细心", "耐心", "奇怪", "温和", "有名", "简单", "现代", "拥挤"]
ZH_VERBS = ["带来了", "参观了", "描述了", "修好了", "打开了", "画下了", "跟着", "记得", "看着", "建起了", "测量了", "发现了", "解释了", "穿过了", "研究了"]
ZH_NAMES = ["小明", "小红", "李华", "王芳", "张伟", "刘洋", "陈静", "杨帆", "赵磊", "周婷", "吴昊", "孙悦"]
ZH_ITEMS = ["苹果", "铅笔", "图书", "玻璃球", "贴纸", "饼干", "门票", "邮票", "贝壳", "卡片"]


@dataclass(frozen=True)
class Doc:
    id: str
    kind: str
    """prose-en, prose-zh, math-en, math-zh, math-latex, code, junk-*, or neardup (an edited copy)."""
    text: str
    family: str = ""
    """For a near-duplicate family: the id of its original (the original has family == its own id)."""

    @property
    def clean(self) -> bool:
        return not self.kind.startswith("junk") and self.kind != "neardup"


def _en_sentence(r: random.Random) -> str:
    n1, n2, n3 = r.sample(NOUNS, 3)
    pats = (
        f"The {r.choice(ADJS)} {n1} {r.choice(VERBS)} the {n2} near the {n3} before the evening.",
        f"In the {n1}, a {r.choice(ADJS)} {n2} {r.choice(VERBS)} every {n3} that came along the road.",
        f"Nobody knew why the {n1} was so {r.choice(ADJS)}, but the {n2} had {r.choice(VERBS)} it with care.",
        f"When {r.choice(NAMES)} {r.choice(VERBS)} the {n1}, the {n2} and the {n3} were still {r.choice(ADJS)}.",
        f"It is said that the {n1} of the {n2} has been {r.choice(ADJS)} since {r.randint(1700, 2020)}.",
        f"{r.choice(NAMES)} wrote that the {n1} {r.choice(VERBS)} a {r.choice(ADJS)} {n2} with {r.randint(2, 90)} {n3}s.",
    )
    return r.choice(pats)


def prose_en(r: random.Random) -> str:
    paras = [" ".join(_en_sentence(r) for _ in range(r.randint(4, 7))) for _ in range(r.randint(2, 4))]
    return "\n\n".join(paras)


def _zh_sentence(r: random.Random) -> str:
    n1, n2, n3 = r.sample(ZH_NOUNS, 3)
    pats = (
        f"那个{r.choice(ZH_ADJS)}的{n1}{r.choice(ZH_VERBS)}{n2}，人们都说这是{n3}里最好的一个。",
        f"在{n1}的旁边，{r.choice(ZH_NAMES)}{r.choice(ZH_VERBS)}一座{r.choice(ZH_ADJS)}的{n2}。",
        f"没有人知道{n1}为什么这么{r.choice(ZH_ADJS)}，但是{n2}和{n3}都已经习惯了。",
        f"{r.choice(ZH_NAMES)}说，{r.randint(1900, 2020)}年的时候，这里的{n1}还很{r.choice(ZH_ADJS)}。",
        f"每到{n1}的季节，{n2}就会变得{r.choice(ZH_ADJS)}起来，{n3}里也多了{r.randint(2, 90)}个人。",
    )
    return r.choice(pats)


def prose_zh(r: random.Random) -> str:
    return "\n\n".join("".join(_zh_sentence(r) for _ in range(r.randint(4, 7))) for _ in range(r.randint(2, 3)))


def math_en(r: random.Random) -> str:
    name, other = r.sample(NAMES, 2)
    item = r.choice(ITEMS)
    a, b, c = r.randint(12, 95), r.randint(2, 9), r.randint(3, 40)
    total = a * b
    kind = r.randrange(3)
    if kind == 0:
        q = (f"{name} buys {b} boxes of {item} with {a} {item} in each box and gives {c} {item} to {other}. "
             f"How many {item} does {name} have left?")
        steps = [f"{name} buys {b} boxes with {a} {item} each, so {b} * {a} = {total} {item}.",
                 f"After giving {c} to {other}: {total} - {c} = {total - c}.",
                 f"The answer is {total - c}."]
    elif kind == 1:
        d = r.randint(2, 6)
        share = total // d
        q = (f"A class collects {a} {item} every day for {b} days, then splits them equally among {d} groups. "
             f"How many {item} does each group get, and how many are left over?")
        steps = [f"Total collected: {a} × {b} = {total}.",
                 f"Each group gets {total} ÷ {d} = {share} with {total - share * d} left over,",
                 f"since {share} × {d} = {share * d} and {total} - {share * d} = {total - share * d}.",
                 f"The answer is {share} per group."]
    else:
        p = r.randint(10, 60)
        q = (f"{name} has ${a * 10} and spends {p}% of it on {item}, then earns ${c} more. "
             f"How much money does {name} have now?")
        spent = a * 10 * p / 100
        steps = [f"Spent: {a * 10} × {p}/100 = {spent:g} dollars.",
                 f"Left: {a * 10} - {spent:g} = {a * 10 - spent:g}.",
                 f"Now: {a * 10 - spent:g} + {c} = {a * 10 - spent + c:g}.",
                 f"The answer is {a * 10 - spent + c:g}."]
    return f"Question: {q}\nSolution:\n" + "\n".join(steps)


def math_zh(r: random.Random) -> str:
    name = r.choice(ZH_NAMES)
    item = r.choice(ZH_ITEMS)
    a, b, c = r.randint(12, 95), r.randint(2, 9), r.randint(3, 40)
    total = a * b
    return (f"题目：{name}买了{b}盒{item}，每盒有{a}个，送给同学{c}个，还剩多少个？\n"
            f"解：一共有 {a}×{b}={total}（个）\n"
            f"送出后还剩 {total}-{c}={total - c}（个）\n"
            f"答：还剩{total - c}个{item}。")


def math_latex(r: random.Random) -> str:
    a, b, c = r.randint(1, 9), r.randint(-20, 20), r.randint(-30, 30)
    k = r.randint(2, 7)
    disc = b * b - 4 * a * c
    return (
        f"We solve the quadratic equation ${a}x^2 + ({b})x + ({c}) = 0$ with the quadratic formula.\n"
        f"The discriminant is $\\Delta = b^2 - 4ac = ({b})^2 - 4 \\cdot {a} \\cdot ({c}) = {disc}$.\n"
        f"Hence $x = \\frac{{-b \\pm \\sqrt{{\\Delta}}}}{{2a}} = \\frac{{{-b} \\pm \\sqrt{{{disc}}}}}{{{2 * a}}}$.\n"
        f"For the sum of the first $n$ multiples of {k} we have $\\sum_{{i=1}}^{{n}} {k}i = \\frac{{{k}n(n+1)}}{{2}}$,\n"
        f"so with $n = {a + 3}$ the sum equals ${k * (a + 3) * (a + 4) // 2}$."
    )


def code(r: random.Random) -> str:
    fn = r.choice(("load", "parse", "count", "merge", "render", "score", "index", "clean")) + "_" + r.choice(NOUNS)
    var = r.choice(("items", "rows", "values", "records", "parts"))
    n = r.randint(2, 64)
    if r.random() < 0.7:
        return (f"def {fn}({var}, limit={n}):\n"
                f"    \"\"\"Return the first {n} {r.choice(NOUNS)} entries of {var}, cleaned.\"\"\"\n"
                f"    out = []\n"
                f"    for i, item in enumerate({var}):\n"
                f"        if i >= limit:\n"
                f"            break\n"
                f"        if item is None or item == {r.randint(-5, 5)}:\n"
                f"            continue\n"
                f"        out.append(str(item).strip().lower())\n"
                f"    return out\n\n\n"
                f"class {fn.title().replace('_', '')}:\n"
                f"    def __init__(self, size={r.randint(1, 99)}):\n"
                f"        self.size = size\n"
                f"        self.cache = {{}}\n\n"
                f"    def get(self, key):\n"
                f"        return self.cache.get(key, {fn}([key], self.size))\n")
    return (f"function {fn.replace('_', '')}({var}) {{\n"
            f"  const out = [];\n"
            f"  for (let i = 0; i < {var}.length && i < {n}; i++) {{\n"
            f"    if ({var}[i] !== null) {{\n"
            f"      out.push(String({var}[i]).trim());\n"
            f"    }}\n"
            f"  }}\n"
            f"  return out;\n"
            f"}}\n\n"
            f"module.exports = {{ {fn.replace('_', '')} }};\n")


def junk(r: random.Random) -> tuple[str, str]:
    kind = r.randrange(7)
    if kind == 0:
        return "junk-symbols", "\n".join("".join(r.choice("@#$%^&*~|<>{}[]§¤¶•") for _ in range(r.randint(30, 70)))
                                         for _ in range(r.randint(5, 12)))
    if kind == 1:
        line = r.choice(("Click here to subscribe to our newsletter and win a prize!",
                         "Share this page on Facebook Twitter and Email",
                         "点击这里订阅我们的新闻，免费领取大奖！"))
        return "junk-boilerplate", "\n".join([line] * r.randint(15, 40))
    if kind == 2:
        words = r.sample(["cheap", "casino", "bonus", "free", "pills", "best", "price", "win", "money", "online", "slots", "deal", "loans", "crypto", "offer"], 6)
        return "junk-spam", " ".join(r.choice(words) for _ in range(r.randint(120, 250)))
    if kind == 3:
        return "junk-zh-spam", "".join(r.choice(("免费", "下载", "高清", "最新", "电影", "在线", "观看", "彩票", "代理"))
                                       for _ in range(r.randint(150, 300)))
    if kind == 4:
        return "junk-digits", "\n".join(" ".join(str(r.randint(0, 99999)) for _ in range(12))
                                        for _ in range(r.randint(10, 30)))
    if kind == 5:
        # maths-looking lines with stray symbols: must meet the maths rules and fail them
        return "junk-math-soup", "\n".join(
            f"x{r.randint(0, 9)} = {r.randint(0, 99)} " + "".join(r.choice("@#~§¤¶•&|") for _ in range(12)) + " ok"
            for _ in range(r.randint(8, 15)))
    ops = "+-=*/^()"
    return "junk-operators", "\n".join(" ".join(r.choice(ops) + str(r.randint(0, 9)) + r.choice(ops) + "=" +
                                                r.choice(ops) for _ in range(10)) for _ in range(r.randint(8, 15)))


def _edit(text: str, r: random.Random) -> str:
    """A light edit: one changed number or word per ~60 words (at most 3), so the copy stays above the
    0.7 shingle Jaccard that defines a near duplicate (a 50-word text with 2 edits falls to ~0.67)."""
    tokens = text.split(" ")
    for _ in range(min(3, max(1, len(tokens) // 60))):
        i = r.randrange(len(tokens))
        if tokens[i].isdigit():
            tokens[i] = str(int(tokens[i]) + r.randint(1, 9))
        elif tokens[i].isalpha() and len(tokens) > 20:
            tokens[i] = r.choice(NOUNS)
    out = " ".join(tokens)
    if len(tokens) < 20:  # Chinese (few spaces): change one character instead
        j = r.randrange(len(out))
        out = out[:j] + r.choice("的了是在和") + out[j + 1:]
    return out


KINDS = (("prose-en", prose_en), ("prose-zh", prose_zh), ("math-en", math_en), ("math-zh", math_zh),
         ("math-latex", math_latex), ("code", code))


def generate(n_clean: int = 600, n_junk: int = 120, n_families: int = 40, copies: int = 3,
             seed: int = 0) -> list[Doc]:
    """Clean documents spread over KINDS, junk, and near-duplicate families, shuffled deterministically."""
    r = random.Random(seed)
    docs: list[Doc] = []
    for i in range(n_clean):
        kind, make = KINDS[i % len(KINDS)]
        docs.append(Doc(f"c{i}", kind, make(r)))
    for i in range(n_junk):
        kind, text = junk(r)
        docs.append(Doc(f"j{i}", kind, text))
    r.shuffle(docs)
    fams: list[Doc] = []
    for f in range(n_families):
        kind, make = KINDS[f % len(KINDS)]
        root = Doc(f"f{f}", kind, make(r), family=f"f{f}")
        fams.append(root)
        for k in range(copies):
            fams.append(Doc(f"f{f}.{k}", "neardup", _edit(root.text, r), family=root.id))
    # the originals come first, so dedup (which keeps the earliest) keeps them
    return docs[: len(docs) // 2] + [d for d in fams if d.kind != "neardup"] + docs[len(docs) // 2:] + \
        [d for d in fams if d.kind == "neardup"]


@dataclass(frozen=True)
class Score:
    clean_kept: float
    near_dup_recall: float
    junk_dropped: float
    by_kind: dict[str, float]
    """Kept fraction per clean kind and dropped fraction per junk kind."""


def score(docs: list[Doc], kept_ids: set[str]) -> Score:
    clean = [d for d in docs if d.clean]
    copies = [d for d in docs if d.kind == "neardup"]
    bad = [d for d in docs if d.kind.startswith("junk")]
    by_kind: dict[str, float] = {}
    for kind in sorted({d.kind for d in docs}):
        group = [d for d in docs if d.kind == kind]
        kept = sum(d.id in kept_ids for d in group) / len(group)
        by_kind[kind] = round(kept if kind in dict(KINDS) else 1 - kept, 4)
    return Score(
        clean_kept=sum(d.id in kept_ids for d in clean) / max(1, len(clean)),
        near_dup_recall=sum(d.id not in kept_ids for d in copies) / max(1, len(copies)),
        junk_dropped=sum(d.id not in kept_ids for d in bad) / max(1, len(bad)),
        by_kind=by_kind,
    )


def curate_ids(docs: list[Doc], cfg) -> set[str]:
    """Run the pipeline's curation stages (per-document then global dedup) in this process; kept ids."""
    from diji.data.curate import curate_chunk, global_stages

    _, arrays, meta = curate_chunk([(d.text, d.id) for d in docs], cfg)
    masks, _, _ = global_stages([arrays], cfg)
    return {src for src, keep in zip(meta["sources"], masks[0], strict=True) if keep}
