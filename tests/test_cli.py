"""The command line as a user meets it: bad input gives one line on stderr, exit 2, no traceback."""

import subprocess
import sys

import pytest


def diji(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "diji", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]


def test_version_and_help():
    assert diji("--version").stdout.startswith("diji ")
    out = diji("--help").stdout
    for cmd in ("quickstart", "train", "generate", "data", "report", "lineage"):
        assert cmd in out


def test_missing_config_file(tmp_path):
    one_line_error(diji("train", "pretrain", "--config", str(tmp_path / "nope.toml")), "config file not found")


def test_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[train\nmax_steps=")
    one_line_error(diji("train", "pretrain", "--config", str(p)), "bad TOML")


def test_unknown_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\npath = "x"\n[train]\nmax_stepz = 3\n')
    one_line_error(diji("train", "pretrain", "--config", str(p)), "unknown config key 'train.max_stepz'")


def test_wrong_type_override(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\npath = "x"\n')
    one_line_error(diji("train", "pretrain", "--config", str(p), "--set", "train.batch_size=big"),
                   "'train.batch_size'")


@pytest.mark.parametrize("args,needle", [
    (("generate", "/nonexistent/ckpt", "--prompt", "hi"), "checkpoint not found"),
    (("lineage", "/nonexistent/ckpt"), "checkpoint not found"),
    (("report", "/nonexistent/run"), "not a run directory"),
])
def test_missing_paths(args, needle):
    one_line_error(diji(*args), needle)


def test_generate_from_a_trained_checkpoint(data_dir, tmp_path):
    from diji.config import load_config
    from diji.train.config import PretrainConfig
    from diji.train.pretrain import pretrain
    from testkit import tiny_overrides

    result = pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, steps=20)))
    out = diji("generate", result["checkpoint"], "--prompt", "the model", "--max-new-tokens", "8", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("the model") and len(out.stdout.strip()) > len("the model")
    again = diji("generate", result["checkpoint"], "--prompt", "the model", "--max-new-tokens", "8", "--temperature", "0")
    assert again.stdout == out.stdout  # greedy is deterministic
    sampled = diji("generate", result["checkpoint"], "--prompt", "the", "--temperature", "1.0", "--seed", "3", "--max-new-tokens", "8")
    assert sampled.returncode == 0
    bad = diji("generate", result["checkpoint"], "--prompt", "x", "--top-p", "0")
    one_line_error(bad, "top_p")
    lin = diji("lineage", result["checkpoint"])
    assert lin.returncode == 0 and "pretrain step 20" in lin.stdout
