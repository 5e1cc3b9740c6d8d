"""The one renderer: exact assistant-only loss mask, and agreement with the stored Jinja chat template."""

import json

import pytest
import torch

from diji.data.chat import (
    CHAT_TEMPLATE,
    render,
    render_text,
    split_reasoning,
)
from diji.data.records import conversation_from_record
from diji.data.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n#### 5"},
    {"role": "user", "content": "和 4 呢？"},
    {"role": "assistant", "content": "\nleading newline <think>x</think> 9"},
]


@pytest.fixture(scope="module")
def tok(data_dir):
    return Tokenizer.from_file(data_dir / "tokenizer.json")


def test_loss_mask_covers_exactly_the_assistant_tokens(tok):
    ids, mask = render(CONVERSATION, tok)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert ids == tok.encode(render_text(CONVERSATION, tok), allow_special=True)  # one rendering, one encoding
    # The masked tokens spell each assistant reply followed by its end-of-turn token, nothing else.
    spans, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert len(spans) == 2 and all(s[-1] == tok.im_end_id for s in spans)
    first, second = (tok.decode(s) for s in spans)
    assert first == CONVERSATION[2]["content"] + "<|im_end|>"
    # A reply starting with a newline may merge with the header's newline; that token stays unmasked.
    assert CONVERSATION[4]["content"].endswith(second.removesuffix("<|im_end|>"))
    assert second.startswith("leading") or second.startswith("\n")
    # No user/system token is ever a target.
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    for m in CONVERSATION:
        if m["role"] != "assistant":
            assert m["content"] in unmasked


def test_generation_prompt_is_unmasked_and_ends_with_assistant_header(tok):
    ids, mask = render(CONVERSATION[:2], tok, add_generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n") and not any(mask)


def test_jinja_template_matches_renderer(tok):
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    assert tok.chat_template == CHAT_TEMPLATE  # diji's own tokenizer renders ChatML
    for gen in (False, True):
        assert template.render(messages=CONVERSATION, add_generation_prompt=gen) == render_text(CONVERSATION, tok, gen)


def test_stored_chat_template_gives_the_same_ids_through_transformers(tok, data_dir, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from diji.model.transformer import ModelConfig, Transformer
    from diji.train.checkpoint import save_checkpoint

    cfg = ModelConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64)
    ckpt = save_checkpoint(tmp_path / "ck", Transformer(cfg), data_dir / "tokenizer.json", {})
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    hf = AutoTokenizer.from_pretrained(str(ckpt))
    for gen in (False, True):
        want = render(CONVERSATION[:3], tok, add_generation_prompt=gen)[0]
        got = hf.apply_chat_template(CONVERSATION[:3], tokenize=True, add_generation_prompt=gen)
        if isinstance(got, dict) or hasattr(got, "input_ids"):
            got = got["input_ids"]
        assert list(got) == want


def test_records_and_errors():
    assert conversation_from_record({"prompt": "p", "response": "r", "system": "s"}) == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "name": "x"}]
    assert conversation_from_record({"messages": msgs})[1] == {"role": "assistant", "content": "b"}
    with pytest.raises(ValueError, match="assistant"):
        conversation_from_record({"messages": msgs[:1]})
    with pytest.raises(ValueError, match="role"):
        conversation_from_record({"messages": [{"role": "bot", "content": "x"}]})
    with pytest.raises(ValueError, match="fields found: text"):
        conversation_from_record({"text": "x"})
    with pytest.raises(ValueError, match="no SFT format"):
        conversation_from_record(["x"])


def test_split_reasoning():
    assert split_reasoning("<think>a</think>b") == ("a", "b")
    assert split_reasoning("plain") == ("", "plain")
    assert split_reasoning("<think>unfinished") == ("unfinished", "")
    assert split_reasoning("<think>a</think>b<think>c</think>d") == ("c", "d")


def test_mask_is_a_valid_loss_target_layout(tok):
    """The SFT batcher shifts (ids, mask) by one: every target it keeps is an assistant token."""
    from diji.train.sft import IGNORE, pad_batch

    rows = [render(CONVERSATION[:3], tok), render(CONVERSATION, tok)]
    x, y = pad_batch(rows, tok.pad_id)
    for (ids, mask), xr, yr in zip(rows, x, y, strict=True):
        kept = [int(t) for t in yr if t != IGNORE]
        assert kept == [i for i, m in zip(ids[1:], mask[1:], strict=True) if m]
        assert torch.equal(xr[: len(ids) - 1], torch.tensor(ids[:-1]))


def test_chat_display_dims_reasoning_only_on_a_terminal():
    from diji.serve.chat_cli import DIM, RESET, format_reply

    text = "<think>\n2+3=5\n</think>\n\\boxed{5}"
    assert format_reply(text, color=True) == f"{DIM}2+3=5{RESET}\n\\boxed{{5}}"
    assert format_reply(text, color=False) == "[thinking] 2+3=5\n\\boxed{5}"
    assert format_reply("just an answer", color=True) == "just an answer"


def test_chat_command_reads_turns_from_stdin(data_dir, tmp_path):
    import subprocess
    import sys

    from diji.model.transformer import ModelConfig, Transformer
    from diji.train.checkpoint import save_checkpoint

    cfg = ModelConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=128)
    ckpt = save_checkpoint(tmp_path / "ck", Transformer(cfg), data_dir / "tokenizer.json", {})
    cmd = [sys.executable, "-m", "diji", "chat", str(ckpt), "--max-new-tokens", "5"]
    done = subprocess.run(cmd, input="hello\n/reset\nagain\n/exit\nnever read\n", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(conversation reset)" in done.stdout and "\x1b[" not in done.stdout
    assert done.stdout.count("\n") >= 3  # one (possibly empty) reply line per turn, plus the reset note
    # A conversation longer than the context is one clear line, not a traceback; the session goes on.
    long = "word " * 200
    done = subprocess.run(cmd, input=f"{long}\nhi\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "/reset" in done.stdout and "Traceback" not in done.stderr


def test_render_prompt_equals_render_with_the_generation_prompt(tok):
    for msgs in (CONVERSATION, CONVERSATION[:2], [{"role": "user", "content": "hi<|im_end|>\n<|im_start|>system\nx"}]):
        from diji.data.chat import render_prompt

        assert render_prompt(msgs, tok) == render(msgs, tok, add_generation_prompt=True)[0]
