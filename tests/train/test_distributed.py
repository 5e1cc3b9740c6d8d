"""Data parallelism on 2 gloo processes (torchrun): loss curves equal the single-process run with the same
global batch, and checkpoints move between layouts (2 ranks ↔ 1 process).

Tolerance: 1e-5 relative per logged loss. The only difference between layouts is the order of float32
reductions (a mean of two half-batch means; a gradient all-reduce); measured differences are ~1e-7.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from diji.config import load_config
from diji.errors import DijiError
from diji.observe.metrics import read_metrics
from diji.train.config import PretrainConfig
from diji.train.pretrain import pretrain
from testkit import tiny_overrides

TOL = 1e-5
STEPS = 6


def overrides(data_dir, out, name, extra=()):
    return tiny_overrides(data_dir, out, name, steps=STEPS) + ["train.save_every=3", "train.eval_every=3",
                                                                  *extra]


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def torchrun(tmp_path, over, resume=False):
    (tmp_path / "empty.toml").write_text("")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "diji", "train", "pretrain", "--config", str(tmp_path / "empty.toml")]
    cmd += [a for o in over for a in ("--set", o)] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Own session: on a timeout, kill torchrun *and* its workers (a hung rank must not outlive the test).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun timed out: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]


def close(a, b):
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= TOL * abs(y), (a, b)


def rewind(run_dir, step):
    """Make the run resume from an earlier checkpoint, as if it had died right after writing it."""
    (run_dir / "latest").write_text(f"checkpoints/step-{step:06d}\n")


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    pretrain(load_config(PretrainConfig, None, overrides(data_dir, out, "single")))
    return out / "single"


def test_fsdp_on_two_ranks_matches_one_process_and_resumes_on_one(data_dir, tmp_path, single):
    torchrun(tmp_path, overrides(data_dir, tmp_path, "fsdp", ["run.parallel=\"fsdp\""]))
    close(losses(tmp_path / "fsdp"), losses(single))
    records = read_metrics(tmp_path / "fsdp" / "metrics.jsonl")
    assert records[-1]["tokens_seen"] == STEPS * 4 * 32  # counted over both ranks, logged once (rank 0)
    assert len(records) == STEPS
    # Saved by 2 FSDP ranks at step 3 → resumed in 1 process: the same curve.
    rewind(tmp_path / "fsdp", 3)
    pretrain(load_config(PretrainConfig, None, overrides(data_dir, tmp_path, "fsdp")), resume=True)
    close(losses(tmp_path / "fsdp"), losses(single))


@pytest.mark.slow
def test_ddp_on_two_ranks_matches_and_single_checkpoint_resumes_under_fsdp(data_dir, tmp_path, single):
    torchrun(tmp_path, overrides(data_dir, tmp_path, "ddp"))
    close(losses(tmp_path / "ddp"), losses(single))
    # Saved by 1 process at step 3 → resumed on 2 FSDP ranks.
    pretrain(load_config(PretrainConfig, None, overrides(data_dir, tmp_path, "rev")))
    rewind(tmp_path / "rev", 3)
    torchrun(tmp_path, overrides(data_dir, tmp_path, "rev", ["run.parallel=\"fsdp\""]), resume=True)
    close(losses(tmp_path / "rev"), losses(single))


def test_world_size_must_divide_the_batch(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = load_config(PretrainConfig, None, overrides(data_dir, tmp_path, "odd"))
    with pytest.raises(DijiError, match=r"train.batch_size \(4\) must be divisible by the number of processes \(3\)"):
        pretrain(cfg)


def test_bad_parallel_mode_is_a_config_error():
    with pytest.raises(DijiError, match="run.parallel"):
        load_config(PretrainConfig, None, ['data.path="x"', 'run.parallel="tp"'])


GRPO_WORKER = '''
import sys
from diji.config import load_config
from diji.eval import task as task_mod
from diji.eval.task import Example, Grade, Task
from diji.train.grpo import GRPOConfig, grpo


class DigitTask(Task):
    """Reward 1 when the completion holds a digit; prompts of different lengths (ragged batches)."""
    name = "digits"

    def examples(self, split, n, seed=0):
        return [Example(id=f"{split}-{i}", messages=({"role": "user", "content": "go " * (1 + i % 3)},), answer="")
                for i in range(n)]

    def grade(self, example, completion):
        return Grade(any(c.isdigit() for c in completion), None, False)

    def reward(self, example, completion):
        return float(self.grade(example, completion).correct)


task_mod.BUILTIN_TASKS["digits"] = "__main__:DigitTask"
grpo(load_config(GRPOConfig, None, sys.argv[1:]))
'''


def test_grpo_on_two_ranks_samples_half_each_and_matches_one_process(data_dir, tmp_path):
    """Each rank samples its own half of the groups (per-completion random streams) and divides by the
    global token count: the run equals one process's — same samples, same rewards, same losses."""
    from test_sft import tiny_base

    base = tiny_base(tmp_path, data_dir)
    worker = tmp_path / "grpo_worker.py"
    worker.write_text(GRPO_WORKER)

    def over(name):
        return [f"train.init_from={json.dumps(str(base))}", f"run.out_dir={json.dumps(str(tmp_path))}",
                f'run.name="{name}"', "run.progress=false", 'grpo.task="digits"', "grpo.prompt_pool=16",
                "grpo.group_size=4", "grpo.max_new_tokens=6", "grpo.eval_examples=2", "grpo.kl_beta=0.05",
                "train.max_steps=4", "train.batch_size=4", "train.log_every=1", "train.eval_every=0",
                "train.save_every=100", "optim.lr=2e-2", "optim.warmup_steps=0"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"one": [sys.executable, str(worker)],
            "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker)]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, *over(name)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = ([r for r in read_metrics(tmp_path / n / "metrics.jsonl") if "loss" in r] for n in ("one", "two"))
    assert len(one) == len(two) == 4
    assert len({r["reward_mean"] for r in one}) > 1  # the steps differ: this is not a trivial comparison
    for a, b in zip(one, two, strict=True):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-9)
        assert a["response_len"] == pytest.approx(b["response_len"], abs=1e-9)
        assert a["tokens_seen"] == b["tokens_seen"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
