"""`diji chat CKPT`: a terminal chat. Reasoning (<think>…</think>) is shown dimmed, the answer plainly.

The conversation is rendered by the one chat renderer each turn, so the model sees exactly the format
it was fine-tuned on. Commands: `/reset` starts over, `/exit` (or end of input) quits. Colours are used
only when stdout is a terminal, so piping the output gives plain text.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any, TextIO

from diji.config import DEFAULT_TEMPERATURE
from diji.errors import DijiError
from diji.options import DTYPE_CHOICES, DTYPE_HELP

DIM, RESET = "\x1b[2m", "\x1b[0m"


def format_reply(text: str, color: bool) -> str:
    """The reply for display: reasoning dimmed (or bracketed as `[thinking] …` without colour), then the answer."""
    from diji.data.chat import THINK_OPEN, split_reasoning

    if THINK_OPEN not in text:
        return text.strip()
    reasoning, answer = split_reasoning(text)
    reasoning, answer = reasoning.strip(), answer.strip()
    shown = f"{DIM}{reasoning}{RESET}" if color else f"[thinking] {reasoning}"
    return f"{shown}\n{answer}" if answer else shown


class ChatSession:
    """The conversation state and one model call per user turn (no I/O; the loop below does that)."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, system: str = "", seed: int | None = None) -> None:
        from diji.model.generate import SamplingParams

        self.model, self.tok, self.system = model.eval(), tokenizer, system
        try:
            self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                         stop_ids=tokenizer.stop_ids, seed=seed)
        except ValueError as e:
            raise DijiError(str(e)) from None
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user: str) -> str:
        from diji.data.chat import render_prompt
        from diji.model.generate import generate

        self.messages.append({"role": "user", "content": user})
        ids = render_prompt(self.messages, self.tok)
        context = self.model.config.max_position_embeddings
        budget = min(self.params.max_new_tokens, context - len(ids))
        if budget <= 0:
            self.messages.pop()
            raise DijiError(f"the conversation is {len(ids)} tokens, the model's whole context "
                            f"({context}); type /reset to start over")
        out = generate(self.model, [ids], replace(self.params, max_new_tokens=budget), pad_id=self.tok.pad_id)[0]
        text = self.tok.decode(out.tokens)
        self.messages.append({"role": "assistant", "content": text})
        return text


def chat_loop(session: ChatSession, stdin: TextIO, stdout: TextIO, color: bool) -> int:
    interactive = stdin.isatty()
    if interactive:
        stdout.write("diji chat — /reset to start over, /exit to quit\n")
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            stdout.write("(conversation reset)\n")
            continue
        try:
            stdout.write(format_reply(session.reply(text), color) + "\n")
        except DijiError as e:
            stdout.write(f"diji: {e}\n")
        stdout.flush()


def _chat(args: argparse.Namespace) -> int:
    from diji.data.tokenizer import Tokenizer
    from diji.train.checkpoint import load_for_inference

    loaded = load_for_inference(args.checkpoint, args.device, args.dtype)
    session = ChatSession(loaded.model, Tokenizer.from_file(loaded.tokenizer_file), args.max_new_tokens,
                          args.temperature, args.top_p, args.system, args.seed)
    return chat_loop(session, sys.stdin, sys.stdout, color=sys.stdout.isatty())


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a checkpoint in the terminal (reasoning shown dimmed)")
    p.add_argument("checkpoint", help="a checkpoint directory (plain or LoRA adapter)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per reply (default: 256)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"sampling temperature; 0 = greedy (default: {DEFAULT_TEMPERATURE}, as the API and chat page)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default: 1.0)")
    p.add_argument("--system", default="", help="a system message put before the conversation (default: none)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--device", default="auto", help="cpu, an accelerator such as cuda:0/npu:0, or auto (default: auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.set_defaults(func=_chat)
