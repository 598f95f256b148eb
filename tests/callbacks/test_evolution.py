"""The feature-evolution callback (paper Fig. 4): when it snapshots, that its maxima are the true maxima of
the epoch's training activations, that it leaves training untouched, the cross-rank reduction, resume,
W&B logging and its configuration errors."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch.overrides import TorchFunctionMode

from tests.helpers.configs import compose_config
from zf_lightning.callbacks.evolution import FIGURE_NAME, FeatureEvolution, best_across_ranks
from zf_lightning.cli.train import train
from zf_lightning.config.checker import ConfigError
from zf_lightning.data import SyntheticDataModule
from zf_lightning.deconv import Deconvnet
from zf_lightning.models import ImageClassifier
from zf_lightning.visualize.figures import contrast_stretch

TINY_NET = {"arch": "zfnet", "num_classes": 10, "input_size": 64, "width_multiplier": 0.125, "init_std": None}


def tiny_datamodule(cache_dir: Path) -> SyntheticDataModule:
    # 200 training images in batches of 20: 10 steps an epoch.
    return SyntheticDataModule(
        train_per_class=20, val_per_class=2, test_per_class=2, batch_size=20, num_workers=0, cache_dir=str(cache_dir)
    )


def tiny_trainer(callbacks, max_epochs: int, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    return L.Trainer(callbacks=callbacks, **{**options, **kwargs})


class Recorder(L.Callback):
    """What an exhaustive search needs: every training batch with the weights it was seen with."""

    def __init__(self) -> None:
        self.batches: dict[int, list[tuple[torch.Tensor, dict]]] = {}  # 1-based epoch -> [(images, features weights)]
        self.end_weights: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        state = copy.deepcopy(pl_module.net.features.state_dict())
        self.batches.setdefault(trainer.current_epoch + 1, []).append((batch[0].clone(), state))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end_weights[trainer.current_epoch + 1] = copy.deepcopy(pl_module.net.features.state_dict())


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """3 epochs of a tiny ZFNet with snapshots asked at epochs 1, 3 and 7 (7 > max_epochs)."""
    root = tmp_path_factory.mktemp("evolution")
    L.seed_everything(0)
    model = ImageClassifier(net=TINY_NET)
    evolution = FeatureEvolution(
        output_dir=root / "feature_evolution", snapshot_epochs=[1, 3, 7], maps_per_layer=3, seed=1
    )
    recorder = Recorder()
    records = _Records()
    logger = logging.getLogger("zf_lightning.callbacks.evolution")
    logger.addHandler(records)
    try:
        tiny_trainer([evolution, recorder], max_epochs=3, num_sanity_val_steps=1).fit(
            model, tiny_datamodule(root / "cache")
        )
    finally:
        logger.removeHandler(records)
    return SimpleNamespace(
        root=root,
        out=root / "feature_evolution",
        model=model,
        evolution=evolution,
        recorder=recorder,
        warnings=records.messages,
    )


# ---------------------------------------------------------------- snapshots
def test_snapshots_are_written_at_the_configured_epochs_only(fitted):
    assert sorted(p.name for p in fitted.out.iterdir()) == ["epoch_001.npz", "epoch_003.npz", FIGURE_NAME]
    (warning,) = [m for m in fitted.warnings if "dropped" in m]
    assert "[7]" in warning and "max_epochs=3" in warning
    assert sorted(fitted.evolution.columns) == [1, 3]

    deconvnet = Deconvnet(fitted.model.net)
    for epoch in (1, 3):
        with np.load(fitted.out / f"epoch_{epoch:03d}.npz") as data:
            assert int(data["epoch"]) == epoch
            assert data["layers"].tolist() == [1, 2, 3, 4, 5]
            for layer in range(1, 6):
                size = deconvnet.receptive_field(layer).size
                assert data[f"maps_layer{layer}"].tolist() == fitted.evolution.maps[layer]
                assert data[f"windows_layer{layer}"].shape == (3, 3, *size)
                assert data[f"patches_layer{layer}"].shape == (3, 3, *size)
                assert np.isfinite(data[f"windows_layer{layer}"]).all()

    # the figure: one column per snapshot so far, one row per map
    canvas, rows, columns = fitted.evolution.grid()
    size = fitted.evolution.cell_size
    assert [epoch for epoch, _ in columns] == [1, 3]
    assert [(layer, m) for layer, m, _ in rows] == [
        (layer, m) for layer in range(1, 6) for m in fitted.evolution.maps[layer]
    ]
    assert canvas.shape[2] == 2 * (size + 2) + 2 and canvas.shape[1] > 15 * size
    assert 0 <= canvas.min() and canvas.max() <= 1
    png = Image.open(fitted.out / FIGURE_NAME)
    assert png.size[0] > canvas.shape[2] and png.size[1] > canvas.shape[1]


def test_maps_are_a_seeded_draw_and_hooks_are_gone_after_training(fitted):
    again = FeatureEvolution(snapshot_epochs=[1], maps_per_layer=3, seed=1)
    assert again._choose_maps(Deconvnet(fitted.model.net)) == fitted.evolution.maps
    other = FeatureEvolution(snapshot_epochs=[1], maps_per_layer=3, seed=2)
    assert other._choose_maps(Deconvnet(fitted.model.net)) != fitted.evolution.maps
    for module in fitted.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def _crop(image: torch.Tensor, top: int, left: int, size: tuple[int, int]) -> torch.Tensor:
    """The (C, h, w) window of `image` at (top, left), zero outside the image: padding then slicing."""
    margin = max(size)
    padded = torch.nn.functional.pad(image, (margin, margin, margin, margin))
    return padded[:, top + margin : top + margin + size[0], left + margin : left + margin + size[1]]


@pytest.mark.parametrize("epoch", [1, 3])
def test_tracked_maxima_are_the_maxima_over_the_epochs_training_batches(fitted, epoch):
    """Exhaustive search: every batch of the epoch, re-run with the weights of the step it was seen at."""
    maps = fitted.evolution.maps
    net = copy.deepcopy(fitted.model.net)
    deconvnet = Deconvnet(net)
    best = {layer: [(-float("inf"), None)] * len(chosen) for layer, chosen in maps.items()}
    batches = fitted.recorder.batches[epoch]
    assert len(batches) == 10
    for images, weights in batches:
        net.features.load_state_dict(weights)
        activations = deconvnet.feature_maps(images, list(maps))
        for layer, chosen in maps.items():
            per_image = activations[layer][:, chosen].flatten(2).amax(dim=2)  # (B, K)
            for k in range(len(chosen)):
                for b in range(len(images)):
                    if per_image[b, k].item() > best[layer][k][0]:
                        best[layer][k] = (per_image[b, k].item(), images[b])

    net.features.load_state_dict(fitted.recorder.end_weights[epoch])
    with np.load(fitted.out / f"epoch_{epoch:03d}.npz") as data:
        for layer, chosen in maps.items():
            expected = torch.tensor([value for value, _ in best[layer]])
            torch.testing.assert_close(torch.from_numpy(data[f"values_layer{layer}"]), expected, rtol=0, atol=0)
            assert (expected > 0).any()

            # the stored image is the one that gave the maximum: its strongest location with the
            # end-of-epoch weights is the one projected, and the stored patch is that image's window
            # (one batch of the K images, as the callback does: conv results depend slightly on batch size)
            field = deconvnet.receptive_field(layer)
            found = torch.stack([image for _, image in best[layer]])
            at_end = deconvnet.feature_maps(found, [layer])[layer]
            for k, image in enumerate(found):
                activation = at_end[k, chosen[k]]
                where = int(activation.flatten().argmax())
                row, col = divmod(where, activation.shape[1])
                assert (data[f"rows_layer{layer}"][k], data[f"cols_layer{layer}"][k]) == (row, col)
                assert data[f"projected_values_layer{layer}"][k] == activation[row, col].item()
                top, left = field.window(row, col)
                assert (data[f"top_layer{layer}"][k], data[f"left_layer{layer}"][k]) == (top, left)
                torch.testing.assert_close(
                    torch.from_numpy(data[f"patches_layer{layer}"][k]),
                    _crop(image, top, left, field.size),
                    rtol=0,
                    atol=0,
                )


# ------------------------------------------------------- training unchanged
def test_tracking_on_and_off_train_to_bit_identical_weights(compose_train, tmp_path):
    """The same zf-train run with and without the callback (snapshots at both epochs): same weights, bit for bit."""
    common = ["trainer.max_epochs=2", "logger=csv", "test=false"]
    runs = {"on": ["callbacks.feature_evolution.snapshot_epochs=[1,2]"], "off": ["~callbacks.feature_evolution"]}
    # The first run computes the mean image (cold cache), the second reads it: that must not matter either.
    weights = {}
    for name, extra in runs.items():
        train(compose_train([*common, *extra], tmp_path / name))
        checkpoint = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 20
        weights[name] = checkpoint["state_dict"]
    assert sorted(p.name for p in (tmp_path / "on" / "feature_evolution").iterdir()) == [
        "epoch_001.npz",
        "epoch_002.npz",
        FIGURE_NAME,
    ]
    assert not (tmp_path / "off" / "feature_evolution").exists()
    assert weights["on"].keys() == weights["off"].keys()
    for key in weights["on"]:
        torch.testing.assert_close(weights["on"][key], weights["off"][key], rtol=0, atol=0, msg=key)


class TensorCalls(TorchFunctionMode):
    """Every tensor function and method called inside it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


# What makes a CUDA host wait for the device, or copies to the host.
HOST_SYNCS = {"item", "tolist", "cpu", "numpy", "to", "__bool__", "__int__", "__float__", "__index__", "nonzero"}


def test_the_per_batch_work_never_waits_for_the_device(tmp_path):
    """On a GPU the training loop must not stall on the callback: its hooks call nothing that reads a value
    back to the host (checked on CPU by recording every tensor call the hooks make)."""
    evolution = FeatureEvolution(output_dir=tmp_path / "evolution", snapshot_epochs=[1], maps_per_layer=2, seed=1)
    calls = TensorCalls()

    def watched(function):
        def run(*args, **kwargs):
            with calls:
                return function(*args, **kwargs)

        return run

    make_tracker = evolution._tracker
    evolution._tracker = lambda layer: watched(make_tracker(layer))  # what on_train_epoch_start registers
    evolution._remember_input = watched(evolution._remember_input)
    L.seed_everything(0)
    tiny_trainer([evolution], max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(
        ImageClassifier(net=TINY_NET, lr_scheduler=None), tiny_datamodule(tmp_path / "cache")
    )
    assert calls.names.count("index_select") == 3 * (
        5 + 1
    )  # the hooks ran: 5 layers' maps and the winning images, 3 batches
    assert calls.names.count("where") == 3 * 2
    assert not HOST_SYNCS & set(calls.names), sorted(HOST_SYNCS & set(calls.names))
    assert (tmp_path / "evolution" / "epoch_001.npz").is_file()


# ---------------------------------------------------------- cross-rank best
def test_best_across_ranks_picks_the_best_rank_per_map():
    values = torch.tensor(
        [
            [1.0, 5.0, -torch.inf, 2.0],
            [3.0, 5.0, 0.5, 2.0],
            [2.0, 4.0, -torch.inf, 7.0],
        ]
    )  # (world=3, K=4); map 1 ties between ranks 0 and 1; rank 0 and 2 never saw map 2 beat -inf
    world, k = values.shape
    images = (
        torch.arange(world * k, dtype=torch.float32).reshape(world, k, 1, 1, 1).expand(world, k, 3, 2, 2)
    )  # value = 4 * rank + map
    best, chosen, rank = best_across_ranks(values, images)
    assert rank.tolist() == [1, 0, 1, 2]
    assert best.tolist() == [3.0, 5.0, 0.5, 7.0]
    assert chosen.shape == (k, 3, 2, 2)
    assert chosen[:, 0, 0, 0].tolist() == [4 * r + m for m, r in enumerate([1, 0, 1, 2])]
    with pytest.raises(ValueError, match=r"\(world, K\)"):
        best_across_ranks(values, images[:, :2])


def test_a_single_process_gather_adds_the_world_dimension():
    evolution = FeatureEvolution(snapshot_epochs=[1], maps={1: [0, 2], 2: [1]})
    evolution.maps = dict(evolution.explicit_maps)
    module = SimpleNamespace(device=torch.device("cpu"), all_gather=lambda tensor: tensor)  # as SingleDeviceStrategy
    assert evolution._gather(module) is None  # no batch seen
    images = torch.randn(3, 3, 8, 8)
    evolution._values, evolution._stored = torch.tensor([1.0, 2.0, 3.0]), images
    values, gathered = evolution._gather(module)
    assert values.tolist() == [1.0, 2.0, 3.0] and torch.equal(gathered, images)


def test_a_rank_without_batches_loses_to_the_others():
    """Rank 1 of two saw no batch: it sends -inf and zeros of the shape rank 0 announced."""
    evolution = FeatureEvolution(snapshot_epochs=[1], maps={1: [0, 2]})
    evolution.maps = dict(evolution.explicit_maps)

    def all_gather(tensor):  # this process is rank 1; rank 0 holds these:
        if tensor.dtype == torch.long:
            other = torch.tensor([3, 8, 8])  # the image shape
        elif tensor.dim() == 1:
            other = torch.tensor([0.5, 0.25])  # its best values
        else:
            other = torch.ones(2, 3, 8, 8)  # its images
        assert other.shape == tensor.shape
        return torch.stack([other, tensor])

    values, images = evolution._gather(SimpleNamespace(device=torch.device("cpu"), all_gather=all_gather))
    assert values.tolist() == [0.5, 0.25] and torch.equal(images, torch.ones(2, 3, 8, 8))


class _SavingRecorder(L.Callback):
    """Recorder for spawned ranks: each training batch and its step's weights go to a file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        path = self.directory / f"rank{trainer.global_rank}_batch{batch_idx:03d}.pt"
        torch.save((batch[0].clone(), pl_module.net.features.state_dict()), path)


class _OneThreadPerForkedRank(L.Callback):
    """torch's OpenMP pool does not survive a fork: a forked rank that runs more than one thread can wedge in its
    first parallel region (pytorch/pytorch#58962). Lightning gives each rank cpus // 2 threads: 1 on 2 cores only."""

    def setup(self, trainer, pl_module, stage) -> None:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_under_ddp_the_maxima_are_the_best_over_all_ranks_batches(tmp_path):
    """Two CPU processes (gloo): rank 0 writes the snapshot, whose values are the maxima over both ranks' data.
    The ranks are forked from this process (ddp_fork): spawned ones would each import the test session again,
    some 5 s on 2 cores; the entry point's own DDP (its script relaunch) is tested in tests/cli/test_scaling.py."""
    records = tmp_path / "records"
    records.mkdir()
    L.seed_everything(0)
    evolution = FeatureEvolution(output_dir=tmp_path / "evo", snapshot_epochs=[1], maps_per_layer=2)
    trainer = tiny_trainer(
        [_OneThreadPerForkedRank(), evolution, _SavingRecorder(records)],
        max_epochs=1,
        strategy="ddp_fork",
        devices=2,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        deterministic=False,
    )
    model = ImageClassifier(net=TINY_NET)
    trainer.fit(
        model,
        SyntheticDataModule(
            train_per_class=8,
            val_per_class=2,
            test_per_class=2,
            batch_size=20,
            num_workers=0,
            cache_dir=str(tmp_path / "cache"),
        ),
    )
    assert sorted(p.name for p in (tmp_path / "evo").iterdir()) == ["epoch_001.npz", FIGURE_NAME]
    files = sorted(records.iterdir())
    assert {p.name[:5] for p in files} == {"rank0", "rank1"}

    net = copy.deepcopy(model.net)
    deconvnet = Deconvnet(net)
    with np.load(tmp_path / "evo" / "epoch_001.npz") as data:
        maps = {layer: data[f"maps_layer{layer}"].tolist() for layer in data["layers"].tolist()}
        values = {layer: torch.from_numpy(data[f"values_layer{layer}"]) for layer in maps}
    best = {layer: torch.full((len(chosen),), -torch.inf) for layer, chosen in maps.items()}
    per_rank = {0: {layer: best[layer].clone() for layer in maps}, 1: {layer: best[layer].clone() for layer in maps}}
    for path in files:
        images, weights = torch.load(path, weights_only=True)
        net.features.load_state_dict(weights)
        activations = deconvnet.feature_maps(images, list(maps))
        rank = int(path.name[4])
        for layer, chosen in maps.items():
            batch_best = activations[layer][:, chosen].flatten(2).amax(dim=2).amax(dim=0)
            per_rank[rank][layer] = torch.maximum(per_rank[rank][layer], batch_best)
    for layer in maps:
        expected = torch.maximum(per_rank[0][layer], per_rank[1][layer])
        torch.testing.assert_close(values[layer], expected, rtol=0, atol=0)
    # the reduction mattered: some map's best came from rank 1
    assert any((per_rank[1][layer] > per_rank[0][layer]).any() for layer in maps)


def test_hooks_record_only_inside_training_batches_of_snapshot_epochs(tmp_path):
    model = ImageClassifier(net=TINY_NET)
    evolution = FeatureEvolution(output_dir=tmp_path, snapshot_epochs=[2])
    evolution.setup(SimpleNamespace(max_epochs=3, is_global_zero=True, default_root_dir=str(tmp_path)), model, "fit")
    images = torch.randn(4, 3, 64, 64)

    evolution.on_train_epoch_start(SimpleNamespace(current_epoch=0), model)  # epoch 1: not a snapshot
    assert evolution._handles == []
    trainer = SimpleNamespace(current_epoch=1)
    evolution.on_train_epoch_start(trainer, model)
    model(images)  # a forward pass outside a training batch (validation, sanity check): not recorded
    assert evolution._values is None
    evolution.on_train_batch_start(trainer, model, (images, None), 0)
    model(images)
    evolution.on_train_batch_end(trainer, model, None, (images, None), 0)
    assert evolution._values.shape == (20,) and evolution._stored.shape == (20, 3, 64, 64)
    seen = evolution._values.clone()
    model(images * 10)  # again outside: nothing changes
    assert torch.equal(evolution._values, seen)
    evolution.teardown(trainer, model, "fit")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -------------------------------------------------------------------- resume
def test_a_resumed_run_keeps_the_earlier_columns(compose_train, tmp_path):
    out = tmp_path / "run"
    common = ["logger=csv", "test=false", "callbacks.feature_evolution.snapshot_epochs=[1,2]"]
    train(compose_train(["trainer.max_epochs=1", *common], out))
    evolution_dir = out / "feature_evolution"
    first = (evolution_dir / "epoch_001.npz").read_bytes()
    width_one_column = Image.open(evolution_dir / FIGURE_NAME).size[0]

    train(compose_train(["trainer.max_epochs=2", "ckpt_path=last", *common], out))
    assert (evolution_dir / "epoch_001.npz").read_bytes() == first  # not redone
    assert (evolution_dir / "epoch_002.npz").is_file()
    width_two_columns = Image.open(evolution_dir / FIGURE_NAME).size[0]
    assert width_two_columns - width_one_column == FeatureEvolution().cell_size + 2  # one more column

    # what on_train_start reads back: snapshots of completed epochs that follow the same maps
    reader = FeatureEvolution(output_dir=evolution_dir, snapshot_epochs=[1, 2])
    reader.maps = {
        int(layer): np.load(evolution_dir / "epoch_001.npz")[f"maps_layer{layer}"].tolist() for layer in range(1, 6)
    }
    reader.on_train_start(SimpleNamespace(is_global_zero=True, current_epoch=1), None)
    assert sorted(reader.columns) == [1]
    reader.maps[1] = [0]
    reader.on_train_start(SimpleNamespace(is_global_zero=True, current_epoch=2), None)
    assert reader.columns == {}


# ---------------------------------------------------------------------- W&B
def test_the_figure_goes_to_wandb_when_a_wandb_logger_is_used(tmp_path):
    evolution = FeatureEvolution(output_dir=tmp_path, snapshot_epochs=[1, 2])
    evolution.columns = {1: {}, 2: {}}
    wandb = mock.Mock(spec=WandbLogger)
    other = mock.Mock()
    evolution._log_image(SimpleNamespace(loggers=[other, wandb], global_step=7))
    wandb.log_image.assert_called_once()
    kwargs = wandb.log_image.call_args.kwargs
    assert (
        kwargs["key"] == "feature_evolution"
        and kwargs["images"] == [str(tmp_path / FIGURE_NAME)]
        and kwargs["step"] == 7
    )
    assert not other.log_image.called


def test_contrast_stretch_centres_and_fills_the_unit_range():
    window = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])
    cell = contrast_stretch(window)
    assert cell.mean().item() == pytest.approx(0.5)
    assert cell.min().item() >= 0 and cell.max().item() == pytest.approx(1.0)
    assert torch.equal(contrast_stretch(torch.zeros(3, 4, 4)), torch.full((3, 4, 4), 0.5))
    batch = torch.stack([window, 3 * window + 1])  # each image of a batch on its own
    torch.testing.assert_close(contrast_stretch(batch), torch.stack([cell, cell]))


# ------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"snapshot_epochs": [0, 2]}, r"snapshot_epochs must be positive ints \(1-based epochs\), got \[0\]"),
        ({"snapshot_epochs": [3, -1]}, r"got \[-1\]"),
        ({"snapshot_epochs": []}, r"snapshot_epochs must be a non-empty list"),
        ({"maps_per_layer": 0}, r"maps_per_layer must be an int >= 1"),
        ({"layers": [0, 2]}, r"unknown layer\(s\) \[0\]"),
        ({"maps": {1: [3, -2]}}, r"map\(s\) \[-2\] of layer 1 out of range"),
        ({"maps": {1: [0]}, "layers": [1, 2]}, r"disagree"),
        ({"method": "saliency"}, r"unknown method 'saliency'"),
    ],
)
def test_bad_options_fail_when_the_callback_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        FeatureEvolution(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layers": [1, 6]}, r"unknown layer\(s\) \[6\]: the model has 5 conv layers"),
        ({"maps": {1: [0, 12]}}, r"map\(s\) \[12\] of layer 1 out of range: it has 12 maps"),
    ],
)
def test_options_the_model_cannot_satisfy_fail_before_training(tmp_path, options, message):
    recorder = Recorder()
    evolution = FeatureEvolution(output_dir=tmp_path / "evo", **options)
    with pytest.raises(ValueError, match=message):
        tiny_trainer([evolution, recorder], max_epochs=1).fit(
            ImageClassifier(net=TINY_NET, lr_scheduler=None), tiny_datamodule(tmp_path / "cache")
        )
    assert recorder.batches == {} and not (tmp_path / "evo").exists()


def test_bad_config_fails_before_training_in_zf_train(compose_train, tmp_path):
    with pytest.raises(ConfigError, match=r"snapshot_epochs=\[0, 5\].*ints >= 1"):
        train(compose_train(["callbacks.feature_evolution.snapshot_epochs=[0,5]", "logger=csv"], tmp_path / "a"))
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \[7\]"):
        train(compose_train(["callbacks.feature_evolution.layers=[1,7]", "logger=csv"], tmp_path / "b"))
    for run in ("a", "b"):
        assert not (tmp_path / run / "checkpoints").exists() and not (tmp_path / run / "feature_evolution").exists()


def test_the_default_run_snapshots_epochs_1_2_5_10_20_and_says_which_it_drops(tmp_path, caplog):
    cfg = compose_config("train", tmp_path / "run")  # zf-train with no arguments: quickstart, 20 epochs
    evolution = instantiate(cfg.callbacks.feature_evolution)
    assert evolution.snapshot_epochs == [1, 2, 5, 10, 20, 30, 40, 64]
    assert evolution.output_dir == tmp_path / "run" / "feature_evolution"
    with caplog.at_level(logging.WARNING, logger="zf_lightning.callbacks.evolution"):
        trainer = SimpleNamespace(
            max_epochs=cfg.trainer.max_epochs, is_global_zero=True, default_root_dir=str(tmp_path)
        )
        evolution.setup(trainer, instantiate(cfg.model), "fit")
    assert evolution._epochs == [1, 2, 5, 10, 20]
    assert "[30, 40, 64]" in caplog.text and "max_epochs=20" in caplog.text
    assert {layer: len(maps) for layer, maps in evolution.maps.items()} == {1: 4, 2: 4, 3: 4, 4: 4, 5: 4}
