"""A progress bar for work outside the training loops (mean images, file scans)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import track as rich_track

T = TypeVar("T")


def track(iterable: Iterable[T], description: str) -> Iterable[T]:
    """rich's progress bar on a terminal, plain iteration otherwise (CI logs, tests)."""
    if not sys.stderr.isatty():
        return iterable
    return rich_track(iterable, description=description, transient=True)


def track_images(batches: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    """rich's progress over the images of `batches` ((images, ...) tuples), with images/s and the time left; plain
    iteration when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield from batches
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total, rate="-")
        for batch in batches:
            yield batch
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            progress.advance(task, len(images))  # type: ignore[arg-type]
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:.0f}" if speed else "-")
