"""One figure style for every figure of the project (Fig. 2, 4, 5, 6, 7 and the correspondence figure).

- **Text** readable at 100 % zoom of the 100-dpi PNG: 10 pt body and ticks, 11 pt panel titles, 12 pt figure
  titles, 9 pt legends; every panel says what it shows (layer, map, activation value, class names as words).
- **Layout**: matplotlib's constrained layout makes room for every title, label, colour bar and legend, and
  the whole canvas is saved, so that a PNG's size is known in advance; `texts_outside_canvas` finds any text
  that would still be cut at the canvas edge (the tests check every figure with it).
- **Colours, as the paper shows them**: deconvnet projections are signed and tiny, so each is contrast-stretched
  on its own (its mean to mid-grey, its largest deviation to black or white: `figures.contrast_stretch`);
  filters are min-max scaled each on its own; occlusion maps use "viridis" for activations and "magma" for
  probabilities (perceptually uniform, readable in grey), classes "tab20".
- **Formats**: PNG by default; `formats=["png", "pdf"]` (or "svg") adds vector copies beside it, for papers.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zf_lightning.utils.errors import InputError
from zf_lightning.utils.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "pdf", "svg")
DPI = 100
STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "figure.titlesize": 12,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.constrained_layout.use": True,
    "image.interpolation": "nearest",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
ACTIVATION_CMAP, PROBABILITY_CMAP, CLASS_CMAP = "viridis", "magma", "tab20"


def check_formats(formats: Sequence[str]) -> list[str]:
    """`formats` as a list that starts with "png" (every figure has a PNG: W&B and the README show it)."""
    given = [str(f).lower().lstrip(".") for f in formats]
    bad = [f for f in given if f not in FORMATS]
    if bad:
        raise InputError(f"figure formats {bad} are not supported; expected some of {list(FORMATS)}")
    return ["png", *[f for f in dict.fromkeys(given) if f != "png"]]


@contextmanager
def styled() -> Iterator[None]:
    """The project's matplotlib settings (Agg backend, `STYLE`) for the figures drawn inside the block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):  # type: ignore[arg-type]  # the stub wants each key as a Literal
        yield


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A figure of `width` x `height` inches in the project's style (call inside `styled()`)."""
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), **kwargs)


def save_figure(figure: Figure, path: Path, formats: Sequence[str] = ("png",), close: bool = True) -> Path:
    """Write `figure` as `path` (.png) and, for each other format asked for, beside it with that suffix; each
    file is written atomically. Returns the PNG's path."""
    import matplotlib.pyplot as plt

    path = Path(path).with_suffix(".png")
    for fmt in check_formats(formats):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=DPI)
        atomic_write_bytes(buffer.getvalue(), path.with_suffix(f".{fmt}"))
    if close:
        plt.close(figure)
    return path


def texts_outside_canvas(figure: Figure, tolerance: float = 1.0) -> list[str]:
    """The visible texts of `figure` (titles, labels, tick labels, legend entries, annotations) that reach past
    the canvas, where the saved image cuts them. Empty when none does."""
    from matplotlib.text import Text

    figure.canvas.draw()  # lays the figure out (constrained layout runs at draw time)
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    canvas = figure.bbox
    # Tick labels exist for ticks beyond an axis' limits too, but only those within them are drawn.
    undrawn = set()
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            shown = axes.axison and axis.get_visible()  # set_axis_off hides an axis and its tick labels
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not shown or not low - span <= tick.get_loc() <= high + span:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    outside = []
    for text in figure.findobj(Text):
        if not text.get_visible() or not text.get_text().strip() or id(text) in undrawn:
            continue
        extent = text.get_window_extent(renderer)
        if (
            extent.x0 < canvas.x0 - tolerance
            or extent.y0 < canvas.y0 - tolerance
            or extent.x1 > canvas.x1 + tolerance
            or extent.y1 > canvas.y1 + tolerance
        ):
            outside.append(text.get_text())
    return outside
