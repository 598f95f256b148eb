"""The schemas of every entry point's config: the groups they share (model, data, trainer, callbacks, logger,
paths, images) and each app's own keys (`APPS`). A field's type is its annotation, `spec(...)` its value checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from zf_lightning.config.fields import (
    Closed,
    Targeted,
    all_at_least,
    all_positive,
    at_least,
    choices,
    conv_layers,
    devices,
    layer_names_or_numbers,
    length,
    open_unit,
    positive,
    probability,
    removable_layers,
    snapshot_epochs,
    spec,
)

PRETRAINED_SOURCES = ("torchvision", "pytorchcv", "module")


# Where the allowed values come from: imported when a config is checked, not when this module is.
def _architectures():
    from zf_lightning.models.registry import ARCHITECTURES

    return sorted(ARCHITECTURES)


def _norm_positions():
    from zf_lightning.models.convnet import NORM_POSITIONS

    return NORM_POSITIONS


def _transfer_modes():
    from zf_lightning.models.classifier import TRANSFER_MODES

    return TRANSFER_MODES


def _tasks():
    from zf_lightning.models.classifier import TASKS

    return TASKS


def _presets():
    from zf_lightning.data.transforms import PRESETS

    return list(PRESETS)


def _decodes():
    from zf_lightning.data.datamodules import DECODE

    return list(DECODE)


def _datasets():
    from zf_lightning.transfer.datamodule import DATASETS

    return list(DATASETS)


def _splits():
    return ["train", "val", "test"]


def _deconv_methods():
    from zf_lightning.deconv.engine import METHODS

    return list(METHODS)


def _transformations():
    from zf_lightning.analysis.invariance import TRANSFORMATIONS

    return list(TRANSFORMATIONS)


def _each_in(values: Sequence[str], allowed: Sequence[str]) -> str | None:
    bad = [value for value in values if value not in allowed]
    return f"unknown value(s) {bad}; allowed values: {allowed}" if bad else None


def _evolution_methods():
    from zf_lightning.deconv.engine import METHODS

    return list(METHODS)


# ------------------------------------------------------------------------------------------------- schemas


@dataclass
class NetSchema(Closed):
    """`model.net`: the options of `zf_lightning.models.build_network` (zfnet / alexnet / PaperConvNet)."""

    arch: str = spec(choices(_architectures))
    num_classes: int = spec(at_least(1))
    input_size: int = spec(at_least(1))
    conv_widths: list[int] | None = spec(length(5, "maps of conv1-5"), all_at_least(1))
    fc_widths: list[int] = spec(length(2, "units of fc6 and fc7"), all_at_least(1))
    removed_layers: list[int] = spec(removable_layers)
    local_response_norm: bool = spec()
    norm_position: str = spec(choices(_norm_positions))
    width_multiplier: float = spec(positive)
    dropout: float = spec(probability)
    init_std: float | None = spec(positive)
    conv1_init_std: float | None = spec(positive)
    lrn: dict[str, float] | None = spec()
    in_channels: int = spec(at_least(1))


@dataclass
class OptimizerSchema(Targeted):
    """`model.optimizer`: a torch optimizer; its `params` come from the model."""

    drop_keys = frozenset({"params"})
    lr: float = spec(positive)
    momentum: float = spec(at_least(0))
    dampening: float = spec(at_least(0))
    weight_decay: float = spec(at_least(0))
    nesterov: bool = spec()


@dataclass
class SchedulerSchema(Targeted):
    """`model.lr_scheduler`: a torch scheduler of the optimizer, plus the metric it watches (`monitor`)."""

    drop_keys = frozenset({"optimizer"})
    extra_keys = frozenset({"monitor"})
    monitor: str = spec()
    mode: str = spec(choices(lambda: ["min", "max"]))
    factor: float = spec(open_unit)
    patience: int = spec(at_least(0))
    cooldown: int = spec(at_least(0))
    threshold: float = spec(at_least(0))
    threshold_mode: str = spec(choices(lambda: ["rel", "abs"]))
    min_lr: float | list[float] = spec()
    gamma: float = spec(positive)
    step_size: int = spec(at_least(1))


@dataclass
class PretrainedSchema(Closed):
    """`pretrained`: a network trained elsewhere (torchvision, pytorchcv, a module of one's own), in place of
    ckpt_path (conf/pretrained/)."""

    source: str = spec(choices(lambda: PRETRAINED_SOURCES))
    name: str | None = spec()
    target: str | None = spec()
    kwargs: dict[str, Any] | None = spec()
    weights: str | None = spec()
    num_classes: int | None = spec(at_least(1))
    convert: bool = spec()
    resize_size: int | None = spec(at_least(1))
    crop_size: int | None = spec(at_least(1))
    mean: list[float] | None = spec(length(3, "one per RGB channel"))
    std: list[float] | None = spec(length(3, "one per RGB channel"), all_positive)
    class_names: Union[list[str], str, None] = spec()


@dataclass
class TransferSchema(Closed):
    mode: str = spec(choices(_transfer_modes))
    checkpoint: str | None = spec()
    pretrained: PretrainedSchema | None = spec()  # a network trained elsewhere (pretrained=...) to start from


@dataclass
class ModelSchema(Targeted):
    """`model`: the LightningModule (`zf_lightning.models.ImageClassifier`)."""

    net: NetSchema = spec()
    optimizer: OptimizerSchema = spec()
    lr_scheduler: SchedulerSchema | None = spec()
    filter_rms_radius: float | None = spec(positive)
    transfer: TransferSchema | None = spec()
    task: str = spec(choices(_tasks))
    channels_last: bool = spec()
    compile: Any = spec()


@dataclass
class DataSchema(Targeted):
    """`data`: the fields the datamodules share, and those of each (checked where present)."""

    num_classes: int = spec(at_least(1))
    batch_size: int = spec(at_least(1))
    num_workers: int = spec(at_least(0))
    preset: str = spec(choices(_presets))
    resize_size: int = spec(at_least(1))
    image_size: int = spec(at_least(1))
    crop_size: int = spec(at_least(1))
    ten_crop_test: bool = spec()
    train_crops: str = spec(choices(lambda: ["random", "ten"]))  # zf_lightning.data.transforms.TRAIN_CROPS
    mean_image_max_images: int | None = spec(at_least(1))
    cache_dir: str | None = spec()
    pin_memory: bool = spec()
    persistent_workers: bool = spec()
    train_per_class: int = spec(at_least(1))
    val_per_class: int = spec(at_least(1))
    test_per_class: int = spec(at_least(1))
    seed: int = spec()
    root: str = spec()
    decode: str = spec(choices(_decodes))
    dataset: str = spec(choices(_datasets))
    split_seed: int = spec(at_least(0))
    max_test_per_class: int | None = spec(at_least(1))
    mean_image_checkpoint: str | None = spec()
    exclude: str | None = spec()


@dataclass
class TrainerSchema(Targeted):
    """`trainer`: `lightning.pytorch.Trainer`'s arguments (the common ones typed)."""

    accelerator: str = spec()
    strategy: Any = spec()
    devices: Union[int, str, list[int]] = spec(devices)
    num_nodes: int = spec(at_least(1))
    precision: Union[int, str, None] = spec()
    fast_dev_run: Union[bool, int] = spec()
    max_epochs: int | None = spec(at_least(-1))
    min_epochs: int | None = spec(at_least(0))
    max_steps: int = spec(at_least(-1))
    limit_train_batches: Union[int, float, None] = spec(at_least(0))
    limit_val_batches: Union[int, float, None] = spec(at_least(0))
    limit_test_batches: Union[int, float, None] = spec(at_least(0))
    check_val_every_n_epoch: int | None = spec(at_least(1))
    log_every_n_steps: int | None = spec(at_least(0))
    accumulate_grad_batches: int = spec(at_least(1))
    gradient_clip_val: Union[int, float, None] = spec(at_least(0))
    deterministic: Union[bool, str, None] = spec()
    benchmark: bool | None = spec()
    sync_batchnorm: bool = spec()
    num_sanity_val_steps: int | None = spec(at_least(-1))
    default_root_dir: str | None = spec()
    enable_checkpointing: bool | None = spec()
    enable_progress_bar: bool | None = spec()
    enable_model_summary: bool | None = spec()


@dataclass
class FeatureEvolutionSchema(Targeted):
    """`callbacks.feature_evolution` (`zf_lightning.callbacks.evolution.FeatureEvolution`)."""

    output_dir: str | None = spec()
    snapshot_epochs: list[int] = spec(snapshot_epochs)
    layers: list[int] | None = spec(conv_layers)
    maps_per_layer: int = spec(at_least(1))
    seed: int = spec()
    maps: dict[Union[int, str], list[int]] | None = spec()
    method: str = spec(choices(_evolution_methods))
    cell_size: int = spec(at_least(1))
    log_key: str = spec()
    figure_formats: list[str] = spec(lambda formats: _each_in(formats, ["png", "pdf", "svg"]))


@dataclass
class ModelCheckpointSchema(Targeted):
    dirpath: str | None = spec()
    filename: str | None = spec()
    monitor: str | None = spec()
    mode: str = spec(choices(lambda: ["min", "max"]))
    save_top_k: int = spec(at_least(-1))
    every_n_epochs: int | None = spec(at_least(0))
    save_last: Union[bool, str, None] = spec()
    auto_insert_metric_name: bool = spec()
    enable_version_counter: bool = spec()


@dataclass
class GenericTargetSchema(Targeted):
    """Any other `_target_` node (callbacks, loggers): its keys are checked, not their types."""


@dataclass
class LoggerSchema(Targeted):
    save_dir: str | None = spec()
    name: str | None = spec()
    version: Union[int, str, None] = spec()
    offline: bool = spec()
    project: str | None = spec()
    tags: list[str] | None = spec()
    log_model: Union[bool, str] = spec()


@dataclass
class TopSchema:
    """Top-level keys every app has; `notes` is one's own, free text or a mapping, kept with the run's config."""

    task_name: str = spec()
    run_name: str | None = spec()
    group: str | None = spec()
    tags: list[str] | None = spec()
    job_type: str | None = spec()
    seed: int | None = spec()
    notes: Any = spec()
    # PNG always; "pdf" and "svg" add vector copies beside it (zf_lightning/visualize/style.py)
    figure_formats: list[str] | None = spec(lambda formats: _each_in(formats, ["png", "pdf", "svg"]))


@dataclass
class PathsSchema(Closed):
    """`paths`: where runs, data and caches go."""

    log_dir: str = spec()
    data_dir: str = spec()
    cache_dir: str = spec()
    output_dir: str = spec()


@dataclass
class ImagesSchema(Closed):
    """`images`: the images an analysis runs on (a folder of one's own, or a split of the datamodule)."""

    image_dir: str | None = spec()
    labels: Any = spec()
    split: str | None = spec(choices(_splits))
    indices: list[int] | None = spec(all_at_least(0))
    max_images: int | None = spec(at_least(1))
    require_labels: bool = spec()


@dataclass
class OcclusionSchema(Closed):
    layer: Union[int, str] = spec(layer_names_or_numbers)
    top_projections: int = spec(at_least(0))
    window: Union[int, list[int]] = spec()
    stride: Union[int, list[int]] = spec()
    include_partial: bool = spec()
    batch_size: int = spec(at_least(1))


@dataclass
class AmountsSchema(Closed):
    translation: list[float] | None = spec()
    scale: list[float] | None = spec()
    rotation: list[float] | None = spec()


@dataclass
class InvarianceSchema(Closed):
    layers: list[Union[int, str]] = spec(layer_names_or_numbers)
    batch_size: int = spec(at_least(1))
    relative: bool = spec()
    transformations: list[str] = spec(lambda kinds: _each_in(kinds, _transformations()))
    amounts: AmountsSchema | None = spec()


@dataclass
class CorrespondenceSchema(Closed):
    boxes: str | None = spec()
    layers: list[Union[int, str]] = spec(layer_names_or_numbers)
    repeats: int = spec(at_least(1))
    batch_size: int = spec(at_least(1))
    per_pair: bool = spec()
    tolerance: float = spec(at_least(0))


# ------------------------------------------------------------------------------------------ the entry points


@dataclass
class TrainApp:
    """zf-train (conf/train.yaml)."""

    ckpt_path: str | None = spec()
    pretrained: PretrainedSchema | None = spec()  # the transfer experiments' starting network
    wandb_checkpoints: bool = spec()
    train: bool = spec()
    test: bool = spec()
    smoke: bool = spec()  # debug=smoke: the run goes to <group>-smoke (utils/smoke.py)


@dataclass
class EvalApp:
    """zf-eval (conf/eval.yaml)."""

    ckpt_path: str | None = spec()
    pretrained: PretrainedSchema | None = spec()
    smoke: bool = spec()  # debug=smoke: the run goes to <group>-smoke (utils/smoke.py)


@dataclass
class Top9App:
    """zf-visualize top9 (conf/visualize_top9.yaml)."""

    ckpt_path: str | None = spec()
    pretrained: PretrainedSchema | None = spec()
    split: str = spec(choices(_splits))
    max_images: int | None = spec(at_least(1))
    layers: list[Union[int, str]] = spec(layer_names_or_numbers)
    maps_per_layer: int = spec(at_least(1))
    maps: dict[Union[int, str], list[int]] | None = spec()
    top_k: int = spec(at_least(1))
    method: str = spec(choices(_deconv_methods))
    device: str = spec()
    batch_size: int = spec(at_least(1))
    num_workers: int = spec(at_least(0))


@dataclass
class FiltersApp:
    """zf-visualize filters (conf/visualize_filters.yaml)."""

    ckpt_paths: list[str] | None = spec()
    pretrained: PretrainedSchema | None = spec()
    split: str = spec(choices(_splits))
    max_images: int | None = spec(at_least(1))
    layer2_maps: int = spec(at_least(1))
    method: str = spec(choices(_deconv_methods))
    device: str = spec()
    batch_size: int = spec(at_least(1))
    num_workers: int = spec(at_least(0))


@dataclass
class OcclusionApp:
    """zf-analyze occlusion (conf/analyze_occlusion.yaml)."""

    ckpt_path: str | None = spec()
    pretrained: PretrainedSchema | None = spec()
    arch: str | None = spec(choices(_architectures))
    device: str = spec()
    occlusion: OcclusionSchema = spec()


@dataclass
class InvarianceApp:
    """zf-analyze invariance (conf/analyze_invariance.yaml)."""

    ckpt_path: str | None = spec()
    pretrained: PretrainedSchema | None = spec()
    arch: str | None = spec(choices(_architectures))
    device: str = spec()
    invariance: InvarianceSchema = spec()


@dataclass
class CorrespondenceApp:
    """zf-analyze correspondence (conf/analyze_correspondence.yaml)."""

    ckpt_path: str | None = spec()
    pretrained: PretrainedSchema | None = spec()
    arch: str | None = spec(choices(_architectures))
    device: str = spec()
    correspondence: CorrespondenceSchema = spec()


@dataclass
class FeaturesApp:
    """zf-features (conf/features.yaml)."""

    ckpt_path: str | None = spec()
    pretrained: PretrainedSchema | None = spec()
    rows: list[str] = spec(lambda rows: None if rows else "must list at least one row, e.g. [svm:5, softmax:7]")
    grid: int = spec(at_least(1))
    regularisation: float = spec(positive)
    batch_size: int = spec(at_least(1))
    num_workers: int = spec(at_least(0))
    device: str = spec()


@dataclass(frozen=True)
class App:
    """An entry point: its command, the schema of its own top-level keys, and the config groups it composes."""

    command: str
    fields: type
    groups: frozenset[str]


_ANALYSIS = frozenset({"images", "data", "logger", "paths"})
APPS = {
    "train": App("zf-train", TrainApp, frozenset({"model", "data", "trainer", "callbacks", "logger", "paths"})),
    "eval": App("zf-eval", EvalApp, frozenset({"data", "trainer", "logger", "paths"})),
    "visualize_top9": App("zf-visualize top9", Top9App, _ANALYSIS),
    "visualize_filters": App("zf-visualize filters", FiltersApp, _ANALYSIS),
    "analyze_occlusion": App("zf-analyze occlusion", OcclusionApp, _ANALYSIS),
    "analyze_invariance": App("zf-analyze invariance", InvarianceApp, _ANALYSIS),
    "analyze_correspondence": App("zf-analyze correspondence", CorrespondenceApp, _ANALYSIS),
    "features": App("zf-features", FeaturesApp, frozenset({"data", "logger", "paths"})),
}
# An app by its config's task_name, for configs composed without Hydra's node (tests, notebooks).
APP_OF_TASK = {
    "train": "train",
    "eval": "eval",
    "top9": "visualize_top9",
    "filters": "visualize_filters",
    "occlusion": "analyze_occlusion",
    "invariance": "analyze_invariance",
    "correspondence": "analyze_correspondence",
    "features": "features",
}


# The schema of a `_target_` node by what it instantiates (first match), else GenericTargetSchema.
CALLBACK_SCHEMAS = {
    "zf_lightning.callbacks.evolution.FeatureEvolution": FeatureEvolutionSchema,
    "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpointSchema,
}
