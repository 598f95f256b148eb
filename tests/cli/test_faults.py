"""Fault injection: kill -9 and stop signals mid-epoch, a kill while a checkpoint is written. Each test checks what
is on disk afterwards, that nothing earlier was lost, and that the resumed run ends exactly as an uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, cli_env

REPO = Path(__file__).resolve().parents[2]
# 10 classes x 20 images, batch 20: 10 steps per epoch, 20 in all. Deterministic, so that runs can be compared.
RUN = [*TINY, "trainer.max_epochs=2", "trainer.deterministic=true", "logger=csv", "callbacks.feature_evolution=null"]
pytestmark = pytest.mark.slow


def zf_train(args: list[str], run_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The console script in a subprocess (so that it can be killed), writing into `run_dir`."""
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}  # the fault-injection callbacks live in tests/
    script = Path(sys.executable).parent / "zf-train"
    return subprocess.run([str(script), *RUN, *args, f"hydra.run.dir={run_dir}"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def fault(callback: str, **kwargs) -> list[str]:
    return [f"+callbacks.fault._target_=tests.cli.fault_injection.{callback}", *(f"+callbacks.fault.{k}={v}" for k, v in kwargs.items())]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def logged_epochs(run_dir: Path, metric: str) -> dict[int, str]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return {int(row["epoch"]): row[metric] for row in csv.DictReader(f) if row.get(metric)}


def assert_same_end(resumed: Path, reference: Path) -> None:
    """Equal test metrics and bit-equal final weights."""
    assert summary_of(resumed)["test"] == summary_of(reference)["test"]
    ours, theirs = load(resumed / "checkpoints" / "last.ckpt"), load(reference / "checkpoints" / "last.ckpt")
    assert ours["global_step"] == theirs["global_step"] == 20
    for name, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    result = zf_train([], tmp_path / "run", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "run"


def test_kill_9_then_sigterm_mid_epoch_and_two_resumes_end_as_the_uninterrupted_run(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    # kill -9 at step 15 of 20 (epoch 2, batch 5). Two loader workers here, none in the reference: order and
    # augmentation depend on (seed, epoch) only.
    killed = zf_train(["data.num_workers=2", *fault("SignalAt", step=15, name="SIGKILL")], run_dir, tmp_path)
    assert killed.returncode == -signal.SIGKILL
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 10)  # the end of the first epoch
    assert not (run_dir / "summary.json").exists()
    val_before = logged_epochs(run_dir, "val/top1_err")
    assert list(val_before) == [0]

    # The resumed run gets SIGTERM as step 13 starts: it finishes that step and writes last.ckpt mid-epoch.
    stopped = zf_train(["ckpt_path=last", *fault("SignalAt", step=13, name="SIGTERM")], run_dir, tmp_path)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, 14)
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and "ckpt_path=last" in summary["error"]

    # The second resume goes on with batch 4 of epoch 2, in the same order, and ends as if nothing happened.
    resumed = zf_train(["ckpt_path=last"], run_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary_of(run_dir)["status"] == "completed"
    assert_same_end(run_dir, uninterrupted)
    after = logged_epochs(run_dir, "val/top1_err")
    assert after[0] == val_before[0] and after == logged_epochs(uninterrupted, "val/top1_err")  # nothing logged was lost


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_whole(tmp_path):
    run_dir = tmp_path / "run"
    killed = zf_train(fault("KillWhileSavingCheckpoint", epoch=1), run_dir, tmp_path)
    assert killed.returncode == -signal.SIGKILL
    half_written = list((run_dir / "checkpoints").glob(".*.tmp"))
    assert len(half_written) == 1  # the kill came during a write
    from zf_lightning.utils.io import load_checkpoint

    for name in ("last.ckpt", "epoch000.ckpt"):
        assert load_checkpoint(run_dir / "checkpoints" / name)["epoch"] == 0  # whole, and still the first epoch's


def test_sigusr2_checkpoints_then_hands_over_to_the_previous_handler_and_a_requeued_job_resumes(compose_train, tmp_path, monkeypatch):
    """As under submitit (hydra/launcher=slurm), which requeues the job on USR2 and exits."""
    from zf_lightning.cli.train import train
    from zf_lightning.models.fault_tolerance import Preempted

    requeue_calls = []

    def submitit_like_handler(signum, frame):
        requeue_calls.append(signum)

    previous = signal.signal(signal.SIGUSR2, submitit_like_handler)
    try:
        overrides = [*RUN[len(TINY):], *fault("SignalAt", step=5, name="SIGUSR2")]
        with pytest.raises(Preempted) as stopped:
            train(compose_train(overrides))
        assert stopped.value.code == 128 + signal.SIGUSR2 and requeue_calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_like_handler  # handlers are given back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    run_dir = tmp_path / "run"
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6

    # The requeued job starts with the same config (ckpt_path=null) in the same directory: it continues.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    summary = train(compose_train(RUN[len(TINY):], output_dir=run_dir))
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 20
    assert summary_of(run_dir)["status"] == "completed"


def test_a_nan_loss_on_one_ddp_rank_stops_every_rank_without_a_hang(tmp_path):
    """trainer=ddp_cpu (2 processes): rank 1's loss turns NaN; both ranks stop at that step, none waits for the
    other in an all-reduce until its timeout (the subprocess timeout below would catch a hang)."""
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}
    script = Path(sys.executable).parent / "zf-train"
    # No hydra.run.dir: Lightning's relaunch of rank 1 must find rank 0's timestamped directory by itself.
    done = subprocess.run([str(script), *RUN, "trainer=ddp_cpu", "test=false", *fault("PoisonWeightsOnRank", rank=1, step=13)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert done.returncode != 0
    run_dir = next((tmp_path / "logs" / "train" / "runs").iterdir())
    summary = summary_of(run_dir)
    assert summary["status"] == "failed"
    assert "non-finite training loss (on a rank; this rank's: " in summary["error"] and "at global step 13 (epoch 1, batch 3)" in summary["error"]
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10  # the first epoch's, finite
