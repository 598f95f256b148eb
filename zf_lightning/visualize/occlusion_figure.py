"""The paper's Fig. 7 layout: one row per image, panels (a) to (e) of the occlusion analysis.

Wording follows where the labels came from: with labels given (or the split's) the class is "correct", otherwise
the network's own top class on the unoccluded image is used and called "predicted". Panel (c) is the tracked map's
projection in this image and, when other images were scanned, beside it the projections of that map's strongest
activations in them (the paper's "visualisations of this map from other images").
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from zf_lightning.visualize.figures import contrast_stretch
from zf_lightning.visualize.style import ACTIVATION_CMAP, CLASS_CMAP, PROBABILITY_CMAP, new_figure
from zf_lightning.visualize.top9_figure import fit_tile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from zf_lightning.analysis.occlusion import OcclusionResult


def panel_titles(layer: object, map_index: int, label_source: str, others: int = 0) -> list[str]:
    """Titles of panels (a)-(e) for one row."""
    which = "predicted" if label_source == "predicted" else "correct"
    projection = f"(c) map {map_index}: projection" + (f" | top {others} elsewhere" if others else "")
    return [
        "(a) input, occluder to scale",
        f"(b) layer {layer}, map {map_index}:\ntotal activation",
        projection,
        f"(d) p({which} class)",
        "(e) most probable class",
    ]


def _panel_c(own: torch.Tensor, others: Sequence[torch.Tensor]) -> torch.Tensor:
    """The image's own projection (C, H, W), and the other images' projections as a grid of tiles to its right."""
    picture = contrast_stretch(own.float().cpu())
    if not others:
        return picture
    height = own.shape[-2]
    per_col = max(1, math.ceil(math.sqrt(len(others))))
    tile = max(8, (height - 2 * (per_col - 1)) // per_col)
    columns = math.ceil(len(others) / per_col)
    side = torch.ones(3, height, columns * (tile + 2) + 4)
    for index, other in enumerate(others):
        col, row = divmod(index, per_col)
        y, x = row * (tile + 2), 4 + col * (tile + 2)
        side[:, y : y + tile, x : x + tile] = fit_tile(contrast_stretch(other.float().cpu()), tile)
    return torch.cat([picture, side], dim=2)


def occlusion_figure(
    display: torch.Tensor,
    result: OcclusionResult,
    names: Sequence[str],
    class_names: Sequence[str] | None = None,
    label_source: str = "labels",
    elsewhere: Mapping[int, Sequence[torch.Tensor]] | None = None,
) -> Figure:
    """Draw an `OcclusionResult` for images `display` (B, 3, H, W) in [0, 1] (call inside `style.styled()`).

    Maps are drawn over the image area, each occluder position at the centre of its square, so that (b),
    (d) and (e) line up with (a). The legend of (e) lists only the classes that occur in that image's map, by
    name. `elsewhere`: {map: projections (C, h, w) of that map's strongest activations in other images}.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    batch, _, height, width = display.shape
    rows, cols = result.rows.cpu().float(), result.cols.cpu().float()
    window_h, window_w = result.window
    step_h = float(rows[1] - rows[0]) if len(rows) > 1 else float(window_h)
    step_w = float(cols[1] - cols[0]) if len(cols) > 1 else float(window_w)
    # Each cell spans one stride around its square's centre.
    extent = (
        float(cols[0]) + window_w / 2 - step_w / 2,
        float(cols[-1]) + window_w / 2 + step_w / 2,
        float(rows[-1]) + window_h / 2 + step_h / 2,
        float(rows[0]) + window_h / 2 - step_h / 2,
    )
    elsewhere = elsewhere or {}
    figure = new_figure(17.0, 3.3 * batch + 0.3)
    axes = figure.subplots(batch, 5, squeeze=False, width_ratios=[1, 1.15, 1.6, 1.15, 1.9])
    palette = plt.get_cmap(CLASS_CMAP).colors  # type: ignore[attr-defined]  # a ListedColormap; the stub: Colormap
    which = "predicted" if label_source == "predicted" else "correct"

    def name_of(index: int) -> str:
        return class_names[index] if class_names and 0 <= index < len(class_names) else f"class {index}"

    for b in range(batch):
        chosen = int(result.chosen_map[b])
        target = int(result.targets[b])
        others = list(elsewhere.get(chosen, []))
        titles = panel_titles(result.layer, chosen, label_source, len(others))
        axes[b, 0].imshow(display[b].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        axes[b, 0].add_patch(
            plt.Rectangle(
                (width / 2 - window_w / 2, height / 2 - window_h / 2),
                window_w,
                window_h,
                facecolor="grey",
                edgecolor="white",
                alpha=0.9,
            )
        )  # the occluder, to scale
        label = "\n".join(textwrap.wrap(f"{names[b]}: {which} {name_of(target)}", 24))
        axes[b, 0].set_xlabel(label)

        image = axes[b, 1].imshow(result.layer_activation[b].cpu().numpy(), extent=extent, cmap=ACTIVATION_CMAP)
        figure.colorbar(image, ax=axes[b, 1], shrink=0.8)

        if result.projection is not None:
            panel = _panel_c(result.projection[b], others)
            axes[b, 2].imshow(panel.permute(1, 2, 0).numpy(), extent=(0, panel.shape[2], panel.shape[1], 0))
        else:
            axes[b, 2].text(0.5, 0.5, "not computed", ha="center", va="center", transform=axes[b, 2].transAxes)

        image = axes[b, 3].imshow(
            result.true_class_prob[b].cpu().numpy(), extent=extent, cmap=PROBABILITY_CMAP, vmin=0.0, vmax=1.0
        )
        figure.colorbar(image, ax=axes[b, 3], shrink=0.8)

        top = result.top_class[b].cpu()
        present = sorted(int(c) for c in top.unique())
        codes = torch.bucketize(top, torch.tensor(present))  # class -> 0..len(present)-1, for a discrete colour map
        colours = ListedColormap([palette[i % len(palette)] for i in range(len(present))])
        axes[b, 4].imshow(
            codes.numpy(),
            extent=extent,
            cmap=colours,
            norm=BoundaryNorm(torch.arange(len(present) + 1).float().sub(0.5).tolist(), len(present)),
            interpolation="nearest",
        )
        legend = [
            Patch(color=palette[i % len(palette)], label=textwrap.shorten(name_of(c), 28))
            for i, c in enumerate(present[:12])
        ]
        more = f" (+{len(present) - 12} more)" if len(present) > 12 else ""
        axes[b, 4].legend(
            handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title=f"classes{more}"
        )

        for column, axis in enumerate(axes[b]):
            if column != 2:
                axis.set_xlim(0, width)
                axis.set_ylim(height, 0)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_frame_on(False)
            axis.set_title(titles[column])
    figure.suptitle(f"Occlusion sensitivity (Fig. 7): {window_h}x{window_w} grey square, stride {step_h:.0f} px")
    return figure
