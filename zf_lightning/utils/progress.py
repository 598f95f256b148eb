"""A progress bar for work outside the training loops (mean images, file scans)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from rich.progress import track as rich_track

T = TypeVar("T")


def track(iterable: Iterable[T], description: str) -> Iterable[T]:
    """rich's progress bar on a terminal, plain iteration otherwise (CI logs, tests)."""
    if not sys.stderr.isatty():
        return iterable
    return rich_track(iterable, description=description, transient=True)
