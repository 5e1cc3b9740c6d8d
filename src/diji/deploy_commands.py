"""`diji quantize CKPT --out DIR` and `diji export-gguf CKPT --out model.gguf`: cheaper artifacts to deploy.

quantize writes a weight-only int8 checkpoint directory (format: model/quantize.py) that diji loads with
`load_quantized`; export-gguf writes one GGUF file for llama.cpp / Ollama (model/gguf.py). Both verify the
source checkpoint first and write atomically. This module is the checkpoint side (it sits above train/
and data/); the model-level work is in model/quantize.py and model/gguf.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import tempfile
from pathlib import Path

from diji import __version__
from diji.errors import DijiError

WEIGHTS = "model.safetensors"
_NOT_CARRIED = (WEIGHTS, "lineage.json", "train_state.pt", "adapter_model.safetensors", "adapter_config.json")


def quantize_checkpoint(ckpt: str | Path, out: str | Path) -> dict:
    """Write the int8 version of checkpoint `ckpt` to directory `out`; returns a summary."""
    from safetensors.torch import save_file

    from diji.io import publish_dir, sha256_file
    from diji.model.quantize import QUANT, quantize_model, quantized_state, weight_bytes
    from diji.train.checkpoint import load_checkpoint, quantization_of

    ckpt, out = Path(ckpt), Path(out)
    if quantization_of(ckpt):
        raise DijiError(f"{ckpt} is already quantised ({quantization_of(ckpt).get('method')})")
    loaded = load_checkpoint(ckpt)  # verified; a LoRA adapter is merged in
    model = loaded.model.float().eval()
    before = weight_bytes(model)
    quantize_model(model)
    after = weight_bytes(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(quantized_state(model), str(tmp / WEIGHTS), metadata={"format": "pt", "diji": "int8"})
        for p in sorted(ckpt.iterdir()):
            if p.is_file() and p.name not in _NOT_CARRIED:
                shutil.copyfile(p, tmp / p.name)
        hf = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        hf.setdefault("diji", {})["quantization"] = QUANT
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        parent = loaded.lineage if isinstance(loaded.lineage, dict) else {}
        lineage = {"stage": "quantize", "quantization": QUANT, "parent": str(ckpt.resolve()),
                   "parent_weights_sha256": parent.get("weights_sha256"),
                   **{k: parent[k] for k in ("data_manifest_sha256", "step", "tokens_seen") if k in parent},
                   "weights_sha256": files[WEIGHTS], "files": files, "code_version": __version__,
                   "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"checkpoint": str(out.resolve()), "weight_bytes": after, "fp32_weight_bytes": before,
            "ratio": round(after / before, 4)}


def export_gguf(ckpt: str | Path, out: str | Path, qtype: str = "f16") -> dict:
    """Write checkpoint `ckpt` as a GGUF file at `out` (f16 or q8_0 matrices); returns a summary."""
    from diji.data.tokenizer import Tokenizer
    from diji.model.gguf import TYPES, tokenizer_fields, write_gguf
    from diji.train.checkpoint import is_adapter, load_checkpoint, quantization_of

    ckpt = Path(ckpt)
    if qtype not in TYPES:
        raise DijiError(f"--type must be one of {', '.join(TYPES)}, got '{qtype}'")
    if quantization_of(ckpt):
        raise DijiError(f"{ckpt} is an int8 diji checkpoint; export the unquantised one (--type q8_0 is GGUF's int8)")
    if ckpt.is_dir() and is_adapter(ckpt):
        raise DijiError(f"{ckpt} is a LoRA adapter; merge it first: diji lora merge {ckpt} --out MERGED")
    loaded = load_checkpoint(ckpt)
    tok = Tokenizer.from_file(loaded.tokenizer_file, fast=False)
    spec = json.loads(Path(loaded.tokenizer_file).read_text(encoding="utf-8"))
    stops = getattr(tok, "stop_ids", (tok.eos_id,))
    tk = tokenizer_fields(spec, loaded.model.config.vocab_size, bos=tok.bos_id, eos=tok.eos_id, pad=tok.pad_id,
                          eot=next((i for i in stops if i != tok.eos_id), None),
                          add_bos=bool(getattr(tok, "add_bos", False)), chat_template=tok.chat_template)
    return write_gguf(loaded.model, tk, out, qtype, name=ckpt.resolve().name)


def _quantize(args: argparse.Namespace) -> int:
    print(json.dumps(quantize_checkpoint(args.checkpoint, args.out)))
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    print(json.dumps(export_gguf(args.checkpoint, args.out, args.type)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("quantize", help="write a weight-only int8 copy of a checkpoint (per-channel scales)")
    p.add_argument("checkpoint", help="checkpoint directory to quantise")
    p.add_argument("--out", required=True, help="directory to write the int8 checkpoint to")
    p.set_defaults(func=_quantize)
    p = sub.add_parser("export-gguf", help="write a checkpoint as a GGUF file for llama.cpp / Ollama")
    p.add_argument("checkpoint", help="checkpoint directory (Llama or Qwen2 family)")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--type", default="f16", choices=["f16", "q8_0"], help="matrix encoding")
    p.set_defaults(func=_export_gguf)
