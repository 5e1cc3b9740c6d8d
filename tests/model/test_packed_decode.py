"""Serving memory: the packed decode path shares the model's storage (one copy of the weights, never stale,
training intact), and a checkpoint loads into process memory in the target dtype without the compiler."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diji.errors import DijiError
from diji.kernels.registry import REGISTRY
from diji.model.generate import PackedDecoder, SamplingParams, _packed, generate
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import load_checkpoint, read_safetensors, save_checkpoint


def tiny(bias=False, tie=True, seed=3):
    cfg = ModelConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=80, max_position_embeddings=64,
                      attention_bias=bias, tie_word_embeddings=tie)
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    with torch.no_grad():  # non-trivial biases and norms so a packing mistake cannot hide
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return m.eval()


def tokens(m, prompts, impl, n=8):
    with REGISTRY.forced({"decode": impl}):
        return [g.tokens for g in generate(m, prompts, SamplingParams(max_new_tokens=n))]


def storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


@pytest.mark.parametrize("bias,tie", [(False, True), (True, False)])
def test_packed_decoder_holds_no_second_copy_of_the_weights(bias, tie):
    m = tiny(bias, tie)
    tokens(m, [[1, 2, 3]], "packed")
    dec = _packed(m)
    weights = [w for layer in dec.layers for w in layer if w is not None] + [dec.embed, dec.norm, dec.head]
    params = list(m.parameters())
    # Every matrix the decoder multiplies by lives in the parameters' own storage ...
    assert set(storages(weights)) <= set(storages(params))
    # ... and the parameters take no more memory than their elements: nothing packed beside them.
    assert sum(storages(params).values()) == sum(p.numel() * p.element_size() for p in params)
    # The fused q|k|v block is the three projections' rows, in place.
    a = m.model.layers[0].self_attn
    qkv = dec.layers[0][1]
    assert qkv.data_ptr() == a.q_proj.weight.data_ptr() and torch.equal(qkv[-a.v_proj.weight.shape[0]:], a.v_proj.weight)


def test_second_generate_reuses_the_packing():
    m = tiny()
    tokens(m, [[1, 2, 3]], "packed")
    first = _packed(m)
    tokens(m, [[4, 5]], "packed")
    assert _packed(m) is first


def test_training_after_packing_gets_the_same_gradients_and_updates():
    """A GRPO-like loop: generate, backprop, optimizer step, generate again — as on a model never packed."""
    torch.manual_seed(0)
    packed, plain = tiny(bias=True), tiny(bias=True)
    for m in (packed, plain):
        m.train()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-2, fused=fused)
            for m, fused in ((packed, True), (plain, False))}
    for step in range(3):
        got = tokens(packed, [[1, 2, 3], [4, 5]], "packed")
        want = tokens(plain, [[1, 2, 3], [4, 5]], "reference")
        assert got == want, step  # the packing never goes stale after an optimizer step
        for m in (packed, plain):
            opts[id(m)].zero_grad()
            logits = m(ids[:, :-1])
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        for (name, p), q in zip(packed.named_parameters(), plain.parameters(), strict=True):
            assert p.grad is not None and torch.allclose(p.grad, q.grad, atol=1e-6), (step, name)
        for m in (packed, plain):
            opts[id(m)].step()
        for p, q in zip(packed.parameters(), plain.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-5)
    assert not any(p.is_inference() for p in packed.parameters())


def test_checkpoint_of_a_packed_model_saves_and_loads(tmp_path):
    from diji.data.tokenizer import train_tokenizer

    train_tokenizer(iter(["a tiny corpus", "for a tokenizer"] * 20), 300, tmp_path, show_progress=False)
    m = tiny(bias=True, tie=False)
    before = tokens(m, [[1, 2, 3]], "packed")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    path = save_checkpoint(tmp_path / "ckpt", m, tmp_path / "tokenizer.json", {"stage": "test"})
    loaded = load_checkpoint(path).model.eval()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert tokens(loaded, [[1, 2, 3]], "packed") == before


def test_dtype_change_repacks_and_matches_the_reference():
    m = tiny()
    tokens(m, [[1, 2, 3]], "packed")
    old = _packed(m)
    m.to(torch.bfloat16)
    prompts = [[5, 6, 7, 8], [9, 10]]
    assert tokens(m, prompts, "packed") == tokens(m, prompts, "reference")
    assert _packed(m) is not old and _packed(m).layers[0][1].dtype == torch.bfloat16


def test_replaced_parameter_is_seen():
    m = tiny()
    tokens(m, [[1, 2, 3]], "packed")
    w = m.model.layers[1].mlp.down_proj
    w.weight = torch.nn.Parameter(torch.randn_like(w.weight))
    assert tokens(m, [[1, 2, 3]], "packed") == tokens(m, [[1, 2, 3]], "reference")


def test_deepcopy_of_a_packed_model_decodes_on_its_own_weights():
    m = tiny()
    tokens(m, [[1, 2, 3]], "packed")
    twin = copy.deepcopy(m)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(-1.0)
    assert tokens(m, [[1, 2, 3]], "packed") == tokens(m, [[1, 2, 3]], "reference")
    assert tokens(twin, [[1, 2, 3]], "packed") == tokens(twin, [[1, 2, 3]], "reference")


def test_unsupported_parameters_take_the_reference():
    m = tiny()
    m.config = m.config.__class__(**{**m.config.__dict__, "qk_norm": True})
    assert not PackedDecoder.supports(m)


# ---- loading for serving -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from diji.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("ckpt")
    train_tokenizer(iter(["a tiny corpus", "for a tokenizer"] * 20), 300, root, show_progress=False)
    return save_checkpoint(root / "model", tiny(bias=True, tie=False), root / "tokenizer.json", {"stage": "test"})


def test_read_safetensors_equals_safetensors_load_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 5, generator=g), "bf16": torch.randn(7, generator=g).to(torch.bfloat16),
               "f16": torch.randn(2, 2, generator=g).half(), "i64": torch.arange(6).view(2, 3),
               "i8": torch.tensor([-3, 4], dtype=torch.int8), "flag": torch.tensor([True, False, True]),
               "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5)}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    want = load_file(str(tmp_path / "w.safetensors"))
    got = read_safetensors(tmp_path / "w.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    cast = read_safetensors(tmp_path / "w.safetensors", torch.bfloat16)
    assert cast["f32"].dtype == cast["f16"].dtype == torch.bfloat16 and cast["i64"].dtype == torch.int64
    assert torch.equal(cast["f32"], want["f32"].to(torch.bfloat16))


def test_truncated_or_garbage_weights_are_a_dijierror(ckpt, tmp_path):
    data = (ckpt / "model.safetensors").read_bytes()
    bad_shape = b'{"w": {"dtype": "F32", "shape": [-2, 3], "data_offsets": [0, 24]}}'
    for name, blob in (("truncated", data[: len(data) - 100]), ("garbage", b"\x10\x00" + bytes(300)),
                       ("bad_shape", len(bad_shape).to_bytes(8, "little") + bad_shape + bytes(24))):
        bad = tmp_path / name
        bad.mkdir()
        for f in ckpt.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        (bad / "model.safetensors").write_bytes(blob)
        with pytest.raises(DijiError, match="cannot read the weights"):
            load_checkpoint(bad, verify=False)


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = line.split()[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loaded_parameters_are_not_backed_by_the_checkpoint_file(ckpt, dtype):
    """A memory-mapped parameter keeps its file pages resident beside any copy made of it (fused decode
    matrices): the served model must own its weights."""
    model = load_checkpoint(ckpt, dtype=dtype).model.eval()
    maps = _file_mappings((ckpt / "model.safetensors").resolve())
    for name, p in model.named_parameters():
        assert p.dtype == dtype
        assert not any(lo <= p.data_ptr() < hi for lo, hi in maps), f"{name} is memory-mapped from the file"
    assert tokens(model, [[1, 2, 3]], "packed") == tokens(model, [[1, 2, 3]], "reference")


def test_loading_for_serving_does_not_import_the_compiler(ckpt):
    """torch._dynamo (+sympy) costs ~67 MB resident; building the model on the meta device used to import it."""
    code = ("import sys; from diji.train.checkpoint import load_checkpoint; "
            f"m = load_checkpoint({str(ckpt)!r}).model; "
            "assert next(m.parameters()).device.type == 'cpu'; print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loading_lays_out_the_decode_fusion_and_generate_copies_nothing(ckpt):
    model = load_checkpoint(ckpt).model.eval()
    a, m = model.model.layers[0].self_attn, model.model.layers[0].mlp
    for first, second in ((a.q_proj.weight, a.k_proj.weight), (a.k_proj.weight, a.v_proj.weight),
                          (a.q_proj.bias, a.k_proj.bias), (m.gate_proj.weight, m.up_proj.weight)):
        assert second.data_ptr() == first.data_ptr() + first.numel() * first.element_size()
    before = [p.data_ptr() for p in model.parameters()]
    tokens(model, [[1, 2, 3]], "packed")
    assert [p.data_ptr() for p in model.parameters()] == before
