"""The correspondence analysis at a glance: the images with their part boxes, and Delta per row and layer."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from zf_lightning.visualize.style import new_figure, save_figure, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from zf_lightning.analysis.correspondence import CorrespondenceResult


def correspondence_figure(
    display: torch.Tensor,
    result: CorrespondenceResult,
    path: Path,
    names: Sequence[str],
    per_pair: bool = True,
    formats: Sequence[str] = ("png",),
) -> Path:
    """Top: each image (B, 3, H, W in [0, 1]) with its part boxes (colours) and the first repeat's random
    boxes (dashed white). Bottom: Delta mean ± std over repeats, one bar group per layer, the rows named in a
    legend beside the bars."""
    with styled():
        return save_figure(_figure(display, result, names, per_pair), path, formats)


def _figure(display: torch.Tensor, result: CorrespondenceResult, names: Sequence[str], per_pair: bool) -> Figure:
    import matplotlib.pyplot as plt

    count = display.shape[0]
    palette = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]  # a ListedColormap; the stub says Colormap
    figure = new_figure(max(2.4 * count, 7.5), 6.0)
    grid = figure.add_gridspec(2, count, height_ratios=[1, 1.2])
    for i in range(count):
        axis = figure.add_subplot(grid[0, i])
        axis.imshow(display[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        for p, _part in enumerate(result.parts):
            left, top, right, bottom = result.part_boxes[i, p]
            axis.add_patch(
                plt.Rectangle(
                    (left, top), right - left, bottom - top, fill=False, edgecolor=palette[p % 10], linewidth=1.5
                )
            )
            left, top, right, bottom = result.random_boxes[0, i, p]
            axis.add_patch(
                plt.Rectangle(
                    (left, top), right - left, bottom - top, fill=False, edgecolor="white", linestyle="--", linewidth=1
                )
            )
        axis.set_title(textwrap.shorten(names[i], 22), fontsize=9)
        axis.axis("off")

    bars = figure.add_subplot(grid[1, :])
    width = 0.8 / len(result.rows)
    for r, row in enumerate(result.rows):
        means = [np.mean(result.values(row, layer, per_pair)) for layer in result.layers]
        stds = [np.std(result.values(row, layer, per_pair)) for layer in result.layers]
        colour = "grey" if r == len(result.parts) else palette[r % 10]
        label = "Random" if r == len(result.parts) else row
        bars.bar(
            np.arange(len(result.layers)) + r * width, means, width, yerr=stds, color=colour, label=label, capsize=3
        )
    bars.set_xticks(
        np.arange(len(result.layers)) + width * (len(result.rows) - 1) / 2,
        [f"Layer {layer}" for layer in result.layers],
    )
    bars.set_ylabel("Delta per image pair\n(mean ± std over pairs)" if per_pair else "Delta (sum over image pairs)")
    bars.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="occluded")
    figure.suptitle(f"Correspondence: {count} images, {result.repeats} repeats (lower = more consistent)")
    return figure
