"""Fig. 4 of the paper: one row per followed feature map (grouped by layer), one column per snapshot epoch, each
cell the projection of that map's strongest activation of the epoch (`callbacks.evolution.FeatureEvolution`).

Each cell is the part of the activation's receptive-field window inside the image, contrast-stretched on its own
and scaled to `cell_size` pixels (`top9_figure.inside_image`, `fit_tile`).

Empty cells. A map's strongest activation can be positive while its deconvnet projection is exactly zero: going
down, the deconvnet rectifies the reconstruction at every ReLU (section 2.1), so when everything that reaches some
layer is negative, nothing passes. It happens when the activation is carried by the conv's bias or by inputs that
the map's filter weighs negatively (`tests/deconv/test_engine.py` builds such a map and checks Captum's
`NeuronDeconvolution` gives zero too). Such a cell shows the image patch under the window, dimmed, marked
"projection 0", with the reason under the figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.utils import make_grid

from zf_lightning.visualize.figures import contrast_stretch
from zf_lightning.visualize.style import DPI, new_figure
from zf_lightning.visualize.top9_figure import fit_tile, inside_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_PAD = 2  # white pixels between cells
LEFT, TOP, FOOT = 150, 26, 60  # pixels for the row labels, the epoch labels and the footnote
ZERO_NOTE = (
    "projection 0: the map's strongest activation is positive but its deconvnet projection is exactly zero. "
    "Going down, the deconvnet rectifies the reconstruction at every layer (section 2.1); here all of it is "
    "negative at some layer, as when the activation comes from the conv's bias or from inputs its filter "
    "weighs negatively. Shown instead: the image patch under the activation's window, dimmed."
)

Cells = tuple[torch.Tensor, list[tuple[int, int, float]], list[tuple[int, float]]]


def _cell(arrays: Mapping[str, np.ndarray], layer: int, k: int, size: int) -> tuple[torch.Tensor, bool]:
    """Map k of `layer` in one snapshot, as a (3, size, size) cell, and whether its projection is zero."""
    window = torch.from_numpy(arrays[f"windows_layer{layer}"][k])
    image_size = arrays["image_size"].tolist() if "image_size" in arrays else None
    top = int(arrays[f"top_layer{layer}"][k]) if f"top_layer{layer}" in arrays else 0
    left = int(arrays[f"left_layer{layer}"][k]) if f"left_layer{layer}" in arrays else 0

    def cut(picture: torch.Tensor) -> torch.Tensor:
        return inside_image(picture, top, left, image_size) if image_size is not None else picture

    if window.abs().max() > 0 or f"patches_layer{layer}" not in arrays:
        return fit_tile(contrast_stretch(cut(window)), size), False
    patch = cut(torch.from_numpy(arrays[f"patches_layer{layer}"][k])).clamp(0, 1)
    return fit_tile(0.35 * patch + 0.65 * 0.5, size), True  # dimmed towards grey


def evolution_grid(columns: Mapping[int, Mapping[str, np.ndarray]], cell_size: int = 96) -> Cells:
    """The cells of `columns` ({1-based epoch: a snapshot's arrays}): pixels (3, H, W) in [0, 1], rows as
    (layer, map, y centre), columns as (epoch, x centre)."""
    return _grid(columns, cell_size)[:3]


def _grid(
    columns: Mapping[int, Mapping[str, np.ndarray]], cell_size: int
) -> tuple[torch.Tensor, list[tuple[int, int, float]], list[tuple[int, float]], list[tuple[float, float]]]:
    epochs = sorted(columns)
    if not epochs:
        return torch.ones(3, cell_size, cell_size), [], [], []
    first = columns[epochs[0]]
    size, pad, gap = cell_size, _PAD, cell_size // 4
    blocks: list[torch.Tensor] = []
    rows: list[tuple[int, int, float]] = []
    zeros: list[tuple[float, float]] = []  # centres of the cells whose projection is zero
    top = 0
    for layer in (int(x) for x in first["layers"]):
        maps = first[f"maps_layer{layer}"].tolist()
        cells = []
        for k in range(len(maps)):
            for i, epoch in enumerate(epochs):
                cell, zero = _cell(columns[epoch], layer, k, size)
                cells.append(cell)
                if zero:
                    zeros.append((pad + i * (size + pad) + size / 2, top + pad + k * (size + pad) + size / 2))
        if blocks:
            blocks.append(torch.ones(3, gap, blocks[0].shape[2]))
            top += gap
        block = make_grid(torch.stack(cells), nrow=len(epochs), padding=pad, pad_value=1.0)
        rows += [(layer, m, top + pad + k * (size + pad) + size / 2) for k, m in enumerate(maps)]
        blocks.append(block)
        top += block.shape[1]
    placed = [(epoch, pad + i * (size + pad) + size / 2) for i, epoch in enumerate(epochs)]
    return torch.cat(blocks, dim=1), rows, placed, zeros


def evolution_figure(columns: Mapping[int, Mapping[str, np.ndarray]], cell_size: int = 96) -> Figure:
    """The Fig. 4 grid with its labels (epochs on top, layer and map on the left), one image pixel per PNG pixel
    (call inside `style.styled()`)."""
    import textwrap

    canvas, rows, epoch_columns, zeros = _grid(columns, cell_size)
    height, width = canvas.shape[1:]
    total_w = width + LEFT + 8
    note = textwrap.wrap(ZERO_NOTE, width=max(30, (total_w - 16) // 8)) if zeros else []  # ~7 px a character
    foot = 16 * len(note) + 12 if note else 4
    total_h = height + TOP + foot
    figure = new_figure(total_w / DPI, total_h / DPI, layout="none")
    axis = figure.add_axes((LEFT / total_w, foot / total_h, width / total_w, height / total_h))
    axis.imshow(canvas.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    axis.set_axis_off()
    for epoch, x in epoch_columns:
        axis.text(x, -6, f"epoch {epoch}", ha="center", va="bottom", fontsize=10)
    for layer, map_index, y in rows:
        axis.text(-8, y, f"layer {layer}, map {map_index}", ha="right", va="center", fontsize=10)
    for x, y in zeros:
        axis.text(x, y, "projection 0", ha="center", va="center", fontsize=8, color="black")
    if note:
        figure.text(8 / total_w, (foot - 6) / total_h, "\n".join(note), ha="left", va="top", fontsize=9)
    return figure
