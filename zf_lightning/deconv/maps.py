"""Which feature maps to follow per conv layer: listed ones, or a seeded draw. One rule for every figure
(Fig. 2's top-9, Fig. 4's feature evolution, Fig. 6's layer-2 projections)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from zf_lightning.deconv.engine import Deconvnet
from zf_lightning.models.layers import layer_key
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.validation import check_int


def draw_maps(num_maps: int, count: int, seed: int, layer: int | str) -> list[int]:
    """`count` of a layer's `num_maps` maps drawn at random, in increasing order; all of them if count >= num_maps.

    Each layer draws from its own generator (seed * 1009 + layer, a module name counting as its CRC-32): adding
    or removing a layer leaves the other layers' maps as they were.
    """
    if count >= num_maps:
        return list(range(num_maps))
    number = layer if isinstance(layer, int) else zlib.crc32(layer.encode())  # stable across runs, unlike hash()
    generator = torch.Generator().manual_seed(seed * 1009 + number)  # never the global RNG: training must not change
    return sorted(torch.randperm(num_maps, generator=generator)[:count].tolist())


def choose_maps(
    deconv: Deconvnet,
    layers: Sequence[int | str] | None,
    count: int,
    seed: int,
    explicit: Mapping[Any, Sequence[int]] | None = None,
    owner: str = "maps",
) -> dict[int | str, list[int]]:
    """{layer: maps}: the maps `explicit` lists for a layer, the others drawn by `draw_maps`.

    A layer is a paper conv layer number or a module name (see `Deconvnet`). `layers` None means the layers
    `explicit` names, or else every conv layer. Every layer and map is checked against the network; errors start
    with `owner` (the option or callback that asked).
    """
    listed = {layer_key(layer): [int(m) for m in maps] for layer, maps in (explicit or {}).items()}
    available = list(range(1, deconv.num_layers + 1))
    if layers is not None:
        wanted = list(dict.fromkeys(layer_key(layer) for layer in layers))
    else:
        ints = all(isinstance(layer, int) for layer in listed)
        wanted = (sorted(listed) if ints else list(listed)) if listed else list(available)
    unknown = [layer for layer in wanted if isinstance(layer, int) and layer not in available]
    if unknown:
        raise InputError(
            f"{owner}: unknown layer(s) {unknown}: the model has {deconv.num_layers} conv layers "
            f"(valid layers {available}, or module names)"
        )
    stray = [layer for layer in listed if layer not in wanted]
    if stray:
        raise InputError(f"{owner}: maps are listed for layer(s) {stray}, which are not among the layers {wanted}")
    check_int(count, f"{owner}: maps_per_layer")
    chosen: dict[int | str, list[int]] = {}
    for layer in wanted:
        try:
            num_maps = deconv.num_maps(layer)
        except InputError as error:  # an unknown module name: the engine names close ones
            raise InputError(f"{owner}: {error}") from None
        if layer in listed:
            bad = [m for m in listed[layer] if not 0 <= m < num_maps]
            if bad:
                raise InputError(
                    f"{owner}: map(s) {bad} of layer {layer} out of range: it has {num_maps} maps "
                    f"(valid indices 0..{num_maps - 1})"
                )
            chosen[layer] = listed[layer]
        else:
            chosen[layer] = draw_maps(num_maps, count, seed, layer)
    return chosen
