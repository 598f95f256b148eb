"""Callbacks that inject faults into a zf-train subprocess (`+callbacks.fault._target_=tests.cli.fault_injection...`)."""

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
