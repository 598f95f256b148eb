"""The correspondence analysis at a glance: the images with their part boxes, and Delta per row and layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from zf_lightning.analysis.correspondence import CorrespondenceResult


def correspondence_figure(
    display: torch.Tensor, result: CorrespondenceResult, path: Path, names: Sequence[str], per_pair: bool = False
) -> Path:
    """Top: each image (B, 3, H, W in [0, 1]) with its part boxes (colours) and the first repeat's random
    boxes (dashed white). Bottom: Delta mean ± std over repeats, one bar group per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = display.shape[0]
    palette = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]  # a ListedColormap; the stub says Colormap
    figure = plt.figure(figsize=(max(2.2 * count, 6), 5.6))
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
        axis.set_title(names[i], fontsize=7)
        axis.axis("off")

    bars = figure.add_subplot(grid[1, :])
    scale = 1 / result.pairs if per_pair else 1.0
    width = 0.8 / len(result.rows)
    for r, row in enumerate(result.rows):
        means = [np.mean(result.deltas[row][layer] * scale) for layer in result.layers]
        stds = [np.std(result.deltas[row][layer] * scale) for layer in result.layers]
        colour = "grey" if r == len(result.parts) else palette[r % 10]
        label = "Random" if r == len(result.parts) else row
        bars.bar(
            np.arange(len(result.layers)) + r * width, means, width, yerr=stds, color=colour, label=label, capsize=3
        )
    bars.set_xticks(
        np.arange(len(result.layers)) + width * (len(result.rows) - 1) / 2,
        [f"Layer {layer}" for layer in result.layers],
    )
    bars.set_ylabel("Delta per image pair" if per_pair else "Delta (sum over image pairs)")
    bars.legend(fontsize=8)
    figure.suptitle(f"Correspondence: {count} images, {result.repeats} repeats (lower = more consistent)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
