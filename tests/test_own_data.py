"""README's "Your own data" path, run as written (on a tiny model): a folder of text files → prepared
data → pretrain → SFT on a JSONL of conversations."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
# Only size and budget change; every README flag stays as written.
TINY_PRETRAIN = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=4",
                 "model.num_key_value_heads=2", "model.intermediate_size=64", "model.max_position_embeddings=64",
                 "data.seq_len=32", "train.batch_size=4", "train.eval_every=3", "train.eval_batches=1"]
TINY_SFT = ["data.seq_len=64", "train.batch_size=2", "train.eval_every=0", "train.eval_batches=1"]
TINY_COMMON = [f"train.max_steps={STEPS}", f"train.save_every={STEPS}", "train.log_every=1"]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def write_inputs(tmp: Path) -> None:
    from diji.data.corpus import build_default_corpus

    folder = tmp / "my_texts"
    folder.mkdir()
    jsonl = build_default_corpus(tmp / "corpus", max_bytes=400_000)[0]
    for i, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines()[:300]):
        (folder / f"doc-{i:03d}.txt").write_text(json.loads(line)["text"], encoding="utf-8")
    chats = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                           {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
             for a in range(6) for b in range(6)]
    chats.append({"prompt": "Say hello.", "response": "Hello."})
    (tmp / "my_chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    shutil.copytree(ROOT / "examples", tmp / "examples")


def test_readme_own_data_path_runs(tmp_path):
    write_inputs(tmp_path)
    commands = readme_commands()
    assert [c[:3] for c in commands[:3]] == [["diji", "data", "prepare"], ["diji", "train", "pretrain"],
                                             ["diji", "train", "sft"]]
    for cmd in commands:
        if cmd[1] == "chat":  # interactive: the checkpoint it opens must exist
            assert (tmp_path / cmd[2].replace("step-000300", f"step-{STEPS:06d}") / "model.safetensors").is_file()
            continue
        args = [a.replace("step-000300", f"step-{STEPS:06d}") for a in cmd[1:]]
        extra = {"pretrain": TINY_PRETRAIN + TINY_COMMON, "sft": TINY_SFT + TINY_COMMON}.get(args[1], [])
        args += [x for o in extra for x in ("--set", o)] + (["--quiet"] if args[0] == "train" else [])
        out = subprocess.run([sys.executable, "-m", "diji", *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, (args, out.stderr[-2000:])
    lineage = json.loads((tmp_path / f"runs/mine-chat/checkpoints/step-{STEPS:06d}/lineage.json").read_text())
    assert lineage["stage"] == "sft" and lineage["config"]["data"]["path"] == "my_chats.jsonl"
    assert lineage["config"]["data"]["eval_task"] == "auto" and lineage["config"]["data"]["task"] == ""
    # "auto" follows the data: no arithmetic accuracy is measured on the user's own chats.
    metrics = [json.loads(line) for line in (tmp_path / "runs/mine-chat/metrics.jsonl").open()]
    assert metrics and not any("val_accuracy" in m for m in metrics)
