"""How far each conv layer's filters moved from their initialisation, and the paper's Fig. 6 of the run's own
layer-1 filters at the start and at the end of training, as a Lightning callback.

A filter that learned nothing stays close to its random start; learned edge and colour detectors do not. The
measure, per conv layer: the Pearson correlation of each filter (all its weights, flattened) with the same
filter at initialisation, averaged over the layer's filters (1.0: unchanged up to scale; near 0: no trace of
the start left). It goes to `summary.json` (`filter_correlation_with_init`, by paper layer) through
`summary_entries`, and to the loggers as `filters/corr_init_layerN`.

The initial filters are kept in the callback's checkpoint state, so a resumed run is measured against the
weights the run started from, not those it resumed with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from zf_lightning.models.layers import numbered_layers

log = logging.getLogger(__name__)

START_FIGURE, END_FIGURE = "filters_layer1_start.png", "filters_layer1_end.png"


def filter_correlations(initial: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """(filters,) Pearson correlation of each filter of `final` with the same filter of `initial` (out, ...)."""
    a = initial.flatten(1).double()
    b = final.flatten(1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


class FilterDrift(L.Callback):
    """Records each conv layer's filters when fitting starts, and at the end of fitting their mean correlation
    with those (see the module docstring); draws layer 1's filters at both ends into `output_dir`.

    Args:
        output_dir: where the two layer-1 figures go (None: the trainer's default_root_dir/filters).
        log_key: W&B key of the figures.
        figure_formats: "png" and, for vector copies, "pdf" or "svg" (`visualize.style`).
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        log_key: str = "filters/layer1",
        figure_formats: Sequence[str] = ("png",),
    ) -> None:
        from zf_lightning.visualize.style import check_formats

        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.log_key = log_key
        self.figure_formats = check_formats(figure_formats)
        self.initial: dict[int, torch.Tensor] = {}
        self.correlations: dict[int, float] = {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"initial": {str(layer): weight for layer, weight in self.initial.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial = {int(layer): weight for layer, weight in state_dict.get("initial", {}).items()}

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "filters"
        if not self.initial:  # a fresh run (a resumed one brought its start back from the checkpoint)
            self.initial = {layer: weight.detach().cpu().clone() for layer, weight in _conv_weights(pl_module).items()}
            if trainer.is_global_zero and 1 in self.initial:
                self._draw(trainer, self.initial[1], START_FIGURE, "at initialisation")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        final = _conv_weights(pl_module)
        self.correlations = {
            layer: float(filter_correlations(self.initial[layer], weight.detach().cpu()).mean())
            for layer, weight in final.items()
            if layer in self.initial and self.initial[layer].shape == weight.shape
        }
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"filters/corr_init_layer{layer}": value for layer, value in self.correlations.items()},
                step=trainer.global_step,
            )
        if trainer.is_global_zero and 1 in final:
            epochs = trainer.current_epoch
            self._draw(trainer, final[1], END_FIGURE, f"after {epochs} epochs")

    def summary_entries(self) -> dict[str, Any]:
        """What summary.json records of this callback."""
        if not self.correlations:
            return {}
        return {"filter_correlation_with_init": {str(layer): round(v, 4) for layer, v in self.correlations.items()}}

    # ------------------------------------------------------------------ figures
    def _draw(self, trainer: L.Trainer, weight: torch.Tensor, name: str, when: str) -> None:
        from zf_lightning.visualize.figures import filters_grid, panels_figure
        from zf_lightning.visualize.style import save_figure, styled

        assert self.output_dir is not None  # set in on_fit_start
        kernel = f"{weight.shape[-2]}x{weight.shape[-1]}"
        corr = self.correlations.get(1)
        subtitle = f"layer 1: {weight.shape[0]} filters {kernel}, {when}"
        if corr is not None and name == END_FIGURE:
            subtitle += f"; mean correlation with the initial filters {corr:.2f}"
        with styled():
            figure = panels_figure([filters_grid(weight)], [subtitle], "Layer-1 filters (Fig. 6)")
            path = save_figure(figure, self.output_dir / name, self.figure_formats)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.log_key, images=[str(path)], step=trainer.global_step, caption=[subtitle])


def _conv_weights(pl_module: nn.Module) -> dict[int, torch.Tensor]:
    """{paper layer: Conv2d weight} of the module's network (`ImageClassifier.net`, or the module itself)."""
    net = getattr(pl_module, "net", pl_module)
    modules = dict(net.named_modules())
    found = {}
    for layer in numbered_layers(net):
        module = modules.get(layer.weights or "")
        if layer.kind == "conv" and layer.number is not None and isinstance(module, nn.Conv2d):
            found[layer.number] = module.weight
    return found
