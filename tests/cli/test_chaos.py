"""Chaos: the default run's config, stopped from outside at seeded random moments (start-up, training steps,
validation, checkpoint writing) with `kill -9` or SIGTERM, and resumed with `ckpt_path=last` each time until it
completes, ends as a run that was never stopped: the same global step, bit-equal weights, equal metrics, the same
feature-evolution snapshots and the same rows in metrics.csv.

The kill -9 chain, the SIGTERM chain and the uninterrupted reference run side by side (each is mostly process
start-up). In each chain, the attempts alternate between 0 and 2 loader workers, so every resume also reads a
checkpoint written with the other setting; the reference uses 2 workers and is compared with both chains, so the
workers' count must not matter either.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.configs import cli_env

REPO = Path(__file__).resolve().parents[2]
# The built-in default run (CSV + offline W&B, feature evolution, progress bar, loader workers), made tiny:
# 10 classes x 20 images, batch 20: 10 steps per epoch, 20 in all; both epochs are feature-evolution snapshots.
RUN = [
    "model.net.width_multiplier=0.125",
    "data.train_per_class=20",
    "data.val_per_class=4",
    "data.test_per_class=4",
    "data.batch_size=20",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
]
PHASES = "+callbacks.phases._target_=tests.helpers.fault_injection.AnnouncePhases"
pytestmark = pytest.mark.slow


def start(run_dir: Path, args: list[str], phases: Path, tmp_path: Path) -> subprocess.Popen:
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    command = [
        str(Path(sys.executable).parent / "zf-train"),
        *RUN,
        *args,
        PHASES,
        f"+callbacks.phases.path={phases}",
        f"hydra.run.dir={run_dir}",
    ]
    log = open(phases.with_suffix(".log"), "w")
    return subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)


def wait_for(phases: Path, wanted: list[str], process: subprocess.Popen, timeout: float = 180) -> None:
    """Until the run has announced each phase of `wanted`, in that order."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = phases.read_text().splitlines() if phases.exists() else []
        position = 0
        for phase in seen:
            if position < len(wanted) and phase == wanted[position]:
                position += 1
        if position == len(wanted):
            return
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended ({process.returncode}) before {wanted}: "
                f"{seen}\n{phases.with_suffix('.log').read_text()[-3000:]}"
            )
        time.sleep(0.02)
    raise AssertionError(f"no {wanted} within {timeout} s")


def plan(signum: int, rng: random.Random) -> list[list[str]]:
    """The moments to stop at, in an order in which each attempt gets there again after resuming."""
    startup: list[str] = []
    # Three stops a chain (each attempt is mostly process start-up); the seed picks the middle one's kind.
    if signum == signal.SIGKILL:  # only epoch ends leave checkpoints: the last kill resumes from the first epoch's end
        later = rng.choice([[f"step {rng.randint(11, 18)}"], ["validation 1"]])
        return [startup, ["validation 0", "checkpoint"], later]
    # SIGTERM leaves a checkpoint where it stops: each attempt goes on from the last one's stop (mid-epoch or the
    # first epoch's validation, then the last epoch's checkpoints, after which only testing is left)
    return [startup, rng.choice([[f"step {rng.randint(2, 7)}"], ["validation 0"]]), ["validation 1", "checkpoint"]]


def run_until_complete(run_dir: Path, workers: tuple[int, int], signum: int, seed: int, tmp_path: Path) -> list[tuple]:
    """Stops the run at each moment of the seeded plan, resuming it each time; then lets it complete. Attempts
    take their number of loader workers from `workers` in turn."""
    rng = random.Random(seed)
    stops = []
    for attempt, moment in enumerate([*plan(signum, rng), None]):
        resume = ["ckpt_path=last"] if list((run_dir / "checkpoints").glob("*.ckpt")) else []
        phases = tmp_path / f"{run_dir.name}.attempt{attempt}.phases"
        num_workers = workers[attempt % len(workers)]
        process = start(run_dir, [f"data.num_workers={num_workers}", *resume], phases, tmp_path)
        if moment is None:
            assert process.wait(timeout=300) == 0, phases.with_suffix(".log").read_text()[-3000:]
            break
        if moment:
            wait_for(phases, moment, process)
            # Inside the phase: a tiny step takes some 20 ms, validation 50 ms, a checkpoint is held 300 ms.
            time.sleep(rng.uniform(0.0, 0.3 if moment[-1] == "checkpoint" else 0.02))
        else:
            time.sleep(rng.uniform(0.5, 4.0))  # start-up: imports, config, data, W&B
        process.send_signal(signum)
        code = process.wait(timeout=300)
        stops.append((moment or ["start-up"], num_workers, code))
        # A stop signal is graceful (a checkpoint, 128 + 15) once Lightning handles it; before, the default kills.
        expected = {-signal.SIGKILL} if signum == signal.SIGKILL else {128 + signal.SIGTERM, -signal.SIGTERM}
        assert code in expected, (moment, code, phases.with_suffix(".log").read_text()[-3000:])
        for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):  # whatever the moment, none is left half written
            torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return stops


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def snapshots(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    found = {}
    for path in sorted((run_dir / "feature_evolution").glob("epoch_*.npz")):
        with np.load(path) as data:
            found[path.name] = dict(data)
    return found


def assert_same_run(resumed: Path, reference: Path) -> None:
    ours, theirs = (
        torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        for run in (resumed, reference)
    )
    assert ours["global_step"] == theirs["global_step"] == 20
    for name, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), name
    summary, expected = (json.loads((run / "summary.json").read_text()) for run in (resumed, reference))
    assert summary["status"] == "completed"
    assert summary["test"] == expected["test"] and summary["train"] == expected["train"]
    assert metrics_rows(resumed) == metrics_rows(reference)
    ours, theirs = snapshots(resumed), snapshots(reference)
    assert sorted(ours) == sorted(theirs) == ["epoch_001.npz", "epoch_002.npz"]
    for name, arrays in theirs.items():
        assert sorted(ours[name]) == sorted(arrays)
        for key, value in arrays.items():
            assert np.array_equal(ours[name][key], value), (name, key)
    segments = sorted(
        (resumed / "wandb").glob("offline-run-*/run-*.wandb")
    )  # one offline segment per attempt that got there
    assert segments and any(b"test/top1_err" in path.read_bytes() for path in segments)


@pytest.fixture
def shared_wandb_service() -> Iterator[None]:
    import wandb

    # As from a notebook or a driver script that uses W&B: the runs inherit its service (WANDB_SERVICE), which
    # outlives a killed run and still holds its stream when the run resumes. Torn down after the test, so that
    # later tests of this process start W&B with their own settings.
    wandb.setup(wandb.Settings(mode="offline", silent=True))
    assert "WANDB_SERVICE" in os.environ
    yield
    wandb.teardown()
    os.environ.pop("WANDB_SERVICE", None)


def run_uninterrupted(tmp_path: Path) -> Path:
    run_dir = tmp_path / "uninterrupted"
    process = start(run_dir, ["data.num_workers=2"], tmp_path / "uninterrupted.phases", tmp_path)
    assert process.wait(timeout=300) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]
    return run_dir


def test_a_run_stopped_at_random_moments_and_resumed_ends_as_the_uninterrupted_run(shared_wandb_service, tmp_path):
    seed = int(os.environ.get("ZF_CHAOS_SEED", "15"))
    # Workers alternate by attempt; the chains end with different settings (kill -9: 2 workers, SIGTERM: 0).
    chains = {signal.SIGKILL: (2, 0), signal.SIGTERM: (0, 2)}
    # The reference runs beside the two chains (each process is mostly start-up, and they only meet at the end).
    with ThreadPoolExecutor(len(chains) + 1) as pool:
        reference = pool.submit(run_uninterrupted, tmp_path)
        running = {
            signum: pool.submit(
                run_until_complete, tmp_path / signal.Signals(signum).name, workers, signum, seed + signum, tmp_path
            )
            for signum, workers in chains.items()
        }
        stops = {signum: future.result() for signum, future in running.items()}
        uninterrupted = reference.result()
    for signum in chains:
        assert len(stops[signum]) == len(plan(signum, random.Random(0))), stops[signum]
        assert {workers for _, workers, _ in stops[signum]} == {0, 2}
        assert_same_run(tmp_path / signal.Signals(signum).name, uninterrupted)
