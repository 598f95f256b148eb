"""The check of a composed config against the schemas, run at start-up before any data is read or directory made.

    from zf_lightning.config.checker import ConfigError, validate_config
    validate_config(cfg)        # raises ConfigError listing every problem, each with its full dotted key

What is checked, for every entry point (its schema in `config.schemas.APPS`, found from Hydra's config name or the
config's `task_name`):

- keys: a misspelled key anywhere is refused, with the allowed keys and the closest one: at the top level
  (each app's own keys, its groups and the shared `TopSchema`), in the app's own nodes (`occlusion`, `images`, ...),
  in `model`, `data`, `trainer`, `paths`, `callbacks.*` and `logger.*`. Nodes with a `_target_` allow the
  parameters of what they instantiate (base classes included where it passes **kwargs on, W&B's `wandb.init`
  options for the W&B logger); `model.net` allows the options of `zf_lightning.models.build_network`.
- types: the fields declared in the schemas (an int where an int is expected, a list of ints, ...).
- values: `model.net.arch` among the registered architectures, learning rate > 0, momentum and weight decay
  >= 0, width multiplier > 0, dropout in [0, 1), snapshot epochs strictly increasing and >= 1, a global
  `data.batch_size` that divides across `trainer.devices` x `trainer.num_nodes`, choices such as
  `data.preset`, `split` or `method`, ...

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
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, NoReturn, Union

from hydra.experimental.callback import Callback as _HydraCallback
from omegaconf import DictConfig, ListConfig, OmegaConf

from zf_lightning.config.fields import Closed, Targeted
from zf_lightning.config.schemas import (
    APP_OF_TASK,
    APPS,
    CALLBACK_SCHEMAS,
    DataSchema,
    GenericTargetSchema,
    ImagesSchema,
    LoggerSchema,
    ModelSchema,
    PathsSchema,
    TopSchema,
    TrainApp,
    TrainerSchema,
)
from zf_lightning.utils.errors import InputError

__all__ = ["ConfigError", "ValidateConfig", "allowed_keys", "app_of", "config_problems", "validate_config"]

# Keys Hydra's instantiate understands on any node.
HYDRA_KEYS = frozenset({"_target_", "_recursive_", "_convert_", "_partial_", "_args_"})
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
MAX_REPORTED_JOBS = 5
# The shared groups an app may compose, and their schemas (callbacks and logger are groups of named entries).
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelSchema,
    "data": DataSchema,
    "trainer": TrainerSchema,
    "paths": PathsSchema,
    "images": ImagesSchema,
}
ENTRY_GROUPS = frozenset({"callbacks", "logger"})


class ConfigError(InputError):
    """A config that cannot run; `problems` lists each one, starting with its full dotted key."""

    def __init__(self, problems: list[str], header: str | None = None) -> None:
        self.problems = list(problems)
        if header is None:
            header = f"invalid config ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"
        super().__init__(f"{header}:\n" + "\n".join(f"  - {p}" for p in self.problems))


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
        return (
            isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
            if args
            else isinstance(value, (list, tuple))
        )
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


@functools.cache
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


@functools.cache
def allowed_keys(target: str) -> frozenset[str] | None:
    """The config keys a `_target_` node of `target` may have (Hydra's own included); None: any.

    Raises ImportError (or AttributeError) when the target cannot be imported.
    """
    from hydra.utils import get_object

    obj = get_object(target)
    keys = _signature_keys(obj)
    if keys is None and inspect.isclass(obj):
        # The W&B logger hands its **kwargs to wandb.init.
        from lightning.pytorch.loggers import WandbLogger

        if issubclass(obj, WandbLogger):
            import wandb

            own = set(inspect.signature(wandb.init).parameters)
            for cls in obj.__mro__[: obj.__mro__.index(WandbLogger) + 1]:
                if "__init__" in cls.__dict__:
                    own |= {
                        name
                        for name in inspect.signature(cls.__dict__["__init__"]).parameters
                        if name not in ("self", "kwargs", "args")
                    }
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
            self.add(
                f"{path}={node!r}: expected a mapping ({schema.__name__.removesuffix('Schema')} settings), got "
                f"{type(node).__name__}"
            )
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
    def field(
        self, node: DictConfig, key: Any, tp: Any, checks: Iterable[Callable[[Any], str | None]], path: str
    ) -> None:
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
                self.add(
                    f"{_join(path, name)}: expected a node with a _target_ (or null to switch it off), got {entry!r}"
                )
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


def app_of(cfg: DictConfig, app: str | None = None) -> str | None:
    """The entry point of `cfg` (a key of `APPS`): `app` if given, else Hydra's config name, else its task_name."""
    if app is not None:
        return app
    name = OmegaConf.select(cfg, "hydra.job.config_name", default=None) if "hydra" in cfg else None
    if name in APPS:
        return name
    task = cfg.get("task_name") if isinstance(cfg, DictConfig) else None
    return APP_OF_TASK.get(task) if isinstance(task, str) else None


def config_problems(cfg: DictConfig, app: str | None = None) -> list[str]:
    """Every problem of `cfg` (a composed app config, with or without its `hydra` node), as messages."""
    check = _Checker()
    keys = [key for key in _keys(cfg) if key != "hydra"]
    entry = APPS.get(app_of(cfg, app) or "")
    top_fields = {f.name: f for f in dataclasses.fields(TopSchema)}
    own = {f.name: f for f in dataclasses.fields(entry.fields)} if entry else {}
    groups = entry.groups if entry else frozenset(GROUP_SCHEMAS) | ENTRY_GROUPS
    allowed = sorted({*top_fields, *own, *groups})
    order = [
        "model",
        "data",
        "trainer",
        "paths",
        "images",
        "callbacks",
        "logger",
    ]  # problems in this order, after the app's own
    for key in sorted(keys, key=lambda k: order.index(k) + 1 if k in order else 0):
        if key in top_fields:
            check.field(cfg, key, _hints(TopSchema)[key], top_fields[key].metadata.get("checks", ()), str(key))
        elif key in own:
            assert entry is not None  # `own` holds the fields of the entry point's schema
            check.field(cfg, key, _hints(entry.fields)[key], own[key].metadata.get("checks", ()), str(key))
        elif key in groups:
            node = _node(cfg, key)
            if key in ENTRY_GROUPS:
                check.entries(node, key, _callback_schema if key == "callbacks" else (lambda target: LoggerSchema))
            elif isinstance(node, DictConfig) and (key not in ("model", "data") or "_target_" in node):
                check.node(node, GROUP_SCHEMAS[key], key)
        elif entry is not None:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            check.add(f"{key}: unknown top-level key{hint}; {entry.command} takes: {', '.join(allowed)}")

    if "data" in keys and "data" in groups and isinstance(_node(cfg, "data"), DictConfig) and "_target_" in cfg.data:
        data = cfg.data
        crop = _value(data, "crop_size") if "crop_size" in data else _UNRESOLVED
        resize_key = "resize_size" if "resize_size" in data else "image_size" if "image_size" in data else None
        resize = _value(data, resize_key) if resize_key else _UNRESOLVED
        both_ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (crop, resize))
        if both_ints and typing.cast(int, crop) > typing.cast(int, resize):
            check.add(
                f"data.crop_size={crop}: must not exceed data.{resize_key}={resize} (crops are cut from the resized "
                f"image)"
            )

    if "pretrained" in own and entry is not None and entry.fields is not TrainApp:
        check.problems.extend(_network_source_problems(cfg))
    if "model" in keys and isinstance(_node(cfg, "model"), DictConfig):
        check.problems.extend(_transfer_problems(cfg))

    # the global batch is split evenly over the processes
    if (
        "data" in keys
        and "trainer" in keys
        and isinstance(_node(cfg, "trainer"), DictConfig)
        and isinstance(_node(cfg, "data"), DictConfig)
    ):
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


def _transfer_problems(cfg: DictConfig) -> list[str]:
    """A transfer from a network trained elsewhere: one starting network, fed inputs as that network was trained
    (mean/std normalised: data.preset=torchvision, no mean image)."""
    pretrained = OmegaConf.select(cfg, "model.transfer.pretrained", default=None, throw_on_missing=False)
    if pretrained is None or pretrained is _UNRESOLVED:
        return []
    problems = []
    transfer = OmegaConf.select(cfg, "model.transfer")
    unset = (
        isinstance(transfer, DictConfig) and "checkpoint" in transfer and OmegaConf.is_missing(transfer, "checkpoint")
    )
    if unset or OmegaConf.select(cfg, "model.transfer.checkpoint", default=None, throw_on_missing=False):
        problems.append(
            "model.transfer: give one starting network, model.transfer.checkpoint=PATH or pretrained=..., not both "
            "(set model.transfer.checkpoint=null)"
        )
    preset = OmegaConf.select(cfg, "data.preset", default=None, throw_on_missing=False)
    if isinstance(preset, str) and preset != "torchvision":
        problems.append(
            f"data.preset={preset!r}: a network trained elsewhere takes mean/std-normalised inputs, as it was "
            "trained; set data.preset=torchvision"
        )
    return problems


def _network_source_problems(cfg: DictConfig) -> list[str]:
    """Exactly one network: a checkpoint of this project (ckpt_path, or ckpt_paths for zf-visualize filters) or
    a pretrained one, with what its source needs."""
    key = "ckpt_paths" if "ckpt_paths" in cfg else "ckpt_path"
    checkpoint = _value(cfg, key) if key in cfg else None
    pretrained = _value(cfg, "pretrained") if "pretrained" in cfg else None
    if checkpoint is _UNRESOLVED or pretrained is _UNRESOLVED:
        return []
    given = bool(checkpoint) if key == "ckpt_paths" else checkpoint is not None
    if given == (pretrained is not None):
        both = "both given" if given else "neither given"
        return [
            f"{key} / pretrained: give exactly one network ({both}): {key}=PATH (a zf-train checkpoint) or "
            "pretrained=torchvision|pytorchcv|module with pretrained.name=... (see conf/pretrained/)"
        ]
    if isinstance(pretrained, dict):
        source = pretrained.get("source")
        if source == "module" and not pretrained.get("target"):
            return ["pretrained.target: required for pretrained=module: the importable class, e.g. my_package.MyNet"]
        if source in ("torchvision", "pytorchcv") and not pretrained.get("name"):
            return [f"pretrained.name: required for pretrained={source}, e.g. pretrained.name=alexnet"]
    return []


def validate_config(cfg: DictConfig, app: str | None = None) -> DictConfig:
    """Check `cfg` against the schemas (of entry point `app`, see `app_of`); raise ConfigError naming every
    problem. Returns `cfg` unchanged."""
    problems = config_problems(cfg, app)
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
    swept = typing.cast(dict, OmegaConf.to_container(params, resolve=True)) if params is not None else {}
    arguments = [f"{key}={value}" for key, value in (swept or {}).items()]
    arguments += typing.cast(list, OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [
        list(job) for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None) for job in batch
    ]


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
        raise ConfigError(
            shown_jobs,
            header=f"invalid multirun: {len(failed)} of {len(jobs)} jobs have a bad config; no job was started",
        )


class ValidateConfig(_HydraCallback):
    """Hydra callback: checks the config before Hydra creates the run (or sweep) directory.

    Hydra turns exceptions raised by callbacks into warnings, so a bad config ends the process here: the problems
    on stderr, after the command's name, and exit status 2, as the entry points report any other bad input.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate_config(config)
        except ConfigError as error:
            _exit(config, error)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate_sweep(config)
        except ConfigError as error:
            _exit(config, error)


def _exit(config: DictConfig, error: ConfigError) -> NoReturn:
    app = APPS.get(app_of(config) or "")
    print(f"{app.command if app else 'error'}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)
