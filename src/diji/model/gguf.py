"""GGUF export: a diji checkpoint as one file that llama.cpp (and Ollama, LM Studio…) runs.

    diji export-gguf CKPT --out model.gguf [--type f16|q8_0]

Written with the `gguf` package (llama.cpp's own writer; the `gguf` extra), imported lazily. The file
holds what llama.cpp needs and nothing it would have to guess:
- hyper-parameters under the architecture's keys (`llama.*` or `qwen2.*`): context, widths, heads,
  RoPE base (and linear RoPE scaling), RMSNorm epsilon;
- weights in llama.cpp's tensor names (`blk.N.attn_q.weight`…). 1-D tensors (norms, biases) stay
  float32 as llama.cpp requires; matrices are f16, or q8_0 (blocks of 32 int8 with one f16 scale each);
- the tokenizer: byte-level BPE vocabulary, merges, token types (special tokens are CONTROL, other
  added tokens USER_DEFINED), bos/eos/pad ids, whether to add BOS, and the pre-tokenizer's name, which
  is how llama.cpp picks its splitting regex (diji's BPE uses GPT-2's regex: "gpt-2");
- the chat template, so `llama-server --jinja` / `Ollama` render conversations as diji does.

Llama's rotary layout differs from HF's: GGML's "normal" RoPE rotates interleaved pairs (x0,x1),
(x2,x3)… while HF rotates halves (x_i, x_{i+D/2}). llama.cpp's own converter (convert_hf_to_gguf.py)
therefore permutes the rows of q_proj and k_proj per head for the llama architecture; Qwen2 uses the
"neox" (halves) RoPE and takes the weights as they are.

Covers: dense Llama / Mistral-configured and Qwen2 checkpoints, untied or tied embeddings, plain or
linear RoPE. Refused with one line: MoE, MLA, q/k-norm (Qwen3), other RoPE scalings, LoRA adapters
(merge first) and int8 diji checkpoints (export the unquantised one; q8_0 is the GGUF equivalent).
The checkpoint side (loading, verifying, the tokenizer's side files) is in diji/deploy_commands.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diji.errors import DijiError
from diji.io import fsync_dir

TYPES = ("f16", "q8_0")
# llama.cpp token types (llama-vocab.h, gguf.TokenType): what each id is to the runtime.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# Pre-tokenizer regexes llama.cpp knows by name (llama-vocab.cpp); diji's byte-level BPE uses GPT-2's.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_BY_REGEX = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise DijiError("export-gguf needs the 'gguf' package: pip install 'diji[gguf]'") from e
    return gguf


def _architecture(cfg) -> str:
    """llama or qwen2 — the llama.cpp architecture that computes what `cfg` computes — or a DijiError."""
    from diji.model.hf import family

    fam, why = family(cfg)
    if cfg.n_routed_experts or cfg.kv_lora_rank or cfg.qk_norm:
        raise DijiError(f"export-gguf covers dense Llama/Qwen2 models; this one is '{fam}' "
                        "(MoE, MLA or q/k-norm): export it with export-hf instead")
    if cfg.rope_scaling.rope_type not in ("default", "linear"):
        raise DijiError(f"export-gguf supports plain or linear RoPE, not '{cfg.rope_scaling.rope_type}'")
    if fam in ("llama", "mistral"):
        return "llama"
    if fam == "qwen2":
        return "qwen2"
    raise DijiError(f"export-gguf covers the llama and qwen2 families, not '{fam}' {why}".rstrip())


def permute_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q/k rows from HF's halves layout to GGML's interleaved pairs (llama.cpp's LlamaModel.permute)."""
    out_dim = w.shape[0]
    return w.reshape(n_head, 2, out_dim // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model, arch: str) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) for every weight, in file order; q/k permuted for the llama architecture."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", sd["model.embed_tokens.weight"])]
    names = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_proj.bias": "attn_q.bias",
             "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
             "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    for i in range(cfg.num_hidden_layers):
        for src, dst in names.items():
            t = sd.get(f"model.layers.{i}.{src}")
            if t is None:
                continue
            head = dst.split(".")[0]
            if arch == "llama" and head in heads:
                t = permute_rope_rows(t, heads[head])
            out.append((f"blk.{i}.{dst}", t))
    out.append(("output_norm.weight", sd["model.norm.weight"]))
    if not cfg.tie_word_embeddings:  # tied: llama.cpp reuses token_embd as the output projection
        out.append(("output.weight", sd["lm_head.weight"]))
    return out


def _pre_tokenizer_name(spec: dict) -> str:
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    for p in parts:
        if p.get("type") == "Split":
            regex = (p.get("pattern") or {}).get("Regex")
            if regex in _PRE_BY_REGEX:
                return _PRE_BY_REGEX[regex]
    raise DijiError("export-gguf: the tokenizer's pre-tokenizer is not one llama.cpp knows by name "
                    f"(got {json.dumps(pre)[:120]}); only GPT-2, Llama 3 and Qwen2 byte-level BPE are mapped")


def tokenizer_fields(spec: dict, vocab_size: int, *, bos: int | None, eos: int, pad: int,
                     eot: int | None = None, add_bos: bool = False,
                     chat_template: str | None = None) -> dict[str, Any]:
    """The tokenizer as llama.cpp reads it: tokens, types, merges, special ids, pre-tokenizer, template.

    spec: the parsed tokenizer.json; the special ids come from the checkpoint's tokenizer (the caller's
    `diji.data.tokenizer.Tokenizer`, which reads the side files)."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise DijiError(f"export-gguf handles byte-level BPE tokenizers, not '{model.get('type')}'")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    special: set[int] = set()
    added: set[int] = set()
    for t in spec.get("added_tokens") or []:
        vocab[t["content"]] = t["id"]
        (special if t.get("special") else added).add(t["id"])
    if max(vocab.values()) >= vocab_size:
        raise DijiError(f"the tokenizer has id {max(vocab.values())}, beyond the model's vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # ids the tokenizer never produces (padded vocab)
    types = [UNUSED] * vocab_size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = CONTROL if i in special else USER_DEFINED if i in added else NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"pre": _pre_tokenizer_name(spec), "tokens": tokens, "types": types, "merges": merges,
            "bos": bos, "eos": eos, "pad": pad, "eot": eot, "add_bos": add_bos, "chat_template": chat_template}


def write_gguf(model, tk: dict[str, Any], out: str | Path, qtype: str = "f16", name: str = "diji") -> dict[str, Any]:
    """Write `model` with tokenizer fields `tk` (tokenizer_fields) to `out`, atomically; returns a summary."""
    if qtype not in TYPES:
        raise DijiError(f"--type must be one of {', '.join(TYPES)}, got '{qtype}'")
    out = Path(out)
    gguf = _gguf()
    cfg = model.config
    arch = _architecture(cfg)
    tensors = gguf_tensors(model, arch)
    ftype = gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name)
        w.add_file_type(int(ftype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(cfg.dim_per_head)
        w.add_value_length(cfg.dim_per_head)
        w.add_rope_dimension_count(cfg.dim_per_head)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        if cfg.rope_scaling.rope_type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(cfg.rope_scaling.factor))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tk["pre"])
        w.add_token_list(tk["tokens"])
        w.add_token_types(tk["types"])
        w.add_token_merges(tk["merges"])
        if tk["bos"] is not None:
            w.add_bos_token_id(tk["bos"])
        w.add_eos_token_id(tk["eos"])
        w.add_pad_token_id(tk["pad"])
        if tk["eot"] is not None:
            w.add_eot_token_id(tk["eot"])
        w.add_add_bos_token(tk["add_bos"])
        w.add_add_eos_token(False)
        if tk["chat_template"]:
            w.add_chat_template(tk["chat_template"])
        for tname, t in tensors:
            arr = t.numpy()
            if arr.ndim == 1:
                w.add_tensor(tname, arr.astype(np.float32))
            elif qtype == "q8_0" and arr.shape[-1] % 32 == 0:
                q = gguf.quants.quantize(arr.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:  # f16, or a q8_0 export's matrix whose rows are not whole 32-blocks
                w.add_tensor(tname, arr.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"gguf": str(out.resolve()), "architecture": arch, "type": qtype, "bytes": out.stat().st_size,
            "tensors": len(tensors), "pre_tokenizer": tk["pre"]}
