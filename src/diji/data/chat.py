"""The one conversation renderer: messages → (ids, loss_mask), shared by SFT, GRPO, eval and the server.

The format is ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), the same string the Jinja
CHAT_TEMPLATE below produces, so HF `apply_chat_template` on an exported checkpoint gives the same ids.
Assistant turns may hold `<think>…</think>` reasoning before the answer (DeepSeek-R1's format); the tags
are special tokens, so the renderer needs no special case and `split_reasoning` separates the two parts.
"""

from __future__ import annotations

from typing import Any, Protocol

ROLES = ("system", "user", "assistant")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def render_text(messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The exact string CHAT_TEMPLATE renders (what the tokenizer sees)."""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check the OpenAI-style message list; raise ValueError naming the bad entry."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] needs a string 'content'")
        if m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
    return messages


def conversation_from_record(record: Any) -> list[dict[str, str]]:
    """One SFT record → messages: `{"messages": [...]}` as is, or `{"prompt", "response"[, "system"]}`.

    Raises ValueError naming what is missing; the record must end with an assistant turn to train on.
    """
    if not isinstance(record, dict):
        raise ValueError("each record must be a JSON object with 'messages' or 'prompt'/'response'")
    if "messages" in record:
        messages = validate_messages(record["messages"])
    elif isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        messages = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["response"]}]
        if isinstance(record.get("system"), str):
            messages.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise ValueError("record needs 'messages' (a list) or string 'prompt' and 'response' fields")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("record has no assistant turn, so nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


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


def render(
    messages: list[dict[str, Any]], tokenizer: _Encoder, add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask that is 1 exactly on assistant content and its `<|im_end|>`.

    Each turn starts with a special token, so encoding turn by turn equals encoding the whole string.
    Within a turn the header is encoded alone; where BPE merges across the header/content boundary
    (content starting with a newline) the straddling token counts as header, never as a target.
    """
    validate_messages(messages)
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        header = f"<|im_start|>{m['role']}\n"
        turn = tokenizer.encode(header + m["content"] + "<|im_end|>")
        nl = tokenizer.encode("\n")
        if m["role"] == "assistant":
            head = tokenizer.encode(header)
            k = 0
            while k < len(head) and k < len(turn) and head[k] == turn[k]:
                k += 1
            mask += [0] * k + [1] * (len(turn) - k)
        else:
            mask += [0] * len(turn)
        ids += turn
        ids += nl
        mask += [0] * len(nl)
    if add_generation_prompt:
        gen = tokenizer.encode("<|im_start|>assistant\n")
        ids += gen
        mask += [0] * len(gen)
    return ids, mask
