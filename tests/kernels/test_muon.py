"""Muon (Jordan et al. 2024): orthogonalised updates for 2-D matrices, AdamW for the rest."""

import copy

import pytest
import torch

from diji.model.transformer import ModelConfig, Transformer
from diji.train.config import OptimConfig
from diji.train.optim import Muon, build_optimizer, newton_schulz


def test_newton_schulz_flattens_the_spectrum():
    g = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # badly conditioned
    s = torch.linalg.svdvals(newton_schulz(g, 5).float())
    # The quintic iteration trades exactness for speed: singular values land in roughly [0.7, 1.2].
    assert s.min() > 0.5 and s.max() < 1.3
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 20


def test_muon_groups_and_training_reduces_loss():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32)
    model = Transformer(cfg)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=3e-3, muon_lr=0.02))
    assert isinstance(opt, Muon)
    muon_group = next(g for g in opt.param_groups if g["use_muon"])
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon_group["params"]}
    assert "model.layers.0.self_attn.q_proj.weight" in muon_names
    assert not any("embed" in n or "norm" in n for n in muon_names)
    assert muon_group["lr_scale"] == pytest.approx(0.02 / 3e-3)
    data = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * g["lr_scale"]
        loss = torch.nn.functional.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_muon_state_round_trips_for_exact_resume():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8, bias=True)
    groups = [{"params": [lin.weight], "use_muon": True}, {"params": [lin.bias], "use_muon": False}]
    opt = Muon(groups, lr=0.01, betas=(0.9, 0.95), eps=1e-8, momentum=0.95, ns_steps=5)
    for _ in range(2):
        lin(torch.randn(4, 8)).sum().backward()
        opt.step()
    clone = torch.nn.Linear(8, 8)
    clone.load_state_dict(lin.state_dict())
    opt2 = Muon([{"params": [clone.weight], "use_muon": True}, {"params": [clone.bias], "use_muon": False}],
                lr=0.01, betas=(0.9, 0.95), eps=1e-8, momentum=0.95, ns_steps=5)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through torch.save: no shared buffers
    x = torch.randn(4, 8)
    for m, o in ((lin, opt), (clone, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    assert torch.equal(lin.weight, clone.weight) and torch.equal(lin.bias, clone.bias)


def test_optim_config_validation():
    with pytest.raises(ValueError, match="optim.name"):
        OptimConfig(name="sgd")
    with pytest.raises(ValueError, match="optim.muon_lr"):
        OptimConfig(muon_lr=0)
