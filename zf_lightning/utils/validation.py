"""Argument checks shared by every engine, analysis and callback: an error names the argument, the value given
and what is allowed."""

from __future__ import annotations

import operator
from typing import Any

import torch

from zf_lightning.utils.errors import InputError


def as_int(value: Any) -> int | None:
    """`value` as an int if it is an integer (int, numpy integer, 0-d integer tensor) but not a bool, else None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dim() != 0):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_int(value: Any, name: str, minimum: int = 1, unit: str = "") -> int:
    """`value` as an int >= `minimum`, or a ValueError: "`name` must be an int >= `minimum` (unit), got ..."."""
    number = as_int(value)
    if number is None or number < minimum:
        raise InputError(f"{name} must be an int >= {minimum}{f' ({unit})' if unit else ''}, got {value!r}")
    return number


def int_pair(value: Any, name: str) -> tuple[int, int]:
    """An int (used for both) or a pair of ints, as (first, second); else a ValueError naming `name`."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    numbers = [as_int(v) for v in values]
    if len(numbers) != 2 or any(number is None for number in numbers):
        raise InputError(f"{name} must be an int or a pair of ints, got {value!r}")
    return numbers[0], numbers[1]  # type: ignore[return-value]
