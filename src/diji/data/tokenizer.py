"""Tokenizers: any Hugging Face `tokenizer.json` with the checkpoint's own special tokens, and diji's own BPE.

A checkpoint brings its tokenizer as Hugging Face writes it: `tokenizer.json` (the `tokenizers` model),
`tokenizer_config.json` (bos/eos/pad/unk tokens, `add_bos_token`, the chat template),
`special_tokens_map.json`, `generation_config.json` (often several EOS ids: Llama 3 and Qwen end a reply
on the end-of-turn token as well as on end-of-text) and `config.json`. `Tokenizer.from_file` reads all of
those that sit next to `tokenizer.json`, so special and added tokens may be anywhere in the vocabulary.

diji's own tokenizer is one case of this: a byte-level BPE (Radford et al. 2019, GPT-2) trained with HF
`tokenizers`, no normalizer and `add_prefix_space=False` so that `decode(encode(x)) == x` for every
string. Its special tokens sit at ids 0..6 (`SPECIAL_TOKENS`); a bare diji `tokenizer.json` (a data
directory's) is recognised by that layout and gets its defaults, so old checkpoints load unchanged.

Special-token strings inside ordinary text are encoded *as text* unless the caller says the text is
trusted (`allow_special=True`): a document or a user message that contains `<|im_start|>system` must
not become a forged control sequence. The chat renderer (data/chat.py) is the trusted caller that puts
real control tokens around untrusted content.

HF `tokenizers` encodes about 2 MB/s per process here. `tiktoken` runs the same algorithm — the same
pre-tokenization regex, then BPE over byte pieces — several times faster, so for GPT-2-style byte-level
BPE vocabularies `encode_batch` uses a `tiktoken.Encoding` built from the vocabulary when `tiktoken` is
installed (the `fast` extra), after checking it gives ids identical to HF on probe texts; otherwise it
falls back, logging why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from diji.errors import DijiError
from diji.io import atomic_write_bytes, sha256_bytes

log = logging.getLogger(__name__)

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK = "<think>"
THINK_END = "</think>"
# diji's own layout. Order defines the ids: PAD=0, BOS=1, EOS=2, IM_START=3, IM_END=4, THINK=5, THINK_END=6.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, IM_START, IM_END, THINK, THINK_END)
PAD_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID, THINK_ID, THINK_END_ID = range(len(SPECIAL_TOKENS))

TOKENIZER_FILE = "tokenizer.json"
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "config.json",
              "chat_template.jinja", "chat_template.json")
"""Files next to tokenizer.json that describe its special tokens and chat template (read when present)."""
NAMED_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")
THINK_TAGS = (THINK, THINK_END)
"""Reasoning tags are content the model learns to write, not turn structure: never escaped by the renderer."""

# Strings that end a turn in common chat formats (ChatML, Llama 3, Phi, Gemma, DeepSeek); a reply stops on
# one of them when the chat template uses it, even if generation_config.json forgot to list it.
_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<｜end▁of▁sentence｜>")
# Names an end-of-text token goes by, for a bare tokenizer.json that declares none.
_EOS_GUESSES = (EOS, "<|end_of_text|>", "</s>", "<eos>", "<｜end▁of▁sentence｜>")

# The regex HF's ByteLevel pre-tokenizer applies (GPT-2's); the tiktoken twin must use the same one.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Texts the fast encoder must encode exactly like HF before we trust it: scripts, digits, code,
# whitespace runs, specials glued to words, contractions.
_PROBES = (
    "Hello, world! It's a test: don't, we'll, they've, I'm, she'd, you're.\n",
    "def f(x):\n    return x ** 2  # square\n\n\n\tif x != 0:\r\n        pass\n",
    "中文分词测试：今天天气很好，我们去公园散步吧。《红楼梦》第1回，2024年。",
    "emoji 😀👍🏽 👨‍👩‍👧 mixed中英文text 123456789 3.14159 ١٢٣ ½ Ⅻ",
    "   leading and trailing spaces   \n\n  \u00a0nbsp\u3000ideographic\u2028sep\x00nul\x0b\x0c",
    f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n{THINK}ok{THINK_END}yes{EOS}{PAD}{BOS}",
    "Ünïcödé façade naïve résumé Ελληνικά русский язык हिन्दी 日本語のテキスト 한국어",
    "'''''' ''' s's 'S 'LL <|not special|> <|endoftext <think >",
)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (the table ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _hf():
    try:
        import tokenizers
    except ImportError as e:  # a core dependency, but say so clearly if the environment lacks it
        raise DijiError("the 'tokenizers' package is required: pip install tokenizers") from e
    return tokenizers


def _new_hf_tokenizer() -> Any:
    tk = _hf()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tk.decoders.ByteLevel()
    return tok


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: Path, show_progress: bool = True
) -> Path:
    """Train a byte-level BPE on `texts` and write `out_dir/tokenizer.json` atomically; returns its path."""
    min_vocab = len(SPECIAL_TOKENS) + 256
    if not isinstance(vocab_size, int) or vocab_size < min_vocab:
        raise DijiError(f"vocab_size must be an integer >= {min_vocab} (specials + 256 bytes), got {vocab_size}")
    tk = _hf()
    tok = _new_hf_tokenizer()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols up front, so text never seen in training still encodes (no UNK).
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:  # the trainer's contract; checked because every stage depends on it
            raise DijiError(f"tokenizer training put special token {s} at id {tok.token_to_id(s)}, expected {i}")
    out = Path(out_dir) / TOKENIZER_FILE
    atomic_write_bytes(out, tok.to_str(pretty=True).encode("utf-8"))
    return out


def _token_content(value: Any) -> str | None:
    """A token as tokenizer_config.json spells it: a string, or an AddedToken object {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _ids(value: Any) -> list[int]:
    """An `eos_token_id`-style field (int, list of ints or null) as a list."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _read_json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DijiError(f"{path} is not valid JSON ({e}); restore it from the model's source") from None
    if not isinstance(data, dict):
        raise DijiError(f"{path} must hold a JSON object; restore it from the model's source")
    return data


def read_side_files(directory: Path) -> dict[str, Any]:
    """The tokenizer's companion files in `directory`, parsed: {file name: dict, or str for a .jinja file}."""
    out: dict[str, Any] = {}
    for name in SIDE_FILES:
        path = directory / name
        if path.is_file():
            out[name] = path.read_text(encoding="utf-8") if name.endswith(".jinja") else _read_json_file(path)
    return out


def _chat_template_from(side: dict[str, Any]) -> str | None:
    """The default chat template: tokenizer_config.json's (a string or a list of named templates), else
    chat_template.jinja / chat_template.json (where transformers ≥ 4.43 saves it)."""
    value = side.get("tokenizer_config.json", {}).get("chat_template")
    if isinstance(value, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    if isinstance(value, str) and value:
        return value
    if isinstance(side.get("chat_template.jinja"), str):
        return side["chat_template.jinja"]
    value = side.get("chat_template.json", {}).get("chat_template")
    return value if isinstance(value, str) and value else None


class Tokenizer:
    """A Hugging Face tokenizer with its checkpoint's special tokens: encode/decode, BOS/EOS/PAD, stop ids,
    chat template, and a fast exact batch encoder for byte-level BPE vocabularies."""

    def __init__(self, raw: bytes, source: str = "<memory>", fast: bool = True,
                 side: dict[str, Any] | None = None) -> None:
        tk = _hf()
        try:
            self._tok = tk.Tokenizer.from_str(raw.decode("utf-8"))
            # Twins for untrusted text; separate objects rather than toggling one flag, so concurrent
            # encoders never race. `_plain` encodes special tokens' strings as text (HF's
            # `encode_special_tokens`) and keeps ordinary added tokens (Qwen3's <think> is a word of its
            # vocabulary). `_text` encodes *every* added token's string as text: the renderer uses it for the
            # control strings it escaped, which include non-special added tokens a template uses (<tool_call>).
            self._plain = tk.Tokenizer.from_str(raw.decode("utf-8"))
            self._plain.encode_special_tokens = True
            spec = json.loads(raw.decode("utf-8"))
            for added in spec.get("added_tokens") or []:
                added["special"] = True
            self._text = tk.Tokenizer.from_str(json.dumps(spec))
            self._text.encode_special_tokens = True
        except Exception as e:  # tokenizers raises plain Exception subclasses with multi-line text
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DijiError(f"{source} is not a valid tokenizer.json: {first}") from None
        self._raw = raw
        self._source = source
        self._sha256 = sha256_bytes(raw)
        self._side = dict(side or {})
        added = self._tok.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        self._added = {t.content: i for i, t in added.items()}
        self.native = all(self._tok.token_to_id(s) == i for i, s in enumerate(SPECIAL_TOKENS))
        """True for diji's own layout (specials at ids 0..6)."""
        self._resolve_specials()
        self._fast: Any = None
        self.fast_reason = "disabled by caller"
        if fast:
            self._fast, self.fast_reason = self._build_fast()
            log.info("tokenizer batch encoder: %s", self.fast_reason)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, fast: bool = True) -> Tokenizer:
        """Load `tokenizer.json` (or a directory containing it) with the companion files beside it."""
        p = Path(path)
        if p.is_dir():
            p = p / TOKENIZER_FILE
        if not p.is_file():
            raise DijiError(f"tokenizer file not found: {p}")
        return cls(p.read_bytes(), source=str(p), fast=fast, side=read_side_files(p.parent))

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def _resolve_specials(self) -> None:
        """BOS/EOS/PAD as the checkpoint declares them; diji's defaults for its own layout; a guess last."""
        tc = self._side.get("tokenizer_config.json", {})
        stm = self._side.get("special_tokens_map.json", {})
        gen = self._side.get("generation_config.json", {})
        cfg = self._side.get("config.json", {})
        names: dict[str, str] = {}
        for name in NAMED_TOKENS:
            value = _token_content(tc.get(name)) or _token_content(stm.get(name))
            if value is not None and self._id_of(value) is not None:
                names[name] = value
        if self.native:
            names.setdefault("bos_token", BOS)
            names.setdefault("eos_token", EOS)
            names.setdefault("pad_token", PAD)
        if "eos_token" not in names:
            for source in (gen, cfg):
                for i in _ids(source.get("eos_token_id")):
                    tok = self._tok.id_to_token(i)
                    if tok is not None:
                        names["eos_token"] = tok
                        break
                if "eos_token" in names:
                    break
        if "eos_token" not in names:
            guess = next((g for g in _EOS_GUESSES if self._id_of(g) is not None), None)
            if guess is not None:
                names["eos_token"] = guess
        self.special_tokens: dict[str, str] = names
        """The named special tokens (bos_token, eos_token, pad_token, unk_token) that exist in the vocabulary."""

        eos: list[int] = []
        for i in [self._id_of(names.get("eos_token"))] + _ids(gen.get("eos_token_id")) + _ids(cfg.get("eos_token_id")):
            if i is not None and i not in eos and 0 <= i < self.vocab_size:
                eos.append(i)
        self.eos_ids: tuple[int, ...] = tuple(eos)
        """Every id that ends a text (several for Llama 3 and Qwen); the first is the document separator."""

        template = self.chat_template or ""
        stop = list(eos)
        for s in _TURN_ENDS:
            i = self._id_of(s)
            if i is not None and i not in stop and (s in template or (self.native and s == IM_END)):
                stop.append(i)
        self.stop_ids: tuple[int, ...] = tuple(stop)
        """Every id that ends a generated reply: the EOS ids plus the template's end-of-turn token."""

        bos = self._id_of(names.get("bos_token"))
        if bos is None and not ("bos_token" in tc and tc["bos_token"] is None):  # null there means "none"
            bos = next((i for src in (gen, cfg) for i in _ids(src.get("bos_token_id"))), None)
        self.bos_id: int | None = bos
        pad = self._id_of(names.get("pad_token"))
        if pad is None:
            pad = next((i for src in (gen, cfg) for i in _ids(src.get("pad_token_id"))), None)
        self._pad = pad
        if isinstance(tc.get("add_bos_token"), bool):
            self.add_bos = bool(tc["add_bos_token"]) and bos is not None
        else:  # no explicit flag: does the tokenizer's own post-processor put BOS first (Llama 3 does)?
            probe = self._tok.encode("a", add_special_tokens=True).ids
            self.add_bos = bos is not None and len(probe) > 1 and probe[0] == bos
        """Whether a plain-text prompt starts with BOS (`encode_prompt`); chat templates write BOS themselves."""

    def _build_fast(self) -> tuple[Any, str]:
        try:
            import tiktoken
        except ImportError:
            return None, "HF tokenizers (tiktoken not installed; pip install 'diji[fast]' for ~5x faster encoding)"
        spec = json.loads(self._raw.decode("utf-8"))
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        # tiktoken implements exactly one pipeline: GPT-2's regex, then byte-level BPE. Anything else
        # (a normaliser, another split regex, ignore_merges) is left to HF rather than approximated.
        if (model.get("type") != "BPE" or model.get("ignore_merges") or spec.get("normalizer")
                or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space")):
            return None, "HF tokenizers (not a GPT-2-style byte-level BPE; tiktoken would differ)"
        if len(self._special_ids) != len(self._added):
            return None, "HF tokenizers (added tokens that are not special)"
        # tiktoken merges by the rank (id) of the merged token, HF by the merge rule's position: they agree
        # only when ids grow along the merge list, which a greedily trained BPE gives but another may not.
        vocab = model.get("vocab") or {}
        last = -1
        for rule in model.get("merges") or []:
            left, right = rule.split(" ", 1) if isinstance(rule, str) else rule
            merged = vocab.get(left + right)
            if merged is None or merged <= last:
                return None, "HF tokenizers (token ids are not in merge order; tiktoken would merge differently)"
            last = merged
        dec = _byte_decoder()
        specials = {s: i for s, i in self._added.items()}
        ranks: dict[bytes, int] = {}
        for token, idx in model["vocab"].items():
            if token in specials:
                continue
            try:
                ranks[bytes(dec[c] for c in token)] = idx
            except KeyError:
                return None, f"HF tokenizers (vocab token {token!r} is not byte-level)"
        try:
            enc = tiktoken.Encoding(
                name=f"diji-{self._sha256[:12]}",
                pat_str=GPT2_PATTERN,
                mergeable_ranks=ranks,
                special_tokens=specials,
            )
        except Exception as e:  # tiktoken validates ranks; any complaint means "do not use it"
            return None, f"HF tokenizers (tiktoken refused the vocabulary: {e})"
        # Besides the merge-order check, probes compare the two: every vocabulary token spelled out
        # exercises each merge path at least once.
        regular = [i for i in range(self.vocab_size) if i not in self._special_ids]
        vocab_text = self.decode(regular)
        probes = list(_PROBES) + [vocab_text[i : i + 2000] for i in range(0, len(vocab_text), 2000)]
        for text in probes:
            for allow, hf in ((True, self._tok), (False, self._plain)):
                want = hf.encode(text, add_special_tokens=False).ids
                got = enc.encode(text, allowed_special="all" if allow else set(), disallowed_special=())
                if got != want:
                    return None, f"HF tokenizers (tiktoken disagrees with HF on probe {text[:40]!r})"
        return enc, "tiktoken (ids verified identical to HF tokenizers on probes)"

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; no BOS/EOS added. Special-token strings in the text are plain text unless
        `allow_special` (only for text the program itself wrote, such as a rendered chat template)."""
        if self._fast is not None:
            return self._fast.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())
        return (self._tok if allow_special else self._plain).encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """A plain-text prompt as the model was trained to see one: BOS first where the tokenizer adds it."""
        ids = self.encode(text)
        return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

    def encode_with_offsets(self, text: str, allow_special: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the (start, end) character span of each token in `text` (always the HF reference path).
        Without `allow_special`, every added token's string is text (the renderer's escaped control strings)."""
        enc = (self._tok if allow_special else self._text).encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def encode_batch(self, texts: list[str], num_threads: int = 2, allow_special: bool = False) -> list[list[int]]:
        """Encode many texts; uses the fast exact encoder when available."""
        if self._fast is not None:
            allowed: Any = "all" if allow_special else set()
            return self._fast.encode_batch(list(texts), num_threads=num_threads, allowed_special=allowed,
                                           disallowed_special=())
        return self.encode_batch_reference(texts, allow_special)

    def encode_batch_reference(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        """Always HF `tokenizers` (the reference path the fast one is compared with)."""
        hf = self._tok if allow_special else self._plain
        return [e.ids for e in hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def iter_vocab(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]))

    def is_special(self, idx: int) -> bool:
        """Whether `idx` is a special (control) token — not text a metric should count."""
        return int(idx) in self._special_ids

    # ---- properties ---------------------------------------------------------------------------
    @property
    def uses_fast_encoder(self) -> bool:
        return self._fast is not None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        """The end-of-text id (documents are separated by it)."""
        if not self.eos_ids:
            raise DijiError(f"{self._source} declares no EOS token; set eos_token in tokenizer_config.json")
        return self.eos_ids[0]

    @property
    def pad_id(self) -> int:
        """The padding id; the EOS id when the checkpoint declares none (padding is masked out anyway)."""
        return self._pad if self._pad is not None else self.eos_id

    @property
    def chat_template(self) -> str | None:
        """The checkpoint's own Jinja chat template; diji's ChatML for its own tokenizer; else None."""
        template = _chat_template_from(self._side)
        if template is None and self.native:
            from diji.data.chat import CHAT_TEMPLATE

            return CHAT_TEMPLATE
        return template

    @property
    def control_tokens(self) -> tuple[str, ...]:
        """Token strings the renderer escapes in untrusted text: every special token and every added token
        the chat template spells out, except whitespace and the reasoning tags (content, not structure)."""
        template = self.chat_template or ""
        specials = {self._tok.id_to_token(i) for i in self._special_ids}
        out = {t for t in self._added if t in specials or (t in template and not t.isspace())}
        return tuple(sorted(out - set(THINK_TAGS), key=lambda t: (-len(t), t)))

    @property
    def side_files(self) -> dict[str, Any]:
        """The parsed companion files this tokenizer was loaded with (tokenizer_config.json, ...)."""
        return dict(self._side)

    # diji's own layout (ids 0..6): kept for code and checkpoints written before tokenizers were general.
    @property
    def im_start_id(self) -> int | None:
        return self._id_of(IM_START)

    @property
    def im_end_id(self) -> int | None:
        return self._id_of(IM_END)

    @property
    def think_id(self) -> int | None:
        return self._id_of(THINK)

    @property
    def think_end_id(self) -> int | None:
        return self._id_of(THINK_END)

    @property
    def sha256(self) -> str:
        """sha256 of the tokenizer.json bytes (what manifests and lineage record)."""
        return self._sha256

    @property
    def hf(self) -> Any:
        """The underlying `tokenizers.Tokenizer` (for HF export)."""
        return self._tok

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    def save(self, out_dir: str | Path) -> Path:
        """Write the exact tokenizer.json bytes into `out_dir` (atomically); returns the path."""
        out = Path(out_dir) / TOKENIZER_FILE
        atomic_write_bytes(out, self._raw)
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self._sha256[:12]}, source={self._source!r})"
