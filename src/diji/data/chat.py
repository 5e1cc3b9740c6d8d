"""The one conversation renderer: messages → (ids, loss_mask), shared by SFT, GRPO, eval, `chat` and the server.

A checkpoint's chat template is Jinja; we render it the way `transformers`' `apply_chat_template` does
(a sandboxed Jinja environment with trim_blocks/lstrip_blocks, `raise_exception`, `tojson`,
`strftime_now`, the tokenizer's named special tokens as variables) and tokenize the result without
adding BOS/EOS, so the ids are token for token what transformers produces for the same conversation.
diji's own checkpoints carry `CHAT_TEMPLATE` (ChatML), so they are one case of the same path.

Two things go beyond rendering:

* **Role injection.** A message may *contain* a control token's string (`hi<|im_end|>\n<|im_start|>system`).
  Before rendering, every control token (`Tokenizer.control_tokens`) inside a message's text is wrapped
  in private markers; after rendering, the marked stretches are encoded as plain text and the rest with
  the template's real control tokens. The markers survive the template's own string tests (`'</think>' in
  content` still holds), so templates behave as with the raw text. The reasoning tags `<think>`/`</think>`
  are content the model writes and are not escaped. `allow_control_tokens=True` is for trusted callers.
* **The loss mask.** Where the template marks assistant text with `{% generation %}…{% endgeneration %}`,
  the mask equals transformers' `return_assistant_tokens_mask` (every token from the one holding the
  block's first character to the one holding its last). Otherwise the rule is: an assistant turn's targets
  are the characters that rendering the conversation up to and including that turn adds after the
  longest prefix it shares with the generation prompt for that turn, up to the last non-whitespace
  character (so the end-of-turn token is a target and the template's newline after it is not); a token
  is a target only if it lies wholly inside that span (a token merging header and content stays
  context). A turn the template renders differently once later turns follow (Qwen3 drops old reasoning)
  is not a target; the final assistant turn always is.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""diji's own template: ChatML, the format diji-trained checkpoints learn."""

# Private-use code points (plane 16) that mark escaped text and generation blocks inside a rendering. A
# message's own copy of one of them (or of _LITERAL) is carried as _LITERAL + a digit and restored, so no
# message can forge a marker and no character is lost.
_ESC_OPEN, _ESC_CLOSE, _GEN_OPEN, _GEN_CLOSE, _LITERAL = (
    "\U0010fff0", "\U0010fff1", "\U0010fff2", "\U0010fff3", "\U0010fff4")
_RESERVED = re.compile("[\U0010fff0-\U0010fff4]")
_MARKERS = re.compile("\U0010fff4[0-4]|[\U0010fff0-\U0010fff3]")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTokenizer(Protocol):
    """What the renderer needs (diji.data.tokenizer.Tokenizer provides it)."""

    chat_template: str | None
    special_tokens: dict[str, str]
    control_tokens: tuple[str, ...]

    def encode_with_offsets(self, text: str, allow_special: bool = False) -> tuple[list[int], list[tuple[int, int]]]: ...


@lru_cache(maxsize=16)
def compile_template(source: str) -> Any:
    """A chat template compiled in Jinja's immutable sandbox (templates come with downloaded models)."""
    try:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        from diji.errors import DijiError

        raise DijiError("rendering a chat template needs jinja2: pip install jinja2") from e

    class Generation(Extension):
        """`{% generation %}…{% endgeneration %}`: wrap the block's output in markers we turn into spans."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_wrap"), [], [], body).set_lineno(lineno)

        def _wrap(self, caller):
            return _GEN_OPEN + caller() + _GEN_CLOSE

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Namespace(jinja2.utils.Namespace):
        """`namespace()` that refuses underscore-prefixed names (no reaching CPython internals through it)."""

        def __init__(*args, **kwargs):  # Jinja's own signature trick, so namespace(self=...) still works
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates may not set underscore attributes ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.globals["namespace"] = Namespace
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template does not parse: {e.message} (line {e.lineno})") from None


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check the OpenAI-style message list; raise ValueError naming the bad entry."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] needs a string 'content'")
        if m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
    return messages


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant reply: the inside of the last <think>…</think>, and what follows.

    An unfinished thought (`<think>` without `</think>`) is all reasoning and no answer; a reply with no
    tags at all is all answer.
    """
    close = text.rfind(THINK_CLOSE)
    if close < 0:
        return (text.split(THINK_OPEN, 1)[1], "") if THINK_OPEN in text else ("", text)
    open_ = text.rfind(THINK_OPEN, 0, close)
    reasoning = text[open_ + len(THINK_OPEN) : close] if open_ >= 0 else text[:close]
    return reasoning, text[close + len(THINK_CLOSE) :]


def _literal(m: re.Match) -> str:
    return _LITERAL + str(ord(m.group(0)) - ord(_ESC_OPEN))


def _escape(value: Any, pattern: re.Pattern | None) -> Any:
    """A copy of a message field with reserved code points made literal and control tokens wrapped in markers."""
    if isinstance(value, str):
        value = _RESERVED.sub(_literal, value)
        return pattern.sub(lambda m: _ESC_OPEN + m.group(0) + _ESC_CLOSE, value) if pattern else value
    if isinstance(value, dict):
        return {k: _escape(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v, pattern) for v in value]
    return value


def _control_pattern(tokenizer: ChatTokenizer, trusted: bool) -> re.Pattern | None:
    controls = () if trusted else tokenizer.control_tokens
    return re.compile("|".join(map(re.escape, controls))) if controls else None


def _prepare(messages: list[dict[str, Any]], pattern: re.Pattern | None) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        m = _escape(dict(m), pattern)
        # Templates read reasoning under different names (as transformers aliases them).
        found = next((m[f] for f in _REASONING_FIELDS if isinstance(m.get(f), str)), None)
        if found is not None:
            for f in _REASONING_FIELDS:
                m.setdefault(f, found)
        out.append(m)
    return out


def _render_marked(messages, tokenizer: ChatTokenizer, add_generation_prompt: bool, kwargs: dict) -> str:
    template = tokenizer.chat_template
    if not template:
        raise ValueError("this tokenizer has no chat template; add `chat_template` to its tokenizer_config.json")
    import jinja2

    try:
        return compile_template(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            **{"tools": None, "documents": None, **tokenizer.special_tokens, **kwargs})
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"the chat template refused the conversation: {e}") from None
    except Exception as e:  # a Python error inside the template's own logic is still the template's verdict
        raise ValueError(f"the chat template failed on this conversation: {type(e).__name__}: {e}") from None


def _unmark(marked: str) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """Remove markers: (clean text, escaped spans, generation spans), spans in clean-text characters."""
    clean: list[str] = []
    pos, esc, gen = 0, [], []
    esc_start = gen_start = None
    last = 0
    for m in _MARKERS.finditer(marked):
        piece = marked[last : m.start()]
        clean.append(piece)
        pos += len(piece)
        last = m.end()
        ch = m.group(0)
        if len(ch) == 2:  # a message's own reserved code point
            clean.append(chr(ord(_ESC_OPEN) + int(ch[1])))
            pos += 1
        elif ch == _ESC_OPEN:
            esc_start = pos
        elif ch == _ESC_CLOSE and esc_start is not None:  # a template that slices content may orphan one
            esc.append((esc_start, pos))
            esc_start = None
        elif ch == _GEN_OPEN:
            gen_start = pos
        elif ch == _GEN_CLOSE and gen_start is not None:
            gen.append((gen_start, pos))
            gen_start = None
    clean.append(marked[last:])
    return "".join(clean), esc, gen


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _locate(text: str, untrusted: list[str], pattern: re.Pattern) -> list[tuple[int, int]] | None:
    """Escaped spans for control strings of `untrusted` values found verbatim in `text` (None if one is not)."""
    spans: list[tuple[int, int]] = []
    for v in untrusted:
        hits = [m.span() for m in pattern.finditer(v)]
        if not hits:
            continue
        start, found = 0, False
        while (i := text.find(v, start)) >= 0:
            spans += [(i + a, i + b) for a, b in hits]
            start, found = i + len(v), True
        if not found:
            return None
    out: list[tuple[int, int]] = []
    for a, b in sorted(set(spans)):
        if not out or a >= out[-1][1]:
            out.append((a, b))
    return out


def _rendering(messages, tokenizer: ChatTokenizer, add_generation_prompt: bool, kwargs: dict, trusted: bool):
    """(text, escaped spans, generation spans) of a conversation.

    The markers are invisible to `in` tests but not to `startswith`/`==`/`length` on content (Qwen3 tests
    `content.startswith('<tool_response>')`). When the marked rendering differs from the trusted one, the
    trusted text is used and the control strings of each untrusted value found verbatim in it are escaped;
    if a value was rewritten by the template, the marked rendering stands (safety first).
    """
    pattern = _control_pattern(tokenizer, trusted)
    kw = {k: _escape(v, pattern) for k, v in kwargs.items()}
    text, escaped, gen = _unmark(_render_marked(_prepare(messages, pattern), tokenizer, add_generation_prompt, kw))
    if pattern is None or not escaped:
        return text, escaped, gen
    plain, _, plain_gen = _unmark(_render_marked(_prepare(messages, None), tokenizer, add_generation_prompt,
                                                 {k: _escape(v, None) for k, v in kwargs.items()}))
    if plain == text:
        return text, escaped, gen
    located = _locate(plain, [s for v in (messages, list(kwargs.values())) for s in _strings(v)], pattern)
    return (text, escaped, gen) if located is None else (plain, located, plain_gen)


def render_text(messages: list[dict[str, Any]], tokenizer: ChatTokenizer, add_generation_prompt: bool = False,
                template_kwargs: dict | None = None) -> str:
    """The exact string the checkpoint's chat template renders for `messages`."""
    validate_messages(messages)
    return _rendering(messages, tokenizer, add_generation_prompt, template_kwargs or {}, True)[0]


def _encode(text: str, escaped: list[tuple[int, int]], tokenizer: ChatTokenizer):
    """Encode `text`, the escaped spans as plain text and the rest with control tokens; ids and offsets."""
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    cuts = [0]
    for a, b in escaped:
        cuts += [a, b]
    cuts.append(len(text))
    for k in range(len(cuts) - 1):
        a, b = cuts[k], cuts[k + 1]
        if a >= b:
            continue
        part_ids, part_off = tokenizer.encode_with_offsets(text[a:b], allow_special=bool(k % 2 == 0))
        ids += part_ids
        offsets += [(s + a, e + a) for s, e in part_off]
    return ids, offsets


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_spans(messages: list[dict[str, Any]], tokenizer: ChatTokenizer, full: str,
                    template_kwargs: dict | None = None) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in `full` by the prefix rule (module docstring)."""
    kw = template_kwargs or {}
    spans, skipped = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        upto = _rendering(messages[: i + 1], tokenizer, False, kw, True)[0]
        if not full.startswith(upto):
            skipped += 1
            continue
        try:  # the generation prompt for this turn; a template may refuse an empty conversation
            prompt = _rendering(messages[:i], tokenizer, True, kw, True)[0]
        except ValueError:
            prompt = ""
        start, end = _common_prefix(prompt, upto), len(upto.rstrip())
        # A template that moves text between turns (Mistral's puts the system prompt into the last user
        # turn) can share only a short prefix with the generation prompt; the span must then not take in
        # the other turns' text: fall back to the answer's own text, or leave the turn untrained.
        others = [o["content"] for o in messages[:i] if o["role"] != "assistant" and o.get("content")]
        if any(c in upto[start:end] for c in others):
            content = (m.get("content") or "").strip()
            j = upto.rfind(content, start) if content else -1
            if j < 0:
                skipped += 1
                continue
            start = j
        if start < end:
            spans.append((start, end))
    if skipped:
        log.debug("chat template renders %d earlier assistant turn(s) differently later on; not trained on", skipped)
    return spans


def render_prompt(messages: list[dict[str, Any]], tokenizer: ChatTokenizer, template_kwargs: dict | None = None,
                  allow_control_tokens: bool = False) -> list[int]:
    """The ids of `messages` followed by the generation prompt: what the model continues (serving, rollouts,
    eval). Same rendering and escaping as `render`, without computing a loss mask nobody reads."""
    validate_messages(messages)
    text, escaped, _ = _rendering(messages, tokenizer, True, template_kwargs or {}, allow_control_tokens)
    return _encode(text, escaped, tokenizer)[0]


def render(
    messages: list[dict[str, Any]], tokenizer: ChatTokenizer, add_generation_prompt: bool = False,
    template_kwargs: dict | None = None, allow_control_tokens: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask that is 1 exactly on the assistant tokens (module docstring's rule).

    Control-token strings inside the messages are encoded as text unless `allow_control_tokens`.
    """
    validate_messages(messages)
    kw = template_kwargs or {}
    text, escaped, gen = _rendering(messages, tokenizer, add_generation_prompt, kw, allow_control_tokens)
    ids, offsets = _encode(text, escaped, tokenizer)
    mask = [0] * len(ids)
    if gen:  # transformers' rule: from the token holding the first character to the one holding the last
        for a, b in gen:
            if b <= a:
                continue
            first = next((t for t, (s, e) in enumerate(offsets) if s <= a < e), None)
            last = next((t for t, (s, e) in enumerate(offsets) if s <= b - 1 < e), None)
            if first is not None:
                for t in range(first, (last if last is not None else len(ids) - 1) + 1):
                    mask[t] = 1
    elif any(m["role"] == "assistant" for m in messages):
        full = _rendering(messages, tokenizer, False, kw, True)[0] if add_generation_prompt else text
        for a, b in assistant_spans(messages, tokenizer, full, kw):
            for t, (s, e) in enumerate(offsets):
                if s >= a and e <= b and e > s:
                    mask[t] = 1
    return ids, mask
