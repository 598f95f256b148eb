"""Image grids for the paper's figures, built with torchvision's make_grid and saved as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image


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


def top9_figure(projections: torch.Tensor, patches: torch.Tensor | None, min_size: int = 48) -> torch.Tensor:
    """The paper's Fig. 2 layout for one layer: the projections' 3x3 blocks, the image patches' beside them."""
    left = blocks_grid(contrast_stretch(projections), min_size)
    if patches is None or patches.numel() == 0:
        return left
    right = blocks_grid(patches.clamp(0, 1), min_size)
    gap = torch.ones(left.shape[0], left.shape[1], 12)
    return torch.cat([left, gap, right], dim=2)


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


def side_by_side(panels: list[torch.Tensor], titles: list[str], path: Path, suptitle: str = "") -> Path:
    """Images (C, H, W) in [0, 1] next to each other with titles (matplotlib), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6.4), squeeze=False)
    for axis, panel, title in zip(axes[0], panels, titles):
        axis.imshow(panel.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    if suptitle:
        figure.suptitle(suptitle)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def titled_figure(image: torch.Tensor, title: str, path: Path, dpi: int = 100) -> Path:
    """A (C, H, W) image in [0, 1] at its own resolution (one image pixel per PNG pixel, at least 640 px wide so
    that the title fits), with a title above it, as PNG."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = image.shape[1], image.shape[2]
    canvas_width = max(width, 640)
    lines = textwrap.wrap(title, width=max(40, canvas_width // 7))
    title_height = 14 * len(lines) + 16
    figure = plt.figure(figsize=(canvas_width / dpi, (height + title_height) / dpi), dpi=dpi)
    axis = figure.add_axes((0.5 - width / canvas_width / 2, 0, width / canvas_width, height / (height + title_height)))
    axis.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
    axis.axis("off")
    figure.text(0.5, 1 - 8 / (height + title_height), "\n".join(lines), ha="center", va="top", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def save_png(image: torch.Tensor, path: Path) -> Path:
    """Write a (C, H, W) image in [0, 1] as PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, path)
    return path
