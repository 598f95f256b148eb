"""A progress bar for work outside the training loops (mean images, file scans)."""

from __future__ import annotations

import sys

from rich.progress import track as rich_track


def track(iterable, description: str):
    """rich's progress bar on a terminal, plain iteration otherwise (CI logs, tests)."""
    if not sys.stderr.isatty():
        return iterable
    return rich_track(iterable, description=description, transient=True)
