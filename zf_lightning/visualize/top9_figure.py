"""Fig. 2 of the paper: for each chosen feature map, its top-k activations over a dataset projected to pixel space
(left, 3 x 3) beside the image patches under them (right), the activation value under each projection.

Each tile is the part of the activation's receptive-field window that lies inside the image (at layers 3-5 the
window is larger than a small image, and the rest is padding), scaled to fill the tile. Projections are
contrast-stretched each on its own, as the paper shows them (`figures.contrast_stretch`). One figure per layer
(`top9_figure`) and one of all layers (`top9_overview`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from zf_lightning.visualize.figures import contrast_stretch
from zf_lightning.visualize.style import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from zf_lightning.deconv.topk import TopProjections

TILE = 64  # pixels of a tile's longer side in the figure
VALUE_STRIP = 13  # pixels under each tile row for the activation values
GAP = 8  # pixels between the projections' block and the patches' block


def inside_image(window: torch.Tensor, top: int, left: int, image_size: Sequence[int]) -> torch.Tensor:
    """The part of a receptive-field window (C, h, w) placed at (top, left) that lies inside an image of
    `image_size` (H, W); a window inside the image is returned whole."""
    height, width = int(image_size[0]), int(image_size[1])
    rows = slice(max(0, -top), min(window.shape[1], height - top))
    cols = slice(max(0, -left), min(window.shape[2], width - left))
    return window[:, rows, cols]


def fit_tile(image: torch.Tensor, tile: int = TILE, fill: float = 1.0) -> torch.Tensor:
    """(C, h, w) in [0, 1] scaled so that its longer side is `tile` pixels, centred on a `tile` x `tile` square
    of `fill` (nearest-neighbour when enlarging: the paper's small layer-1 windows stay crisp)."""
    image = image.float()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    h, w = image.shape[1:]
    scale = tile / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    mode = "nearest-exact" if scale >= 1 else "area"
    resized = F.interpolate(image[None], size=size, mode=mode)[0]
    out = torch.full((3, tile, tile), fill)
    top, left = (tile - size[0]) // 2, (tile - size[1]) // 2
    out[:, top : top + size[0], left : left + size[1]] = resized
    return out


def _block(tiles: list[torch.Tensor], per_row: int, tile: int, strip: int) -> torch.Tensor:
    """Tiles (3, tile, tile) in rows of `per_row`, each row followed by a white strip for its values."""
    rows = math.ceil(len(tiles) / per_row)
    out = torch.ones(3, rows * (tile + strip), per_row * (tile + 2))
    for index, cell in enumerate(tiles):
        row, col = divmod(index, per_row)
        y, x = row * (tile + strip), col * (tile + 2) + 1
        out[:, y : y + tile, x : x + tile] = cell
    return out


def map_block(
    projected: TopProjections, m: int, image_size: Sequence[int], tile: int = TILE, patches: bool = True
) -> tuple[torch.Tensor, list[tuple[float, float, str]]]:
    """Map `m`'s picture (3, H, W): its k projections (3 x 3 for the top-9) and, beside them, the image patches,
    each cut to the image and scaled to a tile; and where its activation values go, as (x, y, text)."""
    k = projected.projections.shape[1]
    per_row = math.ceil(math.sqrt(k))
    strip = VALUE_STRIP
    cuts = [
        inside_image(
            projected.projections[m, j].cpu(),
            int(projected.window_top[m, j]),
            int(projected.window_left[m, j]),
            image_size,
        )
        for j in range(k)
    ]
    left = _block([fit_tile(contrast_stretch(cut), tile) for cut in cuts], per_row, tile, strip)
    labels = []
    for j in range(k):
        row, col = divmod(j, per_row)
        value = float(projected.top.values[m, j])
        labels.append((col * (tile + 2) + 1 + tile / 2, row * (tile + strip) + tile + strip / 2, f"{value:.3g}"))
    if not patches or projected.patches.numel() == 0:
        return left, labels
    patch_cuts = [
        inside_image(
            projected.patches[m, j].cpu(),
            int(projected.window_top[m, j]),
            int(projected.window_left[m, j]),
            image_size,
        )
        for j in range(k)
    ]
    right = _block([fit_tile(cut.clamp(0, 1), tile) for cut in patch_cuts], per_row, tile, strip)
    return torch.cat([left, torch.ones(3, left.shape[1], GAP), right], dim=2), labels


def _show(axis: Axes, picture: torch.Tensor, labels: list[tuple[float, float, str]], title: str) -> None:
    axis.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    for x, y, text in labels:
        axis.text(x, y, text, ha="center", va="center", fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.set_axis_off()


def top9_figure(
    projected: TopProjections, image_size: Sequence[int], title: str, tile: int = TILE, per_row: int | None = None
) -> Figure:
    """Fig. 2 for one layer: a panel per chosen map ("map m": projections | patches, values under the
    projections), in a grid, under `title` (the network and the layer)."""
    maps = [int(m) for m in projected.top.maps]
    columns = per_row or min(3, len(maps)) or 1
    rows = math.ceil(len(maps) / columns)
    first, _ = map_block(projected, 0, image_size, tile) if maps else (torch.ones(3, tile, tile), [])
    panel_w, panel_h = first.shape[2] / 100 + 0.2, first.shape[1] / 100 + 0.35
    figure = new_figure(max(6.4, columns * panel_w), rows * panel_h + 0.6)
    figure.suptitle(title)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(grid.flat):
        if index >= len(maps):
            axis.set_axis_off()
            continue
        picture, labels = map_block(projected, index, image_size, tile)
        _show(axis, picture, labels, f"map {maps[index]}: top-{len(labels)} projections | patches")
    return figure


def top9_overview(
    projected_by_layer: Mapping[object, TopProjections],
    image_size: Sequence[int],
    title: str,
    maps_per_layer: int = 4,
    tile: int = 40,
) -> Figure:
    """Every layer in one figure: a row per layer, its first `maps_per_layer` maps' projections (no patches)."""
    layers = list(projected_by_layer)
    columns = max(1, min(maps_per_layer, max(len(p.top.maps) for p in projected_by_layer.values())))
    sample = projected_by_layer[layers[0]]
    first, _ = map_block(sample, 0, image_size, tile, patches=False)
    figure = new_figure(
        max(6.4, columns * (first.shape[2] / 100 + 0.2) + 0.8), len(layers) * (first.shape[1] / 100 + 0.4)
    )
    figure.suptitle(title)
    grid = figure.subplots(len(layers), columns, squeeze=False)
    for row, layer in enumerate(layers):
        projected = projected_by_layer[layer]
        for col in range(columns):
            axis = grid[row, col]
            if col >= len(projected.top.maps):
                axis.set_axis_off()
                continue
            picture, labels = map_block(projected, col, image_size, tile, patches=False)
            _show(axis, picture, labels, f"layer {layer}, map {int(projected.top.maps[col])}")
    return figure
