"""Feature evolution during training (Zeiler & Fergus 2014, Fig. 4), as a Lightning callback.

For a fixed set of feature maps of conv layers 1-5, at each snapshot epoch the callback finds the
strongest activation of each map across all training examples of that epoch and projects it to pixel
space with the deconvnet, using the weights at the end of that epoch. The figure shows one row per map
(grouped by layer) and one column per snapshot epoch.

How the maxima are found, and why this way
------------------------------------------
* No extra pass over the data: during a snapshot epoch, forward hooks on the modules whose outputs are
  the layers' rectified maps (the ReLU after each conv) read each training batch's activations as the
  training step computes them. So the value tracked for a batch is measured with the weights of the step
  at which that batch was seen, exactly the activations the training run produced.
* Hooks only read: no RNG, nothing written into the activations, no autograd graph (`torch.no_grad`),
  so training with and without the callback gives bit-identical weights. The selection of maps uses its
  own `torch.Generator`.
* Per batch, each layer's hook does one `index_select` of the chosen channels and one max over space;
  the deepest layer's hook then updates the running best of all layers at once (a max over the batch, an
  `index_select` of the winning input images and two `torch.where` on device tensors): no `.item()`, no
  host sync on GPU, about a dozen kernels a batch. Hooks are attached only for snapshot epochs and record only between
  `on_train_batch_start` and `on_train_batch_end` (never in validation or the sanity check).
* At the end of a snapshot epoch, values and images are all-gathered across ranks and each map takes
  the best rank (`best_across_ranks`); rank 0 then finds each map's strongest location in its stored
  image with the end-of-epoch weights and projects that single activation (`project_activations`),
  cut to its receptive-field window, and writes `epoch_NNN.npz` and the re-rendered
  `feature_evolution.png` into `output_dir` (and logs the image to W&B if a WandbLogger is in use).
  A resumed run reads the earlier snapshots' npz files back so the figure keeps all its columns. A checkpoint
  written inside a snapshot epoch holds the running best so far (combined over ranks), so a run resumed from it
  continues that epoch's tracking and writes the snapshot the uninterrupted run would have written.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from zf_lightning.deconv.engine import METHODS, Deconvnet
from zf_lightning.deconv.maps import choose_maps
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.io import atomic_write_bytes
from zf_lightning.utils.validation import as_int
from zf_lightning.visualize.evolution_figure import evolution_figure, evolution_grid
from zf_lightning.visualize.style import check_formats, save_figure, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)  # the paper's Fig. 4 columns
FIGURE_NAME = "feature_evolution.png"
_SNAPSHOT_FILE = re.compile(r"epoch_(\d+)\.npz$")


def best_across_ranks(values: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each map's best over ranks: from gathered (world, K) values and (world, K, ...) images.

    Returns (values (K,), images (K, ...), rank (K,)); ties go to the lowest rank, so the result does not
    depend on anything but the gathered tensors.
    """
    if values.dim() != 2 or images.shape[:2] != values.shape:
        raise InputError(
            "best_across_ranks: expected (world, K) values and (world, K, ...) images, "
            f"got {tuple(values.shape)} and {tuple(images.shape)}"
        )
    rank = values.argmax(dim=0)  # the first maximum: the lowest rank wins ties
    maps = torch.arange(values.shape[1], device=values.device)
    return values[rank, maps], images[rank, maps], rank


class FeatureEvolution(L.Callback):
    """The paper's Fig. 4: how the strongest activations of fixed feature maps evolve over training.

    Args:
        output_dir: where `epoch_NNN.npz` and `feature_evolution.png` go; None: `<default_root_dir>/feature_evolution`.
        snapshot_epochs: 1-based epochs after which a column is added; those past `trainer.max_epochs` are
            dropped with a warning at start-up.
        layers: the conv layers (1-based, as in `Deconvnet`) to follow; None: all of the model's.
        maps_per_layer: how many maps per layer, drawn without replacement with `seed`.
        seed: seeds the `torch.Generator` of that draw (the global RNG is never touched).
        maps: explicit `{layer: [map, ...]}` instead of the seeded draw (then `maps_per_layer` is unused).
        method: the deconvnet rectification rule, see `Deconvnet` ("deconvnet" is the paper's).
        cell_size: pixels of one cell of the figure (windows are resized to it).
        log_key: the W&B key of the figure.

    The npz of a snapshot holds, per layer L: `maps_layerL`, `values_layerL` (the tracked maxima: the
    activation as seen in training), `projected_values_layerL` (the activation projected, with the
    end-of-epoch weights), `rows_layerL`/`cols_layerL` (its location in the map), `top_layerL`/`left_layerL`
    (the window's place in the input), `windows_layerL` (K, C, h, w), the raw projections, and
    `patches_layerL` (K, C, h, w), the input under each window (as the network saw it, mean subtracted;
    zero outside the image), so that a figure can show the image patches next to the projections.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        snapshot_epochs: Sequence[int] = DEFAULT_SNAPSHOT_EPOCHS,
        layers: Sequence[int] | None = None,
        maps_per_layer: int = 4,
        seed: int = 0,
        maps: Mapping[int, Sequence[int]] | None = None,
        method: str = "deconvnet",
        cell_size: int = 96,
        log_key: str = "feature_evolution",
        figure_formats: Sequence[str] = ("png",),
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.snapshot_epochs = _check_epochs(snapshot_epochs)
        if as_int(maps_per_layer) is None or maps_per_layer < 1:
            raise InputError(f"FeatureEvolution: maps_per_layer must be an int >= 1, got {maps_per_layer!r}")
        if as_int(seed) is None:
            raise InputError(f"FeatureEvolution: seed must be an int, got {seed!r}")
        if method not in METHODS:
            raise InputError(f"FeatureEvolution: unknown method {method!r}; allowed methods are {list(METHODS)}")
        if as_int(cell_size) is None or cell_size < 1:
            raise InputError(f"FeatureEvolution: cell_size must be an int >= 1, got {cell_size!r}")
        self.layers = None if layers is None else _check_layers(layers)
        self.explicit_maps = None if maps is None else _check_maps(maps)
        if self.layers is not None and self.explicit_maps is not None and self.layers != sorted(self.explicit_maps):
            raise InputError(
                f"FeatureEvolution: layers {self.layers} disagree with the layers of maps "
                f"{sorted(self.explicit_maps)}; give one of them"
            )
        self.maps_per_layer, self.seed, self.method = int(maps_per_layer), int(seed), method
        self.cell_size, self.log_key = int(cell_size), log_key
        self.figure_formats = check_formats(figure_formats)

        self.maps: dict[int, list[int]] = {}  # layer -> chosen maps, set in setup()
        self.columns: dict[int, dict[str, np.ndarray]] = {}  # 1-based epoch -> its snapshot arrays
        self._deconvnet: Deconvnet | None = None
        self._epochs: list[int] = list(self.snapshot_epochs)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._recording = False
        self._images: torch.Tensor | None = None  # the current batch's input, as the features see it
        # Running best of the epoch over all chosen maps, layer after layer (K_total = maps of all layers):
        self._values: torch.Tensor | None = None  # (K_total,) float32
        self._stored: torch.Tensor | None = None  # (K_total, C, H, W) the input images that gave them
        self._pending: dict[int, torch.Tensor] = {}  # layer -> (B, K) per-image maxima of the current forward
        self._last_layer: int | None = None
        self._map_index: dict[int, torch.Tensor] = {}
        self._tracking_epoch: int | None = None  # the 0-based snapshot epoch being tracked
        self._module: L.LightningModule | None = None
        self._restored: dict[str, Any] | None = None  # a checkpoint's running best, until training starts

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve layers and maps against the model and drop epochs past max_epochs: fails before training."""
        if stage != "fit":
            return
        self._deconvnet = Deconvnet(_network_of(pl_module))
        self.maps = self._choose_maps(self._deconvnet)
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            dropped = [epoch for epoch in self.snapshot_epochs if epoch > max_epochs]
            self._epochs = [epoch for epoch in self.snapshot_epochs if epoch <= max_epochs]
            if dropped and trainer.is_global_zero:
                log.warning(
                    "FeatureEvolution: snapshot epochs %s are past trainer.max_epochs=%d and are dropped; "
                    "snapshots at %s",
                    dropped,
                    max_epochs,
                    self._epochs,
                )
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "feature_evolution"

    def _choose_maps(self, deconvnet: Deconvnet) -> dict[int, list[int]]:
        chosen = choose_maps(
            deconvnet, self.layers, self.maps_per_layer, self.seed, self.explicit_maps, owner="FeatureEvolution"
        )
        return {int(layer): maps for layer, maps in chosen.items()}  # paper layer numbers: the schema allows no names

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run starts after some epochs: read their snapshots back so the figure stays complete."""
        self.columns = {}
        if trainer.is_global_zero and self.output_dir is not None and self.output_dir.is_dir():
            for path in sorted(self.output_dir.glob("epoch_*.npz")):
                match = _SNAPSHOT_FILE.search(path.name)
                if match is None:
                    continue  # epoch_<not a number>.npz: not a snapshot
                epoch = int(match.group(1))
                if epoch > trainer.current_epoch or epoch not in self.snapshot_epochs:
                    continue  # not part of the run being resumed
                with np.load(path) as data:
                    arrays = dict(data)
                if not self._same_maps(arrays):
                    log.warning(
                        "FeatureEvolution: %s follows other maps than this run (%s); left out of the figure",
                        path,
                        self.maps,
                    )
                    continue
                self.columns[epoch] = arrays
        restored, self._restored = self._restored, None
        if restored and restored.get("epoch") == trainer.current_epoch and self._is_snapshot(trainer):
            # Resumed inside this snapshot epoch: Lightning starts no epoch, so tracking starts here, from the
            # checkpoint's running best.
            self._start_tracking(trainer, pl_module)
            if "values" in restored:
                self._values = restored["values"].to(pl_module.device)
                self._stored = restored["images"].to(pl_module.device)

    def _same_maps(self, arrays: Mapping[str, np.ndarray]) -> bool:
        layers = arrays.get("layers")
        if layers is None or sorted(int(x) for x in layers) != sorted(self.maps):
            return False
        return all(
            arrays.get(f"maps_layer{layer}") is not None and arrays[f"maps_layer{layer}"].tolist() == maps
            for layer, maps in self.maps.items()
        )

    # ----------------------------------------------------------------- tracking
    def _is_snapshot(self, trainer: L.Trainer) -> bool:
        return trainer.current_epoch + 1 in self._epochs

    def _reset(self) -> None:
        self._values = self._stored = None
        self._pending = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handles and self._tracking_epoch == trainer.current_epoch:
            return  # resumed inside this epoch: on_train_start set up its tracking
        self._remove_hooks()
        self._reset()
        self._tracking_epoch = None
        if self._is_snapshot(trainer):
            self._start_tracking(trainer, pl_module)

    def _start_tracking(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        deconvnet = self._deconvnet
        assert deconvnet is not None, "setup() builds the deconvnet before training starts"
        # Hooks fire in forward order: the deepest tracked layer's hook completes a forward pass.
        self._last_layer = max(self.maps, key=deconvnet.feature_map_index)
        self._handles.append(deconvnet.fast_features.register_forward_pre_hook(self._remember_input))
        for layer in self.maps:
            self._handles.append(_top_module(deconvnet, layer).register_forward_hook(self._tracker(layer)))
        self._tracking_epoch, self._module = trainer.current_epoch, pl_module

    def state_dict(self) -> dict[str, Any]:
        """Inside a snapshot epoch: its running best so far, combined over ranks (every rank takes part: Lightning
        builds a checkpoint's contents on all of them), on the CPU."""
        if self._tracking_epoch is None:
            return {}
        state: dict[str, Any] = {"epoch": self._tracking_epoch}
        assert self._module is not None  # set with _tracking_epoch by _start_tracking
        best = self._gather(self._module)
        if best is not None:
            state["values"], state["images"] = (tensor.cpu() for tensor in best)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._recording = bool(self._handles)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._recording, self._images, self._pending = False, None, {}

    def _remember_input(self, module: nn.Module, inputs: tuple) -> None:
        if self._recording:
            self._images = inputs[0]

    def _tracker(self, layer: int):
        """The hook of one layer: each image's maximum of each chosen map, (B, K); nothing else per layer."""

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not self._recording or self._images is None:
                return
            with torch.no_grad():
                index = self._map_index.get(layer)
                if index is None or index.device != output.device:
                    index = self._map_index[layer] = torch.tensor(self.maps[layer], device=output.device)
                # index_select copies the chosen channels: the activation itself is only read
                self._pending[layer] = output.detach().index_select(1, index).amax(dim=(2, 3))
                if layer == self._last_layer:
                    self._update()

        return hook

    def _update(self) -> None:
        """Fold one forward pass into the running best, all layers at once: a few small kernels, no host sync."""
        per_image = torch.cat([self._pending[layer] for layer in self.maps], dim=1).float()  # (B, K_total)
        self._pending = {}
        batch_best, where = per_image.max(dim=0)  # first maximum: the earliest image wins ties
        assert self._images is not None  # the hook calls this only with the batch's input recorded
        candidates = self._images.detach().index_select(0, where)  # (K_total, C, H, W)
        if self._values is None:
            self._values, self._stored = torch.full_like(batch_best, -torch.inf), torch.zeros_like(candidates)
        assert self._stored is not None  # always set together with self._values
        better = batch_best > self._values  # strictly: an earlier batch keeps a tie
        self._values = torch.where(better, batch_best, self._values)
        self._stored = torch.where(better[:, None, None, None], candidates, self._stored)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._recording, self._images, self._pending = [], False, None, {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_hooks()

    # ----------------------------------------------------------------- snapshot
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reduce the maxima across ranks; rank 0 projects them with this epoch's weights and writes."""
        if self._tracking_epoch is None:
            return
        self._remove_hooks()
        best = self._gather(pl_module)
        self._reset()
        self._tracking_epoch = None
        if best is None:
            if trainer.is_global_zero:
                log.warning("FeatureEvolution: no training batch in epoch %d; no snapshot", trainer.current_epoch + 1)
            return
        if trainer.is_global_zero:
            epoch = trainer.current_epoch + 1
            sizes = [len(maps) for maps in self.maps.values()]
            values, images = best
            self.columns[epoch] = self._project(dict(zip(self.maps, zip(values.split(sizes), images.split(sizes)))))
            self._write(epoch)
            self._log_image(trainer)

    def _gather(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All ranks' best values (K_total,) and images (K_total, C, H, W) in two all_gathers, reduced per map.

        A rank that saw no batch sends -inf (it loses every comparison); a first, tiny gather of the image
        shape lets it build zeros of the right size, and tells every rank alike when no rank saw any.
        """
        device = pl_module.device
        shape = torch.tensor(tuple(self._stored.shape[1:]) if self._stored is not None else (0, 0, 0), device=device)
        shapes = _with_world_dim(cast(torch.Tensor, pl_module.all_gather(shape)), shape)
        if int(shapes.max()) == 0:
            return None
        values, images = self._values, self._stored
        if values is None:
            total = sum(len(maps) for maps in self.maps.values())
            values = torch.full((total,), -torch.inf, device=device)
            dtype = getattr(pl_module, "dtype", torch.float32)  # the inputs' dtype under "*-true" precisions too
            images = torch.zeros((total, *(int(s) for s in shapes.max(dim=0).values)), dtype=dtype, device=device)
        assert images is not None  # self._stored is set together with self._values
        # all_gather returns what it is given, here a tensor
        gathered_values = _with_world_dim(cast(torch.Tensor, pl_module.all_gather(values)), values)
        gathered_images = _with_world_dim(cast(torch.Tensor, pl_module.all_gather(images)), images)
        values, images, _ = best_across_ranks(gathered_values, gathered_images)
        return values, images

    def _project(self, best: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
        """Each map's strongest location in its image, with the current weights, projected on its window."""
        deconvnet = self._deconvnet
        assert deconvnet is not None, "setup() builds the deconvnet before training starts"
        arrays: dict[str, np.ndarray] = {"layers": np.array(list(self.maps), dtype=np.int64)}
        any_images = next(iter(best.values()))[1]
        arrays["image_size"] = np.array(any_images.shape[-2:], dtype=np.int64)  # to cut windows to the image
        for layer, (values, images) in best.items():
            maps = torch.tensor(self.maps[layer], device=images.device)
            projections = deconvnet.project_strongest(images, layer, maps, method=self.method)
            patches = projections.patches(images, torch.arange(len(maps), device=images.device))
            assert projections.rows is not None and projections.cols is not None  # project_strongest locates them
            numpy = {
                "maps": maps,
                "values": values,
                "projected_values": projections.values,
                "rows": projections.rows,
                "cols": projections.cols,
                "top": projections.top,
                "left": projections.left,
                "windows": projections.windows,
                "patches": patches,
            }
            for name, tensor in numpy.items():
                tensor = tensor.detach().cpu()
                arrays[f"{name}_layer{layer}"] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
        return arrays

    def _write(self, epoch: int) -> None:
        output_dir = self._output_dir()
        output_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        # numpy's stub types **kwds as if they could be its allow_pickle: bool
        np.savez(buffer, epoch=np.int64(epoch), **self.columns[epoch])  # type: ignore[arg-type]
        atomic_write_bytes(buffer.getvalue(), output_dir / f"epoch_{epoch:03d}.npz")
        with styled():
            save_figure(self.render(), self.figure_path, self.figure_formats)

    @property
    def figure_path(self) -> Path:
        return self._output_dir() / FIGURE_NAME

    def _output_dir(self) -> Path:
        assert self.output_dir is not None, "setup() sets output_dir"
        return self.output_dir

    def _log_image(self, trainer: L.Trainer) -> None:
        epochs = sorted(self.columns)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key=self.log_key,
                    images=[str(self.figure_path)],
                    step=trainer.global_step,
                    caption=[f"feature evolution, epochs {epochs}"],
                )

    # ------------------------------------------------------------------ figure
    def grid(self) -> tuple[torch.Tensor, list[tuple[int, int, float]], list[tuple[int, float]]]:
        """The figure's cells so far (`visualize.evolution_figure.evolution_grid`)."""
        return evolution_grid(self.columns, self.cell_size)

    def render(self) -> Figure:
        """The Fig. 4 figure of the snapshots so far (`visualize.evolution_figure.evolution_figure`); call inside
        `visualize.style.styled()`."""
        return evolution_figure(self.columns, self.cell_size)


# --------------------------------------------------------------------- helpers
def _network_of(pl_module: nn.Module) -> nn.Module:
    """The network whose `features` the deconvnet inverts (`ImageClassifier.net`, or the module itself)."""
    return getattr(pl_module, "net", pl_module)


def _top_module(deconvnet: Deconvnet, layer: int) -> nn.Module:
    """The module whose output is layer `layer`'s rectified map, as the deconvnet defines it."""
    return deconvnet.fast_features[deconvnet.feature_map_index(layer)]


def _with_world_dim(gathered: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """`all_gather` adds no world dimension on a single process: add it so both cases look alike."""
    return gathered.unsqueeze(0) if gathered.dim() == local.dim() else gathered


def _check_epochs(epochs: Any) -> list[int]:
    if isinstance(epochs, (str, bytes)) or not isinstance(epochs, Sequence) or not len(epochs):
        raise InputError(
            f"FeatureEvolution: snapshot_epochs must be a non-empty list of 1-based epochs, got {epochs!r}"
        )
    bad = [e for e in epochs if as_int(e) is None or e < 1]
    if bad:
        raise InputError(
            f"FeatureEvolution: snapshot_epochs must be positive ints (1-based epochs), got {bad} in {list(epochs)}"
        )
    return sorted({int(e) for e in epochs})


def _check_layers(layers: Any) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not len(layers):
        raise InputError(
            f"FeatureEvolution: layers must be a non-empty list of conv layers (1-based) or null, got {layers!r}"
        )
    bad = [layer for layer in layers if as_int(layer) is None or layer < 1]
    if bad:
        raise InputError(f"FeatureEvolution: unknown layer(s) {bad}: layers are 1-based conv layer numbers")
    return sorted({int(layer) for layer in layers})


def _check_maps(maps: Any) -> dict[int, list[int]]:
    if not isinstance(maps, Mapping) or not maps:
        raise InputError(
            f"FeatureEvolution: maps must be a non-empty {{layer: [map, ...]}} mapping or null, got {maps!r}"
        )
    checked: dict[int, list[int]] = {}
    for layer, indices in maps.items():
        layer = as_int(layer) if not isinstance(layer, str) else (int(layer) if layer.isdigit() else None)
        if layer is None or layer < 1:
            raise InputError(
                f"FeatureEvolution: unknown layer {layer!r} in maps: layers are 1-based conv layer numbers"
            )
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence) or not len(indices):
            raise InputError(
                f"FeatureEvolution: maps of layer {layer} must be a non-empty list of map indices, got {indices!r}"
            )
        bad = [m for m in indices if as_int(m) is None or m < 0]
        if bad:
            raise InputError(f"FeatureEvolution: map(s) {bad} of layer {layer} out of range: map indices are ints >= 0")
        checked[layer] = [int(m) for m in indices]
    return dict(sorted(checked.items()))
