"""Issue 18: a tampered checkpoint is refused in one line, the final path never goes missing while a
checkpoint is republished, and a train_state.pt cannot run code when it is loaded.

Each tampering below is one an attacker (or a careless copy) can make without recomputing anything the
loader trusts; the CLI must print exactly one `diji: error:` line and exit 2 for every one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_sft import TINY, tiny_base

from diji.cli import main
from diji.errors import DijiError
from diji.io import publish_dir, sha256_file
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import TRAIN_STATE, WEIGHTS, load_checkpoint, load_train_state, save_checkpoint


def _lineage(ckpt: Path) -> dict:
    return json.loads((ckpt / "lineage.json").read_text(encoding="utf-8"))


def _write_lineage(ckpt: Path, lineage) -> None:
    (ckpt / "lineage.json").write_text(json.dumps(lineage), encoding="utf-8")


def _drop_entry(ckpt: Path, name: str) -> None:
    lineage = _lineage(ckpt)
    del lineage["files"][name]
    _write_lineage(ckpt, lineage)


def _nan_weights(ckpt: Path) -> None:
    state = load_file(str(ckpt / WEIGHTS))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(ckpt / WEIGHTS),
              metadata={"format": "pt"})


def remove_weights_entry(ckpt: Path) -> None:
    _drop_entry(ckpt, WEIGHTS)


def lineage_replaced(ckpt: Path) -> None:
    _write_lineage(ckpt, {"stage": "x"})


def lineage_list(ckpt: Path) -> None:
    _write_lineage(ckpt, [])


def files_list(ckpt: Path) -> None:
    _write_lineage(ckpt, {"files": []})


def files_digest_not_a_string(ckpt: Path) -> None:
    lineage = _lineage(ckpt)
    lineage["files"][WEIGHTS] = 12345
    _write_lineage(ckpt, lineage)


def nan_weights_entry_removed(ckpt: Path) -> None:
    _nan_weights(ckpt)
    _drop_entry(ckpt, WEIGHTS)


def nan_weights_rehashed_but_weights_sha_kept(ckpt: Path) -> None:
    """The files table is made to match the NaN weights; the lineage's weights_sha256 still names the old."""
    _nan_weights(ckpt)
    lineage = _lineage(ckpt)
    lineage["files"][WEIGHTS] = sha256_file(ckpt / WEIGHTS)
    _write_lineage(ckpt, lineage)


def weights_sha_changed(ckpt: Path) -> None:
    lineage = _lineage(ckpt)
    lineage["weights_sha256"] = "0" * 64
    _write_lineage(ckpt, lineage)


def weights_sha_removed(ckpt: Path) -> None:
    lineage = _lineage(ckpt)
    del lineage["weights_sha256"]
    _write_lineage(ckpt, lineage)


def unlisted_tokenizer_config(ckpt: Path) -> None:
    """A tokenizer_config.json that is not in the table (here: a swapped EOS and chat template)."""
    _drop_entry(ckpt, "tokenizer_config.json")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|pad|>", "chat_template": "{{ 'x' }}"}))


def unlisted_tokenizer_config_added(ckpt: Path) -> None:
    """The checkpoint had no tokenizer_config.json (as a bare copy might not); one is dropped in unlisted."""
    (ckpt / "tokenizer_config.json").unlink()
    _drop_entry(ckpt, "tokenizer_config.json")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|pad|>"}))


def unlisted_chat_template(ckpt: Path) -> None:
    (ckpt / "chat_template.jinja").write_text("{{ 'forged' }}")


def unlisted_generation_config(ckpt: Path) -> None:
    _drop_entry(ckpt, "generation_config.json")
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": []}))


def unlisted_adapter_config(ckpt: Path) -> None:
    """An adapter_config.json switches the loader to the adapter path; it must be verified there too."""
    (ckpt / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                          "target_modules": ["q_proj"]}))


def lineage_claims_lora(ckpt: Path) -> None:
    _write_lineage(ckpt, {"stage": "sft", "lora": {"rank": 2}})


def truncated_weights(ckpt: Path) -> None:
    data = (ckpt / WEIGHTS).read_bytes()
    (ckpt / WEIGHTS).write_bytes(data[: len(data) // 2])


def tokenizer_entry_removed(ckpt: Path) -> None:
    _drop_entry(ckpt, "tokenizer.json")


def config_entry_removed(ckpt: Path) -> None:
    _drop_entry(ckpt, "config.json")


def lineage_not_json(ckpt: Path) -> None:
    (ckpt / "lineage.json").write_text("{not json")


def weights_replaced_by_directory(ckpt: Path) -> None:
    (ckpt / WEIGHTS).unlink()
    (ckpt / WEIGHTS).mkdir()


TAMPERINGS = [
    remove_weights_entry, lineage_replaced, lineage_list, files_list, files_digest_not_a_string,
    nan_weights_entry_removed, nan_weights_rehashed_but_weights_sha_kept, weights_sha_changed, weights_sha_removed,
    unlisted_tokenizer_config, unlisted_tokenizer_config_added, unlisted_chat_template, unlisted_generation_config,
    unlisted_adapter_config, lineage_claims_lora, truncated_weights, tokenizer_entry_removed, config_entry_removed,
    lineage_not_json, weights_replaced_by_directory,
]


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory) -> Path:
    return tiny_base(tmp_path_factory.mktemp("integrity"), data_dir)


def tampered(base: Path, tmp_path: Path, how) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(base, ckpt)
    how(ckpt)
    return ckpt


def one_error_line(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diji: error:"), lines[0]
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


def test_untampered_checkpoint_generates(base, capsys):
    """The baseline every refusal below is measured against: the same checkpoint, unaltered, exits 0."""
    assert main(["generate", str(base), "--prompt", "x", "--max-new-tokens", "2"]) == 0
    load_checkpoint(base)


@pytest.mark.parametrize("how", TAMPERINGS, ids=lambda f: f.__name__)
def test_tampered_checkpoint_is_refused_in_one_line(base, tmp_path, how, capsys):
    ckpt = tampered(base, tmp_path, how)
    with pytest.raises(DijiError):
        load_checkpoint(ckpt)
    capsys.readouterr()
    rc = main(["generate", str(ckpt), "--prompt", "x", "--max-new-tokens", "2"])
    out = capsys.readouterr()
    one_error_line(rc, out.err)
    assert out.out == ""  # nothing generated from a checkpoint that was refused


@pytest.mark.parametrize("how", [lineage_list, nan_weights_entry_removed], ids=lambda f: f.__name__)
def test_tampered_checkpoint_through_the_real_command(base, tmp_path, how):
    """As a user meets it: a fresh `python -m diji` process (the in-process calls above share one)."""
    ckpt = tampered(base, tmp_path, how)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DIJI_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "diji", "generate", str(ckpt), "--prompt", "x"],
                          capture_output=True, text=True, timeout=120, env=env)
    one_error_line(proc.returncode, proc.stderr)
    assert proc.stdout == ""


# ---- publish_dir: the final path is always there -------------------------------------------------

def _publish_version(final: Path, n: int, payload: int = 64) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    for k in range(4):
        (tmp / f"part{k}").write_bytes(bytes([n % 256]) * payload)
    (tmp / "version").write_text(str(n))
    publish_dir(tmp, final)


def test_publish_dir_never_leaves_the_final_path_missing(tmp_path):
    final = tmp_path / "ckpt"
    _publish_version(final, 0)
    stop = threading.Event()
    seen = {"polls": 0, "missing": 0, "unreadable": 0, "torn": 0}
    versions: set[int] = set()

    def reader() -> None:
        while not stop.is_set():
            seen["polls"] += 1
            if not final.exists():
                seen["missing"] += 1
                continue
            try:
                v = int((final / "version").read_text())
                parts = {(final / f"part{k}").read_bytes() for k in range(4)}
            except (FileNotFoundError, ValueError):
                seen["unreadable"] += 1
                continue
            versions.add(v)
            if len(parts) != 1:  # two parts from different versions would be a torn read
                seen["torn"] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 51):
            _publish_version(final, n)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert seen["polls"] > 50, seen  # the reader really ran alongside the writer
    assert seen["missing"] == 0, seen
    assert (final / "version").read_text() == "50"
    assert len(versions) > 1, versions
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
    assert leftovers == [], leftovers  # every old version and temporary directory cleaned up


def test_publish_dir_into_a_new_path(tmp_path):
    final = tmp_path / "sub" / "fresh"
    final.parent.mkdir()
    _publish_version(final, 7)
    assert (final / "version").read_text() == "7"
    assert oct(final.stat().st_mode & 0o777) != oct(0o700)  # mkdtemp's private mode is not published


# ---- train_state.pt is loaded without running code -----------------------------------------------

class _Evil:
    """Unpickling this runs a shell command (the classic pickle payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _train_state() -> dict:
    """Shaped like train/loop.py's Trainer.state_dict(): tensors, numpy RNG state, python RNG state."""
    import random

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {"step": 4, "tokens_seen": 512, "optimizer": opt.state_dict(), "stage": {"cursor": [1, 2]},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "last_eval": {"val_loss": 1.5}}


@pytest.fixture()
def trained(data_dir, tmp_path) -> Path:
    model = Transformer(ModelConfig(**TINY))
    model.init_weights(seed=0)
    return save_checkpoint(tmp_path / "step-4", model, data_dir / "tokenizer.json", {"stage": "pretrain"},
                           train_state=_train_state())


def _replace_train_state(ckpt: Path, obj, rehash: bool = True, legacy: bool = False) -> None:
    path = ckpt / TRAIN_STATE
    if legacy:
        import pickle

        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    if rehash:  # the tamperer updates the table too: only weights_only stands between the file and the shell
        lineage = _lineage(ckpt)
        lineage["files"][TRAIN_STATE] = sha256_file(path)
        _write_lineage(ckpt, lineage)


def test_normal_train_state_loads(trained):
    state = load_train_state(trained)
    want = _train_state()
    assert state["step"] == 4 and state["tokens_seen"] == 512 and state["stage"] == {"cursor": [1, 2]}
    assert state["rng"]["numpy"][0] == "MT19937" and isinstance(state["rng"]["numpy"][1], np.ndarray)
    assert state["rng"]["python"][0] == want["rng"]["python"][0]
    assert state["rng"]["torch"].dtype == torch.uint8 and state["rng"]["torch"].shape == want["rng"]["torch"].shape
    assert state["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "plain-pickle"])
def test_train_state_that_pickles_code_is_refused_and_not_run(trained, tmp_path, legacy):
    marker = tmp_path / "PWNED"
    _replace_train_state(trained, {"step": 1, "payload": _Evil(marker)}, legacy=legacy)
    with pytest.raises(DijiError, match="safely"):
        load_train_state(trained)
    assert not marker.exists()


def test_train_state_changed_without_rehash_is_refused(trained, tmp_path):
    marker = tmp_path / "PWNED"
    _replace_train_state(trained, _Evil(marker), rehash=False)
    with pytest.raises(DijiError, match="sha256"):
        load_train_state(trained)
    assert not marker.exists()


# ---- lineage fields the hashes cannot cover ------------------------------------------------------
# lineage.json cannot list its own digest, so every field other than `files`/`weights_sha256` can be edited
# without breaking a hash; the loader must still refuse a malformed one in one line.

@pytest.mark.parametrize("lora", ["x", [1], 1], ids=["string", "list", "number"])
def test_lineage_lora_of_the_wrong_type_is_refused_in_one_line(base, tmp_path, lora, capsys):
    def edit(ckpt: Path) -> None:
        lineage = _lineage(ckpt)
        lineage["lora"] = lora
        _write_lineage(ckpt, lineage)

    ckpt = tampered(base, tmp_path, edit)
    rc = main(["generate", str(ckpt), "--prompt", "x", "--max-new-tokens", "2"])
    one_error_line(rc, capsys.readouterr().err)


@pytest.mark.parametrize("lora", [{"rank": "big"}, {"rank": 2, "alpha": -1}, {"rank": 2}],
                         ids=["bad-rank", "bad-alpha", "no-adapter-weights"])
def test_lineage_lora_with_bad_values_is_refused_in_one_line(base, tmp_path, lora, capsys):
    def edit(ckpt: Path) -> None:
        lineage = _lineage(ckpt)
        lineage["lora"] = lora
        _write_lineage(ckpt, lineage)

    ckpt = tampered(base, tmp_path, edit)
    rc = main(["generate", str(ckpt), "--prompt", "x", "--max-new-tokens", "2"])
    one_error_line(rc, capsys.readouterr().err)


@pytest.mark.parametrize("damage", ["list", "not-json", "number"])
def test_lineage_command_with_a_tampered_parent(base, tmp_path, damage, capsys):
    parent = tampered(base, tmp_path, lambda c: None)
    child = tmp_path / "child"
    shutil.copytree(base, child)
    lineage = _lineage(child)
    lineage["parent"] = 5 if damage == "number" else str(parent)
    _write_lineage(child, lineage)
    if damage == "list":
        _write_lineage(parent, [])
    elif damage == "not-json":
        (parent / "lineage.json").write_text("{oops")
    rc = main(["lineage", str(child)])
    one_error_line(rc, capsys.readouterr().err)


# ---- LoRA checkpoints in the PEFT layout and the weights' dtype ----------------------------------

@pytest.fixture(scope="module")
def adapter(data_dir, tmp_path_factory) -> Path:
    from diji.config import to_dict
    from diji.train.lora import LoRAConfig, apply_lora

    model = Transformer(ModelConfig(**TINY))
    model.init_weights(seed=0)
    cfg = LoRAConfig(rank=2, alpha=4.0)
    apply_lora(model, cfg)
    with torch.no_grad():  # a non-zero update, so a merged model differs from the base
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)
    return save_checkpoint(tmp_path_factory.mktemp("adapter") / "lora", model, data_dir / "tokenizer.json",
                           {"stage": "sft", "lora": to_dict(cfg)})


def _nan_adapter(ckpt: Path) -> None:
    state = load_file(str(ckpt / "adapter_model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(ckpt / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    _drop_entry(ckpt, "adapter_model.safetensors")


def _unlisted_adapter_config(ckpt: Path) -> None:
    _drop_entry(ckpt, "adapter_config.json")


def _adapter_weights_removed(ckpt: Path) -> None:
    (ckpt / "adapter_model.safetensors").unlink()


def test_adapter_checkpoint_is_peft_layout_and_loads(adapter, capsys):
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(_lineage(adapter)["files"])
    loaded = load_checkpoint(adapter)
    assert not any(".lora_" in k for k in loaded.model.state_dict())  # merged on load
    assert main(["generate", str(adapter), "--prompt", "x", "--max-new-tokens", "2"]) == 0


@pytest.mark.parametrize("how", [_nan_adapter, _unlisted_adapter_config, _adapter_weights_removed],
                         ids=lambda f: f.__name__.strip("_"))
def test_tampered_adapter_checkpoint_is_refused_in_one_line(adapter, tmp_path, how, capsys):
    ckpt = tampered(adapter, tmp_path, how)
    with pytest.raises(DijiError):
        load_checkpoint(ckpt)
    capsys.readouterr()
    rc = main(["generate", str(ckpt), "--prompt", "x", "--max-new-tokens", "2"])
    one_error_line(rc, capsys.readouterr().err)


def test_bf16_weights_are_stored_and_loaded_as_bf16(data_dir, tmp_path):
    from diji.train.checkpoint import stored_dtype

    model = Transformer(ModelConfig(**TINY))
    model.init_weights(seed=0)
    model.to(torch.bfloat16)
    ckpt = save_checkpoint(tmp_path / "bf16", model, data_dir / "tokenizer.json", {"stage": "init"})
    assert stored_dtype(ckpt) == "bfloat16"
    assert {t.dtype for t in load_file(str(ckpt / WEIGHTS)).values()} == {torch.bfloat16}
    kept = load_checkpoint(ckpt, dtype=torch.bfloat16).model
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    for (name, a), b in zip(kept.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # bit for bit: no fp32 round trip changed a weight
    assert {p.dtype for p in load_checkpoint(ckpt).model.parameters()} == {torch.float32}


def test_tokenizer_companion_files_travel_through_two_generations(tmp_path):
    """An imported model's tokenizer_config (AddedToken dicts, template), chat_template.jinja and several EOS
    ids in generation_config.json are copied byte for byte, listed, and read back the same — also when the
    next stage writes its checkpoint from the previous checkpoint's tokenizer.json (as SFT does)."""
    transformers = pytest.importorskip("transformers", minversion="5.0")
    import tokenizers

    from diji.data.chat import render
    from diji.data.tokenizer import Tokenizer

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    hf_tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf_tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = tokenizers.decoders.ByteLevel()
    hf_tok.train_from_iterator(["the model reads tokens and learns"] * 20, tokenizers.trainers.BpeTrainer(
        vocab_size=290, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf_tok.add_special_tokens(specials)
    src = tmp_path / "hf"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf_tok, bos_token=specials[0], eos_token="<|eot_id|>")
    fast.chat_template = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m.role + "
                          "'<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}{% endfor %}")
    fast.save_pretrained(src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["eos_token"] = {"__type": "AddedToken", "content": "<|eot_id|>", "special": True}
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    eos = [hf_tok.token_to_id("<|end_of_text|>"), hf_tok.token_to_id("<|eot_id|>")]
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    carried = sorted(p.name for p in src.iterdir() if p.name != "tokenizer.json")
    assert "tokenizer_config.json" in carried and "generation_config.json" in carried

    model = Transformer(ModelConfig(**{**TINY, "vocab_size": hf_tok.get_vocab_size()}))
    model.init_weights(seed=0)
    first = save_checkpoint(tmp_path / "first", model, src / "tokenizer.json", {"stage": "import-hf"})
    second = save_checkpoint(tmp_path / "second", model, first / "tokenizer.json", {"stage": "sft", "parent": str(first)})
    want = Tokenizer.from_file(src)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    for ckpt in (first, second):
        for name in carried:
            assert (ckpt / name).read_bytes() == (src / name).read_bytes(), name
            assert name in _lineage(ckpt)["files"], name
        load_checkpoint(ckpt)  # verified
        tok = Tokenizer.from_file(ckpt)
        assert (tok.eos_id, tok.stop_ids, tok.bos_id) == (want.eos_id, want.stop_ids, want.bos_id)
        assert set(eos) <= set(tok.stop_ids)
        assert tok.chat_template == want.chat_template
        hf = transformers.AutoTokenizer.from_pretrained(str(ckpt))
        assert render(msgs, tok)[0] == list(hf.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
        assert set(eos) <= set(_as_list(transformers.GenerationConfig.from_pretrained(str(ckpt)).eos_token_id))


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]
