import pytest

from diji.train.config import OptimConfig
from diji.train.optim import lr_at


def test_cosine_warms_up_then_decays_to_floor():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, schedule="cosine")
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_wsd_holds_then_decays_linearly():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=5, schedule="wsd", decay_fraction=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[5:80] == [1.0] * 75
    assert lrs[-1] == pytest.approx(0.0) and lrs[90] == pytest.approx(0.45)


def test_constant_and_validation():
    assert lr_at(50, 100, OptimConfig(lr=0.5, warmup_steps=0, schedule="constant")) == 0.5
    with pytest.raises(ValueError, match="optim.lr"):
        OptimConfig(lr=0)
