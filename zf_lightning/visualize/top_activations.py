"""The strongest activations of chosen feature maps over a dataset, and their projections (paper Fig. 2).

One pass over the data keeps, for every chosen map, a running top-k of images: each image counts once
per map, with its strongest location in that map (first in row-major order on ties), and images with
equal values are ranked by dataset index. The k found for each map are then projected one by one with
the deconvnet, each on its receptive-field window, beside the image patch under that window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from zf_lightning.visualize.deconvnet import Deconvnet, ReceptiveField, cut_windows


@dataclass
class TopActivations:
    """The top-k of each chosen map of one layer: row m is map `maps[m]`, best first."""

    layer: int
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

    def __init__(self, layer: int, maps: Sequence[int], k: int = 9) -> None:
        if k < 1:
            raise ValueError(f"top-k needs k >= 1, got {k}")
        self.layer, self.k = layer, k
        self.maps = torch.as_tensor(list(maps), dtype=torch.long)
        self.values = self.image_index = self.where = None
        self.width = None

    def update(self, activation: torch.Tensor, image_index: torch.Tensor) -> None:
        """activation: (B, M, h, w), the chosen maps only; image_index: (B,) dataset indices of the batch."""
        batch, maps, h, w = activation.shape
        if maps != len(self.maps):
            raise ValueError(f"expected {len(self.maps)} maps, got activations of {maps}")
        self.width = w
        value, where = activation.reshape(batch, maps, h * w).max(dim=2)  # first maximum on ties
        index = image_index.to(value.device).reshape(1, batch).expand(maps, batch)
        if self.values is not None:
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
            raise ValueError("no data was seen: the dataset is empty")
        return TopActivations(
            self.layer, self.maps, self.values, self.image_index, self.where // self.width, self.where % self.width
        )


def find_top_activations(
    deconv: Deconvnet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    maps_by_layer: Mapping[int, Sequence[int]],
    k: int = 9,
) -> dict[int, TopActivations]:
    """One pass over `batches` of (images, dataset indices): the top-k of every listed map of every layer."""
    trackers = {layer: RunningTopK(layer, maps, k) for layer, maps in maps_by_layer.items()}
    for images, image_index in batches:
        feature_maps = deconv.feature_maps(images, list(trackers))
        for layer, tracker in trackers.items():
            chosen = feature_maps[layer].index_select(1, tracker.maps.to(images.device))
            tracker.update(chosen, image_index)
    return {layer: tracker.result() for layer, tracker in trackers.items()}


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
    maps, k = top.values.shape
    flat_index = top.image_index.reshape(-1)
    unique = torch.unique(flat_index).tolist()
    field = deconv.receptive_field(top.layer)
    projections = patches = None
    window_top = window_left = None
    for start in range(0, len(unique), images_per_chunk):
        chunk = unique[start : start + images_per_chunk]
        images = load_images(chunk)
        local_of = {index: position for position, index in enumerate(chunk)}
        entries = [n for n, index in enumerate(flat_index.tolist()) if index in local_of]
        entry = torch.tensor(entries, dtype=torch.long)
        local = torch.tensor([local_of[i] for i in flat_index[entry].tolist()], dtype=torch.long)
        map_ids = top.maps.repeat_interleave(k)[entry]
        result = deconv.project_activations(
            images, top.layer, local, map_ids, top.rows.reshape(-1)[entry], top.cols.reshape(-1)[entry], method=method
        )
        if projections is None:
            projections = result.windows.new_zeros(maps * k, *result.windows.shape[1:])
            window_top = torch.zeros(maps * k, dtype=torch.long)
            window_left = torch.zeros(maps * k, dtype=torch.long)
            if load_display is not None:
                patches = result.windows.new_zeros(maps * k, images.shape[1], *field.size)
        projections[entry.to(projections.device)] = result.windows
        window_top[entry], window_left[entry] = result.top.cpu(), result.left.cpu()
        if load_display is not None:
            display = load_display(chunk).to(projections.device)
            patches[entry.to(patches.device)] = cut_windows(display, local.to(display.device), result.top, result.left, field.size)
    if patches is None:
        patches = projections.new_zeros(0)
    else:
        patches = patches.reshape(maps, k, *patches.shape[1:])
    return TopProjections(
        top,
        projections.reshape(maps, k, *projections.shape[1:]),
        patches,
        window_top.reshape(maps, k),
        window_left.reshape(maps, k),
        field,
    )


def choose_maps(num_maps: int, count: int, seed: int, layer: int) -> list[int]:
    """`count` maps of a layer drawn at random (seeded per layer), in increasing order; all if count >= num_maps."""
    if count >= num_maps:
        return list(range(num_maps))
    generator = torch.Generator().manual_seed(seed * 1009 + layer)
    return sorted(torch.randperm(num_maps, generator=generator)[:count].tolist())
