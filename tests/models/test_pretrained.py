"""Networks trained elsewhere as sources (models/pretrained.py): the paper-layout networks of pytorchcv and torchvision
become PaperConvNets with the same outputs; state-dict files in the usual wrappings load, and those that do not fit,
unknown names and weights that cannot be downloaded fail with one clear message; class names and input recipes per
source. Random weights only: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers.images import photo_like
from zf_lightning.models import ImageClassifier, LoadedNetwork, PaperConvNet, Preprocessing, load_network
from zf_lightning.models.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    pytorchcv_preprocessing,
    to_paper_network,
)
from zf_lightning.utils.errors import InputError, MissingInputError

pytorchcv = pytest.importorskip("pytorchcv.model_provider")


def same_function(source: nn.Module, converted: nn.Module, size: int = 224, batch: int = 2) -> float:
    """Max abs difference of the outputs relative to their scale, on random images, in eval mode."""
    torch.manual_seed(1)
    images = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        expected, got = source.eval()(images), converted.eval()(images)
    assert expected.shape == got.shape
    return float((expected - got).abs().max() / expected.abs().max().clamp_min(1e-12))


def kinds(sequential: nn.Sequential) -> list[str]:
    return [type(module).__name__ for module in sequential]


@pytest.mark.parametrize("name", ["zfnet", "zfnetb", "alexnet"])
def test_pytorchcv_paper_networks_convert_to_a_paper_convnet_with_the_same_outputs(name):
    torch.manual_seed(0)
    source = pytorchcv.get_model(name, pretrained=False).eval()
    converted = to_paper_network(source)
    assert isinstance(converted, PaperConvNet)
    assert same_function(source, converted, batch=1) < 1e-5
    # pytorchcv's own constants and order: LRN (alpha 1e-4, k 2) after the ReLU, before the pooling
    assert kinds(converted.features)[:5] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d", "Conv2d"]
    lrn = converted.features[2]
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)
    assert all(pool.ceil_mode for pool in converted.features if isinstance(pool, nn.MaxPool2d))
    assert kinds(converted.classifier) == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]


def test_torchvision_alexnet_converts_with_its_floor_pooling_dropout_order_and_average_pool():
    torch.manual_seed(0)
    source = torchvision.models.alexnet(weights=None).eval()
    converted = to_paper_network(source)
    assert isinstance(converted, PaperConvNet)
    assert same_function(source, converted) < 1e-5
    assert not any(isinstance(module, nn.LocalResponseNorm) for module in converted.features)
    assert not any(pool.ceil_mode for pool in converted.features if isinstance(pool, nn.MaxPool2d))
    assert kinds(converted.classifier) == ["Dropout", "Linear", "ReLU"] * 2 + ["Linear"]
    assert isinstance(converted.avgpool, nn.AdaptiveAvgPool2d)


def test_networks_without_the_papers_layout_are_not_converted():
    assert to_paper_network(torchvision.models.squeezenet1_1(weights=None)) is None
    assert to_paper_network(TinyNet()) is None


class TinyNet(nn.Module):
    """A network of one's own, for source=module."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def test_a_module_of_ones_own_with_kwargs_weights_recipe_and_class_names(tmp_path):
    torch.manual_seed(0)
    trained = TinyNet(width=5, classes=2)
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "tiny.pth")
    spec = {
        "source": "module",
        "target": f"{__name__}.TinyNet",
        "kwargs": {"width": 5, "classes": 2},
        "weights": str(tmp_path / "tiny.pth"),
        "resize_size": 40,
        "crop_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "class_names": ["cat", "dog"],
    }
    loaded = load_network(pretrained=spec)
    assert isinstance(loaded, LoadedNetwork) and not loaded.net.training
    assert loaded.num_classes == 2 and loaded.class_names == ["cat", "dog"] and not loaded.converted
    assert loaded.preprocessing == Preprocessing(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert "TinyNet" in loaded.source and "tiny.pth" in loaded.source
    image = loaded.preprocessing.transform()(photo_like(60, 50))
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.equal(loaded.net(image[None]), trained.eval()(image[None]))
    with pytest.raises(InputError, match="cannot be imported"):
        load_network(pretrained={**spec, "target": "no_such_package.Net"})
    with pytest.raises(InputError, match="unexpected keyword"):
        load_network(pretrained={**spec, "kwargs": {"depth": 3}})


# ------------------------------------------------------------------------------------------------ state-dict files


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.mark.parametrize("wrapping", ["plain", "state_dict", "model", "ddp"])
def test_a_torchvision_state_dict_file_loads_in_the_usual_wrappings(tmp_path, resnet18, wrapping):
    state = resnet18.state_dict()
    saved = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 1},
        "model": {"model": state, "optimizer": {}},
        "ddp": {"state_dict": {f"module.{key}": value for key, value in state.items()}},
    }[wrapping]
    torch.save(saved, tmp_path / "resnet18.pth")
    loaded = load_network(
        pretrained={"source": "torchvision", "name": "resnet18", "weights": str(tmp_path / "resnet18.pth")}
    )
    assert loaded.source == "torchvision resnet18 (resnet18.pth)" and loaded.num_classes == 1000
    assert not loaded.converted and not loaded.net.training
    for key, value in loaded.net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_state_dict_of_another_network_names_the_missing_and_unexpected_keys(tmp_path):
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), tmp_path / "squeeze.pth")
    spec = {"source": "torchvision", "name": "resnet18", "weights": str(tmp_path / "squeeze.pth")}
    with pytest.raises(InputError) as error:
        load_network(pretrained=spec)
    message = str(error.value)
    assert "squeeze.pth" in message and "does not fit" in message
    assert "missing keys (conv1.weight, bn1.weight" in message and "unexpected keys (features.0.weight" in message
    assert "in all)" in message  # the first few, with the count


def test_a_state_dict_of_other_shapes_names_the_key_and_both_shapes(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), tmp_path / "ten.pth")
    spec = {"source": "torchvision", "name": "resnet18", "weights": str(tmp_path / "ten.pth")}
    with pytest.raises(InputError) as error:
        load_network(pretrained=spec)
    message = str(error.value)
    assert "fc.weight: expected (1000, 512), got (10, 512)" in message and "fc.bias" in message
    assert "pretrained.num_classes=10" in message
    loaded = load_network(pretrained={**spec, "num_classes": 10})
    assert loaded.num_classes == 10 and loaded.class_names is None  # not ImageNet's classes


def test_files_that_are_not_state_dicts_fail_clearly(tmp_path):
    spec = {"source": "torchvision", "name": "resnet18"}
    with pytest.raises(MissingInputError, match="no such file"):
        load_network(pretrained={**spec, "weights": str(tmp_path / "missing.pth")})
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable torch file"):
        load_network(pretrained={**spec, "weights": str(tmp_path / "junk.pth")})
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(InputError, match="holds no state dict"):
        load_network(pretrained={**spec, "weights": str(tmp_path / "list.pth")})


# ------------------------------------------------------------------------------------------------ names, downloads


def test_unknown_names_list_the_available_ones_closest_first():
    with pytest.raises(InputError, match=r"not a torchvision model; available: resnet18, "):
        load_network(pretrained={"source": "torchvision", "name": "resnet181"})
    with pytest.raises(InputError, match=r"not a pytorchcv model; available: zfnet, "):
        load_network(pretrained={"source": "pytorchcv", "name": "zfnett"})
    with pytest.raises(InputError, match=r"its weights: IMAGENET1K_V1"):
        load_network(pretrained={"source": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V9"})
    with pytest.raises(InputError, match="source must be one of"):
        load_network(pretrained={"source": "timm", "name": "resnet18"})
    with pytest.raises(InputError, match=r"unknown key\(s\) \['nmae'\]"):
        load_network(pretrained={"source": "torchvision", "nmae": "resnet18"})
    with pytest.raises(InputError, match=r"\['target'\] do not apply to source='torchvision'"):
        load_network(pretrained={"source": "torchvision", "name": "resnet18", "target": "x.Y"})


def test_exactly_one_of_checkpoint_and_spec():
    with pytest.raises(InputError, match="neither"):
        load_network()
    with pytest.raises(InputError, match="both"):
        load_network("last.ckpt", {"source": "torchvision", "name": "resnet18"})


def offline(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution")


def test_torchvision_weights_offline_and_not_cached_say_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # no network, whatever this machine has
    with pytest.raises(MissingInputError) as error:
        load_network(pretrained={"source": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"})
    message = str(error.value)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert f"Download {url} and put it at {tmp_path / 'torch' / 'hub' / 'checkpoints' / Path(url).name}" in message
    assert "pretrained.weights=" in message and "URLError" in message
    assert error.value.__suppress_context__  # one message, no chained traceback


def test_torchvision_weights_by_name_load_from_the_torch_hub_cache_offline(tmp_path, monkeypatch, resnet18):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save(resnet18.state_dict(), cached)  # as torchvision's download leaves it
    for name in ("IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"):
        loaded = load_network(pretrained={"source": "torchvision", "name": "resnet18", "weights": name})
        assert loaded.source == "torchvision resnet18 IMAGENET1K_V1" and loaded.num_classes == 1000
        assert loaded.class_names == list(weights.meta["categories"])
        assert loaded.preprocessing == Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)
        assert torch.equal(loaded.net.fc.weight, resnet18.fc.weight)
    with pytest.raises(InputError, match="num_classes=10 but torchvision resnet18 IMAGENET1K_V1 has 1000 classes"):
        load_network(pretrained={"source": "torchvision", "name": "resnet18", "weights": "DEFAULT", "num_classes": 10})


def test_pytorchcv_store_offline_and_not_cached_says_what_to_download_and_where(tmp_path, monkeypatch):
    from pytorchcv.models.common import model_store

    def no_network(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(model_store, "_download", no_network)
    with pytest.raises(MissingInputError) as error:
        load_network(pretrained={"source": "pytorchcv", "name": "zfnet", "weights": "pytorchcv"})
    message = str(error.value)
    assert (
        "https://github.com/osmr/imgclsmob/releases/download/" in message and "zfnet-1727-d010ddca.pth.zip" in message
    )
    assert str(tmp_path / ".torch" / "models" / "zfnet-1727-d010ddca.pth") in message


# ------------------------------------------------------------------------------------------------ names and recipes


def test_torchvision_and_pytorchcv_class_names_are_imagenets_words_and_their_recipes():
    loaded = load_network(pretrained={"source": "torchvision", "name": "squeezenet1_1", "weights": None})
    assert loaded.source == "torchvision squeezenet1_1 (random weights)" and loaded.num_classes == 1000
    names = loaded.class_names
    assert names is not None and len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
    assert all(isinstance(name, str) and name.strip() and not name.isdigit() for name in names)
    assert loaded.preprocessing == Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    assert not loaded.converted

    # pytorchcv: imgclsmob's ImageNet evaluation (ceil(224 / 0.875) = 256, centre 224, ImageNet mean/std)
    assert pytorchcv_preprocessing("zfnet") == Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    assert pytorchcv_preprocessing("inceptionv3") == Preprocessing(342, 299, IMAGENET_MEAN, IMAGENET_STD)


def test_a_pytorchcv_zfnet_loads_converted_with_imagenet_names(tmp_path):
    loaded = load_network(pretrained={"source": "pytorchcv", "name": "zfnet", "weights": None, "crop_size": 224})
    assert isinstance(loaded.net, PaperConvNet) and loaded.converted and not loaded.net.training
    assert loaded.class_names is not None and loaded.class_names[0] == "tench" and loaded.num_classes == 1000
    assert loaded.preprocessing.resize_size == 256 and loaded.preprocessing.crop_size == 224
    kept = load_network(pretrained={"source": "pytorchcv", "name": "zfnet", "weights": None, "convert": False})
    assert type(kept.net).__name__ == "AlexNet" and not kept.converted


def test_the_recipe_comes_from_the_weights_enum_and_the_spec_overrides_it():
    from zf_lightning.models.pretrained import _weights_preprocessing, _with_overrides

    b1 = _weights_preprocessing(torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V1)
    assert (b1.resize_size, b1.crop_size, b1.interpolation) == (256, 240, "bicubic")
    spec = {"resize_size": 300, "crop_size": 288, "mean": [0.5] * 3, "std": [0.2] * 3}
    assert _with_overrides(b1, spec) == Preprocessing(300, 288, (0.5,) * 3, (0.2,) * 3, interpolation="bicubic")
    with pytest.raises(InputError, match="must not exceed|not exceed"):
        Preprocessing(200, 224, IMAGENET_MEAN, IMAGENET_STD)


def test_imagenet_recipe_transforms_a_photo_as_torchvision_does():
    image = photo_like(300, 260)
    preprocessing = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    expected = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(image)
    got = preprocessing.transform()(image)
    assert got.shape == (3, 224, 224) and (got - expected).abs().max() < 1e-5
    tensor = preprocessing.transform()(torchvision.transforms.functional.pil_to_tensor(image))  # uint8 tensors too
    assert (tensor - expected).abs().max() <= 1 / 255 / min(IMAGENET_STD) + 1e-5  # a few pixels a grey level apart
    shown = preprocessing.display_transform()(image)
    assert shown.shape == (3, 224, 224) and 0 <= shown.min() and shown.max() <= 1


# ------------------------------------------------------------------------------------------------ zf-train checkpoints


def zf_checkpoint(path: Path, mean_image: torch.Tensor | None, class_names: list[str] | None = None) -> ImageClassifier:
    import lightning

    torch.manual_seed(0)
    model = ImageClassifier(
        net={"arch": "zfnet", "num_classes": 3, "input_size": 64, "fc_widths": [16, 16], "width_multiplier": 0.125}
    )
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "SyntheticDataModule": {"mean_image": mean_image} if mean_image is not None else {},
    }
    if class_names is not None:
        checkpoint["class_names"] = class_names
    torch.save(checkpoint, path)
    return model


def test_a_zf_train_checkpoint_loads_with_its_mean_image_as_the_val_transform(tmp_path):
    from zf_lightning.data.transforms import paper_transforms

    mean_image = torch.rand(3, 72, 72) * 255
    model = zf_checkpoint(tmp_path / "last.ckpt", mean_image)
    loaded = load_network(ckpt_path=tmp_path / "last.ckpt")
    assert isinstance(loaded.net, PaperConvNet) and not loaded.net.training
    assert loaded.source == "zfnet (last.ckpt)" and loaded.num_classes == 3 and loaded.class_names is None
    preprocessing = loaded.preprocessing
    assert (preprocessing.resize_size, preprocessing.crop_size, preprocessing.mean) == (72, 64, None)
    image = photo_like(97, 80)  # an odd margin: the square crop first, then the centre crop, as the datamodule
    expected = paper_transforms(72, 64, mean_image, ten_crop_test=False)["val"](image)
    assert torch.allclose(preprocessing.transform()(image), expected, atol=1e-4)
    assert preprocessing.display_transform()(image).shape == (3, 64, 64)
    for key, value in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value)


def test_a_zf_train_checkpoint_without_a_mean_image_uses_imagenets_mean_and_its_class_names(tmp_path):
    zf_checkpoint(tmp_path / "tv.ckpt", None, ["a", "b", "c"])
    loaded = load_network(ckpt_path=str(tmp_path / "tv.ckpt"))
    assert loaded.preprocessing == Preprocessing(74, 64, IMAGENET_MEAN, IMAGENET_STD)
    assert loaded.class_names == ["a", "b", "c"]
    with pytest.raises(MissingInputError, match="no such checkpoint"):
        load_network(ckpt_path=tmp_path / "missing.ckpt")


def test_a_file_of_arbitrary_python_objects_is_refused(tmp_path):
    torch.save({"state_dict": TinyNet().state_dict(), "net": TinyNet()}, tmp_path / "pickled.pth")
    spec = {"source": "module", "target": f"{__name__}.TinyNet", "weights": str(tmp_path / "pickled.pth")}
    unsafe = f"Unsupported global: GLOBAL {__name__}.TinyNet was not an allowed global by default"
    with pytest.raises(InputError, match=f"arbitrary Python objects.*Torch said: {unsafe}$"):
        load_network(pretrained=spec)
