"""diji conformance: passes on the CPU, catches a wrong fast path, survives a crashing op."""

import json

import pytest
import torch

from diji.cli import main
from diji.compute.conformance import check_ops, golden_trajectory
from diji.kernels import reference
from diji.kernels.registry import REGISTRY
from diji.model.transformer import ModelConfig, Transformer


def tiny():
    m = Transformer(ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32))
    m.init_weights(seed=0)
    return m


@pytest.fixture
def wrong_and_crashing():
    """A subtly wrong swiglu fast path and an rms_norm fast path that raises, registered for the test."""
    REGISTRY.register("swiglu", "wrong", lambda g, u: reference.swiglu(g, u) * 1.001, priority=50)

    def crash(x, w, eps):
        raise RuntimeError("kernel exploded")

    REGISTRY.register("rms_norm", "crashy", crash, priority=50)
    yield
    REGISTRY.unregister("swiglu", "wrong")
    REGISTRY.unregister("rms_norm", "crashy")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_op_passes_on_cpu(dtype):
    rows = check_ops(torch.device("cpu"), dtype, timing=False)
    failed = [(r.op, r.impl, r.case, r.max_rel, r.error) for r in rows if not r.passed]
    assert not failed
    assert {r.op for r in rows} >= {"rms_norm", "apply_rope", "attention", "swiglu", "cross_entropy"}
    assert {(r.op, r.impl) for r in rows} >= {("apply_rope", "fused"), ("cross_entropy", "chunked")}


def test_wrong_fast_path_is_caught_and_a_crash_hides_nothing(wrong_and_crashing):
    rows = check_ops(torch.device("cpu"), "float32", ["rms_norm", "swiglu", "apply_rope"], timing=False)
    by = {(r.op, r.impl): r for r in rows}
    wrong = by[("swiglu", "wrong")]
    assert not wrong.passed and 5e-4 < wrong.max_rel < 2e-3
    crashed = by[("rms_norm", "crashy")]
    assert not crashed.passed and "kernel exploded" in crashed.error
    # the other implementations of the same op, and the other ops, are still checked and pass
    assert by[("rms_norm", "fused")].passed and by[("rms_norm", "reference")].passed
    assert by[("swiglu", "fused")].passed and by[("apply_rope", "fused")].passed


def test_golden_trajectory_fp32_and_bf16():
    fp32 = golden_trajectory(tiny, torch.device("cpu"), "float32", steps=4)
    assert fp32.passed and fp32.loss_err < 1e-5 and len(fp32.losses) == 4
    bf16 = golden_trajectory(tiny, torch.device("cpu"), "bfloat16", steps=4)
    assert bf16.passed and bf16.loss_err > fp32.loss_err


def test_golden_trajectory_catches_a_drifting_kernel(wrong_and_crashing):
    REGISTRY.unregister("rms_norm", "crashy")  # the crash alone would be a fallback, not drift
    REGISTRY.register("swiglu", "wrong", lambda g, u: reference.swiglu(g, u) * 1.05, priority=50)
    result = golden_trajectory(tiny, torch.device("cpu"), "float32", steps=4)
    assert not result.passed and result.weight_err > result.tol["weights"]


def test_cli_writes_json_and_exits_nonzero_on_failure(wrong_and_crashing, tmp_path, capsys):
    out = tmp_path / "c.json"
    code = main(["conformance", "--ops", "swiglu,rms_norm", "--steps", "0", "--json-out", str(out)])
    assert code == 1
    report = json.loads(out.read_text())
    assert report["passed"] is False
    text = capsys.readouterr().out
    assert "FAIL" in text and "swiglu" in text and "wrong" in text and "rms_norm" in text


def test_cli_passes_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "ok.json"
    assert main(["conformance", "--ops", "apply_rope", "--steps", "2", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["passed"] and report["trajectory"]["steps"] == 2
    assert main(["conformance", "--ops", "no_such_op", "--json-out", str(out)]) == 2
    assert "unknown kernel op 'no_such_op'" in capsys.readouterr().err


def test_isolated_op_runs_in_its_own_process():
    rows = check_ops(torch.device("cpu"), "float32", ["swiglu"], isolate=True, timing=False)
    assert rows and all(r.passed for r in rows)


def test_doctor_json(capsys):
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["capabilities"]["device_type"] == "cpu"
    assert rep["kernels"]["float32"]["rms_norm"]["impl"] in ("fused", "reference")
    assert rep["distributed"]["for_device"] == "gloo"
