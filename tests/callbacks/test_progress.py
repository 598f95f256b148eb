"""The training progress bar shows the per-step loss, read only when it redraws (each read waits for a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from zf_lightning.callbacks import progress
from zf_lightning.callbacks.progress import RichProgressBar


class CountingTensor(torch.Tensor):
    reads = 0

    def item(self):
        CountingTensor.reads += 1
        return super().item()


def test_the_step_loss_is_shown_and_read_once_per_redraw_interval(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = RichProgressBar(refresh_rate=2)  # a read every 0.5 s at most
    trainer = SimpleNamespace(
        training=True, loggers=[], progress_bar_metrics={"val/top1_err": 40.0}, callback_metrics={}
    )
    shown = []
    for step in range(10):  # a step every 0.1 s
        clock[0] = 0.1 * step
        trainer.callback_metrics = {"train/loss": torch.tensor(float(step)).as_subclass(CountingTensor)}
        shown.append(bar.get_metrics(trainer, None)["train/loss"])
    assert shown == [0.0] * 5 + [5.0] * 5  # read at 0 s and 0.5 s only
    assert CountingTensor.reads == 2
    assert bar.get_metrics(trainer, None)["val/top1_err"] == 40.0
    bar.on_validation_end(SimpleNamespace(state=SimpleNamespace(fn="validate")), None)  # the next read is never stale
    trainer.training = False
    assert "train/loss" not in bar.get_metrics(trainer, None)  # outside training: Lightning's own metrics only
