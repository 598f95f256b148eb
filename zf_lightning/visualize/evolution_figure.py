"""Fig. 4 of the paper: one row per followed feature map (grouped by layer), one column per snapshot epoch, each
cell the projection of that map's strongest activation of the epoch (`callbacks.evolution.FeatureEvolution`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from zf_lightning.visualize.figures import contrast_stretch

_PAD = 2  # white pixels between cells


Cells = tuple[torch.Tensor, list[tuple[int, int, float]], list[tuple[int, float]]]


def evolution_grid(columns: Mapping[int, Mapping[str, np.ndarray]], cell_size: int = 48) -> Cells:
    """The cells of `columns` ({1-based epoch: a snapshot's arrays}): pixels (3, H, W) in [0, 1], rows as
    (layer, map, y centre), columns as (epoch, x centre).

    One `make_grid` block per layer (rows: its maps, columns: the snapshot epochs so far), blocks stacked
    with white space between layers. Every cell is contrast-normalised on its own (`figures.contrast_stretch`)
    and resized to `cell_size` pixels, whatever the layer's receptive field.
    """
    epochs = sorted(columns)
    if not epochs:
        return torch.ones(3, cell_size, cell_size), [], []
    first = columns[epochs[0]]
    size, pad, gap = cell_size, _PAD, cell_size // 3
    blocks: list[torch.Tensor] = []
    rows: list[tuple[int, int, float]] = []
    top = 0
    for layer in (int(x) for x in first["layers"]):
        maps = first[f"maps_layer{layer}"].tolist()
        cells = [
            _resize(contrast_stretch(torch.from_numpy(columns[epoch][f"windows_layer{layer}"][k])), size)
            for k in range(len(maps))
            for epoch in epochs
        ]
        if blocks:
            blocks.append(torch.ones(3, gap, blocks[0].shape[2]))
            top += gap
        block = make_grid(torch.stack(cells), nrow=len(epochs), padding=pad, pad_value=1.0)
        rows += [(layer, m, top + pad + k * (size + pad) + size / 2) for k, m in enumerate(maps)]
        blocks.append(block)
        top += block.shape[1]
    placed = [(epoch, pad + i * (size + pad) + size / 2) for i, epoch in enumerate(epochs)]
    return torch.cat(blocks, dim=1), rows, placed


def render_evolution(columns: Mapping[int, Mapping[str, np.ndarray]], cell_size: int = 48) -> Image.Image:
    """The Fig. 4 grid with its labels (epochs on top, layer and map on the left), as a PIL image.

    PIL rather than matplotlib: the same picture in a tenth of the time, which counts against the
    epoch on small runs (a snapshot must stay a small fraction of an epoch).
    """
    canvas, rows, epoch_columns = evolution_grid(columns, cell_size)
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    font = ImageFont.load_default(size=11)
    left, top = 100, 18
    image = Image.new("RGB", (pixels.shape[1] + left + 4, pixels.shape[0] + top + 4), "white")
    image.paste(Image.fromarray(pixels), (left, top))
    draw = ImageDraw.Draw(image)
    for epoch, x in epoch_columns:
        draw.text((left + x, top - 3), f"epoch {epoch}", fill="black", font=font, anchor="md")
    for layer, map_index, y in rows:
        draw.text((left - 6, top + y), f"layer {layer}, map {map_index}", fill="black", font=font, anchor="rm")
    return image


def _resize(window: torch.Tensor, size: int) -> torch.Tensor:
    """(C, h, w) -> (3, size, size): small windows (layer 1) blown up pixel by pixel, large ones averaged."""
    if window.shape[0] == 1:
        window = window.expand(3, -1, -1)
    h, w = window.shape[1:]
    if (h, w) == (size, size):
        return window
    mode = "nearest-exact" if max(h, w) <= size else "area"
    return F.interpolate(window[None], size=(size, size), mode=mode)[0]
