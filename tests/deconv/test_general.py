"""The deconvnet on any network (the general path): against Captum, the autograd reference and the fast path."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from zf_lightning.deconv import Deconvnet
from zf_lightning.deconv.topk import find_top_activations, project_top_activations
from zf_lightning.models import zfnet
from zf_lightning.models.layers import numbered_layers, resolve_layer
from zf_lightning.testing.references import autograd_projections

captum_attr = pytest.importorskip("captum.attr")

COSINE = 0.9999


# ------------------------------------------------------------------ networks
def _randomize_batch_norms(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (the defaults would make each BN the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in (
                    (module.running_mean, -0.2, 0.2),
                    (module.running_var, 0.5, 2.0),
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.1, 0.1),
                ):
                    tensor.copy_(torch.empty(tensor.shape).uniform_(low, high, generator=generator))
    return net


class Residual(nn.Module):
    """A user network: BatchNorm, a residual addition, one in-place nn.ReLU used twice, pooling, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.top = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv1(x)))
        h = self.relu(h + self.conv2(h))  # the same ReLU again, after the residual addition
        return self.head(self.top(self.conv3(self.pool(h))))


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_batch_norms(torchvision.models.resnet18(weights=None), 1).eval()


@functools.cache
def _vgg16_bn_built_once() -> nn.Module:
    torch.manual_seed(2)
    return _randomize_batch_norms(torchvision.models.vgg16_bn(weights=None), 3).eval()


def _vgg16_bn() -> nn.Module:
    # Initialising its 138 M parameters takes 1.1 s on 2 cores, a copy 0.2 s; nine tests take one each.
    return copy.deepcopy(_vgg16_bn_built_once())


def _alexnet() -> nn.Module:
    torch.manual_seed(4)
    return torchvision.models.alexnet(weights=None).eval()


def _residual() -> nn.Module:
    torch.manual_seed(5)
    return _randomize_batch_norms(Residual(), 6).eval()


def _captum_copy(net: nn.Module) -> nn.Module:
    """Captum's hooks need ReLUs that are not in place."""
    net = copy.deepcopy(net)
    for module in net.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return net


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _captum(net: nn.Module, layer: str, method: str, image: torch.Tensor, neuron: tuple) -> torch.Tensor:
    cls = captum_attr.NeuronDeconvolution if method == "deconvnet" else captum_attr.NeuronGuidedBackprop
    model = _captum_copy(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum: "Setting backward hooks on ReLU activations"
        return cls(model, model.get_submodule(layer)).attribute(image[None], neuron_selector=neuron)[0]


# ------------------------------------------------------------------ against Captum
CASES = [
    (_resnet18, "layer4", 64),
    (_resnet18, "layer2.0", 64),
    (_vgg16_bn, "features.42", 64),  # conv5_3's ReLU, after its BatchNorm
    (_alexnet, "avgpool", 112),  # adaptive pooling: the general path on a fast-path network
    (_alexnet, "features.11", 112),  # conv5's ReLU: the fast path, same numbers
    (_residual, "top", 32),
    (_residual, "pool", 32),
]


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
@pytest.mark.parametrize(("make_net", "layer", "size"), CASES, ids=[f"{f.__name__[1:]}-{n}" for f, n, _ in CASES])
def test_strongest_activations_match_captum(make_net, layer, size, method):
    net = make_net()
    deconv = Deconvnet(net)
    torch.manual_seed(7)
    images = torch.randn(2, 3, size, size)
    # Each image's strongest map and its 5th strongest: live maps whatever the random weights.
    peaks = deconv.feature_maps(images, [layer])[layer].flatten(2).amax(dim=2)
    maps = [int(peaks[0].argmax()), int(peaks[1].argsort(descending=True)[4])]
    strongest = deconv.project_strongest(images, layer, maps, method=method)
    pasted = strongest.paste((size, size))
    assert pasted.shape == (2, 3, size, size)
    for n, map_ in enumerate(maps):
        assert strongest.values[n] > 0, "degenerate test: a dead map"
        neuron = (map_, int(strongest.rows[n]), int(strongest.cols[n]))
        expected = _captum(net, layer, method, images[n], neuron)
        assert _cosine(pasted[n], expected) > COSINE
        # Captum seeds with 1, the engine with the activation: same direction, scaled by the value.
        torch.testing.assert_close(
            pasted[n], expected * strongest.values[n], rtol=1e-3, atol=1e-5 * expected.abs().max()
        )


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_dense_layer_fc6_matches_captum(method):
    net = _alexnet()
    deconv = Deconvnet(net)
    torch.manual_seed(8)
    images = torch.randn(1, 3, 112, 112)
    fc6 = deconv.feature_maps(images, ["fc6"])["fc6"]
    assert fc6.shape == (1, 4096, 1, 1)
    unit = int(fc6.flatten().argmax())
    out = deconv.project_activations(images, "fc6", [0], [unit], [0], [0], method=method)
    expected = _captum(net, "classifier.2", method, images[0], (unit,))
    assert _cosine(out.windows[0], expected) > COSINE


# ------------------------------------------------------------------ against the autograd reference
@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("mode", ["max", "map"])
def test_vgg16_bn_matches_the_autograd_reference(mode, method):
    net = _vgg16_bn()
    top = 32  # conv4_3's ReLU
    torch.manual_seed(9)
    images = torch.randn(2, 3, 48, 48)
    maps = [0, 7]
    out = Deconvnet(net).project(images, f"features.{top}", maps, mode=mode, method=method)
    assert out.shape == (2, 2, 3, 48, 48)
    for b in range(2):

        def seeds(output, maps=maps):
            for channel in maps:
                seed = torch.zeros_like(output)
                if mode == "max":
                    flat = output[channel].flatten()
                    seed[channel].view(-1)[flat.argmax()] = flat.max()
                else:
                    seed[channel] = output[channel]
                yield seed

        expected = autograd_projections(net.features.eval(), images[b], top, seeds, method)
        scale = expected.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(out[b], expected, rtol=1e-4, atol=1e-5 * scale)


def test_vgg16_bn_takes_the_windowed_path_with_its_batch_norms_folded_and_follows_live_weights():
    net = _vgg16_bn()
    deconv = Deconvnet(net)
    assert deconv.fast and deconv._target("features.42").number == 13  # conv5_3 -> BN -> ReLU: paper layer 13
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deconv.fast_features)
    torch.manual_seed(14)
    images = torch.randn(2, 3, 48, 48)
    windowed = deconv.project(images, 13, [5, 9], mode="max", method="guided")
    autograd = deconv.general.project(
        images, "features.42", torch.tensor([0, 0, 1, 1]), torch.tensor([5, 9, 5, 9]), None, None, "guided"
    )[3]
    scale = autograd.abs().max().item()
    torch.testing.assert_close(windowed.flatten(0, 1), autograd, rtol=1e-4, atol=1e-5 * scale)
    with torch.no_grad():  # the network changes after the engine was built: the folded copy follows
        net.features[41].running_var.mul_(3.0)
        net.features[40].weight.mul_(-1.0)
    fresh = Deconvnet(copy.deepcopy(net)).project(images, 13, [5, 9], mode="max", method="guided")
    torch.testing.assert_close(deconv.project(images, 13, [5, 9], mode="max", method="guided"), fresh)


def test_reused_relu_is_its_last_call_and_bn_in_train_mode_is_left_alone():
    net = _residual().train()  # the engine works on an eval copy; the model's own modes stay
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calls = []
    net.relu.register_forward_hook(lambda module, inputs, output: calls.append(1))
    deconv = Deconvnet(net)
    torch.manual_seed(10)
    images = torch.randn(3, 3, 32, 32)
    got = deconv.feature_maps(images, ["relu"])["relu"]
    with torch.no_grad():
        reference = copy.deepcopy(net).eval()
        h = F.relu(reference.bn(reference.conv1(images)))
        expected = F.relu(h + reference.conv2(h))
    torch.testing.assert_close(got, expected)
    deconv.project(images, "relu", [2], mode="max")
    assert not calls, "the model's own hooks must not run"
    assert net.training and net.bn.training and isinstance(net.relu, nn.ReLU) and net.relu.inplace
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())


def test_chunking_gives_the_same_result():
    net = _resnet18()
    torch.manual_seed(11)
    images = torch.randn(5, 3, 48, 48)
    image_index, maps = [0, 0, 0, 1, 3, 3, 4], [1, 2, 3, 1, 9, 9, 0]
    rows, cols = [0, 1, 1, 0, 1, 0, 1], [0, 0, 1, 1, 1, 0, 0]
    whole = Deconvnet(net, max_batch_elements=None).project_activations(
        images, "layer3", image_index, maps, rows, cols, method="guided"
    )
    chunked = Deconvnet(net, max_batch_elements=1).project_activations(
        images, "layer3", image_index, maps, rows, cols, method="guided"
    )
    # Batched and one-image convolutions sum in another order: equal to float rounding of the largest value.
    scale = float(whole.windows.abs().max())
    assert scale > 0
    torch.testing.assert_close(chunked.windows, whole.windows, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(chunked.values, whole.values)


# ------------------------------------------------------------------ names on the fast path
@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_module_names_on_a_sequential_network_take_the_fast_path(method):
    torch.manual_seed(0)
    net = zfnet(10, width_multiplier=0.125, input_size=64, init_std=None)
    deconv = Deconvnet(net)
    torch.manual_seed(12)
    images = torch.randn(2, 3, 64, 64)
    for layer in range(1, 6):
        name = f"features.{deconv.feature_map_index(layer)}"
        assert deconv._target(name).number == layer  # the fast path
        assert deconv.num_maps(name) == deconv.num_maps(layer)
        assert deconv.receptive_field(name) == deconv.receptive_field(layer)
        by_name = deconv.project(images, name, [0, 3], mode="map", method=method)
        torch.testing.assert_close(by_name, deconv.project(images, layer, [0, 3], mode="map", method=method))
        maps = deconv.feature_maps(images, [layer, name])
        torch.testing.assert_close(maps[name], maps[layer])
        a = deconv.project_activations(images, name, [0, 1], [2, 5], [1, 0], [0, 2], method=method)
        b = deconv.project_activations(images, layer, [0, 1], [2, 5], [1, 0], [0, 2], method=method)
        torch.testing.assert_close(a.windows, b.windows)
        torch.testing.assert_close(a.values, b.values)
    # Both keys of one layer in one call go down together and come back apart.
    both = deconv.project_activations_by_layer(images, {5: ([0], [1], [0], [0]), "features.13": ([1], [2], [1], [1])})
    assert set(both) == {5, "features.13"} and both["features.13"].windows.shape[0] == 1


def test_vgg16_conv5_3_by_name_is_paper_layer_13():
    torch.manual_seed(13)
    net = torchvision.models.vgg16(weights=None).eval()
    deconv = Deconvnet(net)
    assert deconv.fast and deconv._target("features.29").number == 13
    assert deconv._target("features.28").name == "features.28"  # the conv before its ReLU: the general path
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(deconv.project(images, "features.29", [3, 40]), deconv.project(images, 13, [3, 40]))
    # The general path on the same layer (a module name the fast path does not know: the ReLU's own block end)
    # agrees with the fast path.
    general = deconv.general.project(
        images, "features.29", torch.tensor([0, 0]), torch.tensor([3, 40]), None, None, "deconvnet"
    )[3]
    torch.testing.assert_close(general, deconv.project(images, 13, [3, 40])[0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ numbering
def test_numbering_of_other_networks():
    resnet = _resnet18()
    numbered = numbered_layers(resnet)
    assert len(numbered) == 20 and numbered[0].output == "conv1" and numbered[-1].weights == "layer4.1.conv2"
    assert resolve_layer(resnet, 1).output == "conv1"  # no ReLU directly after it in an nn.Sequential
    user = nn.Sequential()
    user.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)))
    assert [layer.output for layer in numbered_layers(nn.ModuleDict({"a": user}))] == ["a.stem.1", "a.stem.2"]
    with torch.device("meta"):  # the structure is what is numbered: no weights needed
        vgg = torchvision.models.vgg16(weights=None)
    assert resolve_layer(vgg, "fc6").output == "classifier.1" and resolve_layer(vgg, "fc7").number == 15
    assert resolve_layer(_alexnet(), "fc7").output == "classifier.5"
    assert Deconvnet(resnet)._target(20).name == "layer4.1.conv2"
    with pytest.raises(ValueError, match="has no hidden dense layer 21"):
        resolve_layer(resnet, "fc6")


# ------------------------------------------------------------------ errors
def test_unknown_module_name_lists_close_names():
    deconv = Deconvnet(_resnet18())
    with pytest.raises(
        ValueError, match=r"'layer4.1.con1' is not a module of this ResNet; close names: \['layer4.1.conv1'"
    ):
        deconv.project(torch.randn(1, 3, 64, 64), "layer4.1.con1", [0])
    with pytest.raises(ValueError, match=r"'blocks' is not a module of this ResNet; available names include \['conv1'"):
        deconv.num_maps("blocks")
    with pytest.raises(ValueError, match=r"layer 21 is not|1\.\.20 \(the model has 20 conv layers\)"):
        deconv.num_maps(21)
    with pytest.raises(ValueError, match="out of range: layer layer4 has 512 maps"):
        deconv.project(torch.randn(1, 3, 64, 64), "layer4", [512])
    with pytest.raises(ValueError, match="takes the general path.*give image_size"):
        deconv.receptive_field("layer4")
    assert deconv.receptive_field("layer4", (64, 64)).size == (64, 64)


class FunctionalReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


@pytest.mark.parametrize(
    "net", [FunctionalReLU(), nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh())], ids=["F.relu", "tanh"]
)
def test_networks_without_relu_modules_are_refused_but_for_the_gradient(net):
    deconv = Deconvnet(net)
    images = torch.randn(1, 3, 16, 16)
    name = type(net).__name__
    for method in ("deconvnet", "guided"):
        with pytest.raises(ValueError, match=rf"needs nn.ReLU modules, and this {name} has none.*functional relu"):
            deconv.project(images, 1, [0], method=method)
    assert deconv.project(images, 1, [0], method="gradient").shape == (1, 1, 3, 16, 16)


# ------------------------------------------------------------------ top-k by module name
def test_top_k_on_resnet18_by_module_name_equals_brute_force():
    net = _resnet18()
    deconv = Deconvnet(net)
    torch.manual_seed(14)
    images = torch.randn(13, 3, 64, 64)
    maps = [0, 5, 17]
    batches = [(images[i : i + 5], torch.arange(i, min(i + 5, 13))) for i in range(0, 13, 5)]
    found = find_top_activations(deconv, batches, {"layer3": maps}, k=4)["layer3"]
    full = deconv.feature_maps(images, ["layer3"])["layer3"][:, maps]  # (13, 3, h, w)
    n, m, h, w = full.shape
    best, where = full.reshape(n, m, h * w).max(dim=2)  # each image's strongest location, per map
    for j in range(m):
        ranked = sorted(range(n), key=lambda i, j=j: (-best[i, j].item(), i))[:4]
        assert found.image_index[j].tolist() == ranked
        torch.testing.assert_close(found.values[j], best[ranked, j])
        assert (found.rows[j] * w + found.cols[j]).tolist() == where[ranked, j].tolist()
    projected = project_top_activations(deconv, found, lambda idx: images[idx], lambda idx: images[idx].sigmoid())
    assert projected.projections.shape == (3, 4, 3, 64, 64) and projected.receptive_field.size == (64, 64)
    image = found.image_index[1, 0].item()
    expected = deconv.project(images[image : image + 1], "layer3", [maps[1]], mode="max")[0, 0]
    torch.testing.assert_close(projected.projections[1, 0], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(projected.patches[1, 0], images[image].sigmoid())
