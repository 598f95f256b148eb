"""Layer feature vectors against forward hooks on the plain model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from zf_lightning.analysis.features import LayerFeatures
from zf_lightning.models import alexnet, zfnet


def hooked_features(model: nn.Module, images: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Independent formulation: record the output of every ReLU with forward hooks, number them in order."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    recorded: list[torch.Tensor] = []
    handles = [
        relu.register_forward_hook(lambda _m, _i, out: recorded.append(out.detach().flatten(1).clone()))
        for relu in relus
    ]
    try:
        with torch.no_grad():
            logits = model.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
    num_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    conv = {layer: recorded[layer - 1] for layer in range(1, num_convs + 1)}
    dense = {6 + i: out for i, out in enumerate(recorded[num_convs:])}
    return {**conv, **dense}, logits


@pytest.mark.parametrize("factory", [zfnet, alexnet])
def test_every_layer_equals_the_relu_outputs(factory):
    torch.manual_seed(0)
    model = factory(10, width_multiplier=0.125, input_size=64, init_std=None)
    images = torch.randn(3, 3, 64, 64)
    expected, logits = hooked_features(model, images)
    outputs = LayerFeatures(model, layers=(1, 2, 3, 4, 5, 6, 7))(images)
    assert sorted(outputs.features) == [1, 2, 3, 4, 5, 6, 7]
    for layer, value in expected.items():
        torch.testing.assert_close(outputs.features[layer], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.logits, logits, rtol=1e-5, atol=1e-6)


def test_model_modes_and_inputs_are_left_untouched():
    model = zfnet(10, width_multiplier=0.125, input_size=64).train()
    images = torch.randn(2, 3, 64, 64)
    before = images.clone()
    LayerFeatures(model, layers=(1, 7))(images)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(images, before)


def test_removed_dense_layers_are_named_in_the_error():
    model = zfnet(10, width_multiplier=0.125, input_size=64, removed_layers=(6, 7))
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\] not in this network.*conv layers 1..5"):
        LayerFeatures(model, layers=(5, 7))
    assert LayerFeatures(model, layers=(5,)).layers == [5]


def test_layer_numbers_of_a_model_without_conv_layers_are_refused_naming_what_to_give():
    with pytest.raises(ValueError, match=r"layer\(s\) \[1, 7\] not in this network.*Linear has no Conv2d module"):
        LayerFeatures(nn.Linear(3, 3))


def test_any_network_by_module_name_gives_each_modules_output_and_the_logits():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    images = torch.randn(2, 3, 64, 64)
    outputs = LayerFeatures(net, layers=("layer2", 1, "layer4.1.bn2"), channels_last=False)(images)
    # the same numbers by hand, written out from torchvision's forward
    with torch.no_grad():
        conv1 = net.conv1(images)
        x = net.maxpool(net.relu(net.bn1(conv1)))
        layer2 = net.layer2(net.layer1(x))
        block = net.layer4[1]
        entering = net.layer4[0](net.layer3(layer2))
        bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(entering)))))
        logits = net(images)
    assert list(outputs.features) == ["layer2", 1, "layer4.1.bn2"]  # as given: names keep their order
    torch.testing.assert_close(outputs.features["layer2"], layer2.flatten(1))
    torch.testing.assert_close(outputs.features[1], conv1.flatten(1))  # conv layer 1: the first Conv2d's output
    torch.testing.assert_close(outputs.features["layer4.1.bn2"], bn2.flatten(1))
    torch.testing.assert_close(outputs.logits, logits)
    with pytest.raises(ValueError, match=r"'layer5' is not a module of this ResNet"):
        LayerFeatures(net, layers=("layer5",))
