"""Issue 13's acceptance, as a new user would do it: a model built by `transformers` (Qwen2 architecture, a
tokenizer with its special tokens at the end of the vocabulary, a ChatML template) goes through every command
of docs/open-models.md — import, generate, LoRA SFT, merge, eval, serve with the official `openai` client
(streamed and not), export — and `transformers` reads the export with log-probabilities equal to diji's.

The commands are read from the guide itself, so the guide cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.0")

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "open-models.md"
WORDS = ["hello", "model", "tokens", "train", "serve", "data", "open", "weights", "chat", "reply", "你好", "模型"]
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_hf_model(out: Path) -> Path:
    """A tiny Qwen2 model saved by transformers, with a byte-level BPE whose specials come after the vocab."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    text = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(30)) for i in range(50)]
    tok.train_from_iterator(text, tokenizers.trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    assert eot >= 300, "the specials must sit at the end of the vocabulary for this test to mean anything"
    cfg = transformers.Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                   max_position_embeddings=1024, bos_token_id=None, eos_token_id=eot,
                                   pad_token_id=eot, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(out)
    transformers.GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot).save_pretrained(out)
    return out


def guide_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)


def guide_commands() -> list[str]:
    lines = [ln.strip() for block in guide_blocks("bash") for ln in block.splitlines()]
    return [ln for ln in lines if ln.startswith("diji ") or re.match(r'^echo ".*" \| diji ', ln)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "diji", *cmd[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, input=stdin)
    assert done.returncode == 0, f"{shlex.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
    return done


def write_user_files(cwd: Path) -> None:
    with open(cwd / "chat.jsonl", "w", encoding="utf-8") as f:
        for i in range(24):
            w = WORDS[i % len(WORDS)]
            f.write(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                             {"role": "assistant", "content": f"{w} {w}"}]}, ensure_ascii=False) + "\n")
    (cwd / "notes.txt").write_text(" ".join(WORDS * 20), encoding="utf-8")
    with open(cwd / "quiz.jsonl", "w", encoding="utf-8") as f:
        for w in WORDS[:4]:
            f.write(json.dumps({"question": f"say {w}", "choices": [w, "data", "open"], "answer": 0}) + "\n")
    with open(cwd / "sums.jsonl", "w", encoding="utf-8") as f:
        for a in range(4):
            f.write(json.dumps({"question": f"{a} + 1 = ?", "answer": f"{a} + 1 = {a + 1}\n#### {a + 1}"}) + "\n")


@pytest.mark.slow
def test_open_model_end_to_end_through_the_guide(tmp_path):
    openai = pytest.importorskip("openai")
    cwd = tmp_path
    (cwd / "examples").symlink_to(ROOT / "examples")
    build_hf_model(cwd / "my-model")
    write_user_files(cwd)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    port = free_port()
    server = None
    try:
        for line in guide_commands():
            stdin = None
            if line.startswith("echo "):  # `echo "text" | diji chat …`: the text is the chat's input
                echo, line = line.split(" | ", 1)
                stdin = shlex.split(echo)[1] + "\n"
            cmd = shlex.split(line.split(" #", 1)[0])
            if cmd[1] == "serve":
                cmd = [c if c != "8000" else str(port) for c in cmd]
                server = subprocess.Popen([sys.executable, "-m", "diji", *cmd[1:]], cwd=cwd, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                wait_healthy(port, server)
                for block in guide_blocks("python"):
                    if "openai" in block:
                        exec(compile(block.replace("8000", str(port)), "guide", "exec"), {})
                check_openai(openai, port, cwd / "ckpt" / "merged")
                continue
            done = run(cmd, cwd, env, stdin)
            if cmd[1] == "generate":
                assert done.stdout.strip(), f"{line}: printed nothing"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    for block in guide_blocks("python"):
        if "transformers" in block:
            exec(compile(block.replace('"my-model-tuned"', repr(str(cwd / "my-model-tuned"))), "guide", "exec"), {})
    check_lineage_and_formats(cwd)
    check_logprobs_equal_transformers(cwd)
    check_peft_reads_the_adapter(cwd)


def wait_healthy(port: int, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"diji serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("diji serve did not become healthy in 120 s")


def check_openai(openai, port: int, ckpt: Path) -> None:
    """The server renders chat with the model's template and stops on its own end-of-turn token."""
    from diji.data.chat import render
    from diji.data.tokenizer import Tokenizer

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret")
    msgs = [{"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(model="merged", messages=msgs, max_tokens=6, temperature=0)
    streamed = client.chat.completions.create(model="merged", messages=msgs, max_tokens=6, temperature=0,
                                              stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content
    assert reply.usage.prompt_tokens == len(render(msgs, Tokenizer.from_file(ckpt / "tokenizer.json"), True)[0])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()


def check_lineage_and_formats(cwd: Path) -> None:
    base, merged = cwd / "ckpt" / "base", cwd / "ckpt" / "merged"
    hf_src = json.loads((cwd / "my-model" / "config.json").read_text())
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["eos_token_id"] == hf_src["eos_token_id"]
    for ckpt in (base, merged):
        lineage = json.loads((ckpt / "lineage.json").read_text())
        assert lineage["imported_from"] == str((cwd / "my-model").resolve())
        gen = json.loads((ckpt / "generation_config.json").read_text())
        assert gen["eos_token_id"] == json.loads((cwd / "my-model" / "generation_config.json").read_text())["eos_token_id"]
    # The export is a plain transformers directory with the model's own tokenizer files.
    out = cwd / "my-model-tuned"
    assert not (out / "lineage.json").exists() and (out / "tokenizer.json").read_bytes() == (cwd / "my-model" / "tokenizer.json").read_bytes()


def check_logprobs_equal_transformers(cwd: Path) -> None:
    from diji.data.chat import render
    from diji.data.tokenizer import Tokenizer
    from diji.train.checkpoint import load_checkpoint

    out = cwd / "my-model-tuned"
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ours = load_checkpoint(cwd / "ckpt" / "merged").model.eval()
    tok = Tokenizer.from_file(cwd / "ckpt" / "merged" / "tokenizer.json")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say 你好 hello"},
            {"role": "assistant", "content": "你好 hello"}]
    ids, _ = render(msgs, tok)
    want = hf_tok.apply_chat_template(msgs, tokenize=True)
    want = list(want["input_ids"] if hasattr(want, "keys") else want)
    assert ids == want
    x = torch.tensor([ids])
    with torch.no_grad():
        a = torch.log_softmax(ours(x).float(), -1)
        b = torch.log_softmax(hf_model(input_ids=x).logits.float(), -1)
    assert (a - b).abs().max() <= 1e-4


def check_peft_reads_the_adapter(cwd: Path) -> None:
    peft = pytest.importorskip("peft")
    from diji.train.lora import load_model

    adapter = cwd / "runs" / "my-lora" / "checkpoints" / "step-000004"
    base = transformers.AutoModelForCausalLM.from_pretrained(str(cwd / "ckpt" / "base"), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    ours = load_model(adapter).model.eval()
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert (model(input_ids=x).logits - ours(x)).abs().max() <= 1e-4
