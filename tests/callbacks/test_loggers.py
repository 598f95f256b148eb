"""metrics.csv across a resume: the rows written before the checkpoint are kept, those after it dropped."""

from __future__ import annotations

import csv
import os

from zf_lightning.callbacks.loggers import ResumableCSVLogger


def rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def log(logger: ResumableCSVLogger, steps: range, key: str = "train/loss") -> None:
    for step in steps:
        logger.log_metrics({key: float(step)}, step=step)
    logger.save()


def test_a_resumed_logger_keeps_the_checkpoints_rows_and_appends(tmp_path):
    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    log(first, range(5))
    assert first.rows_on_disk == 5
    log(first, range(5, 8), key="val/loss")  # a new column: Lightning rewrites the file with the new header
    assert first.rows_on_disk == 8
    path = os.path.join(first.log_dir, "metrics.csv")

    resumed = ResumableCSVLogger(tmp_path, name="csv", version="", keep_rows=6)  # the checkpoint came after 6 rows
    log(resumed, range(6, 9), key="val/loss")
    written = rows(path)
    assert [row["step"] for row in written] == ["0", "1", "2", "3", "4", "5", "6", "7", "8"]
    assert written[5]["val/loss"] == "5.0" and written[8]["val/loss"] == "8.0"
    assert resumed.rows_on_disk == 9
    assert not [name for name in os.listdir(first.log_dir) if name.endswith(".tmp")]


def test_a_run_that_starts_over_starts_an_empty_file_and_keep_rows_none_appends(tmp_path):
    log(ResumableCSVLogger(tmp_path, name="csv", version=""), range(3))
    appended = ResumableCSVLogger(tmp_path, name="csv", version="")
    log(appended, range(3, 4))
    assert appended.rows_on_disk == 4
    again = ResumableCSVLogger(tmp_path, name="csv", version="", keep_rows=0)
    log(again, range(2))
    assert [row["step"] for row in rows(os.path.join(again.log_dir, "metrics.csv"))] == ["0", "1"]
