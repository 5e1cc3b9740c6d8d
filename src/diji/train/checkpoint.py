"""Checkpoints: HF-loadable weights plus lineage and (for training) the full resumable state.

A checkpoint directory holds config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json, lineage.json and, for training checkpoints, train_state.pt. It is written into a
temporary sibling, fsynced and swapped into place, so a crash leaves either the old checkpoint or the new
one. lineage.json records the sha256 of every file; loading refuses a checkpoint unless every file it
reads is listed there and matches, so removing an entry or replacing the lineage does not bypass the check.

The tokenizer travels with its own companion files: whatever tokenizer_config.json (special tokens, chat
template), generation_config.json (EOS ids), special_tokens_map.json and chat_template.jinja sit next to
the tokenizer.json a stage was given are copied, so a model imported from Hugging Face keeps its tokens
and template through SFT, GRPO and merges. diji's defaults are written only where there is no such file.

A LoRA checkpoint is written in the PEFT layout: model.safetensors holds the (frozen) base weights, which
transformers loads as the base model, and adapter_config.json + adapter_model.safetensors hold the
adapters under PEFT's names, so `peft.PeftModel.from_pretrained(base, ckpt)` gives the adapted model.
diji loads either and merges adapters on load for inference.
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
from diji.errors import DijiError
from diji.io import atomic_write_json, atomic_write_text, publish_dir, sha256_file
from diji.model.generate import fuse_weights
from diji.model.hf import family, from_hf_config, state_from_hf, state_to_hf, to_hf_config
from diji.model.transformer import ModelConfig, Transformer
from diji.options import DTYPE_CHOICES

WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
LATEST = "latest"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
REQUIRED = ("config.json", WEIGHTS, "tokenizer.json")
"""Files every checkpoint has; each must be listed in lineage.json with its sha256."""
CARRIED = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja",
           "chat_template.json", "added_tokens.json")
"""Tokenizer companion files copied from beside the tokenizer.json a checkpoint is written with."""
READ = REQUIRED + CARRIED + (ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRAIN_STATE)
"""Every file diji reads from a checkpoint: present means listed and matching, or the load is refused."""
# Families whose on-disk names and layouts equal diji's, so LoRA tensors map 1:1 to PEFT's names.
_PEFT_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
_PEFT_PREFIX = "base_model.model."


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights for saving: tied lm_head dropped (HF re-ties it), tensors contiguous and on the CPU."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def _weights_dtype(state: dict[str, torch.Tensor]) -> str:
    """The floating dtype most of the weights are stored in (config.json's torch_dtype)."""
    counts: dict[torch.dtype, int] = {}
    for t in state.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return str(max(counts, key=counts.get)).removeprefix("torch.") if counts else "float32"


def split_adapters(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weights, LoRA tensors) of a state dict."""
    lora = {k: v for k, v in state.items() if ".lora_A" in k or ".lora_B" in k}
    return {k: v for k, v in state.items() if k not in lora}, lora


def peft_names(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diji's `…q_proj.lora_A` → PEFT's `base_model.model.…q_proj.lora_A.weight`."""
    return {_PEFT_PREFIX + k + ".weight": v for k, v in lora.items()}


def from_peft_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        name = k.removeprefix(_PEFT_PREFIX).removesuffix(".weight")
        out[name.replace(".lora_A.default", ".lora_A").replace(".lora_B.default", ".lora_B")] = v
    return out


def _peft_config(lineage: dict, lora: dict[str, torch.Tensor]) -> dict:
    """adapter_config.json in PEFT's format, naming the base checkpoint it adapts."""
    cfg = lineage.get("lora") or {}
    rank = next(v.shape[0] for k, v in lora.items() if k.endswith("lora_A"))
    targets = sorted({k.split(".")[-2] for k in lora})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(cfg.get("rank", rank)),
            "lora_alpha": cfg.get("alpha", 16.0), "lora_dropout": cfg.get("dropout", 0.0),
            "target_modules": targets, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
            "base_model_name_or_path": str(Path(lineage["parent"]).resolve()) if lineage.get("parent") else None,
            "revision": None}


def _default_tokenizer_files(tok, cfg: ModelConfig) -> dict[str, dict]:
    """tokenizer_config.json / generation_config.json for a tokenizer that came without them."""
    out = {"tokenizer_config.json": {
        "tokenizer_class": "PreTrainedTokenizerFast", **tok.special_tokens,
        "add_bos_token": bool(tok.add_bos), "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.max_position_embeddings,
        **({"chat_template": tok.chat_template} if tok.chat_template else {}),
    }, "generation_config.json": {
        "bos_token_id": tok.bos_id, "eos_token_id": list(tok.stop_ids), "pad_token_id": tok.pad_id, "do_sample": False,
    }}
    return out


def _imported_from(lineage: dict) -> str | None:
    """The Hugging Face directory a model line started from, inherited down the parent chain."""
    if lineage.get("imported_from") or lineage.get("stage") == "import-hf":
        return lineage.get("imported_from") or lineage.get("source")
    parent = lineage.get("parent")
    if parent and (Path(parent) / "lineage.json").is_file():
        try:
            return read_lineage(parent).get("imported_from")
        except DijiError:
            return None
    return None


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

    Weights are written in the model family's Hugging Face layout (model/hf.py), in the dtype they have.
    The tokenizer's companion files and special-token ids come from beside `tokenizer_file` (module
    docstring); `hf_overrides` replaces top-level config.json fields; `extra_files` adds or replaces files.
    """
    from diji.data.tokenizer import Tokenizer

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_file = Path(tokenizer_file)
    tok = Tokenizer.from_file(tokenizer_file, fast=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cfg: ModelConfig = model.config
        base, lora = split_adapters(model_state(model))
        peft = bool(lora) and family(cfg)[0] in _PEFT_FAMILIES
        if lora and not peft:  # e.g. MLA, whose rotary rows are permuted on disk: keep diji's one-file layout
            base = {**base, **lora}
        save_file(state_to_hf(cfg, base), str(tmp / WEIGHTS), metadata={"format": "pt"})
        if peft:
            save_file(peft_names(lora), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            atomic_write_json(tmp / ADAPTER_CONFIG, _peft_config(lineage, lora))
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        side = tok.side_files
        ids = {k: side["config.json"][k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if k in side.get("config.json", {})}
        if not ids:
            ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
        hf = to_hf_config(cfg, ids.get("bos_token_id"), ids.get("eos_token_id"), ids.get("pad_token_id"), hf_extra)
        dtype = _weights_dtype(base)
        hf.update({"torch_dtype": dtype, "dtype": dtype, **(hf_overrides or {})})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        for name in CARRIED:
            if (tokenizer_file.parent / name).is_file():
                shutil.copyfile(tokenizer_file.parent / name, tmp / name)
        for name, content in _default_tokenizer_files(tok, cfg).items():
            if not (tmp / name).is_file():
                (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        lineage = {
            "imported_from": _imported_from(lineage),
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
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DijiError(f"{path} is corrupt; pick another checkpoint") from None
    if not isinstance(lineage, dict):
        raise DijiError(f"{path} is not a lineage record (a JSON object); the checkpoint was altered — use another")
    return lineage


def verify_checkpoint(ckpt: str | Path, include_train_state: bool = False) -> dict:
    """Check every file diji reads against lineage.json; returns the lineage.

    Refused: a lineage that is not an object with a `files` table of sha256 strings; a required file or any
    file diji would read that is missing from the table, absent, or different; weights_sha256 that does
    not name the weights. (train_state.pt is hashed only when resuming: it is large and only training reads it.)
    """
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise DijiError(f"checkpoint not found: {ckpt}")
    lineage = read_lineage(ckpt)
    files = lineage.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise DijiError(f"checkpoint {ckpt}: lineage.json has no valid 'files' table of sha256 digests; it was "
                        "altered — use an earlier checkpoint or re-create this one")
    present = {p.name for p in ckpt.iterdir() if p.is_file()}
    for name in READ:
        if name not in files and (name in REQUIRED or name in present):
            raise DijiError(f"checkpoint {ckpt}: {name} is not listed in lineage.json, so it cannot be verified; "
                            "the checkpoint was altered — use an earlier checkpoint or re-create this one")
    if lineage.get("lora") is not None and not isinstance(lineage["lora"], dict):
        raise DijiError(f"checkpoint {ckpt}: lineage.json's 'lora' entry is not a LoRA config object; the checkpoint "
                        "was altered — use an earlier checkpoint or re-create this one")
    if files.get(WEIGHTS) != lineage.get("weights_sha256"):
        raise DijiError(f"checkpoint {ckpt}: lineage.json's weights_sha256 does not match its files table; "
                        "the checkpoint was altered — use an earlier checkpoint")
    for name, digest in files.items():
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


def is_adapter(ckpt: str | Path) -> bool:
    """A LoRA checkpoint: PEFT layout (adapter_config.json), or diji's one-file layout (lineage `lora`)."""
    ckpt = Path(ckpt)
    if (ckpt / ADAPTER_CONFIG).is_file():
        return True
    try:
        return bool(read_lineage(ckpt).get("lora"))
    except DijiError:
        return False


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file read tensor by tensor into process memory; floating tensors cast to `dtype`.

    Not safetensors' `load_file`, which memory-maps the file: the pages a forward pass touches then count
    in the resident set for as long as any tensor of the file lives, so anything later copied out of the
    map (a fused decode matrix, a cast) is resident twice. Here each tensor is `readinto` its own buffer
    (the page cache is not part of the process), cast one at a time: the peak is one copy of the weights
    in the target dtype plus the largest single tensor in the stored dtype.
    """
    path = Path(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= 100 * 2**20:
            raise ValueError(f"not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("not a safetensors file (its header is not a JSON object)")
        base = 8 + n
        out = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            stored = _SAFETENSORS_DTYPES.get(meta["dtype"])
            if stored is None:
                raise ValueError(f"tensor {name} has an unsupported dtype {meta['dtype']}")
            try:
                begin, end = (int(o) for o in meta["data_offsets"])
                t = torch.empty([int(d) for d in meta["shape"]], dtype=stored)
            except (TypeError, RuntimeError) as e:  # a malformed entry (negative sizes, not numbers)
                raise ValueError(f"tensor {name} has a malformed header entry: {e}") from None
            if t.numel() * t.element_size() != end - begin:
                raise ValueError(f"tensor {name}: {end - begin} bytes for shape {meta['shape']} {meta['dtype']}")
            if t.numel():
                f.seek(base + begin)
                if f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != end - begin:
                    raise ValueError(f"tensor {name} is truncated")
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            out[name] = t
    return out


def load_weights(model: torch.nn.Module, ckpt: str | Path, assign_dtype: torch.dtype | None = None) -> None:
    """Load a checkpoint's weights (and its PEFT adapters, if any) into `model`, strictly.

    assign_dtype: for a model built on the meta device — the loaded tensors, cast to this dtype one at a
    time, *become* its parameters (no second copy of the weights in memory at any moment).
    """
    ckpt = Path(ckpt)
    try:
        state = read_safetensors(ckpt / WEIGHTS, assign_dtype)
        state = state_from_hf(json.loads((ckpt / "config.json").read_text(encoding="utf-8")), state)
        if (ckpt / ADAPTER_WEIGHTS).is_file():
            state.update(from_peft_names(load_file(str(ckpt / ADAPTER_WEIGHTS))))
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise DijiError(f"cannot read the weights of {ckpt}: {e}") from None
    tied = getattr(model.config, "tie_word_embeddings", False)
    if assign_dtype is not None:
        for k in list(state):
            if state[k].is_floating_point() and state[k].dtype != assign_dtype:
                state[k] = state.pop(k).to(assign_dtype)
    if tied:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False, assign=assign_dtype is not None)
    if tied and assign_dtype is not None:
        model.lm_head.weight = model.model.embed_tokens.weight  # assign replaced both; tie them again
    if any(".lora_" in k for k in unexpected) and not any(".lora_" in k for k in model.state_dict()):
        raise DijiError(f"{ckpt} is a LoRA adapter checkpoint; load it with its adapters (diji does this for "
                        f"generate/eval/serve) or fold them in first: diji lora merge {ckpt} --out MERGED")
    if missing or unexpected:
        raise DijiError(f"checkpoint {ckpt} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def quantization_of(ckpt: str | Path) -> dict | None:
    """The checkpoint's `diji.quantization` entry (None for an ordinary float checkpoint)."""
    try:
        hf = json.loads((Path(ckpt) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return (hf.get("diji") or {}).get("quantization") if isinstance(hf, dict) else None


def load_quantized(ckpt: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Loaded:
    """Load an int8 checkpoint (`diji quantize`, verified); activations compute in `dtype`."""
    from diji.model.quantize import model_from_quantized_state

    ckpt = Path(ckpt)
    if not quantization_of(ckpt):
        raise DijiError(f"{ckpt} is not an int8 checkpoint (config.json has no diji.quantization); "
                        "load it with load_checkpoint")
    lineage = verify_checkpoint(ckpt)
    try:
        state = load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise DijiError(f"cannot read the weights of {ckpt}: {e}") from None
    model = model_from_quantized_state(Transformer(read_model_config(ckpt)), state, dtype)
    return Loaded(model.to(device), ckpt, lineage, ckpt / "tokenizer.json")


class _SkipTorchInit(torch.overrides.TorchFunctionMode):
    """Skip random initialisation while a model is built on the meta device (its values are discarded).

    The meta implementations of normal_/uniform_/randn are Python references (torch._refs) whose first use
    imports torch._dynamo and sympy: measured +67 MB resident in a server that never compiles."""

    SKIPPED = (torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_,
               torch.nn.init.trunc_normal_, torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        if func is torch.randn:  # an uninitialised tensor of the same shape (on meta: no memory at all)
            return torch.empty(*args, **{k: v for k, v in kwargs.items() if k != "generator"})
        return func(*args, **kwargs)


def load_checkpoint(ckpt: str | Path, device: str | torch.device = "cpu", verify: bool = True,
                    dtype: torch.dtype | None = None) -> Loaded:
    """Build the model from config.json and load verified weights; LoRA adapters are merged in.

    dtype: the parameter dtype to compute in (None = float32, which training and the reference path use).
    """
    ckpt = Path(ckpt)
    if quantization_of(ckpt):  # int8 weights (diji quantize): generate, chat, eval and serve take them as they are
        return load_quantized(ckpt, device, dtype)
    if is_adapter(ckpt):
        from diji.train.lora import load_model

        loaded = load_model(ckpt, device)
        if dtype is not None:
            loaded.model.to(dtype)
        return loaded
    lineage = verify_checkpoint(ckpt) if verify else read_lineage(ckpt)
    cfg = read_model_config(ckpt)
    # Built on the meta device, its parameters then *are* the loaded tensors in the target dtype: no random
    # initialisation to throw away, one copy of the weights at peak, and a bf16 checkpoint never exists in
    # memory as fp32 (strict: a tensor the file lacks is an error, never left uninitialised).
    with torch.device("meta"), _SkipTorchInit():
        model = Transformer(cfg)
    load_weights(model, ckpt, assign_dtype=dtype or torch.float32)
    model = model.to(device)
    fuse_weights(model)  # the decode layout now, before any forward fragments the heap (generate.py)
    return Loaded(model, ckpt, lineage, ckpt / "tokenizer.json")


def stored_dtype(ckpt: str | Path) -> str:
    """The dtype a checkpoint's weights are stored in (config.json torch_dtype; float32 if unrecorded)."""
    try:
        hf = json.loads((Path(ckpt) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "float32"
    value = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    return value if value in ("float32", "bfloat16", "float16") else "float32"


def load_train_state(ckpt: str | Path) -> dict:
    """The resumable state, unpickled with weights_only=True (tensors and plain containers only, plus the
    numpy array type of NumPy's RNG state) — a tampered file cannot run code."""
    import numpy as np

    verify_checkpoint(ckpt, include_train_state=True)
    multiarray = getattr(np, "_core", None) or np.core
    allowed = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(Path(ckpt) / TRAIN_STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError or a torch RuntimeError naming a forbidden global
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DijiError(f"cannot read {Path(ckpt) / TRAIN_STATE} safely ({first}); start the run again "
                        "without --resume or use an earlier checkpoint") from None


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




def inference_dtype_for(ckpt: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[str, Any]:
    """(dtype name, torch.device) to run `ckpt` in for inference, by compute.device.inference_dtype's policy;
    the choice and its reason go to the log."""
    import logging

    from diji.compute.device import inference_dtype, select_device

    if dtype not in DTYPE_CHOICES:
        raise DijiError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    dev = select_device(device).device
    torch_dtype, why = inference_dtype(dtype, stored_dtype(ckpt), dev)
    name = str(torch_dtype).removeprefix("torch.")
    logging.getLogger(__name__).info("weights in %s: %s", name, why)
    return name, dev


def load_for_inference(ckpt: str | Path, device: str = "auto", dtype: str = "auto") -> Loaded:
    """A checkpoint loaded for generate/chat/eval: on `device`, in the policy's dtype, adapters merged."""
    name, dev = inference_dtype_for(ckpt, device, dtype)
    return load_checkpoint(ckpt, device=dev, dtype=None if name == "float32" else getattr(torch, name))
