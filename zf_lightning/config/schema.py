"""Structured schemas of the main config groups, checked at start-up, before any data is read or directory made.

    from zf_lightning.config.schema import ConfigError, validate_config
    validate_config(cfg)        # raises ConfigError listing every problem, each with its full dotted key

What is checked (only the groups a config has, so every app can share it):

- keys: a misspelled key anywhere in `model`, `data`, `trainer`, `callbacks.*` and `logger.*` is refused, with
  the allowed keys and the closest one. Nodes with a `_target_` allow the parameters of what they instantiate
  (base classes included where it passes **kwargs on, W&B's `wandb.init` options for the W&B logger);
  `model.net` allows the options of `zf_lightning.models.build_network`. An unknown top-level key that is one
  typo away from a known one (`trainr`) is refused too; other new top-level keys (`+notes=...`) are allowed.
- types: the fields declared in the dataclasses below (an int where an int is expected, a list of ints, ...).
- values: `model.net.arch` among the registered architectures, learning rate > 0, momentum and weight decay
  >= 0, width multiplier > 0, dropout in [0, 1), snapshot epochs strictly increasing and >= 1, a global
  `data.batch_size` that divides across `trainer.devices` x `trainer.num_nodes`, choices such as
  `data.preset` or `model.net.norm_position`, ...

Values that cannot be resolved yet (`${hydra:runtime.output_dir}` before the run starts, `???` mandatory
values) are skipped: the app itself reports those when it reads them.

`ValidateConfig` is the Hydra callback (registered in conf/hydra/default.yaml, `hydra.callbacks`) that runs the
check in `on_run_start`, before Hydra creates the run directory, and in `on_multirun_start` for every job of a
basic-sweeper multirun, before the sweep directory exists. `~hydra.callbacks.validate_config` turns it off.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

try:  # Hydra's callback base class (hydra-core >= 1.1)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object

__all__ = ["ConfigError", "ValidateConfig", "validate_config", "config_problems", "allowed_keys"]

# Keys Hydra's instantiate understands on any node.
HYDRA_KEYS = frozenset({"_target_", "_recursive_", "_convert_", "_partial_", "_args_"})
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
MAX_REPORTED_JOBS = 5


class ConfigError(ValueError):
    """A config that cannot run; `problems` lists each one, starting with its full dotted key."""

    def __init__(self, problems: list[str], header: str | None = None) -> None:
        self.problems = list(problems)
        if header is None:
            header = f"invalid config ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"
        super().__init__(f"{header}:\n" + "\n".join(f"  - {p}" for p in self.problems))


# --------------------------------------------------------------------------------------------- value checks
# A check takes a value of the right type and returns what is wrong with it, or None.


def _choices(source: Callable[[], Iterable[Any]]) -> Callable[[Any], str | None]:
    def check(value):
        allowed = list(source())
        return None if value in allowed else f"must be one of {allowed}"

    return check


def _at_least(bound: float) -> Callable[[Any], str | None]:
    return lambda value: None if value >= bound else f"must be >= {bound}"


def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _probability(value) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _open_unit(value) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _all_at_least(bound: int) -> Callable[[Any], str | None]:
    def check(values):
        bad = [v for v in values if v < bound]
        return f"every entry must be >= {bound}, got {bad}" if bad else None

    return check


def _length(n: int, what: str) -> Callable[[Any], str | None]:
    return lambda values: None if len(values) == n else f"must give {n} numbers ({what}), got {len(values)}"


def _snapshot_epochs(epochs) -> str | None:
    increasing = all(a < b for a, b in zip(epochs, epochs[1:]))
    if epochs and increasing and min(epochs) >= 1:
        return None
    return "must be a non-empty, strictly increasing list of 1-based epochs (ints >= 1, no duplicates), e.g. [1, 2, 5, 10]"


def _conv_layers(layers) -> str | None:
    bad = [layer for layer in layers if not 1 <= layer <= 5]
    return f"unknown layer(s) {bad}; allowed values: the conv layers 1..5" if bad else None


def _removable_layers(layers) -> str | None:
    from zf_lightning.models.convnet import REMOVABLE_LAYERS

    bad = [layer for layer in layers if layer not in REMOVABLE_LAYERS]
    return f"layer(s) {bad} cannot be removed; allowed values: {list(REMOVABLE_LAYERS)} (conv3, conv4, fc6, fc7)" if bad else None


def _devices(value) -> str | None:
    if isinstance(value, int) and (value == -1 or value >= 1):
        return None
    if isinstance(value, str) or (isinstance(value, list) and value and all(v >= 0 for v in value)):
        return None
    return "must be a number of devices >= 1, -1 (all), 'auto', or a non-empty list of device ids"


def spec(*checks: Callable[[Any], str | None], doc: str = "") -> Any:
    """A schema field: its type is the annotation, `checks` test its value (the default is never used)."""
    return field(default=None, metadata={"checks": checks, "doc": doc})


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


def _evolution_methods():
    from zf_lightning.callbacks.evolution import METHODS

    return list(METHODS)


# ------------------------------------------------------------------------------------------------- schemas


class Closed:
    """A node whose keys are exactly the dataclass fields."""


class Targeted:
    """A node with a `_target_`: its keys are the target's parameters (less `drop_keys`, plus `extra_keys`);
    the dataclass fields type-check those of them that are present."""

    drop_keys: typing.ClassVar[frozenset[str]] = frozenset()
    extra_keys: typing.ClassVar[frozenset[str]] = frozenset()


@dataclass
class NetSchema(Closed):
    """`model.net`: the options of `zf_lightning.models.build_network` (zfnet / alexnet / PaperConvNet)."""

    arch: str = spec(_choices(_architectures))
    num_classes: int = spec(_at_least(1))
    input_size: int = spec(_at_least(1))
    conv_widths: list[int] | None = spec(_length(5, "maps of conv1-5"), _all_at_least(1))
    fc_widths: list[int] = spec(_length(2, "units of fc6 and fc7"), _all_at_least(1))
    removed_layers: list[int] = spec(_removable_layers)
    local_response_norm: bool = spec()
    norm_position: str = spec(_choices(_norm_positions))
    width_multiplier: float = spec(_positive)
    dropout: float = spec(_probability)
    init_std: float | None = spec(_positive)
    lrn: dict[str, float] | None = spec()
    in_channels: int = spec(_at_least(1))


@dataclass
class OptimizerSchema(Targeted):
    """`model.optimizer`: a torch optimizer; its `params` come from the model."""

    drop_keys = frozenset({"params"})
    lr: float = spec(_positive)
    momentum: float = spec(_at_least(0))
    dampening: float = spec(_at_least(0))
    weight_decay: float = spec(_at_least(0))
    nesterov: bool = spec()


@dataclass
class SchedulerSchema(Targeted):
    """`model.lr_scheduler`: a torch scheduler of the optimizer, plus the metric it watches (`monitor`)."""

    drop_keys = frozenset({"optimizer"})
    extra_keys = frozenset({"monitor"})
    monitor: str = spec()
    mode: str = spec(_choices(lambda: ["min", "max"]))
    factor: float = spec(_open_unit)
    patience: int = spec(_at_least(0))
    cooldown: int = spec(_at_least(0))
    threshold: float = spec(_at_least(0))
    threshold_mode: str = spec(_choices(lambda: ["rel", "abs"]))
    min_lr: float | list[float] = spec()
    gamma: float = spec(_positive)
    step_size: int = spec(_at_least(1))


@dataclass
class TransferSchema(Closed):
    mode: str = spec(_choices(_transfer_modes))
    checkpoint: str | None = spec()


@dataclass
class ModelSchema(Targeted):
    """`model`: the LightningModule (`zf_lightning.models.ImageClassifier`)."""

    net: NetSchema = spec()
    optimizer: OptimizerSchema = spec()
    lr_scheduler: SchedulerSchema | None = spec()
    filter_rms_radius: float | None = spec(_positive)
    transfer: TransferSchema | None = spec()
    task: str = spec(_choices(_tasks))
    channels_last: bool = spec()
    compile: Any = spec()


@dataclass
class DataSchema(Targeted):
    """`data`: the fields the datamodules share, and those of each (checked where present)."""

    num_classes: int = spec(_at_least(1))
    batch_size: int = spec(_at_least(1))
    num_workers: int = spec(_at_least(0))
    preset: str = spec(_choices(_presets))
    resize_size: int = spec(_at_least(1))
    image_size: int = spec(_at_least(1))
    crop_size: int = spec(_at_least(1))
    ten_crop_test: bool = spec()
    mean_image_max_images: int | None = spec(_at_least(1))
    cache_dir: str | None = spec()
    pin_memory: bool = spec()
    persistent_workers: bool = spec()
    train_per_class: int = spec(_at_least(1))
    val_per_class: int = spec(_at_least(1))
    test_per_class: int = spec(_at_least(1))
    seed: int = spec()
    root: str = spec()
    decode: str = spec(_choices(_decodes))
    dataset: str = spec(_choices(_datasets))
    split_seed: int = spec(_at_least(0))
    max_test_per_class: int | None = spec(_at_least(1))
    mean_image_checkpoint: str | None = spec()


@dataclass
class TrainerSchema(Targeted):
    """`trainer`: `lightning.pytorch.Trainer`'s arguments (the common ones typed)."""

    accelerator: str = spec()
    strategy: Any = spec()
    devices: Union[int, str, list[int]] = spec(_devices)
    num_nodes: int = spec(_at_least(1))
    precision: Union[int, str, None] = spec()
    fast_dev_run: Union[bool, int] = spec()
    max_epochs: int | None = spec(_at_least(-1))
    min_epochs: int | None = spec(_at_least(0))
    max_steps: int = spec(_at_least(-1))
    limit_train_batches: Union[int, float, None] = spec(_at_least(0))
    limit_val_batches: Union[int, float, None] = spec(_at_least(0))
    limit_test_batches: Union[int, float, None] = spec(_at_least(0))
    check_val_every_n_epoch: int | None = spec(_at_least(1))
    log_every_n_steps: int | None = spec(_at_least(0))
    accumulate_grad_batches: int = spec(_at_least(1))
    gradient_clip_val: Union[int, float, None] = spec(_at_least(0))
    deterministic: Union[bool, str, None] = spec()
    benchmark: bool | None = spec()
    sync_batchnorm: bool = spec()
    num_sanity_val_steps: int | None = spec(_at_least(-1))
    default_root_dir: str | None = spec()
    enable_checkpointing: bool | None = spec()
    enable_progress_bar: bool | None = spec()
    enable_model_summary: bool | None = spec()


@dataclass
class FeatureEvolutionSchema(Targeted):
    """`callbacks.feature_evolution` (`zf_lightning.callbacks.evolution.FeatureEvolution`)."""

    output_dir: str | None = spec()
    snapshot_epochs: list[int] = spec(_snapshot_epochs)
    layers: list[int] | None = spec(_conv_layers)
    maps_per_layer: int = spec(_at_least(1))
    seed: int = spec()
    maps: dict[int, list[int]] | None = spec()
    method: str = spec(_choices(_evolution_methods))
    cell_size: int = spec(_at_least(1))
    log_key: str = spec()


@dataclass
class ModelCheckpointSchema(Targeted):
    dirpath: str | None = spec()
    filename: str | None = spec()
    monitor: str | None = spec()
    mode: str = spec(_choices(lambda: ["min", "max"]))
    save_top_k: int = spec(_at_least(-1))
    every_n_epochs: int | None = spec(_at_least(0))
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
    """Top-level keys shared by the apps (others are allowed, unless one typo away from a known key)."""

    task_name: str = spec()
    run_name: str | None = spec()
    group: str | None = spec()
    tags: list[str] | None = spec()
    job_type: str | None = spec()
    seed: int | None = spec()
    ckpt_path: str | None = spec()
    train: bool = spec()
    test: bool = spec()


# The schema of a `_target_` node by what it instantiates (first match), else GenericTargetSchema.
CALLBACK_SCHEMAS = {
    "zf_lightning.callbacks.evolution.FeatureEvolution": FeatureEvolutionSchema,
    "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpointSchema,
}


# ------------------------------------------------------------------------------------------- the checker

_UNRESOLVED = object()


def _value(node: DictConfig, key: Any) -> Any:
    """The resolved value as plain Python, or _UNRESOLVED (??? or an interpolation that cannot resolve yet)."""
    try:
        if OmegaConf.is_missing(node, key):
            return _UNRESOLVED
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
        return value
    except Exception:  # e.g. ${hydra:runtime.output_dir} before the run dir exists
        return _UNRESOLVED


def _node(node: DictConfig, key: Any) -> Any:
    """The child node (DictConfig / None / a value), or _UNRESOLVED."""
    try:
        if OmegaConf.is_missing(node, key):
            return _UNRESOLVED
        return node[key]
    except Exception:
        return _UNRESOLVED


def _keys(node: DictConfig) -> list:
    return [key for key in node.keys()]


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in args
    if origin is list or tp is list:
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return True


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return tp, False


def _is_schema(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.lru_cache(maxsize=None)
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _signature_keys(obj: Any) -> frozenset[str] | None:
    """The keyword arguments `obj` (a class or function) accepts; None when it takes any (**kwargs)."""
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if inspect.isclass(obj):
        keys: set[str] = set()
        for cls in obj.__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            if cls is object:
                return None  # **kwargs reach object: taken by something we cannot see
            try:
                params = list(inspect.signature(init).parameters.values())[1:]
            except (TypeError, ValueError):
                return None
            keys |= {p.name for p in params if p.kind in keyword}
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                return frozenset(keys)  # **kwargs, if any so far, end here: the full set
        return None
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in keyword)


@functools.lru_cache(maxsize=None)
def allowed_keys(target: str) -> frozenset[str] | None:
    """The config keys a `_target_` node of `target` may have (Hydra's own included); None: any.

    Raises ImportError (or AttributeError) when the target cannot be imported.
    """
    from hydra.utils import get_object

    obj = get_object(target)
    keys = _signature_keys(obj)
    if keys is None and inspect.isclass(obj):
        # The W&B logger hands its **kwargs to wandb.init.
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover
            WandbLogger = None
        if WandbLogger is not None and issubclass(obj, WandbLogger):
            import wandb

            own = set(inspect.signature(wandb.init).parameters)
            for cls in obj.__mro__[: obj.__mro__.index(WandbLogger) + 1]:
                if "__init__" in cls.__dict__:
                    own |= {name for name in inspect.signature(cls.__dict__["__init__"]).parameters if name not in ("self", "kwargs", "args")}
            keys = frozenset(own)
    return None if keys is None else frozenset(keys | HYDRA_KEYS)


def _unknown_key(path: str, key: Any, allowed: Iterable[str], what: str) -> str:
    allowed = sorted(k for k in allowed if k not in HYDRA_KEYS or k == "_target_")
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{_join(path, key)}: unknown key for {what}{hint}; allowed keys: {', '.join(allowed)}"


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    # a node against a dataclass schema
    def node(self, node: Any, schema: type, path: str) -> None:
        if node is _UNRESOLVED or node is None:
            return
        if not isinstance(node, DictConfig):
            self.add(f"{path}={node!r}: expected a mapping ({schema.__name__.removesuffix('Schema')} settings), got {type(node).__name__}")
            return
        fields = {f.name: f for f in dataclasses.fields(schema)}
        allowed: Iterable[str] | None
        if issubclass(schema, Targeted):
            target = _value(node, "_target_")
            if target is _UNRESOLVED:
                return
            if not isinstance(target, str):
                self.add(f"{_join(path, '_target_')}: missing; this node must name the class it instantiates")
                return
            try:
                keys = allowed_keys(target)
            except Exception as error:
                self.add(f"{_join(path, '_target_')}={target!r}: cannot be imported ({type(error).__name__}: {error})")
                return
            allowed = None if keys is None else (keys - schema.drop_keys) | schema.extra_keys
            what = target
        elif issubclass(schema, Closed):
            allowed, what = set(fields), path
        else:
            allowed, what = None, path
        for key in _keys(node):
            if allowed is not None and key not in allowed:
                self.add(_unknown_key(path, key, allowed, what))
            elif key in fields:
                self.field(node, key, _hints(schema)[key], fields[key].metadata.get("checks", ()), _join(path, key))

    # one field: a nested schema or a typed, checked value
    def field(self, node: DictConfig, key: Any, tp: Any, checks, path: str) -> None:
        inner, optional = _strip_optional(tp)
        if _is_schema(inner):
            child = _node(node, key)
            if child is None and not optional:
                self.add(f"{path}: must not be null")
            else:
                self.node(child, inner, path)
            return
        value = _value(node, key)
        if value is _UNRESOLVED:
            return
        if not _matches(value, tp):
            self.add(f"{path}={value!r}: expected {_type_name(tp)}, got {type(value).__name__}")
            return
        if value is None:
            return
        for check in checks:
            problem = check(value)
            if problem:
                self.add(f"{path}={value!r}: {problem}")
                return

    def entries(self, group: Any, path: str, schema_for: Callable[[str], type]) -> None:
        """A group of named `_target_` entries (callbacks, logger); null entries are switched off."""
        if group is _UNRESOLVED or group is None:
            return
        if not isinstance(group, DictConfig):
            self.add(f"{path}={group!r}: expected a mapping of named entries, got {type(group).__name__}")
            return
        for name in _keys(group):
            entry = _node(group, name)
            if entry is None or entry is _UNRESOLVED:
                continue
            if not isinstance(entry, DictConfig) or "_target_" not in entry:
                self.add(f"{_join(path, name)}: expected a node with a _target_ (or null to switch it off), got {entry!r}")
                continue
            target = _value(entry, "_target_")
            self.node(entry, schema_for(target if isinstance(target, str) else ""), _join(path, name))


def _callback_schema(target: str) -> type:
    if target in CALLBACK_SCHEMAS:
        return CALLBACK_SCHEMAS[target]
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        for name, schema in CALLBACK_SCHEMAS.items():
            if inspect.isclass(obj) and issubclass(obj, get_object(name)):
                return schema
    except Exception:
        pass
    return GenericTargetSchema


@functools.lru_cache(maxsize=1)
def _known_top_level_keys() -> frozenset[str]:
    """Top-level keys and groups of every app's primary config (conf/*.yaml) and the group folders."""
    from zf_lightning.config import config_dir

    root = Path(config_dir())
    keys = {path.name for path in root.iterdir() if path.is_dir()}
    for path in root.glob("*.yaml"):
        try:
            loaded = OmegaConf.load(path)
        except Exception:
            continue
        keys |= {str(key) for key in loaded.keys() if key != "defaults"}
    return frozenset(keys | {f.name for f in dataclasses.fields(TopSchema)})


def _world_size(trainer: DictConfig) -> tuple[int, str] | None:
    """Processes the global batch is split over, when the config says (not `auto` / -1)."""
    devices = _value(trainer, "devices") if "devices" in trainer else 1
    nodes = _value(trainer, "num_nodes") if "num_nodes" in trainer else 1
    if isinstance(devices, str):
        parts = [p for p in devices.replace(" ", "").split(",") if p]
        if len(parts) == 1 and parts[0].isdigit():
            devices = int(parts[0])
        elif len(parts) > 1 and all(p.isdigit() for p in parts):
            devices = parts
        else:
            return None
    if isinstance(devices, list):
        devices = len(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        return None
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        return None
    return devices * nodes, f"trainer.devices x trainer.num_nodes = {devices} x {nodes}"


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of `cfg` (a composed app config, with or without its `hydra` node), as messages."""
    check = _Checker()
    keys = [key for key in _keys(cfg) if key != "hydra"]

    top_fields = {f.name: f for f in dataclasses.fields(TopSchema)}
    known = _known_top_level_keys()
    for key in keys:
        if key in top_fields:
            check.field(cfg, key, _hints(TopSchema)[key], top_fields[key].metadata.get("checks", ()), str(key))
        elif key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.8)
            if close:
                here = sorted(str(k) for k in keys if k in known)
                check.add(f"{key}: unknown top-level key (did you mean {close[0]!r}?); this config's keys: {', '.join(here)}")

    if "model" in keys and isinstance(_node(cfg, "model"), DictConfig) and "_target_" in cfg.model:
        check.node(_node(cfg, "model"), ModelSchema, "model")
    if "data" in keys and isinstance(_node(cfg, "data"), DictConfig) and "_target_" in cfg.data:
        check.node(_node(cfg, "data"), DataSchema, "data")
        data = cfg.data
        crop = _value(data, "crop_size") if "crop_size" in data else _UNRESOLVED
        resize_key = "resize_size" if "resize_size" in data else "image_size" if "image_size" in data else None
        resize = _value(data, resize_key) if resize_key else _UNRESOLVED
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (crop, resize)) and crop > resize:
            check.add(f"data.crop_size={crop}: must not exceed data.{resize_key}={resize} (crops are cut from the resized image)")
    if "trainer" in keys and isinstance(_node(cfg, "trainer"), DictConfig):
        check.node(_node(cfg, "trainer"), TrainerSchema, "trainer")
    if "callbacks" in keys:
        check.entries(_node(cfg, "callbacks"), "callbacks", _callback_schema)
    if "logger" in keys:
        check.entries(_node(cfg, "logger"), "logger", lambda target: LoggerSchema)

    # the global batch is split evenly over the processes
    if "data" in keys and "trainer" in keys and isinstance(_node(cfg, "trainer"), DictConfig) and isinstance(_node(cfg, "data"), DictConfig):
        batch = _value(cfg.data, "batch_size") if "batch_size" in cfg.data else _UNRESOLVED
        world = _world_size(cfg.trainer)
        if world and isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1 and batch % world[0]:
            size, how = world
            lower, upper = batch - batch % size, batch - batch % size + size
            suggestion = f"{lower} or {upper}" if lower else f"{upper}"
            check.add(
                f"data.batch_size={batch}: the global batch must divide across {how} = {size} processes; "
                f"allowed: a multiple of {size}, e.g. {suggestion}"
            )
    return check.problems


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check `cfg` against the schemas; raise ConfigError naming every problem. Returns `cfg` unchanged."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


# ------------------------------------------------------------------------------------- the Hydra callback


def _sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job of a basic-sweeper multirun, as BasicSweeper.sweep makes them; None for
    another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params")
    params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
    arguments = [f"{key}={value}" for key, value in (params or {}).items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [list(job) for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None) for job in batch]


def validate_sweep(config: DictConfig) -> None:
    """Compose and check every job of a multirun (basic sweeper); another sweeper: the base config only."""
    from hydra.core.global_hydra import GlobalHydra

    jobs = _sweep_jobs(config)
    if jobs is None:
        validate_config(config)
        return
    loader = GlobalHydra.instance().config_loader()
    failed: list[str] = []
    for index, overrides in enumerate(jobs):
        try:
            problems = config_problems(loader.load_sweep_config(config, overrides))
        except Exception as error:  # e.g. model=foo in one job: Hydra would stop there, after making the sweep dir
            problems = [f"{type(error).__name__}: {error}"]
        if problems:
            shown = " ".join(overrides) or "(no overrides)"
            failed.append(f"job #{index} ({shown}):\n" + "\n".join(f"      {p}" for p in problems))
    if failed:
        more = len(failed) - MAX_REPORTED_JOBS
        shown_jobs = failed[:MAX_REPORTED_JOBS] + ([f"... and {more} more job(s)"] if more > 0 else [])
        raise ConfigError(shown_jobs, header=f"invalid multirun: {len(failed)} of {len(jobs)} jobs have a bad config; no job was started")


class ValidateConfig(_HydraCallback):
    """Hydra callback: checks the config before Hydra creates the run (or sweep) directory.

    Hydra turns exceptions raised by callbacks into warnings, so a bad config ends the process here with
    SystemExit (exit status 1, the problems on stderr).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate_config(config)
        except ConfigError as error:
            raise SystemExit(f"Error: {error}") from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate_sweep(config)
        except ConfigError as error:
            raise SystemExit(f"Error: {error}") from None
