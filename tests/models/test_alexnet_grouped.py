"""Krizhevsky et al.'s AlexNet with its two groups: parameter count, the grouped convs as two towers, the
deconvnet through grouped layers, and a tiny zf-train run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zf_lightning.cli.train import train
from zf_lightning.deconv import METHODS, Deconvnet
from zf_lightning.models.alexnet import alexnet, alexnet_grouped
from zf_lightning.models.classifier import renormalize_filters_
from zf_lightning.models.registry import build_network
from zf_lightning.testing.references import autograd_projections

# Written out from Krizhevsky et al. 2012, Fig. 2, independently of the builder: (out maps, in maps, kernel, groups)
# of conv1-5 (conv2, conv4 and conv5 see only their own GPU's half of the maps below), then (in, out) of fc6-fc8.
KRIZHEVSKY_CONVS = [(96, 3, 11, 1), (256, 96, 5, 2), (384, 256, 3, 1), (384, 384, 3, 2), (256, 384, 3, 2)]
KRIZHEVSKY_DENSE = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
# Where conv1-5 sit in `features` (AlexNet normalises before pooling): conv relu lrn pool | conv relu lrn pool |
# conv relu | conv relu | conv relu pool
CONV_INDICES = {"conv1": 0, "conv2": 4, "conv3": 8, "conv4": 10, "conv5": 12}


def expected_parameters(convs: list[tuple[int, int, int, int]], dense: list[tuple[int, int]]) -> int:
    conv = sum(out * (inputs // groups) * kernel * kernel + out for out, inputs, kernel, groups in convs)
    return conv + sum(inputs * out + out for inputs, out in dense)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs_of(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.features if isinstance(m, nn.Conv2d)]


def test_parameter_count_is_krizhevskys_and_the_single_tower_one_is_unchanged():
    with torch.device("meta"):  # counts and shapes need no memory
        grouped, dense = alexnet_grouped(), alexnet()
    assert count(grouped) == expected_parameters(KRIZHEVSKY_CONVS, KRIZHEVSKY_DENSE) == 60_965_224
    single_tower = [(out, inputs, kernel, 1) for out, inputs, kernel, _ in KRIZHEVSKY_CONVS]
    assert count(dense) == expected_parameters(single_tower, KRIZHEVSKY_DENSE) == 62_378_344
    for conv, (out, inputs, kernel, groups) in zip(convs_of(grouped), KRIZHEVSKY_CONVS):
        assert conv.groups == groups and conv.weight.shape == (out, inputs // groups, kernel, kernel)
    # the same modules under the same names: only the grouped layers' weights are narrower
    grouped_state, dense_state = grouped.state_dict(), dense.state_dict()
    assert list(grouped_state) == list(dense_state)
    narrower = [key for key in dense_state if grouped_state[key].shape != dense_state[key].shape]
    assert narrower == [f"features.{CONV_INDICES[name]}.weight" for name in ("conv2", "conv4", "conv5")]
    assert all(conv.groups == 1 for conv in convs_of(dense))


def two_towers_forward(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The network's forward with every 2-group conv computed as two dense convs, each on its half of the input
    maps with its half of the filters, the halves' outputs concatenated (Krizhevsky's two GPUs)."""
    x = image
    for module in net.features:
        if isinstance(module, nn.Conv2d) and module.groups == 2:
            inputs, outputs = x.chunk(2, dim=1), module.weight.chunk(2, dim=0)
            assert module.bias is not None
            biases = module.bias.chunk(2)
            x = torch.cat(
                [
                    F.conv2d(half, weight, bias, module.stride, module.padding)
                    for half, weight, bias in zip(inputs, outputs, biases)
                ],
                dim=1,
            )
        else:
            x = module(x)
    return net.classifier(x.flatten(1))


def test_the_grouped_convs_are_two_towers_on_the_halves_of_the_maps():
    torch.manual_seed(0)
    net = alexnet_grouped().eval()
    image = torch.randn(1, 3, 224, 224) * 50
    with torch.no_grad():
        expected, out = two_towers_forward(net, image), net(image)
    assert out.shape == (1, 1000) and expected.abs().max() > 0
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    with torch.no_grad():  # and the towers are separate: a change in one half of conv1's maps stays in its half
        features = net.features[:5]  # conv1 (+ relu, LRN, pool) and conv2
        x = features[:4](image)
        changed = x.clone()
        changed[:, :48] += 1.0
        delta = net.features[4](changed) - net.features[4](x)
    assert delta[:, :128].abs().max() > 0 and delta[:, 128:].abs().max() == 0


def test_width_multiplier_keeps_the_groups_splitting_even_widths():
    net = alexnet_grouped(10, width_multiplier=0.1, input_size=67)
    assert [(c.in_channels, c.out_channels, c.groups) for c in convs_of(net)] == [
        (3, 10, 1),  # 9.6 maps rounded to even: conv2 splits them
        (10, 26, 2),
        (26, 38, 1),
        (38, 38, 2),
        (38, 26, 2),
    ]
    with pytest.raises(ValueError, match=r"conv2's groups=2 must divide its 255 output maps"):
        alexnet_grouped(conv_widths=[96, 255, 384, 384, 256])
    assert build_network("alexnet_grouped", num_classes=10, width_multiplier=0.125, input_size=67)(
        torch.zeros(2, 3, 67, 67)
    ).shape == (2, 10)


def test_filter_renormalisation_rescales_each_grouped_filter_by_its_own_rms():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 6, 3, groups=2)
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.2)
        conv.weight[0] *= 0.01  # one filter below the radius
    before = conv.weight.detach().clone()
    renormalize_filters_(conv, radius=0.1)
    for filter_before, filter_after in zip(before, conv.weight.detach()):  # one filter: in/groups x 3 x 3 weights
        rms = filter_before.pow(2).sum().div(filter_before.numel()).sqrt()
        expected = filter_before if rms <= 0.1 else filter_before * (0.1 / rms)
        torch.testing.assert_close(filter_after, expected)
    assert torch.equal(conv.weight[0], before[0])


def reference_projections(
    features: nn.Sequential, image: torch.Tensor, layer: int, maps: list[int], mode: str, method: str
) -> torch.Tensor:
    """(maps, C, H, W): autograd from conv `layer`'s rectified output, one map at a time (the first maximum of
    the map for mode "max", all of it for "map")."""
    modules = list(features)
    top = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)][layer - 1] + 1  # conv `layer`'s ReLU

    def seeds(output: torch.Tensor):
        for channel in maps:
            seed = torch.zeros_like(output)
            activation = output[channel]
            if mode == "max":
                first = int(activation.flatten().argmax())  # first maximum in row-major order
                seed[channel].view(-1)[first] = activation.flatten()[first]
            else:
                seed[channel] = activation
            yield seed

    return autograd_projections(features, image, top, seeds, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["max", "map"])
@pytest.mark.parametrize("layer", [2, 4, 5])  # the grouped layers
def test_deconvnet_projections_through_grouped_layers_match_autograd(layer, mode, method):
    torch.manual_seed(2)
    net = alexnet_grouped(10, width_multiplier=0.125, input_size=67, init_std=None)
    deconv = Deconvnet(net)
    assert deconv.fast  # the fast path takes grouped convs (conv_transpose2d with their groups)
    maps = [1, deconv.num_maps(layer) - 2]  # one map of each group
    torch.manual_seed(10 + layer)
    images = torch.randn(2, 3, 67, 67)
    out = deconv.project(images, layer, maps, mode=mode, method=method)
    expected = torch.stack([reference_projections(net.features, image, layer, maps, mode, method) for image in images])
    scale = expected.abs().max().item()
    assert scale > 0, "degenerate test: all-zero reference"
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * scale)


def test_a_tiny_training_run_of_the_grouped_alexnet(compose_train, tmp_path):
    summary = train(compose_train(["model=alexnet_grouped", "trainer.max_epochs=1", "logger=csv"]))
    assert summary["status"] == "completed" and "test/top1_err" in summary["test"]
    checkpoint = torch.load(summary["best"]["checkpoint"], weights_only=True)
    assert checkpoint["hyper_parameters"]["net"]["arch"] == "alexnet_grouped"
    weights = checkpoint["state_dict"]
    # width 0.125: conv1-5 have 12, 32, 48, 48, 32 maps; the grouped ones see half their input maps
    shapes = {name: tuple(weights[f"net.features.{index}.weight"].shape) for name, index in CONV_INDICES.items()}
    assert shapes == {
        "conv1": (12, 3, 11, 11),
        "conv2": (32, 6, 5, 5),
        "conv3": (48, 32, 3, 3),
        "conv4": (48, 24, 3, 3),
        "conv5": (32, 24, 3, 3),
    }
