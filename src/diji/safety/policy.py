"""Serving policy: input/output moderation by keyword and regex, PII redaction, limits, rate limits.

What it covers
- Input rules: a prompt (every message of a chat, or the completion prompt) that contains a listed
  keyword (Chinese or English) or matches a listed regular expression is refused with
  `finish_reason: "content_filter"`; the model never sees it. Prompts over `max_prompt_tokens` get 400.
- Output rules: the same keyword/regex checks on generated text, applied while streaming with a
  hold-back window so a listed word never leaves the server, then the generation stops with
  `content_filter`; PII in outputs (see `diji.safety.pii`) is replaced by `[EMAIL]`, `[PHONE]`, ….
- Matching normalises Unicode (NFKC, so full-width letters match), ignores case, and drops invisible
  format characters (zero-width spaces and joiners), so `ｂｏ\u200bmb` matches `bomb`. English keywords
  match whole words; Chinese keywords match anywhere.
- Per-key token buckets limit requests per minute and tokens (prompt + max_tokens) per minute → 429.

What it does not cover
- Meaning: paraphrases, synonyms, misspellings, leetspeak, pinyin, translations into other languages
  and harmful content that uses no listed word all pass. This is a lexical filter, not a moderation
  model; put a classifier in front for that.
- Jailbreaks or prompt injection that use no listed word; content inside images or files.
- Stop-and-resume tricks across separate requests (each request is checked on its own).
- Output PII longer than the hold-back window (`stream_holdback_chars`) may be streamed partly before
  it is recognised.
- The output filter is incremental (each piece costs time proportional to its size plus a fixed
  window, not to the text so far): a keyword is always caught, but an output regex is searched only
  within the last `scan_window_chars` characters, so a regex match longer than that window can pass.
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from diji.config import ConfigError, load_config
from diji.errors import DijiError
from diji.safety.pii import find_pii

DEFAULT_REFUSAL = "抱歉，这个请求我无法协助。Sorry, I can't help with that request."


def _check_patterns(name: str, patterns: tuple[str, ...]) -> None:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{name}: {p!r} is not a valid regular expression ({e})") from None


@dataclass(frozen=True)
class RuleSet:
    keywords: tuple[str, ...] = ()
    """Blocked words or phrases (any language); matched after normalisation, English as whole words."""
    regexes: tuple[str, ...] = ()
    """Blocked Python regular expressions, searched in the normalised text (case-insensitive)."""

    def __post_init__(self) -> None:
        if any(not k.strip() for k in self.keywords):
            raise ValueError("keywords must be non-empty strings")
        _check_patterns("regexes", self.regexes)


@dataclass(frozen=True)
class InputPolicy(RuleSet):
    max_prompt_tokens: int = 0
    """Longest prompt accepted in tokens; 0 means only the model's context limits it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_prompt_tokens < 0:
            raise ValueError(f"input.max_prompt_tokens must be >= 0, got {self.max_prompt_tokens}")


@dataclass(frozen=True)
class OutputPolicy(RuleSet):
    redact_pii: bool = True
    """Replace e-mails, phone numbers, ID and card numbers, IPs in generated text (see safety/pii.py)."""
    stream_holdback_chars: int = 48
    """While streaming, characters kept back so a keyword or PII split across chunks is still caught."""
    scan_window_chars: int = 512
    """How far back each new piece of output is re-scanned for the output regexes (keywords always use
    their own length); bounds the filter's cost per piece."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stream_holdback_chars < 0:
            raise ValueError(f"output.stream_holdback_chars must be >= 0, got {self.stream_holdback_chars}")
        if self.scan_window_chars < 1:
            raise ValueError(f"output.scan_window_chars must be >= 1, got {self.scan_window_chars}")


@dataclass(frozen=True)
class RateLimit:
    requests_per_minute: float = 0.0
    """Sustained requests per minute per key (token bucket, Turner 1986); 0 = unlimited."""
    tokens_per_minute: float = 0.0
    """Sustained prompt + max_tokens per minute per key; 0 = unlimited."""
    burst_requests: int = 0
    """Bucket size for requests (a quiet key may send this many at once); 0 means requests_per_minute."""
    burst_tokens: int = 0
    """Bucket size for tokens; 0 means tokens_per_minute."""
    feedback_per_minute: float = 30.0
    """Sustained feedback posts per minute per key (burst of the same size); 0 = unlimited."""

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "burst_requests", "burst_tokens",
                     "feedback_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"rate_limit.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class AuditPolicy:
    dir: str = ""
    """Directory for audit-YYYY-MM-DD.jsonl files; empty disables the audit log."""
    log_text: bool = False
    """Also store prompts and outputs (PII-redacted); needed by `diji data flywheel`. Off by default."""
    max_file_bytes: int = 64 << 20
    """A file that reaches this size is closed and a new one started (rotation by size)."""
    keep_files: int = 100
    """Retention: the oldest audit files beyond this many are deleted; 0 keeps every file."""

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1024:
            raise ValueError(f"audit.max_file_bytes must be >= 1024, got {self.max_file_bytes}")
        if self.keep_files < 0:
            raise ValueError(f"audit.keep_files must be >= 0 (0 = keep all), got {self.keep_files}")


@dataclass(frozen=True)
class Policy:
    input: InputPolicy = field(default_factory=InputPolicy)
    """Rules applied to prompts before the model sees them."""
    output: OutputPolicy = field(default_factory=OutputPolicy)
    """Rules applied to generated text."""
    rate_limit: RateLimit = field(default_factory=RateLimit)
    """Per-key token buckets."""
    audit: AuditPolicy = field(default_factory=AuditPolicy)
    """Where and what to log."""
    refusal: str = DEFAULT_REFUSAL
    """The assistant's reply when an input rule blocks a chat request."""


def load_policy(path: str | Path | None, overrides: list[str] | None = None) -> Policy:
    """Read a policy TOML (see examples/policy.toml); no path gives the permissive default."""
    try:
        return load_config(Policy, path, overrides)
    except ConfigError as e:
        raise DijiError(f"policy: {e}") from None


# ---- matching ---------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """NFKC, case-folded, without invisible format characters (category Cf: zero-width space, ZWJ…)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def _compile(rules: RuleSet) -> re.Pattern | None:
    parts = []
    for k in rules.keywords:
        k = normalise(k)
        if re.fullmatch(r"[\w\s'-]+", k, flags=re.ASCII):
            # An English word must stand alone: "ass" should not block "class".
            parts.append(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z0-9])")
        else:
            parts.append(re.escape(k))
    parts += [f"(?:{r})" for r in rules.regexes]
    return re.compile("|".join(parts), flags=re.IGNORECASE) if parts else None


@dataclass(frozen=True)
class Decision:
    stage: str
    """"input" or "output"."""
    action: str
    """"allow", "block" or "redact"."""
    rule: str = ""
    """Which kind of rule fired (keyword_or_regex, pii:email, …); never the matched user text."""


class Moderator:
    """Compiled policy rules; stateless and safe to share between requests."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._in = _compile(policy.input)
        self._out = _compile(policy.output)

    def check_input(self, texts: list[str]) -> Decision:
        if self._in is not None and any(self._in.search(normalise(t)) for t in texts):
            return Decision("input", "block", "keyword_or_regex")
        return Decision("input", "allow")

    def check_output(self, text: str) -> Decision:
        if self._out is not None and self._out.search(normalise(text)):
            return Decision("output", "block", "keyword_or_regex")
        return Decision("output", "allow")

    def guard(self) -> OutputGuard:
        return OutputGuard(self)


class OutputGuard:
    """Filters one generation's text as it streams: emits only text that is final after checks.

    `feed(delta)` returns text safe to send now; `finish()` returns the rest. Once an output rule fires,
    `blocked` is set and nothing more is emitted.

    Incremental: rules are searched in the new text plus a window before it (the longest keyword, or
    `scan_window_chars`), and PII is looked for in the text not yet sent only, which the hold-back keeps
    short; so a reply of N pieces costs O(N), not the O(N²) of re-scanning everything each time.
    """

    def __init__(self, moderator: Moderator) -> None:
        self.m = moderator
        p = moderator.policy.output
        active = moderator._out is not None or p.redact_pii
        self.hold = p.stream_holdback_chars if active else 0
        longest = max((len(normalise(k)) for k in p.keywords), default=0)
        # NFKC can turn one character into several and invisible ones vanish: keep a generous margin.
        self.window = max(p.scan_window_chars if p.regexes else 0, 4 * longest + 8)
        self.recent = ""  # the last `window` raw characters, for rules spanning pieces
        self.pending = ""  # raw text not emitted yet
        self.blocked: Decision | None = None
        self.redacted: list[str] = []

    def _check(self, delta: str) -> bool:
        if self.m._out is None or not delta:
            return True
        scan = self.recent + delta
        self.recent = scan[-self.window :]
        if self.m._out.search(normalise(scan)):
            self.blocked = Decision("output", "block", "keyword_or_regex")
            return False
        return True

    def _emit(self, upto: int) -> str:
        """Emit pending[:upto] (after moving the cut out of any PII span), redacted."""
        text = self.pending
        spans = find_pii(text) if self.m.policy.output.redact_pii else []
        for r in spans:
            if r.start < upto < r.end:
                upto = r.start
        if upto < len(text):
            # Do not cut inside a run of word characters that may still grow into PII.
            run = upto
            while run > 0 and (text[run - 1].isalnum() or text[run - 1] in "@.+-_"):
                run -= 1
            if upto - run < max(self.hold, 1):
                upto = run
        out, pos = [], 0
        for r in spans:
            if r.end > upto:
                break
            out.append(text[pos : r.start])
            out.append(f"[{r.kind.upper()}]")
            self.redacted.append(r.kind)
            pos = r.end
        out.append(text[pos:upto])
        self.pending = text[upto:]
        return "".join(out)

    def feed(self, delta: str, final: bool = False) -> str:
        if self.blocked is not None:
            return ""
        if not self._check(delta):
            return ""
        self.pending += delta
        if not self.hold:
            out, self.pending = self.pending, ""
            return out
        if final:
            return self._emit(len(self.pending))
        if len(self.pending) <= self.hold:
            return ""
        return self._emit(len(self.pending) - self.hold)

    def finish(self) -> str:
        return self.feed("", final=True)

    def decisions(self) -> list[Decision]:
        if self.blocked is not None:
            return [self.blocked]
        return [Decision("output", "redact", f"pii:{k}") for k in sorted(set(self.redacted))]


# ---- rate limiting ----------------------------------------------------------------------------------
class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level, self.stamp = level, stamp


class RateLimiter:
    """Token buckets per key: one for requests, one for tokens. Thread-safe; state lives in memory."""

    def __init__(self, limits: RateLimit, clock=time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _take(self, key: str, kind: str, rate_per_min: float, burst: float, amount: float, now: float) -> float:
        """Seconds to wait before `amount` would fit (0 = taken now)."""
        if rate_per_min <= 0:
            return 0.0
        cap = burst or rate_per_min
        b = self._buckets.setdefault((key, kind), _Bucket(cap, now))
        b.level = min(cap, b.level + (now - b.stamp) * rate_per_min / 60.0)
        b.stamp = now
        if amount > cap:
            return float("inf")
        if b.level >= amount:
            b.level -= amount
            return 0.0
        return (amount - b.level) * 60.0 / rate_per_min

    def acquire(self, key: str, tokens: int) -> float:
        """Charge one request and `tokens` tokens; returns 0 or the seconds to retry after (nothing taken)."""
        lim = self.limits
        with self._lock:
            now = self.clock()
            wait = self._take(key, "req", lim.requests_per_minute, lim.burst_requests, 1, now)
            if wait:
                return wait
            wait = self._take(key, "tok", lim.tokens_per_minute, lim.burst_tokens, tokens, now)
            if wait:
                self._buckets[(key, "req")].level += 1  # give the request back
            return wait

    def refund(self, key: str, tokens: int) -> None:
        """Return tokens reserved for max_tokens but not generated."""
        if self.limits.tokens_per_minute <= 0 or tokens <= 0:
            return
        with self._lock:
            b = self._buckets.get((key, "tok"))
            if b is not None:
                b.level = min(self.limits.burst_tokens or self.limits.tokens_per_minute, b.level + tokens)
