"""One function gives the network and its preprocessing from a checkpoint or a pretrained spec.

A zf-train checkpoint, a torchvision network, a pytorchcv network (ZFNet's only public ImageNet weights) or any
nn.Module of one's own, as a `LoadedNetwork`: the network in eval mode, how an image becomes its input, its class
names and a line that says where it came from. Networks with the paper's layout (pytorchcv's zfnet, zfnetb,
alexnet, torchvision's alexnet) become this project's `PaperConvNet`, with the same function, for the fast deconvnet::

    from PIL import Image
    from zf_lightning.models import load_network

    loaded = load_network(pretrained={"source": "pytorchcv", "name": "zfnet", "weights": "zfnet-1727-d010ddca.pth"})
    logits = loaded.net(loaded.preprocessing.transform()(Image.open("cat.jpg").convert("RGB"))[None])
    print(loaded.source, loaded.class_names[int(logits.argmax())])

Specs (the keys of the Hydra group `pretrained`; null values mean "the default"):

- `{"source": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1" | "/path.pth" | None}`: an enum name
  of the network's weights (downloaded by torchvision when online, cached in $TORCH_HOME/hub/checkpoints), a
  local state dict, or None (random weights);
- `{"source": "pytorchcv", "name": "zfnet", "weights": "pytorchcv" | "/path.pth" | None}`: "pytorchcv" is
  pytorchcv's own store (~/.torch/models);
- `{"source": "module", "target": "my_package.MyNet", "kwargs": {...}, "weights": "/path.pth" | None}`.

Every source also takes `num_classes`, `kwargs` (to the constructor), `convert` (default True), `resize_size`,
`crop_size`, `mean`, `std` (the input recipe; default: the weights' own, else ImageNet's 256 / 224 / mean-std) and
`class_names` (a list).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from zf_lightning.models.convnet import POOL_KERNEL, POOL_STRIDE, ConvSpec, PaperConvNet
from zf_lightning.utils.errors import InputError, InputTypeError, MissingInputError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_RESIZE, DEFAULT_CROP = 256, 224
SOURCES = ("torchvision", "pytorchcv", "module")
# What a spec may hold: keys of every source, and those of some sources only.
COMMON_KEYS: tuple[str, ...] = ("source", "weights", "num_classes", "kwargs", "convert", "resize_size", "crop_size")
COMMON_KEYS += ("mean", "std", "class_names")
SOURCE_KEYS = {"torchvision": ("name",), "pytorchcv": ("name",), "module": ("target",)}
PYTORCHCV_STORE = os.path.join("~", ".torch", "models")  # pytorchcv's default `root`


# ------------------------------------------------------------------------------------------------ preprocessing


class SubtractMean(nn.Module):
    """Subtract a per-pixel mean (C, H, W) of the crop's size (this project's checkpoints, on the 0-255 scale)."""

    def __init__(self, mean: torch.Tensor) -> None:
        super().__init__()
        self.mean = mean.float()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-3:] != self.mean.shape:
            raise InputError(f"image of shape {tuple(image.shape)} does not match the mean {tuple(self.mean.shape)}")
        return image.as_subclass(torch.Tensor) - self.mean


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input: the short side resized, a centre crop, then normalised.

    `mean`/`std`: per channel on the 0-1 scale (torchvision's recipe); `mean_image`: this project's checkpoints,
    a per-pixel (3, resize_size, resize_size) mean on the 0-255 scale, subtracted from the square centre
    `resize_size` crop, whose centre `crop_size` crop is the input (the numbers of the datamodule's "val" transform).
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    mean_image: torch.Tensor | None = field(default=None, compare=False, repr=False)
    interpolation: str = "bilinear"  # of the resize: torchvision's InterpolationMode values

    def __post_init__(self) -> None:
        if self.crop_size < 1 or self.resize_size < self.crop_size:
            raise InputError(
                f"preprocessing: crop_size ({self.crop_size}) must be >= 1 and not exceed resize_size "
                f"({self.resize_size})"
            )
        if (self.mean_image is None) == (self.mean is None or self.std is None):
            raise InputError("preprocessing: give either mean and std (0-1 scale) or a mean image, not both")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != 3:
                raise InputError(f"preprocessing: {what} must give 3 numbers (one per RGB channel), got {values}")
        if self.std is not None and min(self.std) <= 0:
            raise InputError(f"preprocessing: std must be positive, got {self.std}")
        if self.mean_image is not None and tuple(self.mean_image.shape) != (3, self.resize_size, self.resize_size):
            raise InputError(
                f"preprocessing: the mean image is {tuple(self.mean_image.shape)}; expected "
                f"(3, {self.resize_size}, {self.resize_size}) for resize_size={self.resize_size}"
            )
        InterpolationMode(self.interpolation)  # fails now on a bad name

    def _crop(self) -> list[Any]:
        resize = v2.Resize(self.resize_size, interpolation=InterpolationMode(self.interpolation))
        if self.mean_image is not None:  # the paper preset's steps: the square crop first, then the centre crop
            return [v2.ToImage(), resize, v2.CenterCrop(self.resize_size), v2.CenterCrop(self.crop_size)]
        # A PIL image resized by PIL, as torchvision's weights transforms do: the same numbers as their recipe.
        return [resize, v2.CenterCrop(self.crop_size), v2.ToImage()]

    def transform(self) -> v2.Compose:
        """A PIL image or (C, H, W) uint8 tensor -> the network's normalised float input (C, crop, crop)."""
        if self.mean_image is not None:
            # Cropping only moves pixels: subtracting the mean image's crop from the crop is the same numbers.
            mean = v2.CenterCrop(self.crop_size)(self.mean_image.float())
            return v2.Compose([*self._crop(), v2.ToDtype(torch.float32, scale=False), SubtractMean(mean)])
        assert self.mean is not None and self.std is not None
        return v2.Compose([*self._crop(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def display_transform(self) -> v2.Compose:
        """The same crop on the 0-1 scale, not normalised: what a figure shows of an input."""
        return v2.Compose([*self._crop(), v2.ToDtype(torch.float32, scale=True)])


def _triple(values: Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or len(values) != 3:
        raise InputError(f"pretrained.{what} must give 3 numbers (one per RGB channel), got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _with_overrides(base: Preprocessing, spec: Mapping[str, Any]) -> Preprocessing:
    """`base` with the spec's resize_size, crop_size, mean and std where given."""
    crop = spec.get("crop_size") or base.crop_size
    resize = spec.get("resize_size") or (base.resize_size if not spec.get("crop_size") else _resize_for(crop))
    return Preprocessing(
        int(resize),
        int(crop),
        _triple(spec.get("mean"), "mean") or base.mean,
        _triple(spec.get("std"), "std") or base.std,
        interpolation=base.interpolation,
    )


def _resize_for(crop_size: int, crop_ratio: float = 0.875) -> int:
    """The short side whose centre crop is `crop_size` at ImageNet's usual ratio (224 -> 256)."""
    return int(math.ceil(crop_size / crop_ratio))


IMAGENET_PREPROCESSING = Preprocessing(DEFAULT_RESIZE, DEFAULT_CROP, IMAGENET_MEAN, IMAGENET_STD)


# ------------------------------------------------------------------------------------------------ the result


@dataclass
class LoadedNetwork:
    net: nn.Module  # eval mode
    preprocessing: Preprocessing
    class_names: list[str] | None  # words: ImageNet's from torchvision's weights metadata
    source: str  # "torchvision resnet18 IMAGENET1K_V1", for titles and summary.json
    num_classes: int
    converted: bool = False  # built as this project's PaperConvNet from a network of the paper's layout


def load_network(ckpt_path: str | Path | None = None, pretrained: Mapping[str, Any] | None = None) -> LoadedNetwork:
    """The network of a zf-train checkpoint (`ckpt_path`) or of a `pretrained` spec (see the module docstring)."""
    if (ckpt_path is None) == (pretrained is None):
        raise InputError(
            "give exactly one network: ckpt_path=PATH (a zf-train checkpoint) or pretrained=SPEC "
            f"(torchvision, pytorchcv or module); got {'both' if ckpt_path is not None else 'neither'}"
        )
    if ckpt_path is not None:
        return _load_checkpoint(Path(ckpt_path))
    assert pretrained is not None
    spec = _checked_spec(pretrained)
    loaded = {"torchvision": _load_torchvision, "pytorchcv": _load_pytorchcv, "module": _load_module}[spec["source"]](
        spec
    )
    if spec.get("class_names") is not None:
        loaded.class_names = [str(name) for name in spec["class_names"]]
    if loaded.class_names is not None and len(loaded.class_names) != loaded.num_classes:
        raise InputError(
            f"{loaded.source}: {len(loaded.class_names)} class names for a network of {loaded.num_classes} classes"
        )
    if spec.get("convert", True):
        paper = to_paper_network(loaded.net)
        if paper is not None:
            loaded.net, loaded.converted = paper, True
    loaded.net.eval()
    return loaded


def _checked_spec(pretrained: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(pretrained, Mapping):
        raise InputTypeError(f"pretrained must be a mapping (source, name, weights, ...), got {type(pretrained)}")
    spec = dict(pretrained)
    source = spec.get("source")
    if source not in SOURCES:
        raise InputError(f"pretrained.source must be one of {list(SOURCES)}, got {source!r}")
    allowed = COMMON_KEYS + SOURCE_KEYS[source]
    known = set(COMMON_KEYS).union(*SOURCE_KEYS.values())
    unknown = sorted(str(key) for key in spec if key not in known)
    if unknown:
        raise InputError(f"pretrained: unknown key(s) {unknown}; a spec has {sorted(known)}")
    # One schema holds every source's keys: those of another source are accepted when unset.
    misplaced = sorted(key for key, value in spec.items() if key not in allowed and value not in (None, {}, []))
    if misplaced:
        raise InputError(
            f"pretrained: {misplaced} do not apply to source={source!r} (its keys: {sorted(SOURCE_KEYS[source])} "
            f"and {sorted(COMMON_KEYS[1:])})"
        )
    names = spec.get("class_names")
    if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, Iterable)):
        raise InputError(f"pretrained.class_names must be a list of names, got {names!r}")
    if spec.get("kwargs") is not None and not isinstance(spec["kwargs"], Mapping):
        raise InputError(f"pretrained.kwargs must be a mapping of keyword arguments, got {spec['kwargs']!r}")
    return spec


def _closest(name: str, available: Iterable[str], shown: int = 12) -> str:
    """The available names, the closest to `name` first, the first `shown` of them."""
    names = sorted(set(available))
    ranked = sorted(names, key=lambda other: -difflib.SequenceMatcher(None, name.lower(), other.lower()).ratio())
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(ranked[:shown]) + more


def _kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec.get("kwargs") or {})
    if spec.get("num_classes") is not None:
        kwargs["num_classes"] = int(spec["num_classes"])
    return kwargs


def _build(constructor: Any, name: str, what: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """`constructor(name, **kwargs)`; keyword arguments it does not take are named."""
    try:
        return constructor(name, **kwargs)
    except TypeError as error:
        raise InputError(f"{what} with pretrained.kwargs/num_classes {dict(kwargs)}: {error}") from None


def _num_classes(net: nn.Module, preprocessing: Preprocessing, known: int | None = None) -> int:
    """`known`, else the network's own `num_classes`, else the width of its output on one blank input."""
    if known is not None:
        return int(known)
    own = getattr(net, "num_classes", None)
    if isinstance(own, int) and not isinstance(own, bool):
        return own
    parameter = next(net.parameters(), None)
    blank = torch.zeros(1, 3, preprocessing.crop_size, preprocessing.crop_size)
    if parameter is not None:
        blank = blank.to(parameter.device, parameter.dtype)
    with torch.no_grad():
        out = net.eval()(blank)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputTypeError(f"the network must return (batch, classes) scores; on one image it returned {shape}")
    return int(out.shape[1])


# ------------------------------------------------------------------------------------------------ state dicts


WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar", ".pkl")


def _is_file_spec(weights: str) -> bool:
    """A path, not a weights name ("IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1")."""
    path = Path(weights).expanduser()
    return "/" in weights or os.sep in weights or path.suffix.lower() in WEIGHT_FILE_SUFFIXES or path.exists()


def load_state_dict_file(path: str | Path, what: str = "pretrained.weights") -> dict[str, torch.Tensor]:
    """The state dict in a file: a plain one, or one under "state_dict" or "model"; DDP's "module." (and
    torch.compile's "_orig_mod.") prefixes stripped. Loaded with weights_only=True: no arbitrary pickles."""
    import pickle

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"{what}={str(path)!r}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Torch's message leads with the same advice for a file of arbitrary objects and for one that is no pickle
        reason = _unpickler_reason(str(error))
        if "Unsupported global" not in str(error):
            raise InputError(f"{what}={str(path)!r} is not a readable torch file (truncated?): {reason}") from None
        raise InputError(
            f"{what}={str(path)!r} needs arbitrary Python objects to load, which could run code: refused "
            f"(weights are loaded with weights_only=True). Torch said: {reason}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{what}={str(path)!r} is not a readable torch file (truncated?): {message}") from None
    state = loaded
    for key in ("state_dict", "model"):  # training scripts' {"state_dict": ...} / {"model": ..., "epoch": ...}
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise InputError(
            f"{what}={str(path)!r} holds no state dict: expected a dict of tensors, or a dict holding one under "
            f"'state_dict' or 'model'; got {type(loaded).__name__}"
            + (f" with keys {sorted(map(str, loaded))[:8]}" if isinstance(loaded, Mapping) else "")
        )
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise InputError(
            f"{what}={str(path)!r}: its state dict holds values that are not tensors ({len(not_tensors)}, "
            f"first: {not_tensors[:3]}): expected a dict of tensors, or a dict holding one under 'state_dict' or "
            "'model'"
        )
    return {_strip_prefixes(str(key)): value for key, value in state.items()}


def _unpickler_reason(message: str) -> str:
    """What torch's weights-only unpickler met ("Unsupported global: GLOBAL x.Y was not an allowed global by
    default"), without its advice; else the message's first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            said = line.split("WeightsUnpickler error:", 1)[1].strip()
            said = said or (lines[index + 1] if index + 1 < len(lines) else "")
            return said.split(". ")[0].rstrip(".") or lines[0]
    return lines[0] if lines else "unreadable"


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _first(keys: Sequence[str], shown: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def load_fitting_state_dict(
    net: nn.Module, state: Mapping[str, torch.Tensor], what: str, hint: str = "", strict: bool = True
) -> None:
    """Load `state` into `net`, or say what does not fit: the missing and unexpected keys (the first few, with
    their counts) and the keys whose shapes differ (expected, got)."""
    own = net.state_dict()
    # BatchNorm fills in a missing step counter itself (state dicts of older PyTorch versions lack it).
    missing = [key for key in own if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    mismatched = [key for key in own if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    problems = []
    if missing and strict:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected and strict:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if mismatched:
        shapes = "; ".join(
            f"{key}: expected {tuple(own[key].shape)}, got {tuple(state[key].shape)}" for key in mismatched[:4]
        )
        more = f"; ... ({len(mismatched)} in all)" if len(mismatched) > 4 else ""
        problems.append(f"{len(mismatched)} shapes differ ({shapes}{more})")
    if problems:
        raise InputError(f"{what} does not fit the network: {', '.join(problems)}{hint}")
    net.load_state_dict(dict(state), strict=strict)


def _last_linear_hint(net: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """A hint when the class layer's width is what differs: the file was trained on another number of classes."""
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        return ""
    key = f"{linears[-1]}.weight"
    own = net.state_dict().get(key)
    if own is not None and key in state and state[key].shape[0] != own.shape[0]:
        return f" (its class layer has {state[key].shape[0]} outputs: set pretrained.num_classes={state[key].shape[0]})"
    return ""


def _load_weights_file(net: nn.Module, weights: str, source: str) -> None:
    state = load_state_dict_file(weights)
    load_fitting_state_dict(net, state, f"pretrained.weights={weights!r} ({source})", _last_linear_hint(net, state))


def _offline_error(what: str, url: str, destination: Path, reason: BaseException) -> MissingInputError:
    return MissingInputError(
        f"{what}: not in the local cache and could not be downloaded ({type(reason).__name__}: "
        f"{str(reason).splitlines()[0] if str(reason) else 'no network?'}). Download {url} and put it at "
        f"{destination}, or give a local file: pretrained.weights=/path/to/weights.pth"
    )


# ------------------------------------------------------------------------------------------------ torchvision


def _torchvision_weights_enum(name: str) -> Any:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        raise InputError(f"pretrained.name={name!r} is not a torchvision model; available: {_closest(name, available)}")
    return torchvision.models.get_model_weights(name)


def _weights_preprocessing(weights: Any) -> Preprocessing:
    """The recipe of a torchvision weights enum member (its `transforms()`): resize, crop, mean/std."""
    recipe = weights.transforms()
    crop, resize = getattr(recipe, "crop_size", None), getattr(recipe, "resize_size", None)
    mean, std = getattr(recipe, "mean", None), getattr(recipe, "std", None)
    if not (crop and resize and mean and std):  # not an ImageClassification recipe (a video or optical-flow one)
        return IMAGENET_PREPROCESSING
    interpolation = getattr(recipe, "interpolation", InterpolationMode.BILINEAR)
    return Preprocessing(
        int(resize[0]), int(crop[0]), _triple(mean, "mean"), _triple(std, "std"), interpolation=interpolation.value
    )


def _torchvision_state_dict(weights: Any, what: str) -> Mapping[str, torch.Tensor]:
    """The enum's weights: from $TORCH_HOME/hub/checkpoints, downloaded there by torchvision when online."""
    from urllib.error import URLError

    destination = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except (URLError, OSError, ConnectionError, TimeoutError) as error:
        raise _offline_error(what, weights.url, destination, error) from None
    except RuntimeError as error:  # a cached or downloaded file whose hash differs
        raise InputError(f"{what}: {destination} could not be used ({str(error).splitlines()[0]})") from None


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's 1000 class names, as words (torchvision's metadata: no download)."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def _load_torchvision(spec: Mapping[str, Any]) -> LoadedNetwork:
    import torchvision

    name, weights = spec.get("name"), spec.get("weights")
    if not name:
        raise InputError("pretrained.name is required for source=torchvision (e.g. resnet18, alexnet, vgg16)")
    enum = _torchvision_weights_enum(str(name))
    kwargs = _kwargs(spec)
    if weights is not None and not _is_file_spec(str(weights)):
        by_name = dict(enum.__members__)
        key = str(weights).split(".")[-1]  # "ResNet18_Weights.IMAGENET1K_V1" or "IMAGENET1K_V1"
        if key not in by_name:
            raise InputError(
                f"pretrained.weights={weights!r} is neither a file nor a weights name of torchvision {name}; "
                f"its weights: {_closest(key, by_name)} (or give a local file: pretrained.weights=/path.pth)"
            )
        member = by_name[key]
        categories = list(member.meta.get("categories") or [])
        classes = kwargs.get("num_classes") or len(categories) or None
        if categories and classes != len(categories):
            raise InputError(
                f"pretrained.num_classes={classes} but torchvision {name} {member.name} has {len(categories)} classes "
                "(leave num_classes null, or give a local file of a network trained on other classes)"
            )
        net = _build(torchvision.models.get_model, str(name), f"torchvision {name}", kwargs)
        state = _torchvision_state_dict(member, f"torchvision {name} weights {member.name}")
        load_fitting_state_dict(net, state, f"torchvision {name} {member.name} ({member.url})")
        preprocessing = _with_overrides(_weights_preprocessing(member), spec)
        source = f"torchvision {name} {member.name}"
        num_classes = _num_classes(net, preprocessing, classes)
        return LoadedNetwork(net.eval(), preprocessing, categories or None, source, num_classes)

    net = _build(torchvision.models.get_model, str(name), f"torchvision {name}", kwargs)
    if weights is not None:
        _load_weights_file(net, str(weights), f"torchvision {name}")
        source = f"torchvision {name} ({Path(str(weights)).name})"
    else:
        source = f"torchvision {name} (random weights)"
    members = list(enum)
    # A local file: the recipe of the architecture's first (ImageNet) weights, unless the spec gives its own.
    base = _weights_preprocessing(members[0]) if members else IMAGENET_PREPROCESSING
    preprocessing = _with_overrides(base, spec)
    num_classes = _num_classes(net, preprocessing, kwargs.get("num_classes"))
    categories = list(members[0].meta.get("categories") or []) if members else []
    names = categories if len(categories) == num_classes else None
    return LoadedNetwork(net.eval(), preprocessing, names, source, num_classes)


# ------------------------------------------------------------------------------------------------ pytorchcv


def _pytorchcv_models() -> dict[str, Any]:
    try:
        from pytorchcv.model_provider import _models
    except ImportError:
        raise MissingInputError(
            "pretrained.source=pytorchcv needs the pytorchcv package: pip install pytorchcv"
        ) from None
    return dict(_models)


def _pytorchcv_metainfo(name: str) -> dict[str, str] | None:
    """pytorchcv's row for `name` in its model_metainfos.csv (img_size, img_scale, the store's file), if any."""
    import csv

    from pytorchcv.models.common.model_store import get_model_metainfos_file_path

    with open(get_model_metainfos_file_path(), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("model_name") == name:
                return row
    return None


def pytorchcv_preprocessing(name: str) -> Preprocessing:
    """pytorchcv's ImageNet evaluation recipe (imgclsmob's imagenet_val_transform): the short side resized to
    ceil(img_size / img_scale) (bilinear), a centre img_size crop, ImageNet's mean/std on the 0-1 scale; img_size
    and img_scale per model from pytorchcv's model_metainfos.csv (224 and 0.875 -> 256 for zfnet and alexnet)."""
    row = _pytorchcv_metainfo(name) or {}
    try:
        crop, scale = int(row.get("img_size", DEFAULT_CROP)), float(row.get("img_scale", 0.875))
    except ValueError:
        crop, scale = DEFAULT_CROP, 0.875
    return Preprocessing(_resize_for(crop, scale), crop, IMAGENET_MEAN, IMAGENET_STD)


def _pytorchcv_store_file(name: str) -> Path:
    """pytorchcv's own store: its file from the cache (~/.torch/models), downloaded there when online."""
    from pytorchcv.models.common import model_store

    row = _pytorchcv_metainfo(name)
    if row is None or row.get("checksum") in (None, "", "NA"):
        raise InputError(
            f"pytorchcv has no ImageNet weights of {name!r} in its store; give a local file: pretrained.weights=/path"
        )
    file_name = f"{name}-{row['error_value']}-{row['checksum'][:8]}.pth"
    root = Path(os.path.expanduser(PYTORCHCV_STORE))
    url = f"{model_store.imgclsmob_repo_url}/releases/download/{row['repo_release_tag']}/{file_name}.zip"
    try:
        return Path(model_store.get_model_file(name, local_model_store_dir_path=str(root)))
    except (OSError, ConnectionError, TimeoutError, RuntimeError) as error:
        raise _offline_error(f"pytorchcv {name} weights", url, root / file_name, error) from None
    except ValueError as error:  # a downloaded file whose hash differs
        raise InputError(f"pytorchcv {name} weights in {root}: {error}") from None


def _load_pytorchcv(spec: Mapping[str, Any]) -> LoadedNetwork:
    name, weights = spec.get("name"), spec.get("weights")
    if not name:
        raise InputError("pretrained.name is required for source=pytorchcv (e.g. zfnet, zfnetb, alexnet)")
    models = _pytorchcv_models()
    name = str(name).lower()  # as pytorchcv's get_model
    if name not in models:
        raise InputError(f"pretrained.name={name!r} is not a pytorchcv model; available: {_closest(name, models)}")
    from pytorchcv.model_provider import get_model

    net = _build(get_model, name, f"pytorchcv {name}", {"pretrained": False, **_kwargs(spec)})
    if weights == "pytorchcv":
        path = _pytorchcv_store_file(name)
        state = load_state_dict_file(path, f"pytorchcv {name} weights")
        load_fitting_state_dict(net, state, f"pytorchcv {name} weights ({path})")
        source = f"pytorchcv {name} ({path.name})"
    elif weights is not None:
        _load_weights_file(net, str(weights), f"pytorchcv {name}")
        source = f"pytorchcv {name} ({Path(str(weights)).name})"
    else:
        source = f"pytorchcv {name} (random weights)"
    preprocessing = _with_overrides(pytorchcv_preprocessing(name), spec)
    num_classes = _num_classes(net, preprocessing, spec.get("num_classes"))
    names = imagenet_class_names() if num_classes == 1000 else None
    return LoadedNetwork(net.eval(), preprocessing, names, source, num_classes)


# ------------------------------------------------------------------------------------------------ module


def _load_module(spec: Mapping[str, Any]) -> LoadedNetwork:
    from hydra.utils import get_object

    target, weights = spec.get("target"), spec.get("weights")
    if not target:
        raise InputError("pretrained.target is required for source=module: the importable path of an nn.Module class")
    try:
        build = get_object(str(target))
    except Exception as error:  # Hydra raises ImportError or a plain Exception naming what it tried
        raise InputError(f"pretrained.target={target!r} cannot be imported: {str(error).splitlines()[0]}") from None
    if not callable(build):
        raise InputTypeError(f"pretrained.target={target!r} is a {type(build).__name__}, not a class or function")
    try:
        net = build(**_kwargs(spec))
    except TypeError as error:
        raise InputError(f"pretrained.target={target!r} with kwargs {_kwargs(spec)}: {error}") from None
    if not isinstance(net, nn.Module):
        raise InputTypeError(f"pretrained.target={target!r} built a {type(net).__name__}, not an nn.Module")
    if weights is not None:
        _load_weights_file(net, str(weights), str(target))
        source = f"module {target} ({Path(str(weights)).name})"
    else:
        source = f"module {target} (as constructed)"
    preprocessing = _with_overrides(IMAGENET_PREPROCESSING, spec)
    num_classes = _num_classes(net, preprocessing, spec.get("num_classes"))
    return LoadedNetwork(net.eval(), preprocessing, None, source, num_classes)


# ------------------------------------------------------------------------------------------------ zf-train


def _load_checkpoint(path: Path) -> LoadedNetwork:
    """A zf-train checkpoint: its network (weights only) and the input normalisation it was trained with."""
    from zf_lightning.utils.io import load_checkpoint

    checkpoint = load_checkpoint(path)  # refuses a missing or truncated file, or arbitrary pickles, clearly
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "net" not in hparams:
        raise InputError(f"ckpt_path={str(path)!r} is not a zf-train checkpoint: it has no network hyperparameters")
    net = network_from_hparams(hparams)
    weights = {key[len("net.") :]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
    load_fitting_state_dict(net, weights, f"ckpt_path={str(path)!r}")
    net_options = dict(hparams["net"])
    crop = int(net_options.get("input_size", DEFAULT_CROP))
    # The datamodule's state is stored under its class name; with the paper preset it holds the mean image.
    states = [value for value in checkpoint.values() if isinstance(value, Mapping)]
    mean_images = [state["mean_image"] for state in states if isinstance(state.get("mean_image"), torch.Tensor)]
    if mean_images:
        mean_image = mean_images[0].float()
        preprocessing = Preprocessing(int(mean_image.shape[-1]), crop, None, None, mean_image=mean_image)
    else:  # data.preset=torchvision: ImageNet's mean/std
        preprocessing = Preprocessing(_resize_for(crop), crop, IMAGENET_MEAN, IMAGENET_STD)
    last = net.classifier[-1]
    assert isinstance(last, nn.Linear)  # PaperConvNet ends with its class layer
    found = [checkpoint.get("class_names"), *(state.get("class_names") for state in states)]
    names = next((list(map(str, value)) for value in found if isinstance(value, (list, tuple)) and value), None)
    source = f"{net_options.get('arch', 'network')} ({path.name})"
    return LoadedNetwork(net.eval(), preprocessing, names, source, int(last.out_features))


# ------------------------------------------------------------------------------------------------ transfer


def network_from_hparams(hparams: Mapping[str, Any]) -> PaperConvNet:
    """The network an `ImageClassifier` with these hyperparameters trains (random weights): `build_network(**net)`,
    or, for a transfer from a network trained elsewhere (`transfer.pretrained`), that network's architecture with
    a new class layer of `net.num_classes` outputs."""
    from zf_lightning.models.registry import build_network

    net_options = dict(hparams["net"])
    spec = (hparams.get("transfer") or {}).get("pretrained")
    if spec:
        return transfer_network(spec, int(net_options.get("num_classes", 1000)))
    return build_network(**net_options)


def transfer_network(spec: Mapping[str, Any], num_classes: int, init_std: float = 0.01) -> PaperConvNet:
    """The architecture of the pretrained network `spec`, as this project's network, with random weights and a new
    class layer (weights ~ N(0, init_std^2), biases 0, as the paper's). Only networks of the paper's layout
    convert: the transfer experiments fix or fine-tune its layers 1-7."""
    loaded = load_network(pretrained={**spec, "weights": None, "num_classes": None, "convert": True})
    if not isinstance(loaded.net, PaperConvNet):
        raise InputError(
            f"model.transfer.pretrained: {loaded.source.split(' (')[0]} does not have the paper's layout (5 conv "
            "layers, fc6, fc7, fc8 in nn.Sequential blocks), so its layers 1-7 cannot be transferred as the paper "
            "does; networks that do: pytorchcv zfnet, zfnetb, alexnet, alexnetb and torchvision alexnet"
        )
    net = loaded.net
    old = net.classifier[-1]
    assert isinstance(old, nn.Linear)  # PaperConvNet ends with its class layer
    new = nn.Linear(old.in_features, num_classes)
    nn.init.normal_(new.weight, 0.0, init_std)
    nn.init.zeros_(new.bias)
    net.classifier[-1] = new
    return net.train()


def load_transfer_weights(net: PaperConvNet, spec: Mapping[str, Any]) -> list[str]:
    """Copy the pretrained network's weights (`spec`, converted) into `net`, all but its class layer. Returns the
    names of the class layer's parameters, left as they were."""
    source = load_network(pretrained={**spec, "convert": True})
    if not isinstance(source.net, PaperConvNet):
        raise InputError(f"model.transfer.pretrained: {source.source} did not convert to this project's network")
    last = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    fresh = [f"{last}.weight", f"{last}.bias"]
    kept = {name: value for name, value in source.net.state_dict().items() if name not in fresh}
    load_fitting_state_dict(net, {**kept, **{name: net.state_dict()[name] for name in fresh}}, source.source)
    return fresh


# ------------------------------------------------------------------------------------------------ conversion


@dataclass
class _Op:
    """One step of a network's forward: "conv", "relu", "pool", "lrn", "linear", "dropout", "avgpool"."""

    kind: str
    module: nn.Module | None = None
    options: dict[str, Any] = field(default_factory=dict)


# pytorchcv's AlexConv calls F.local_response_norm(x, size=5, k=2.0): torch's alpha and beta defaults.
PYTORCHCV_LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


def _pytorchcv_alexnet_classes() -> tuple[type, type, type, type] | None:
    try:
        from pytorchcv.models.alexnet import AlexConv, AlexDense, AlexNet, AlexOutputBlock
    except ImportError:
        return None
    return AlexNet, AlexConv, AlexDense, AlexOutputBlock


def _ops(module: Any) -> list[_Op] | None:
    """The steps of `module`'s forward, for the modules whose forward is known; None for any other."""
    pytorchcv = _pytorchcv_alexnet_classes()
    kind = type(module)
    if kind is nn.Sequential:
        steps: list[_Op] = []
        for child in module:
            child_ops = _ops(child)
            if child_ops is None:
                return None
            steps += child_ops
        return steps
    if kind is nn.Conv2d:
        return [_Op("conv", module)]
    if kind is nn.ReLU:
        return [_Op("relu", module)]
    if kind is nn.MaxPool2d:
        return [_Op("pool", module)]
    if kind is nn.LocalResponseNorm:
        return [_Op("lrn", module, {name: getattr(module, name) for name in ("size", "alpha", "beta", "k")})]
    if kind is nn.Linear:
        return [_Op("linear", module)]
    if kind is nn.Dropout:
        return [_Op("dropout", module, {"p": module.p})]
    if kind is nn.AdaptiveAvgPool2d:
        return [_Op("avgpool", module)]
    if pytorchcv is not None:
        _, alex_conv, alex_dense, alex_output = pytorchcv
        if kind is alex_conv:
            if getattr(module, "use_pad", False) or getattr(module, "normalize", False):
                return None
            if not module.activate or type(module.activ) is not nn.ReLU:
                return None
            norm = [_Op("lrn", None, dict(PYTORCHCV_LRN))] if module.use_lrn else []
            return [_Op("conv", module.conv), _Op("relu", module.activ), *norm]
        if kind is alex_dense:
            return [_Op("linear", module.fc), _Op("relu", module.activ), _Op("dropout", module.dropout)]
        if kind is alex_output:
            parts = [_ops(module.fc1), _ops(module.fc2), _ops(module.fc3)]
            return None if any(part is None for part in parts) else [op for part in parts for op in part or []]
    return None


def _network_ops(net: nn.Module) -> tuple[list[_Op], list[_Op], int | None] | None:
    """(feature steps, classifier steps, adaptive pool size) of the networks whose forward is known."""
    import torchvision

    pytorchcv = _pytorchcv_alexnet_classes()
    if type(net) is torchvision.models.AlexNet:  # features -> avgpool -> flatten -> classifier
        features, head = _ops(net.features), _ops(net.classifier)
        pool = net.avgpool
        if type(pool) is not nn.AdaptiveAvgPool2d:
            return None
        size: Any = pool.output_size
        sizes = (size, size) if isinstance(size, int) else tuple(size)
        if len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] is None:
            return None
        return (features, head, int(sizes[0])) if features is not None and head is not None else None
    if pytorchcv is not None and type(net) is pytorchcv[0]:  # features -> view(B, -1) -> output
        features, head = _ops(net.features), _ops(net.output)
        return (features, head, None) if features is not None and head is not None else None
    return None


def _conv_specs(ops: list[_Op]) -> tuple[list[ConvSpec], str, dict[str, Any] | None, bool] | None:
    """Feature steps -> (conv specs, norm position, LRN constants, pooling ceil_mode), when each conv is
    conv -> ReLU -> [pool and/or LRN] with the paper's 3x3 stride-2 pooling and one set of LRN constants."""
    specs: list[ConvSpec] = []
    positions, lrns, ceil_modes = set(), [], set()
    index, channels = 0, 3
    while index < len(ops):
        conv = ops[index].module
        if ops[index].kind != "conv" or index + 1 >= len(ops) or ops[index + 1].kind != "relu":
            return None
        assert isinstance(conv, nn.Conv2d)
        square = all(len(set(values)) == 1 for values in (conv.kernel_size, conv.stride, conv.padding))
        if (
            conv.in_channels != channels
            or not square
            or isinstance(conv.padding, str)
            or conv.groups != 1
            or tuple(conv.dilation) != (1, 1)
            or conv.bias is None
            or conv.padding_mode != "zeros"
        ):
            return None
        index += 2
        after = []
        while index < len(ops) and ops[index].kind in ("pool", "lrn"):
            after.append(ops[index])
            index += 1
        kinds = [op.kind for op in after]
        if kinds not in ([], ["pool"], ["lrn"], ["pool", "lrn"], ["lrn", "pool"]):
            return None
        for op in after:
            if op.kind == "lrn":
                lrns.append(op.options)
            else:
                pool = op.module
                assert isinstance(pool, nn.MaxPool2d)
                if (
                    _pair(pool.kernel_size) != (POOL_KERNEL,) * 2
                    or _pair(pool.stride) != (POOL_STRIDE,) * 2
                    or _pair(pool.padding) != (0, 0)
                    or _pair(pool.dilation) != (1, 1)
                    or pool.return_indices
                ):
                    return None
                ceil_modes.add(bool(pool.ceil_mode))
        if len(kinds) == 2:
            positions.add("after_pool" if kinds[0] == "pool" else "before_pool")
        specs.append(
            ConvSpec(
                conv.out_channels,
                int(conv.kernel_size[0]),
                int(conv.stride[0]),
                int(conv.padding[0]),
                pool="pool" in kinds,
                norm="lrn" in kinds,
            )
        )
        channels = conv.out_channels
    if len(specs) != 5 or len(positions) > 1 or len(ceil_modes) > 1:
        return None
    if any(lrn != lrns[0] for lrn in lrns):
        return None
    return (
        specs,
        positions.pop() if positions else "after_pool",
        lrns[0] if lrns else None,
        ceil_modes.pop() if ceil_modes else True,
    )


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _dense_layout(ops: list[_Op]) -> tuple[list[nn.Linear], str, float] | None:
    """Classifier steps -> (linears, dropout position, dropout p) when they are the paper's fc6, fc7, fc8."""
    kinds = [op.kind for op in ops]
    layouts = {
        "after_relu": ["linear", "relu", "dropout"] * 2 + ["linear"],
        "before_linear": ["dropout", "linear", "relu"] * 2 + ["linear"],
    }
    position = next((name for name, layout in layouts.items() if kinds == layout), None)
    if position is None:
        return None
    linears = [op.module for op in ops if op.kind == "linear"]
    drops = {float(op.module.p) for op in ops if op.kind == "dropout" and isinstance(op.module, nn.Dropout)}
    if len(drops) != 1 or not all(isinstance(linear, nn.Linear) and linear.bias is not None for linear in linears):
        return None
    return [linear for linear in linears if isinstance(linear, nn.Linear)], position, drops.pop()


def to_paper_network(net: nn.Module) -> PaperConvNet | None:
    """This project's `PaperConvNet` computing exactly `net`'s function, with its weights (copied), where `net`
    has the paper's layout: pytorchcv's zfnet, zfnetb, alexnet, alexnetb and torchvision's alexnet (their own LRN
    constants, norm position, pooling and dropout placement); None for any other network. The deconvnet's fast
    path reads the result's `features`."""
    if isinstance(net, PaperConvNet):
        return net
    found = _network_ops(net)
    if found is None:
        return None
    feature_ops, head_ops, adaptive = found
    convs = _conv_specs(feature_ops)
    dense = _dense_layout(head_ops)
    if convs is None or dense is None:
        return None
    specs, norm_position, lrn, ceil_mode = convs
    linears, dropout_position, dropout = dense
    in_size = getattr(net, "in_size", (DEFAULT_CROP, DEFAULT_CROP))
    input_size = int(in_size[0]) if isinstance(in_size, (tuple, list)) else DEFAULT_CROP
    try:
        paper = PaperConvNet(
            specs,
            linears[-1].out_features,
            fc_widths=(linears[0].out_features, linears[1].out_features),
            local_response_norm=lrn is not None,
            norm_position=norm_position,
            lrn=lrn,
            input_size=input_size,
            dropout=dropout,
            init_std=None,  # the weights are copied below
            name=f"converted {type(net).__name__}",
            pool_ceil_mode=ceil_mode,
            dropout_position=dropout_position,
            adaptive_pool=adaptive,
        )
    except InputError:  # an input size the layout does not fit
        return None
    if paper.out_channels * paper.out_size**2 != linears[0].in_features:
        return None
    sources: list[nn.Module | None] = [op.module for op in feature_ops if op.kind == "conv"]
    sources += linears
    targets: list[nn.Module] = [m for m in paper.features if isinstance(m, nn.Conv2d)]
    targets += [m for m in paper.classifier if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for source, target in zip(sources, targets):
            assert isinstance(source, (nn.Conv2d, nn.Linear)) and isinstance(target, (nn.Conv2d, nn.Linear))
            if source.weight.shape != target.weight.shape:
                return None
            target.weight.copy_(source.weight)
            assert source.bias is not None and target.bias is not None
            target.bias.copy_(source.bias)
    parameter = next(net.parameters())
    paper.to(device=parameter.device, dtype=parameter.dtype)
    return paper.train(net.training)
