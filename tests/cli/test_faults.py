"""Fault injection from inside the run: a kill while a checkpoint is written, SLURM's USR2, a NaN on one DDP rank.
Each test checks what is on disk afterwards and that nothing earlier was lost. Kills and SIGTERM from outside, at
random moments, are in test_chaos.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.configs import TINY, cli_env

REPO = Path(__file__).resolve().parents[2]
# 10 classes x 20 images, batch 20: 10 steps per epoch, 20 in all. Deterministic, so that runs can be compared.
RUN = [*TINY, "trainer.max_epochs=2", "trainer.deterministic=true", "logger=csv", "callbacks.feature_evolution=null"]
pytestmark = pytest.mark.slow


def zf_train(args: list[str], run_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The console script in a subprocess (so that it can be killed), writing into `run_dir`."""
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}  # the fault-injection callbacks live in tests/
    script = Path(sys.executable).parent / "zf-train"
    return subprocess.run(
        [str(script), *RUN, *args, f"hydra.run.dir={run_dir}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def fault(callback: str, **kwargs) -> list[str]:
    return [
        f"+callbacks.fault._target_=tests.helpers.fault_injection.{callback}",
        *(f"+callbacks.fault.{k}={v}" for k, v in kwargs.items()),
    ]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_whole(tmp_path):
    run_dir = tmp_path / "run"
    killed = zf_train(fault("KillWhileSavingCheckpoint", epoch=1), run_dir, tmp_path)
    assert killed.returncode == -signal.SIGKILL
    half_written = list((run_dir / "checkpoints").glob(".*.tmp"))
    assert len(half_written) == 1  # the kill came during a write
    from zf_lightning.utils.io import load_checkpoint

    for name in ("last.ckpt", "epoch000.ckpt"):
        assert load_checkpoint(run_dir / "checkpoints" / name)["epoch"] == 0  # whole, and still the first epoch's


def test_sigusr2_checkpoints_then_hands_over_to_the_previous_handler_and_a_requeued_job_resumes(
    compose_train, tmp_path, monkeypatch
):
    """As under submitit (hydra/launcher=slurm), which requeues the job on USR2 and exits."""
    from zf_lightning.callbacks.fault_tolerance import Preempted
    from zf_lightning.cli.train import train

    requeue_calls = []

    def submitit_like_handler(signum, frame):
        requeue_calls.append(signum)

    previous = signal.signal(signal.SIGUSR2, submitit_like_handler)
    try:
        overrides = [*RUN[len(TINY) :], *fault("SignalAt", step=5, name="SIGUSR2")]
        with pytest.raises(Preempted) as stopped:
            train(compose_train(overrides))
        assert stopped.value.code == 128 + signal.SIGUSR2 and requeue_calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_like_handler  # handlers are given back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    run_dir = tmp_path / "run"
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6

    # Continuing that mid-epoch position with another batch size would train other samples: refused, naming it.
    with pytest.raises(ValueError, match=r"inside epoch 1 \(1-based\) after batch 6.*batch_size 20 then, 10 now"):
        train(compose_train([*RUN[len(TINY) :], "data.batch_size=10", "ckpt_path=last"], output_dir=run_dir))
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6  # nothing written over

    # The requeued job starts with the same config (ckpt_path=null) in the same directory: it continues.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(compose_train(RUN[len(TINY) :], output_dir=run_dir))
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 20
    assert summary_of(run_dir)["status"] == "completed"


def test_a_nan_loss_on_one_ddp_rank_stops_every_rank_without_a_hang(tmp_path):
    """trainer=ddp_cpu (2 processes): rank 1's loss turns NaN; both ranks stop at that step, none waits for the
    other in an all-reduce until its timeout (the subprocess timeout below would catch a hang)."""
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}
    script = Path(sys.executable).parent / "zf-train"
    # No hydra.run.dir: Lightning's relaunch of rank 1 must find rank 0's timestamped directory by itself.
    done = subprocess.run(
        [str(script), *RUN, "trainer=ddp_cpu", "test=false", *fault("PoisonWeightsOnRank", rank=1, step=13)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode != 0
    run_dir = next((tmp_path / "logs" / "train" / "runs").iterdir())
    summary = summary_of(run_dir)
    assert summary["status"] == "failed"
    assert (
        "non-finite training loss (on a rank; this rank's: " in summary["error"]
        and "at global step 13 (epoch 1, batch 3)" in summary["error"]
    )
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10  # the first epoch's, finite
