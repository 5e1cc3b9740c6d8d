"""The one conversation renderer: messages → (ids, loss_mask), shared by SFT, GRPO, eval and the server.

The format is ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), the same string the Jinja
CHAT_TEMPLATE below produces, so HF `apply_chat_template` on an exported checkpoint gives the same ids.
Assistant turns may hold `<think>…</think>` reasoning before the answer; it is plain text here.
"""

from __future__ import annotations

from typing import Any, Protocol

ROLES = ("system", "user", "assistant")

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
