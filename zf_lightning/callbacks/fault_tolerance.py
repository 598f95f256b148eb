"""What lets a long run survive kills and preemption: atomic checkpoint files, per-step seeding of the training
process, and a checkpoint where nothing is lost when a stop signal arrives."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from zf_lightning.utils.errors import InputError, InputTypeError
from zf_lightning.utils.io import atomic_torch_save
from zf_lightning.utils.seeding import mix_seed

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own folder, then renames it over the old one
    (`zf_lightning.utils.io.atomic_write`, through `atomic_torch_save`).

    Lightning's writer stages the file in the system temp dir and moves it: across file systems (a node's /tmp
    and the cluster's scratch) that move is a copy, and a kill during it leaves a truncated checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise InputTypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)


class StepSeeding(Callback):
    """Seeds the training process's generator (dropout) from (seed, global step, rank) before every step.

    With `EpochSeededSampler` for the data, every step of a resumed run then draws what the uninterrupted run
    drew, so that the two end with equal weights on a deterministic device.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed = mix_seed(self.seed, trainer.global_step, trainer.global_rank)
        # Not torch.manual_seed: without CUDA initialised it queues a CUDA seeding with a formatted stack trace,
        # 1.7 ms a step inside Lightning's deep stack (bench_training_step.py).
        torch.default_generator.manual_seed(seed)
        if pl_module.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # this process's device, initialised by now


class Preempted(SystemExit):
    """Raised after the checkpoint of a stop signal was written; exits with 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(128 + signum)
        self.signum, self.checkpoint = signum, checkpoint

    def __str__(self) -> str:
        return (
            f"stopped by {signal.Signals(self.signum).name} after writing {self.checkpoint}; "
            "continue with ckpt_path=last in the same hydra.run.dir"
        )


class CheckpointOnSignal(Checkpoint):
    """On SIGTERM, SIGUSR1 or SIGUSR2 (preemption; SLURM's warning before the time limit), stop at the next point
    where everything before it is done, write `dirpath/filename.ckpt` there, then hand the signal to whoever
    handled it before.

    The stop is Lightning's own graceful SIGTERM stop: its loops raise `SIGTERMException` after the current training
    step has been logged and any validation due after it has run, and the checkpoint is written when that exception
    arrives (`on_exception`). When the step was an epoch's last, the stop comes after the epoch's end and the
    checkpoint is written in `on_train_epoch_end`, as Lightning's own epoch-end checkpoints are: a `Checkpoint`
    callback, this one runs after the module's hook (epoch metrics, schedule step) and the `ModelCheckpoint`s, and
    a checkpoint written once the epoch is over would make Lightning redo the epoch's end on resume. Either way a
    resumed run continues with the next batch or epoch, and repeats and skips nothing. (Written at
    `on_train_batch_end` instead, the step's logged metrics would be lost, and at an epoch's last batch Lightning
    would resume with the next epoch, skipping this one's validation and end.)

    The previous handler of USR1/USR2 does the rest: Lightning's SLURM plugin (USR1 with `auto_requeue`) and
    submitit (USR2, `hydra/launcher=slurm`) requeue the job, which then resumes from that checkpoint. The run then
    ends with `preempted` (raised by `zf-train`), whose exit code is 128 + the signal number. Under DDP the ranks agree
    at every step whether any of them was signalled, so that they all stop at the same step.
    """

    def __init__(
        self, dirpath: str | Path, filename: str = "last", signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2")
    ) -> None:
        unknown = [name for name in signals if not isinstance(getattr(signal, name, None), signal.Signals)]
        if unknown:
            raise InputError(
                f"callbacks.checkpoint_on_signal.signals: unknown signal(s) {unknown}; e.g. SIGTERM, SIGUSR1, SIGUSR2"
            )
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.signals = [getattr(signal, name) for name in signals]
        self._previous: dict[int, Any] = {}
        self._received: int | None = None
        self._saved_at: int | None = None  # the global step of the checkpoint written for a stop
        self.preempted: Preempted | None = None  # set once the checkpoint of a stop signal is written

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        # Only noted here: a checkpoint written from inside a signal handler could catch the optimiser mid-update.
        log.warning(
            "received %s: the run stops after the current training step, with a checkpoint", signal.Signals(signum).name
        )
        self._received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only
        for signum in self.signals:  # after Lightning installed its own handlers, which then become "previous"
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._defer)

    def _signalled(self, trainer: L.Trainer) -> bool:
        """Whether any rank got a stop signal (ours, or Lightning's handler's before training started)."""
        received = self._received is not None or trainer.received_sigterm
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        return received

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._signalled(trainer):
            # Lightning's loops read this flag where a stop loses nothing (see the class docstring).
            trainer._signal_connector.received_sigterm = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._signalled(trainer):  # during the epoch's last step or its validation
            self._save(trainer)
            trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during the last epoch's checkpoints: no loop is left to stop, so the run stops here, before testing.
        if self.preempted is None and self._signalled(trainer):
            self._save(trainer)
            raise self._hand_over()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # ours, or Lightning's own handler's before training started
            if self._saved_at != trainer.global_step:
                self._save(trainer)
            self._hand_over()
        self._restore_handlers()

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_at = trainer.global_step
        log.warning("wrote %s after step %d", self.path, trainer.global_step)

    def _hand_over(self) -> Preempted:
        signum = self._received or signal.SIGTERM
        # Lightning's SIGTERM handler would only ask for the stop that has just happened.
        previous = self._previous.get(signum) if self._received is not None and signum != signal.SIGTERM else None
        self._restore_handlers()
        if callable(previous):
            previous(signum, None)  # requeue (SLURM, submitit)
        self.preempted = Preempted(signum, self.path)
        return self.preempted

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()
