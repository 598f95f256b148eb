"""The building blocks of the config schemas: fields with value checks, and the two kinds of node."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import field
from typing import Any

# A check takes a value of the right type and returns what is wrong with it, or None.


def choices(source: Callable[[], Iterable[Any]]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        allowed = list(source())
        return None if value in allowed else f"must be one of {allowed}"

    return check


def at_least(bound: float) -> Callable[[Any], str | None]:
    return lambda value: None if value >= bound else f"must be >= {bound}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def probability(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def open_unit(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def all_at_least(bound: int) -> Callable[[Any], str | None]:
    def check(values: Sequence[float]) -> str | None:
        bad = [v for v in values if v < bound]
        return f"every entry must be >= {bound}, got {bad}" if bad else None

    return check


def all_positive(values: Sequence[float]) -> str | None:
    bad = [v for v in values if v <= 0]
    return f"every entry must be > 0, got {bad}" if bad else None


def layer_names_or_numbers(layers: int | str | Sequence[int | str]) -> str | None:
    """A layer is the paper's number (conv 1..C, then fc6, fc7) or a module name of the network (`layer4.1`)."""
    bad = [
        layer
        for layer in (layers if isinstance(layers, (list, tuple)) else [layers])
        if not (
            (isinstance(layer, int) and not isinstance(layer, bool) and layer >= 1)
            or (isinstance(layer, str) and layer)
        )
    ]
    return f"{bad}: a layer is a number >= 1 (the paper's) or a module name such as 'layer4.1'" if bad else None


def length(n: int, what: str) -> Callable[[Any], str | None]:
    return lambda values: None if len(values) == n else f"must give {n} numbers ({what}), got {len(values)}"


def snapshot_epochs(epochs: Sequence[int]) -> str | None:
    increasing = all(a < b for a, b in zip(epochs, epochs[1:]))
    if epochs and increasing and min(epochs) >= 1:
        return None
    return (
        "must be a non-empty, strictly increasing list of 1-based epochs (ints >= 1, no duplicates), e.g. [1, 2, 5, 10]"
    )


def conv_layers(layers: Sequence[int]) -> str | None:
    bad = [layer for layer in layers if not 1 <= layer <= 5]
    return f"unknown layer(s) {bad}; allowed values: the conv layers 1..5" if bad else None


def removable_layers(layers: Sequence[int]) -> str | None:
    from zf_lightning.models.convnet import REMOVABLE_LAYERS

    bad = [layer for layer in layers if layer not in REMOVABLE_LAYERS]
    return (
        f"layer(s) {bad} cannot be removed; allowed values: {list(REMOVABLE_LAYERS)} (conv3, conv4, fc6, fc7)"
        if bad
        else None
    )


def devices(value: int | str | list[int]) -> str | None:
    if isinstance(value, int) and (value == -1 or value >= 1):
        return None
    if isinstance(value, str) or (isinstance(value, list) and value and all(v >= 0 for v in value)):
        return None
    return "must be a number of devices >= 1, -1 (all), 'auto', or a non-empty list of device ids"


def spec(*checks: Callable[[Any], str | None], doc: str = "") -> Any:
    """A schema field: its type is the annotation, `checks` test its value (the default is never used)."""
    return field(default=None, metadata={"checks": checks, "doc": doc})


class Closed:
    """A node whose keys are exactly the dataclass fields."""


class Targeted:
    """A node with a `_target_`: its keys are the target's parameters (less `drop_keys`, plus `extra_keys`);
    the dataclass fields type-check those of them that are present."""

    drop_keys: typing.ClassVar[frozenset[str]] = frozenset()
    extra_keys: typing.ClassVar[frozenset[str]] = frozenset()
