"""Checkpoints: HF-loadable weights plus lineage and (for training) the full resumable state.

A checkpoint directory holds config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json, lineage.json and, for training checkpoints, train_state.pt. It is written into a
temporary sibling, fsynced and renamed, so a crash leaves either the old checkpoint or the new one.
lineage.json records the sha256 of every file; loading verifies them and refuses a damaged checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diji import __version__
from diji.data.chat import CHAT_TEMPLATE
from diji.errors import DijiError
from diji.io import atomic_write_json, atomic_write_text, publish_dir, sha256_file
from diji.model.hf import from_hf_config, state_from_hf, state_to_hf, to_hf_config
from diji.model.transformer import ModelConfig, Transformer

WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
LATEST = "latest"

SPECIAL = {"pad": ("<|pad|>", 0), "bos": ("<|bos|>", 1), "eos": ("<|endoftext|>", 2), "im_end": ("<|im_end|>", 4)}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights for saving: tied lm_head dropped (HF re-ties it), tensors contiguous and on the CPU."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def save_checkpoint(
    out: str | Path,
    model: torch.nn.Module,
    tokenizer_file: str | Path,
    lineage: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    hf_extra: dict | None = None,
    hf_overrides: dict | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint directory atomically; returns its path. `lineage` is completed with file hashes.

    Weights are written in the model family's Hugging Face layout (model/hf.py). `hf_overrides` replaces
    top-level config.json fields (an imported model's own special-token ids); `extra_files` adds or replaces
    files verbatim (an imported model's tokenizer_config.json, chat template, generation_config.json).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cfg: ModelConfig = model.config
        save_file(state_to_hf(cfg, model_state(model)), str(tmp / WEIGHTS), metadata={"format": "pt"})
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        hf = {**to_hf_config(cfg, SPECIAL["bos"][1], SPECIAL["eos"][1], SPECIAL["pad"][1], hf_extra), **(hf_overrides or {})}
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps({
            "bos_token_id": SPECIAL["bos"][1],
            "eos_token_id": [SPECIAL["eos"][1], SPECIAL["im_end"][1]],
            "pad_token_id": SPECIAL["pad"][1],
            "do_sample": False,
        }, indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": SPECIAL["bos"][0],
            "eos_token": SPECIAL["eos"][0],
            "pad_token": SPECIAL["pad"][0],
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": cfg.max_position_embeddings,
            "chat_template": CHAT_TEMPLATE,
        }, indent=2, ensure_ascii=False) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        lineage = {
            **lineage,
            "weights_sha256": files[WEIGHTS],
            "files": files,
            "code_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_lineage(ckpt: str | Path) -> dict:
    path = Path(ckpt) / "lineage.json"
    if not path.is_file():
        raise DijiError(f"{ckpt} is not a diji checkpoint (no lineage.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DijiError(f"{path} is corrupt; pick another checkpoint") from None


def verify_checkpoint(ckpt: str | Path, include_train_state: bool = False) -> dict:
    """Check every file against the sha256 in lineage.json; returns the lineage."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise DijiError(f"checkpoint not found: {ckpt}")
    lineage = read_lineage(ckpt)
    for name, digest in lineage.get("files", {}).items():
        if name == TRAIN_STATE and not include_train_state:
            continue
        path = ckpt / name
        if not path.is_file():
            raise DijiError(f"checkpoint {ckpt} is missing {name}; it was not fully copied — copy it again")
        if sha256_file(path) != digest:
            raise DijiError(
                f"checkpoint {ckpt}: {name} does not match its sha256 in lineage.json (corrupted or "
                "truncated); copy it again or use an earlier checkpoint"
            )
    return lineage


def read_model_config(ckpt: str | Path) -> ModelConfig:
    path = Path(ckpt) / "config.json"
    try:
        return from_hf_config(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DijiError(f"{ckpt} has no config.json; is it a checkpoint directory?") from None
    except (ValueError, TypeError, KeyError) as e:
        raise DijiError(f"{path} is not a usable model config: {e}") from None


@dataclass
class Loaded:
    model: Transformer
    path: Path
    lineage: dict
    tokenizer_file: Path


def load_weights(model: torch.nn.Module, ckpt: str | Path) -> None:
    try:
        state = load_file(str(Path(ckpt) / WEIGHTS))
        state = state_from_hf(json.loads((Path(ckpt) / "config.json").read_text(encoding="utf-8")), state)
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise DijiError(f"cannot read {Path(ckpt) / WEIGHTS}: {e}") from None
    if getattr(model.config, "tie_word_embeddings", False):
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DijiError(f"checkpoint {ckpt} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_checkpoint(ckpt: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> Loaded:
    """Build the model from config.json and load verified weights."""
    ckpt = Path(ckpt)
    lineage = verify_checkpoint(ckpt) if verify else read_lineage(ckpt)
    model = Transformer(read_model_config(ckpt))
    load_weights(model, ckpt)
    return Loaded(model.to(device), ckpt, lineage, ckpt / "tokenizer.json")


def load_train_state(ckpt: str | Path) -> dict:
    verify_checkpoint(ckpt, include_train_state=True)
    return torch.load(Path(ckpt) / TRAIN_STATE, map_location="cpu", weights_only=False)


def write_latest(run_dir: Path, ckpt: Path) -> None:
    atomic_write_text(run_dir / LATEST, os.path.relpath(ckpt, run_dir) + "\n")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if not pointer.is_file():
        return None
    ckpt = run_dir / pointer.read_text().strip()
    return ckpt if ckpt.is_dir() else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    steps = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def write_summary(path: Path, data: dict) -> None:
    atomic_write_json(path, data)
