"""The training loops' progress bar: Lightning's Rich bar, without a GPU sync per step."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar
from torch import Tensor

_Metrics = dict[str, int | str | float | dict[str, float]]  # what Lightning's bars show


class RichProgressBar(LightningRichProgressBar):
    """Lightning's Rich progress bar, reading the metrics at most `refresh_rate` times a second.

    Turning a CUDA tensor into a Python number waits for the GPU, so the host cannot queue the next step while
    the current one runs. Lightning reads every `prog_bar=True` metric after every batch, and its bar reads them
    again. Here the per-step metrics to show (`step_metrics`, logged without `prog_bar`) are read from
    `trainer.callback_metrics` only when the bar redraws, after 1/`refresh_rate` seconds; at the end of an epoch
    and of validation everything is read at once, so the bar ends on the epoch's values.
    """

    def __init__(self, *args: Any, step_metrics: Sequence[str] = ("train/loss",), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_metrics = list(step_metrics)
        self._shown: _Metrics | None = None
        self._read_at = -math.inf

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> _Metrics:
        now = time.monotonic()
        if self._shown is None or not trainer.training or now - self._read_at >= 1.0 / self.refresh_rate:
            shown = super().get_metrics(trainer, pl_module)
            if trainer.training:
                for name in self.step_metrics:
                    value = trainer.callback_metrics.get(name)
                    if value is not None:
                        shown[name] = value.item() if isinstance(value, Tensor) else value
            self._shown, self._read_at = shown, now
        return self._shown

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._shown = None
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._shown = None
        super().on_validation_end(trainer, pl_module)
