"""Callbacks that inject faults into a zf-train subprocess
(`+callbacks.fault._target_=tests.helpers.fault_injection...`)."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Sends signal `name` to this process as training step `step` starts (so it arrives mid-epoch, mid-step)."""

    def __init__(self, step: int, name: str = "SIGKILL") -> None:
        self.step, self.signum = step, getattr(signal, name)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class KillWhileSavingCheckpoint(Callback):
    """From epoch `epoch` on, the next checkpoint file is half written when the process is killed (-9)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            return
        real_save = torch.save

        def save_half_then_die(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            size = os.path.getsize(f)
            with open(f, "r+b") as written:
                written.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = save_half_then_die


class PoisonWeightsOnRank(Callback):
    """Sets one weight to NaN on one DDP rank only, as step `step` starts: that rank's loss is NaN, the others' not."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class AnnouncePhases(Callback):
    """Appends each phase of the run to `path` as it starts (`train`, `step N`, `validation N`, `checkpoint`,
    `test`), so that a test can kill this process from outside at a chosen moment. Checkpoint files are held open
    for `checkpoint_delay` seconds after they are written, before their rename, so that a kill can land there."""

    def __init__(self, path: str, checkpoint_delay: float = 0.3) -> None:
        self.path, self.checkpoint_delay = path, checkpoint_delay

    def _announce(self, phase: str) -> None:
        with open(self.path, "a") as file:
            file.write(phase + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        import time

        import zf_lightning.utils.io as io

        real_save, delay = io.torch.save, self.checkpoint_delay

        def slow_save(obj, f, *args, **kwargs):
            self._announce("checkpoint")
            real_save(obj, f, *args, **kwargs)
            time.sleep(delay)  # the file is written, not yet renamed over the previous one

        io.torch.save = slow_save
        self._announce("train")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._announce(f"step {trainer.global_step}")

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._announce(f"validation {trainer.current_epoch}")

    def on_test_start(self, trainer, pl_module) -> None:
        self._announce("test")
