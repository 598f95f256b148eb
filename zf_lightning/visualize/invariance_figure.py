"""The paper's Fig. 5 plots: feature distances and P(true class) as images are translated, scaled, rotated."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zf_lightning.analysis.invariance import TRANSFORMATIONS, InvarianceResult
from zf_lightning.utils.errors import InputError
from zf_lightning.visualize.style import new_figure, save_figure, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

X_LABELS = {
    "translation": "Vertical translation (pixels)",
    "scale": "Scale (ratio)",
    "rotation": "Rotation (degrees)",
}


def build_invariance_figure(
    results: Mapping[str, InvarianceResult], image_labels: Sequence[str] | None = None, title: str = ""
) -> Figure:
    """A matplotlib Figure: one row per transformation present (translation, scale, rotation), one column per
    layer (distance) and a last column P(true class); one line per image, named in one legend below the plots
    (never over a curve). The caller closes it; draw it inside `style.styled()` for the project's style."""

    kinds = [kind for kind in TRANSFORMATIONS if kind in results]
    unknown = sorted(set(results) - set(TRANSFORMATIONS))
    if not kinds or unknown:
        raise InputError(f"invariance_figure: results must have keys from {TRANSFORMATIONS}, got {sorted(results)}")
    layers = results[kinds[0]].layers
    batch = results[kinds[0]].true_class_prob.shape[0]
    for kind in kinds:
        if results[kind].layers != layers or results[kind].true_class_prob.shape[0] != batch:
            raise InputError(
                f"invariance_figure: all results must share layers {layers} and {batch} images; "
                f"{kind!r} has layers {results[kind].layers} and {results[kind].true_class_prob.shape[0]} images"
            )
    labels = list(image_labels) if image_labels is not None else [f"image {b}" for b in range(batch)]
    if len(labels) != batch:
        raise InputError(
            f"invariance_figure: got {len(labels)} image_labels for {batch} images; expected one per image"
        )

    columns = len(layers) + 1
    figure = new_figure(4.2 * columns, 3.4 * len(kinds) + 0.4 + 0.25 * ((batch + 3) // 4))
    axes = figure.subplots(len(kinds), columns, squeeze=False)
    for row, kind in zip(axes, kinds):
        result = results[kind]
        amounts = result.amounts.cpu().numpy()
        curves = [result.distances[layer] for layer in layers] + [result.true_class_prob]
        measure = (
            "Relative distance ||f(Tx)-f(x)||/||f(x)||" if result.relative else "Euclidean distance ||f(Tx)-f(x)||"
        )
        y_labels = [f"{measure},\nlayer {layer}" for layer in layers] + ["P(true class)"]
        for axis, values, y_label in zip(row, curves, y_labels):
            for b in range(batch):
                axis.plot(amounts, values[b].cpu().numpy(), marker=".", markersize=3, linewidth=1, label=labels[b])
            axis.set_xlabel(X_LABELS[kind])
            axis.set_ylabel(y_label)
            axis.grid(alpha=0.3)
        row[-1].set_ylim(-0.02, 1.02)
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=min(batch, 4), title="images")
    if title:
        figure.suptitle(title)
    return figure


def invariance_figure(
    results: Mapping[str, InvarianceResult],
    path: str | os.PathLike[str],
    image_labels: Sequence[str] | None = None,
    title: str = "",
    formats: Sequence[str] = ("png",),
) -> Path:
    """Save the Fig. 5 layout of `results` ({kind: InvarianceResult}) as a PNG at `path` (folder created)."""
    with styled():
        return save_figure(build_invariance_figure(results, image_labels, title), Path(path), formats)
