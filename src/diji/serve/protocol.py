"""The OpenAI wire format: validating request bodies and shaping responses, with no I/O.

Validation is by hand rather than by pydantic models so that every failure is one `ApiError` with the
OpenAI error shape, status 400 and the offending parameter named. No field is silently ignored: each
endpoint has a list of the fields it honours (`COMPLETION_FIELDS`, `CHAT_FIELDS`); any other field with
a non-null value — `tools`, `suffix`, a vendor extension — is refused with a 400 naming it, because an
agent framework that sends `tools` and gets plain text back breaks in ways that are hard to trace.
Response shapes follow the OpenAI API reference for
`/v1/completions` (legacy) and `/v1/chat/completions`, including `echo` + `logprobs` as
lm-evaluation-harness reads them (sums `token_logprobs[ctxlen:-1]`, compares against `top_logprobs`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOP = 16
MAX_LOGIT_BIAS = 300

_SAMPLING_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
                    "stream_options", "presence_penalty", "frequency_penalty", "logit_bias", "user",
                    "response_format"}
COMPLETION_FIELDS = frozenset(_SAMPLING_FIELDS | {"prompt", "echo", "logprobs", "best_of", "suffix"})
CHAT_FIELDS = frozenset(_SAMPLING_FIELDS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                                            "tools", "tool_choice", "parallel_tool_calls"})
TOKENIZE_FIELDS = frozenset({"model", "prompt", "messages", "add_generation_prompt", "add_special_tokens",
                             "return_token_strs"})
DETOKENIZE_FIELDS = frozenset({"model", "tokens"})
FEEDBACK_FIELDS = frozenset({"id", "rating", "comment"})


def parse_int_literal(text: str) -> int | float:
    """`json.loads(parse_int=...)`: integers of more than 30 digits become ±inf, which every integer
    field refuses with a 400 — instead of a ValueError from Python's 4,300-digit int limit (a 500)."""
    digits = len(text) - text.startswith("-")
    if digits > 30:
        return float("-inf") if text.startswith("-") else float("inf")
    return int(text)


def check_fields(body: dict, allowed: frozenset[str], why: dict[str, str] | None = None) -> None:
    """Refuse any field this endpoint does not honour (null values count as absent)."""
    for name, value in body.items():
        if name not in allowed and value is not None:
            hint = (why or {}).get(name, "this server does not implement it")
            raise ApiError(400, f"unsupported parameter {str(name)[:60]!r}: {hint}", param=str(name)[:60],
                           code="unsupported_parameter")


class ApiError(Exception):
    """A client fault, rendered as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"'{param}': {message}", param=param, code="invalid_value")


def _int(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"must be an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(name, f"must be between {lo} and {hi}, got {v}" if hi is not None else f"must be >= {lo}, got {v}")
    return v


def _float(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, "must be a finite number")
    if v < lo or v > hi or (lo_open and v == lo):
        raise _bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def parse_bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(name, "must be true or false")
    return v


def _stop(body: dict, max_chars: int) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or len(v) > MAX_STOP:
        raise _bad("stop", f"must be a string or a list of at most {MAX_STOP} strings")
    if any(len(s) > max_chars for s in v):
        raise _bad("stop", f"each stop string may have at most {max_chars} characters")
    return tuple(s for s in v if s)


def _logit_bias(body: dict, vocab_size: int) -> tuple[tuple[int, float], ...]:
    v = body.get("logit_bias")
    if v is None:
        return ()
    if not isinstance(v, dict) or len(v) > MAX_LOGIT_BIAS:
        raise _bad("logit_bias", f"must be an object of at most {MAX_LOGIT_BIAS} token ids to biases")
    out = []
    for k, b in v.items():
        if not (isinstance(k, str) and k.isdigit() and len(k) < 10 and int(k) < vocab_size):
            raise _bad("logit_bias", f"keys must be token ids in [0, {vocab_size}), got {str(k)[:20]!r}")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise _bad("logit_bias", "biases must be numbers in [-100, 100]")
        out.append((int(k), float(b)))
    return tuple(out)


def _json_mode(body: dict) -> bool:
    v = body.get("response_format")
    if v is None:
        return False
    kind = v.get("type") if isinstance(v, dict) else None
    if kind == "text":
        return False
    if kind == "json_object":
        return True
    if kind == "json_schema":
        raise ApiError(400, "'response_format': type 'json_schema' is not supported; use 'json_object'",
                       param="response_format", code="unsupported_parameter")
    raise _bad("response_format", "must be {'type': 'text'} or {'type': 'json_object'}")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    json_mode: bool = False


def parse_sampling(body: dict, max_tokens_names: tuple[str, ...], vocab_size: int = 1 << 31,
                   max_stop_chars: int = 256) -> Sampling:
    max_tokens = None
    for name in max_tokens_names:
        got = _int(body, name, None, 0)
        if got is not None:
            max_tokens = got
            break
    top_k = _int(body, "top_k", 0, -1)
    stream = parse_bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("stream_options", "must be an object")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63):
        raise _bad("seed", "must be a 64-bit integer")
    if opts:
        check_fields(opts, frozenset({"include_usage"}))
    user = body.get("user")
    if user is not None and not (isinstance(user, str) and len(user) <= 256):
        raise _bad("user", "must be a string of at most 256 characters")
    samp = Sampling(
        max_tokens=max_tokens,
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=max(0, top_k or 0),
        n=_int(body, "n", 1, 1, MAX_N) or 1,
        stop=_stop(body, max_stop_chars),
        seed=seed,
        stream=stream,
        include_usage=bool(stream and opts and parse_bool(opts, "include_usage")),
        presence_penalty=_float(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_float(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body, vocab_size),
        json_mode=_json_mode(body),
    )
    if samp.json_mode and samp.stop:
        raise _bad("stop", "cannot be combined with response_format json_object (a stop string could cut "
                   "the JSON)")
    return samp


def check_completion_extras(body: dict, n: int) -> None:
    """`best_of` and `suffix` are honoured only in their no-op forms."""
    best = _int(body, "best_of", None, 1, MAX_N)
    if best is not None and best != n:
        raise ApiError(400, "'best_of' other than n is not supported", param="best_of", code="unsupported_parameter")
    if body.get("suffix") not in (None, ""):
        raise ApiError(400, "'suffix' (insertion) is not supported", param="suffix", code="unsupported_parameter")


def parse_tools(body: dict, template_has_tools: bool) -> list[dict] | None:
    """OpenAI `tools` / `tool_choice` → the tool list to render, or None for a plain chat.

    Honoured only where the checkpoint's chat template renders tools; `tool_choice` "auto" (the default
    with tools) and "none" (render no tools) are honoured, forcing a call ("required" or a named function)
    is refused with a 400, since nothing constrains the model to produce one."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", "must be true or false")
    if not template_has_tools:
        why = "this model's chat template has no tool support"
        if tools not in (None, []):
            raise ApiError(400, f"'tools': {why}", param="tools", code="unsupported_parameter")
        if choice not in (None, "none"):
            raise ApiError(400, f"'tool_choice': {why}", param="tool_choice", code="unsupported_parameter")
        if parallel is not None:
            raise ApiError(400, f"'parallel_tool_calls': {why}", param="parallel_tool_calls",
                           code="unsupported_parameter")
        return None
    if choice not in (None, "none", "auto"):
        raise ApiError(400, "'tool_choice': only 'auto' and 'none' are supported (forcing a call is not "
                       "implemented)", param="tool_choice", code="unsupported_parameter")
    if tools in (None, []) or choice == "none":
        return None
    if not isinstance(tools, list) or len(tools) > 128:
        raise _bad("tools", "must be a list of at most 128 {'type': 'function', 'function': {...}} objects")
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not (isinstance(name, str) and _TOOL_NAME.fullmatch(name)):
            raise _bad("tools", f"tools[{i}] must be {{'type': 'function', 'function': {{'name': [a-zA-Z0-9_-]{{1,64}}, ...}}}}")
        if not isinstance(fn.get("description", ""), str) or not isinstance(fn.get("parameters", {}), dict):
            raise _bad("tools", f"tools[{i}].function: 'description' must be a string, 'parameters' an object")
        extra = sorted(set(fn) - {"name", "description", "parameters", "strict"})
        if extra:
            raise _bad("tools", f"tools[{i}].function.{extra[0]} is not supported")
        out.append({"type": "function", "function": {k: fn[k] for k in ("name", "description", "parameters")
                                                     if k in fn}})
    return out


_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# Hermes / Qwen 2.5 / Qwen 3 write <tool_call>{"name": ..., "arguments": {...}}</tool_call>; Llama 3.1 writes
# the bare object {"name": ..., "parameters": {...}} as its whole reply.
_TOOL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str, names: set[str], new_id) -> tuple[str | None, list[dict]]:
    """The reply's text without tool-call blocks, and the calls as OpenAI `tool_calls` (only calls of
    offered tools with object arguments count; anything else stays text)."""
    def call(raw: str) -> dict | None:
        try:
            obj = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("name") not in names:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return {"id": new_id(), "type": "function",
                "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}

    calls, kept, pos = [], [], 0
    for m in _TOOL_BLOCK.finditer(text):
        c = call(m.group(1))
        if c is not None:
            calls.append(c)
            kept.append(text[pos : m.start()])
            pos = m.end()
    kept.append(text[pos:])
    rest = "".join(kept).strip()
    if not calls and rest.startswith("{"):
        c = call(rest)
        if c is not None:
            return None, [c]
    if not calls:
        return text, []
    return rest or None, calls


def parse_prompts(value: Any, encode, vocab_size: int, max_prompts: int = 256) -> list[list[int]]:
    """`prompt` as a string, list of strings, list of token ids or list of such lists → token-id lists."""
    def ids(x: Any) -> list[int]:
        if not x or not all(type(t) is int and 0 <= t < vocab_size for t in x):
            raise _bad("prompt", f"token ids must be a non-empty list of integers in [0, {vocab_size})")
        return list(x)

    if isinstance(value, list) and len(value) > max_prompts:
        raise _bad("prompt", f"at most {max_prompts} prompts per request")
    if isinstance(value, str):
        prompts = [encode(value)]
    elif isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        prompts = [encode(p) for p in value]
    elif isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        prompts = [ids(value)]
    elif isinstance(value, list) and value and all(isinstance(p, list) for p in value):
        prompts = [ids(p) for p in value]
    else:
        raise _bad("prompt", "must be a string, a list of strings, a list of token ids or a list of such lists")
    if any(not p for p in prompts):
        raise _bad("prompt", "is empty")
    return prompts


def parse_messages(value: Any, tools: bool = False) -> list[dict[str, Any]]:
    """OpenAI messages → [{role, content}] with text content; 'developer' is treated as 'system'. With
    `tools` (a template that renders them), also tool results (role 'tool') and assistant `tool_calls`,
    whose JSON-string arguments become objects as chat templates expect."""
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _bad("messages", f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        allowed = {"role", "content"}
        if tools and role == "tool":
            allowed |= {"tool_call_id", "name"}
        if tools and role == "assistant":
            allowed |= {"tool_calls"}
        extra = sorted(str(k)[:40] for k, v in m.items() if k not in allowed and v is not None)
        if extra:
            raise _bad("messages", f"messages[{i}].{extra[0]} is not supported here")
        if role == "developer":
            role = "system"
        roles = ("system", "user", "assistant", "tool") if tools else ("system", "user", "assistant")
        if role not in roles:
            raise _bad("messages", f"messages[{i}].role must be one of {', '.join(roles)}, got {role!r}"[:200])
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):  # content parts: only text is understood by a text model
            parts = []
            for p in content:
                if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                    raise _bad("messages", f"messages[{i}].content parts must be {{'type': 'text', 'text': ...}}")
                parts.append(p["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise _bad("messages", f"messages[{i}].content must be a string")
        msg: dict[str, Any] = {"role": role, "content": content}
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None and key in allowed:
                if not isinstance(m[key], str) or len(m[key]) > 128:
                    raise _bad("messages", f"messages[{i}].{key} must be a string")
                msg[key] = m[key]
        if m.get("tool_calls") is not None and "tool_calls" in allowed:
            msg["tool_calls"] = _history_calls(m["tool_calls"], i)
        out.append(msg)
    return out


def _history_calls(calls: Any, i: int) -> list[dict]:
    if not isinstance(calls, list) or len(calls) > 64:
        raise _bad("messages", f"messages[{i}].tool_calls must be a list")
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            raise _bad("messages", f"messages[{i}].tool_calls entries need function.name")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except ValueError:
                raise _bad("messages", f"messages[{i}].tool_calls arguments must be JSON") from None
        if not isinstance(args, dict):
            raise _bad("messages", f"messages[{i}].tool_calls arguments must be a JSON object")
        entry = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(c.get("id"), str):
            entry["id"] = c["id"]
        out.append(entry)
    return out


def parse_logprobs_completions(body: dict) -> int | None:
    return _int(body, "logprobs", None, 0, MAX_LOGPROBS)


def parse_logprobs_chat(body: dict) -> int | None:
    want = parse_bool(body, "logprobs")
    top = _int(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not want:
        raise _bad("top_logprobs", "needs 'logprobs': true")
    return (top or 0) if want else None


# ---- responses ----------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def top_dict(top: list[tuple[int, float]], token_str) -> dict[str, float]:
    """{token string: logprob}; filled worst first so that when two ids decode to the same string
    (byte-level pieces of one character) the key keeps the better value — harnesses take max()."""
    out: dict[str, float] = {}
    for tid, lp in reversed(top):
        out[token_str(tid)] = lp
    return out


def completion_logprobs(entries: list, token_str, offset0: int = 0) -> dict[str, Any]:
    """Legacy completions `logprobs`: tokens, token_logprobs, top_logprobs, text_offset (None entry = no
    context, the first prompt token)."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = offset0
    for tid, e in entries:
        s = token_str(tid)
        tokens.append(s)
        offsets.append(pos)
        pos += len(s)
        lps.append(None if e is None else e.logprob)
        tops.append(None if e is None else top_dict(e.top, token_str))
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(entries: list, token_str) -> dict[str, Any]:
    def item(tid: int, lp: float) -> dict[str, Any]:
        s = token_str(tid)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]}
                        for e in entries]}
