"""A CSV logger that a resumed run continues, and the callback that ties its rows to checkpoints.

Lightning's CSV logger deletes an earlier metrics.csv. Here a resumed run keeps the rows that were logged before
the checkpoint it resumes from and drops the ones logged after it (the resumed run logs those again), so that a run
stopped and resumed any number of times ends with the rows of a run that never stopped.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from zf_lightning.utils.io import atomic_write

log = logging.getLogger(__name__)
LOGGED_ROWS = "metrics_csv_rows"  # checkpoint key: rows of metrics.csv written before the checkpoint


def _write_rows_atomically(path: str, fieldnames: list[str], rows: list[dict]) -> None:
    # A kill while the header is rewritten never leaves a half file.
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer, appending to an existing metrics.csv (its first `keep_rows` rows, or all of them)."""

    def __init__(self, log_dir: str, keep_rows: int | None) -> None:
        self.keep_rows = keep_rows
        self.rows_on_disk = 0
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            self.metrics_keys = list(reader.fieldnames or [])
        if self.keep_rows is not None and len(rows) < self.keep_rows:
            log.warning(
                "%s has %d rows, fewer than the %d written before the checkpoint: edited since? All are kept",
                self.metrics_file_path,
                len(rows),
                self.keep_rows,
            )
        elif self.keep_rows is not None and len(rows) > self.keep_rows:
            rows = rows[: self.keep_rows]  # logged after the checkpoint: the resumed run logs them again
            _write_rows_atomically(self.metrics_file_path, self.metrics_keys, rows)
        self.rows_on_disk = len(rows)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        _write_rows_atomically(self.metrics_file_path, fieldnames, rows)

    def save(self) -> None:
        new_rows = len(self.metrics)
        super().save()
        self.rows_on_disk += new_rows


class ResumableCSVLogger(CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger`, except that an existing metrics.csv is continued, never deleted.

    Args:
        keep_rows: None: append to an existing metrics.csv. N: keep its first N rows (those written before the
            checkpoint a run resumes from, `checkpoint[LOGGED_ROWS]`) and drop the rest; 0 for a run that starts over.
    """

    def __init__(self, *args: Any, keep_rows: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_rows = keep_rows

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir, keep_rows=self.keep_rows)
        # Lightning types the attribute as its private base writer; only an _AppendingWriter is ever put there
        return self._experiment  # type: ignore[return-value]

    @property
    def rows_on_disk(self) -> int:
        return self.experiment.rows_on_disk if self._experiment is not None else 0


class LoggedRowsInCheckpoints(Callback):
    """Flushes every logger before a checkpoint is written, and records in it how many rows metrics.csv holds.

    So a run killed after a checkpoint loses no row logged before it, and a run resumed from it keeps exactly those
    rows (`ResumableCSVLogger(keep_rows=...)`, set by zf-train from the checkpoint).
    """

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.save()
        csv_loggers = [logger for logger in trainer.loggers if isinstance(logger, ResumableCSVLogger)]
        if csv_loggers:
            checkpoint[LOGGED_ROWS] = csv_loggers[0].rows_on_disk
