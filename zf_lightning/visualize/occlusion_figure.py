"""The paper's Fig. 7 layout: one row per image, panels (a) to (e) of the occlusion analysis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import torch

from zf_lightning.visualize.figures import contrast_stretch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from zf_lightning.analysis.occlusion import OcclusionResult

PANELS = (
    "(a) input",
    "(b) layer-{layer} map {map}: total activation",
    "(c) map {map}: projection",
    "(d) p(correct class)",
    "(e) most probable class",
)


@overload
def occlusion_figure(
    display: torch.Tensor,
    result: OcclusionResult,
    path: Path,
    names: Sequence[str],
    class_names: Sequence[str] | None = None,
    return_figure: Literal[False] = False,
) -> Path: ...


@overload
def occlusion_figure(
    display: torch.Tensor,
    result: OcclusionResult,
    path: Path,
    names: Sequence[str],
    class_names: Sequence[str] | None = None,
    *,
    return_figure: Literal[True],
) -> Figure: ...


@overload
def occlusion_figure(
    display: torch.Tensor,
    result: OcclusionResult,
    path: Path,
    names: Sequence[str],
    class_names: Sequence[str] | None = None,
    return_figure: bool = False,
) -> Path | Figure: ...


def occlusion_figure(
    display: torch.Tensor,
    result: OcclusionResult,
    path: Path,
    names: Sequence[str],
    class_names: Sequence[str] | None = None,
    return_figure: bool = False,
) -> Path | Figure:
    """Draw an `OcclusionResult` for images `display` (B, 3, H, W) in [0, 1] and save it as PNG.

    Maps are drawn over the image area, each occluder position at the centre of its square, so that (b),
    (d) and (e) line up with (a). The legend of (e) lists only the classes that occur in that image's map.
    """
    import matplotlib

    matplotlib.use("Agg")
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
    figure, axes = plt.subplots(batch, len(PANELS), figsize=(3.2 * len(PANELS), 3.0 * batch), squeeze=False)
    palette = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]  # a ListedColormap; the stub says Colormap
    for b in range(batch):
        chosen = int(result.chosen_map[b])
        target = int(result.targets[b])
        target_name = class_names[target] if class_names and 0 <= target < len(class_names) else str(target)
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
        axes[b, 0].set_ylabel(f"{names[b]}\ncorrect: {target_name}", fontsize=8)

        image = axes[b, 1].imshow(result.layer_activation[b].cpu().numpy(), extent=extent, cmap="viridis")
        figure.colorbar(image, ax=axes[b, 1], fraction=0.046)

        if result.projection is not None:
            axes[b, 2].imshow(contrast_stretch(result.projection[b].float().cpu()).permute(1, 2, 0).numpy())
        else:
            axes[b, 2].text(0.5, 0.5, "not computed", ha="center", va="center", transform=axes[b, 2].transAxes)

        image = axes[b, 3].imshow(
            result.true_class_prob[b].cpu().numpy(), extent=extent, cmap="magma", vmin=0.0, vmax=1.0
        )
        figure.colorbar(image, ax=axes[b, 3], fraction=0.046)

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
            Patch(
                color=palette[i % len(palette)],
                label=class_names[c] if class_names and c < len(class_names) else str(c),
            )
            for i, c in enumerate(present)
        ]
        axes[b, 4].legend(handles=legend, fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)

        for column, axis in enumerate(axes[b]):
            axis.set_xlim(0, width)
            axis.set_ylim(height, 0)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(PANELS[column].format(layer=result.layer, map=chosen), fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    if return_figure:
        return figure
    plt.close(figure)
    return path
