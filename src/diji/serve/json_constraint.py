"""`response_format: {"type": "json_object"}` as a real constraint on sampling.

A character-level pushdown automaton for JSON (RFC 8259) whose top-level value must be an object.
Before each sampling step the engine asks `JsonConstraint.allowed` which token ids may come next; the
others are masked to -inf, so the reply parses by construction rather than by asking the model nicely.
Two guarantees:
- every accepted token keeps the text a prefix of some JSON object;
- the budget never runs out mid-document: a token is accepted only if the shortest completion of the
  text after it (`closing`) still fits the tokens left, and when the budget is tight only tokens that
  spell that completion are allowed. This assumes the vocabulary has single-character tokens for
  `{}[]":,0n` and the letters of `null` — true of byte-level BPE, which has every byte.
Once the object is closed only a stop token may follow.

Not covered: JSON Schema (`json_schema` is refused by the protocol layer); tokens whose text on its
own is not valid UTF-8 (pieces of one multi-byte character) are never chosen, so non-ASCII characters
appear in strings only where the vocabulary has whole-character tokens.

A state is an immutable tuple (mode, stack, extra) so that states can be cached and shared between
sequences; `advance` and `closing` are memoised per state.
"""

from __future__ import annotations

from collections.abc import Sequence

# Modes
VALUE, OBJ_FIRST, OBJ_KEY, AFTER_KEY, AFTER_VALUE, ARR_FIRST = "V", "OF", "OK", "AK", "AV", "AF"
STR, ESC, UHEX, LIT, DONE = "S", "E", "U", "L", "D"
N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = "n-", "n0", "ni", "n.", "nf", "ne", "nE", "nx"

State = tuple  # (mode, stack: str of '{' / '[', extra)
START: State = ("START", "", None)
_WS = " \t\n\r"
_HEX = "0123456789abcdefABCDEF"
_LITS = {"t": "rue", "f": "alse", "n": "ull"}
_NUMBER_MODES = {N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP}
_NUMBER_DONE = {N_ZERO, N_INT, N_FRAC, N_EXP}  # modes where the number may end


def _after_value(stack: str) -> State:
    return (DONE, "", None) if not stack else (AFTER_VALUE, stack, None)


def _start_value(ch: str, stack: str) -> State | None:
    if ch == "{":
        return (OBJ_FIRST, stack + "{", None)
    if ch == "[":
        return (ARR_FIRST, stack + "[", None)
    if ch == '"':
        return (STR, stack, "v")
    if ch in _LITS:
        return (LIT, stack, _LITS[ch])
    if ch == "-":
        return (N_SIGN, stack, None)
    if ch == "0":
        return (N_ZERO, stack, None)
    if ch in "123456789":
        return (N_INT, stack, None)
    return None


def step(state: State, ch: str) -> State | None:
    """The state after one more character, or None when no JSON object can continue this way."""
    mode, stack, extra = state
    if mode == "START":
        if ch in _WS:
            return state
        return (OBJ_FIRST, "{", None) if ch == "{" else None
    if mode == DONE:
        return None
    if mode in (STR, ESC, UHEX):
        if mode == ESC:
            if ch == "u":
                return (UHEX, stack, (extra, 4))
            return (STR, stack, extra) if ch in '"\\/bfnrt' else None
        if mode == UHEX:
            kind, left = extra
            if ch not in _HEX:
                return None
            return (STR, stack, kind) if left == 1 else (UHEX, stack, (kind, left - 1))
        if ch == '"':
            return (AFTER_KEY, stack, None) if extra == "k" else _after_value(stack)
        if ch == "\\":
            return (ESC, stack, extra)
        return None if ord(ch) < 0x20 else state
    if mode == LIT:
        if ch != extra[0]:
            return None
        return _after_value(stack) if len(extra) == 1 else (LIT, stack, extra[1:])
    if mode in _NUMBER_MODES:
        nxt = _number_step(mode, ch)
        if nxt is not None:
            return (nxt, stack, None)
        if mode not in _NUMBER_DONE:
            return None
        return step(_after_value(stack), ch)  # the number ended: this character belongs to what follows
    if ch in _WS:
        return state
    if mode == VALUE:
        return _start_value(ch, stack)
    if mode == ARR_FIRST:
        return _after_value(stack[:-1]) if ch == "]" else _start_value(ch, stack)
    if mode == OBJ_FIRST:
        if ch == "}":
            return _after_value(stack[:-1])
        return (STR, stack, "k") if ch == '"' else None
    if mode == OBJ_KEY:
        return (STR, stack, "k") if ch == '"' else None
    if mode == AFTER_KEY:
        return (VALUE, stack, None) if ch == ":" else None
    if mode == AFTER_VALUE:
        top = stack[-1]
        if ch == ",":
            return (OBJ_KEY, stack, None) if top == "{" else (VALUE, stack, None)
        if (ch == "}" and top == "{") or (ch == "]" and top == "["):
            return _after_value(stack[:-1])
        return None
    raise AssertionError(f"unknown JSON state {mode!r}")


def _number_step(mode: str, ch: str) -> str | None:
    digit = ch.isascii() and ch.isdigit()
    if mode == N_SIGN:
        return N_ZERO if ch == "0" else (N_INT if digit else None)
    if mode in (N_ZERO, N_INT):
        if ch == ".":
            return N_DOT
        if ch in "eE":
            return N_E
        return N_INT if digit and mode == N_INT else None
    if mode in (N_DOT, N_FRAC):
        if digit:
            return N_FRAC
        return N_E if ch in "eE" and mode == N_FRAC else None
    if mode == N_E:
        return N_ESIGN if ch in "+-" else (N_EXP if digit else None)
    if mode in (N_ESIGN, N_EXP):
        return N_EXP if digit else None
    return None


def _next_closing_char(state: State) -> str:
    """The first character of the shortest way to finish the document from `state`."""
    mode, stack, extra = state
    if mode == "START":
        return "{"
    if mode == STR:
        return '"'
    if mode == ESC:
        return "n"
    if mode == UHEX:
        return "0"
    if mode == LIT:
        return extra[0]
    if mode in (N_SIGN, N_DOT, N_E, N_ESIGN):
        return "0"
    if mode in _NUMBER_MODES or mode == AFTER_VALUE:
        return "}" if stack[-1] == "{" else "]"
    if mode == VALUE:
        return "0"
    if mode == OBJ_FIRST:
        return "}"
    if mode == ARR_FIRST:
        return "]"
    if mode == OBJ_KEY:
        return '"'
    if mode == AFTER_KEY:
        return ":"
    raise AssertionError(f"no completion from {mode!r}")


class JsonConstraint:
    """Token-level masks for one tokenizer; shared by every JSON-mode sequence of an engine."""

    MAX_CACHE = 200_000

    def __init__(self, token_texts: Sequence[str | None]) -> None:
        # None: a token that may never appear in JSON mode (special, empty, or not whole UTF-8 text).
        self.texts = list(token_texts)
        self._advance: dict[tuple[State, int], State | None] = {}
        self._closing: dict[State, str] = {}
        self._single: dict[str, list[int]] = {}  # character → tokens whose text is exactly it
        for i, t in enumerate(self.texts):
            if t is not None and len(t) == 1:
                self._single.setdefault(t, []).append(i)

    def advance(self, state: State, token: int) -> State | None:
        key = (state, token)
        if key in self._advance:
            return self._advance[key]
        text = self.texts[token] if 0 <= token < len(self.texts) else None
        out: State | None = None
        if text:
            out = state
            for ch in text:
                out = step(out, ch)
                if out is None:
                    break
        if len(self._advance) > self.MAX_CACHE:
            self._advance.clear()
        self._advance[key] = out
        return out

    def closing(self, state: State) -> str:
        """The shortest text that completes the document (empty once it is complete)."""
        got = self._closing.get(state)
        if got is not None:
            return got
        out, s = [], state
        while s[0] != DONE:
            ch = _next_closing_char(s)
            out.append(ch)
            s = step(s, ch)
        text = "".join(out)
        if len(self._closing) > self.MAX_CACHE:
            self._closing.clear()
        self._closing[state] = text
        return text

    def ok(self, state: State, token: int, budget_after: int) -> State | None:
        """The state after `token` if it is allowed with `budget_after` tokens left after it."""
        nxt = self.advance(state, token)
        if nxt is None or len(self.closing(nxt)) > budget_after:
            return None
        return nxt

    def forced(self, state: State, stop_id: int) -> list[int]:
        """Tokens that spell the next closing character: what is allowed when the budget is tight
        (only the stop token once the object is complete)."""
        text = self.closing(state)
        return list(self._single.get(text[0], [])) if text else [stop_id]

    def tight(self, state: State, budget: int) -> bool:
        """No room left for anything but the shortest completion (`budget` counts this token)."""
        return state[0] == DONE or len(self.closing(state)) >= budget

    def allowed(self, state: State, ranked: Sequence[int], budget: int, want: int = 64) -> list[int]:
        """Allowed next tokens, scanned in `ranked` order (most likely first) until `want` are found;
        `budget` counts the tokens left including this one. Empty when none of `ranked` fits."""
        out = []
        for t in ranked:
            if self.ok(state, t, budget - 1) is not None:
                out.append(t)
                if len(out) >= want:
                    break
        return out


def token_texts(decode, vocab_size: int, is_special) -> list[str | None]:
    """Each token's text for JSON masking; None for specials and tokens that are not whole characters."""
    out: list[str | None] = []
    for i in range(vocab_size):
        try:
            t = None if is_special(i) else decode([i])
        except Exception:  # ids past the tokenizer's vocabulary (a padded embedding)  # noqa: BLE001
            t = None
        out.append(t if t and "\ufffd" not in t else None)
    return out
