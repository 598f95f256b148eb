"""The strongest activations of chosen feature maps over a dataset, and their projections (paper Fig. 2).

One pass over the data keeps, for every chosen map, a running top-k of images: each image counts once
per map, with its strongest location in that map (first in row-major order on ties), and images with
equal values are ranked by dataset index. The k found for each map are then projected one by one with
the deconvnet, each on its receptive-field window, beside the image patch under that window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zf_lightning.deconv.engine import Deconvnet, ReceptiveField, cut_windows
from zf_lightning.utils.errors import InputError


@dataclass
class TopActivations:
    """The top-k of each chosen map of one layer: row m is map `maps[m]`, best first."""

    layer: int | str  # a paper layer number or a module name (see `Deconvnet`)
    maps: torch.Tensor  # (M,)
    values: torch.Tensor  # (M, k)
    image_index: torch.Tensor  # (M, k) dataset index of the image
    rows: torch.Tensor  # (M, k) location in the layer's feature map
    cols: torch.Tensor  # (M, k)

    def as_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        names = ("maps", "values", "image_index", "rows", "cols")
        return {f"{prefix}{name}": getattr(self, name).cpu().numpy() for name in names}


class RunningTopK:
    """A running top-k per map over streamed batches of one layer's feature maps."""

    def __init__(self, layer: int | str, maps: Sequence[int], k: int = 9) -> None:
        if k < 1:
            raise InputError(f"top-k needs k >= 1, got {k}")
        self.layer, self.k = layer, k
        self.maps = torch.as_tensor(list(maps), dtype=torch.long)
        self.values: torch.Tensor | None = None  # (M, <=k) each, set together by `update`
        self.image_index: torch.Tensor | None = None
        self.where: torch.Tensor | None = None
        self.width: int | None = None

    def update(self, activation: torch.Tensor, image_index: torch.Tensor) -> None:
        """activation: (B, M, h, w), the chosen maps only; image_index: (B,) dataset indices of the batch."""
        batch, maps, h, w = activation.shape
        if maps != len(self.maps):
            raise InputError(f"expected {len(self.maps)} maps, got activations of {maps}")
        self.width = w
        value, where = activation.reshape(batch, maps, h * w).max(dim=2)  # first maximum on ties
        index = image_index.to(value.device).reshape(1, batch).expand(maps, batch)
        if self.values is not None:
            assert self.where is not None and self.image_index is not None  # set together with values
            value = torch.cat([self.values, value.T], dim=1)
            where = torch.cat([self.where, where.T], dim=1)
            index = torch.cat([self.image_index, index], dim=1)
        else:
            value, where = value.T, where.T
        # Order by value (descending), then dataset index: two stable sorts.
        by_index = index.argsort(dim=1, stable=True)
        value, where, index = (t.gather(1, by_index) for t in (value, where, index))
        order = value.argsort(dim=1, descending=True, stable=True)[:, : self.k]
        self.values, self.where, self.image_index = (t.gather(1, order) for t in (value, where, index))

    def result(self) -> TopActivations:
        if self.values is None:
            raise InputError("no data was seen: the dataset is empty")
        # set together with values
        assert self.image_index is not None and self.where is not None and self.width is not None
        return TopActivations(
            self.layer, self.maps, self.values, self.image_index, self.where // self.width, self.where % self.width
        )


def find_top_activations(
    deconv: Deconvnet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    maps_by_layer: Mapping[Any, Sequence[int]],
    k: int = 9,
) -> dict[Any, TopActivations]:
    """One pass over `batches` of (images, dataset indices): the top-k of every listed map of every layer.

    Layers are paper numbers or module names (any network); each batch goes forward once per path, only up to
    the deepest layer.
    """
    trackers = {layer: RunningTopK(layer, maps, k) for layer, maps in maps_by_layer.items()}
    for images, image_index in batches:
        feature_maps = deconv.feature_maps(images, list(trackers))
        for layer, tracker in trackers.items():
            chosen = feature_maps[layer].index_select(1, tracker.maps.to(images.device))
            tracker.update(chosen, image_index)
    return {layer: tracker.result() for layer, tracker in trackers.items()}


@dataclass
class _Slot:
    """What `project_all_top_activations` fills in for one layer, chunk by chunk."""

    top: torch.Tensor
    left: torch.Tensor
    projections: torch.Tensor | None = None
    patches: torch.Tensor | None = None


@dataclass
class TopProjections:
    """Projections and image patches of a `TopActivations`, each (M, k, C, fh, fw), cut to the receptive field."""

    top: TopActivations
    projections: torch.Tensor
    patches: torch.Tensor
    window_top: torch.Tensor  # (M, k) input row of each window's top edge (negative: in the padding)
    window_left: torch.Tensor
    receptive_field: ReceptiveField

    def as_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        arrays = self.top.as_arrays(prefix)
        arrays[f"{prefix}projections"] = self.projections.cpu().numpy()
        arrays[f"{prefix}patches"] = self.patches.cpu().numpy()
        arrays[f"{prefix}window_top"] = self.window_top.cpu().numpy()
        arrays[f"{prefix}window_left"] = self.window_left.cpu().numpy()
        arrays[f"{prefix}receptive_field"] = np.array(self.receptive_field.size)
        return arrays


def project_top_activations(
    deconv: Deconvnet,
    top: TopActivations,
    load_images: Callable[[list[int]], torch.Tensor],
    load_display: Callable[[list[int]], torch.Tensor] | None = None,
    method: str = "deconvnet",
    images_per_chunk: int = 64,
) -> TopProjections:
    """Project each of the k activations of each map on its own, loading every image once.

    Args:
        load_images: dataset indices -> (n, C, H, W) network inputs, on the model's device.
        load_display: dataset indices -> (n, C, H, W) the same crops for display (0-1); None: no patches.
    """
    return project_all_top_activations(deconv, {top.layer: top}, load_images, load_display, method, images_per_chunk)[
        top.layer
    ]


def project_all_top_activations(
    deconv: Deconvnet,
    tops: Mapping[Any, TopActivations],
    load_images: Callable[[list[int]], torch.Tensor],
    load_display: Callable[[list[int]], torch.Tensor] | None = None,
    method: str = "deconvnet",
    images_per_chunk: int = 64,
) -> dict[Any, TopProjections]:
    """`project_top_activations` for several layers: an image in the top-k of several layers is loaded once and
    sent forward once per path (up to the deepest of its fast-path layers).

    General-path layers (module names off the fast path) give whole-image windows (their receptive field is the
    image)."""
    flat = {layer: top.image_index.reshape(-1) for layer, top in tops.items()}
    unique = torch.unique(torch.cat(list(flat.values()))).tolist()
    fields: dict[Any, ReceptiveField] = {}  # from the first projections: general-path windows need the image size
    out: dict[int, _Slot] = {}
    for layer, top in tops.items():
        n = top.values.numel()
        out[layer] = _Slot(top=torch.zeros(n, dtype=torch.long), left=torch.zeros(n, dtype=torch.long))
    for start in range(0, len(unique), images_per_chunk):
        chunk = unique[start : start + images_per_chunk]
        images = load_images(chunk)
        display = load_display(chunk).to(images.device) if load_display is not None else None
        position = torch.full((max(unique) + 1,), -1, dtype=torch.long)
        position[torch.tensor(chunk)] = torch.arange(len(chunk))
        requests: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, top in tops.items():
            local = position[flat[layer]]
            entry = (local >= 0).nonzero().flatten()
            if not len(entry):
                continue
            k = top.values.shape[1]
            entries[layer] = (entry, local[entry])
            requests[layer] = (
                local[entry],
                top.maps.repeat_interleave(k)[entry],
                top.rows.reshape(-1)[entry],
                top.cols.reshape(-1)[entry],
            )
        results = deconv.project_activations_by_layer(images, requests, method=method)
        for layer, result in results.items():
            entry, local = entries[layer]
            slot = out[layer]
            fields.setdefault(layer, result.receptive_field)
            if slot.projections is None:
                slot.projections = result.windows.new_zeros(
                    flat[layer].numel(), result.windows.shape[1], *fields[layer].size
                )
                if display is not None:
                    slot.patches = result.windows.new_zeros(flat[layer].numel(), display.shape[1], *fields[layer].size)
            where = entry.to(result.windows.device)
            slot.projections[where] = result.windows
            slot.top[entry], slot.left[entry] = result.top.cpu(), result.left.cpu()
            if display is not None:
                assert slot.patches is not None  # made with the projections when there is a display
                slot.patches[where] = cut_windows(
                    display, local.to(display.device), result.top, result.left, fields[layer].size
                )
    projected = {}
    for layer, top in tops.items():
        maps, k = top.values.shape
        slot = out[layer]
        patches = slot.patches
        assert slot.projections is not None  # every top-k image was in some chunk
        projected[layer] = TopProjections(
            top,
            slot.projections.reshape(maps, k, *slot.projections.shape[1:]),
            patches.reshape(maps, k, *patches.shape[1:]) if patches is not None else slot.projections.new_zeros(0),
            slot.top.reshape(maps, k),
            slot.left.reshape(maps, k),
            fields[layer],
        )
    return projected
