"""`diji import-hf DIR --out CKPT` and `diji export-hf CKPT --out DIR`: Hugging Face checkpoints in and out.

import-hf reads a transformers checkpoint directory (config.json; model.safetensors, sharded safetensors
or pytorch_model.bin; tokenizer.json), converts it through the family's adapter (model/hf.py), checks
that every weight found a place, and writes a verified diji checkpoint. The tokenizer files, chat
template and generation config are carried across unchanged, and the source's special-token ids stay
in config.json.

export-hf verifies a diji checkpoint and writes a plain transformers directory: config.json, weights,
tokenizer files — no training state, no lineage. Both write into a temporary sibling and rename.

A diji checkpoint is already in its family's HF layout, so export is mostly verification; the adapters
do the real work in both directions (and on every checkpoint save and load).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from diji.errors import DijiError

if TYPE_CHECKING:  # torch is imported where it is used: `diji --help` should not pay for it
    import torch

EXPORT_SKIP = ("lineage.json", "train_state.pt", "adapter_config.json", "adapter_model.safetensors")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DijiError(f"{path.parent} has no {path.name}; is it a Hugging Face model directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DijiError(f"{path} is not valid JSON: {e}") from None


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory: single or sharded safetensors, else pytorch_model.bin (weights only)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = next((src / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (src / n).is_file()), None)
    if index is not None:
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (src / "pytorch_model.bin").is_file():
        files = ["pytorch_model.bin"]
    else:
        raise DijiError(f"{src} has no model.safetensors, sharded safetensors or pytorch_model.bin")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = src / name
        try:
            if name.endswith(".safetensors"):
                state.update(load_file(str(path)))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise DijiError(f"cannot read {path}: {e}") from None
    return state


def import_hf(src: str | Path, out: str | Path):
    """Convert a transformers checkpoint directory into a diji checkpoint at `out`; returns the path."""
    import torch

    from diji.config import to_dict
    from diji.io import sha256_file
    from diji.model.hf import from_hf_config, state_from_hf
    from diji.model.transformer import Transformer
    from diji.train.checkpoint import save_checkpoint

    src = Path(src)
    if not src.is_dir():
        raise DijiError(f"{src} is not a directory")
    hf = _read_json(src / "config.json")
    if not (src / "tokenizer.json").is_file():
        raise DijiError(f"{src} has no tokenizer.json; diji needs the fast (tokenizers) file — save the tokenizer "
                        "with transformers' AutoTokenizer.save_pretrained to produce it")
    try:
        cfg = from_hf_config(hf)
        state = state_from_hf(hf, read_hf_weights(src))
    except (ValueError, TypeError, KeyError) as e:
        raise DijiError(f"{src}: {e}") from None
    model = Transformer(cfg)
    # Keep the precision the model was published in: a bf16 model stays bf16 on disk (half the bytes of fp32).
    floats = [t for t in state.values() if t.is_floating_point()]
    dtype = max({t.dtype for t in floats}, key=lambda d: sum(t.numel() for t in floats if t.dtype == d)) if floats else None
    if dtype in (torch.bfloat16, torch.float16):
        model.to(dtype)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # re-tied to the embedding
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise DijiError(f"{src}: the weights do not fit a {hf.get('model_type')} model built from its config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    lineage = {
        "stage": "import-hf",
        "source": str(src.resolve()),
        "source_model_type": hf.get("model_type"),
        "source_config_sha256": sha256_file(src / "config.json"),
        "data_manifest_sha256": None,
        "parent_sha256": None,
        "parent": None,
        "config": {"model": to_dict(cfg)},
        "step": 0,
        "tokens_seen": 0,
        "metrics": {},
    }
    # The tokenizer's companion files (special tokens, chat template, EOS ids) and config.json's special-token
    # ids travel with tokenizer.json (save_checkpoint reads them from beside it).
    try:
        return save_checkpoint(out, model, src / "tokenizer.json", lineage)
    except DijiError as e:
        raise DijiError(f"{src}: {e}") from None


def export_hf(ckpt: str | Path, out: str | Path) -> Path:
    """Write a verified diji checkpoint as a plain transformers directory at `out`; returns the path.

    A LoRA adapter checkpoint is merged first (W + (α/r)·BA), so the export computes what the adapted model
    computes — never the base alone. (The adapter itself is already PEFT-readable in place.)
    """
    from diji.io import publish_dir
    from diji.model.hf import NATIVE, family
    from diji.train.checkpoint import is_adapter, quantization_of, read_model_config, verify_checkpoint

    ckpt, out = Path(ckpt), Path(out)
    verify_checkpoint(ckpt)
    if quantization_of(ckpt):
        raise DijiError(f"{ckpt} holds diji's int8 weights, which transformers cannot read; export the checkpoint "
                        "it was quantised from (or use diji export-gguf --type q8_0 for an int8 file)")
    cfg = read_model_config(ckpt)
    model_type, why = family(cfg)
    if model_type == NATIVE:
        raise DijiError(f"{ckpt} has no transformers equivalent to export to: {why}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if is_adapter(ckpt):
            from diji.train.lora import merge_checkpoint

            ckpt = merge_checkpoint(ckpt, tmp / "merged")
        for path in sorted(ckpt.iterdir()):
            if path.is_file() and path.name not in EXPORT_SKIP:
                shutil.copyfile(path, tmp / path.name)
        shutil.rmtree(tmp / "merged", ignore_errors=True)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _import(args: argparse.Namespace) -> int:
    out = import_hf(args.dir, args.out)
    print(json.dumps({"checkpoint": str(Path(out).resolve())}))
    return 0


def _export(args: argparse.Namespace) -> int:
    out = export_hf(args.checkpoint, args.out)
    print(json.dumps({"directory": str(out.resolve())}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("import-hf", help="convert a Hugging Face checkpoint (Llama 3.x, Mistral, Qwen2/3, Qwen3-MoE, "
                                         "DeepSeek-V2/V3) with its own tokenizer and chat template")
    p.add_argument("dir", help="a transformers model directory (config.json, weights, tokenizer.json)")
    p.add_argument("--out", required=True, help="the diji checkpoint directory to write")
    p.set_defaults(func=_import)
    p = sub.add_parser("export-hf", help="write a diji checkpoint as a Hugging Face model directory")
    p.add_argument("checkpoint", help="a diji checkpoint directory (a LoRA adapter checkpoint is merged first)")
    p.add_argument("--out", required=True, help="the directory to write (loadable by AutoModelForCausalLM)")
    p.set_defaults(func=_export)
