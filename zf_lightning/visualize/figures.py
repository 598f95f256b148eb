"""Image grids for the paper's figures (torchvision's make_grid), contrast stretching, and side-by-side panels."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def contrast_stretch(images: torch.Tensor) -> torch.Tensor:
    """Each image (last 3 dims) centred on its mean and scaled by its largest deviation into [0, 1].

    Projections are signed and tiny; the paper shows them contrast-enhanced. The mean goes to mid-grey and
    the values fill [0, 1] symmetrically around it, so positive and negative parts stay distinguishable;
    an image without contrast is plain grey.
    """
    flat = images.flatten(-3)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    scale = centred.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * centred / scale).reshape(images.shape)


def enlarge(images: torch.Tensor, min_size: int) -> torch.Tensor:
    """Nearest-neighbour upscaling by a whole factor so that small windows (7 px at layer 1) stay visible."""
    factor = max(1, math.ceil(min_size / max(images.shape[-2:])))
    if factor == 1:
        return images
    shape = images.shape
    return F.interpolate(images.reshape(-1, *shape[-3:]), scale_factor=factor, mode="nearest").reshape(
        *shape[:-2], shape[-2] * factor, shape[-1] * factor
    )


def blocks_grid(cells: torch.Tensor, min_size: int = 48, pad_value: float = 1.0) -> torch.Tensor:
    """(M, k, C, h, w) -> one image: each row of k cells as a square block, the M blocks in a square grid."""
    maps, k = cells.shape[:2]
    cells = enlarge(cells.float().cpu(), min_size)
    per_row = math.ceil(math.sqrt(k))
    blocks = torch.stack([make_grid(cells[m], nrow=per_row, padding=1, pad_value=pad_value) for m in range(maps)])
    return make_grid(blocks, nrow=math.ceil(math.sqrt(maps)), padding=6, pad_value=pad_value)


def filters_grid(weight: torch.Tensor, display_size: int = 44, per_row: int | None = None) -> torch.Tensor:
    """Conv filters (out, 3, k, k) as one image, each filter min-max scaled on its own (as in the paper's Fig. 6),
    enlarged to about `display_size` px so that filters of different kernel sizes show at the same scale."""
    weight = weight.detach().float().cpu()
    if weight.shape[1] != 3:  # not an RGB layer: show each filter's mean over inputs as grey
        weight = weight.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    flat = weight.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    scaled = ((flat - low) / (high - low).clamp_min(1e-12)).reshape(weight.shape)
    scaled = enlarge(scaled, display_size)
    return make_grid(scaled, nrow=per_row or math.ceil(math.sqrt(len(scaled))), padding=2, pad_value=1.0)


def panels_figure(panels: list[torch.Tensor], titles: list[str], suptitle: str = "") -> Figure:
    """Images (C, H, W) in [0, 1] next to each other, each titled, at about one image pixel per figure pixel (call
    inside `style.styled()`; save with `style.save_figure`)."""
    from zf_lightning.visualize.style import new_figure

    width = sum(panel.shape[2] for panel in panels) / 100 + 0.4 * len(panels)
    height = max(panel.shape[1] for panel in panels) / 100 + 1.2
    # room for the titles: about 0.085 inch a character at the figure title's 12 pt
    width = max(width, 4.0 * len(panels), 0.085 * len(suptitle) + 0.4)
    figure = new_figure(width, height)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, panel, title in zip(axes, panels, titles):
        axis.imshow(panel.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        axis.set_title("\n".join(textwrap.wrap(title, 60)))
        axis.set_axis_off()
    if suptitle:
        figure.suptitle(suptitle)
    return figure
