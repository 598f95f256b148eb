"""The paper's layer numbering of a network: one home for "layer L", used by every engine and analysis."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from zf_lightning.analysis.features import LayerFeatures
from zf_lightning.deconv import Deconvnet
from zf_lightning.models import zfnet
from zf_lightning.models.layers import PaperLayers
from zf_lightning.transfer.feature_analysis import BlockFeatures


def test_zfnet_has_conv_layers_1_to_5_then_fc6_and_fc7_each_at_its_relu():
    net = zfnet(10, width_multiplier=0.125, input_size=64)
    layers = PaperLayers(net)
    assert [layer.number for layer in layers.conv] == [1, 2, 3, 4, 5] and [layer.number for layer in layers.dense] == [
        6,
        7,
    ]
    for layer in layers.conv:
        assert isinstance(net.features[layer.weights], nn.Conv2d) and isinstance(net.features[layer.rectified], nn.ReLU)
        assert layer.rectified == layer.weights + 1
    # a conv layer's block runs to the module before the next conv: layer 1's holds its pool and its LRN
    assert [type(net.features[i]).__name__ for i in range(layers[1].weights, layers[1].block_end + 1)] == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "LocalResponseNorm",
    ]
    assert layers[5].block_end == len(net.features) - 1
    assert isinstance(net.classifier[layers[7].weights], nn.Linear) and isinstance(
        net.classifier[layers[7].rectified], nn.ReLU
    )
    with pytest.raises(
        ValueError, match=r"layer 8 is not in this network; conv layers 1..5, hidden dense layers \[6, 7\]"
    ):
        layers[8]


def test_vgg16_numbers_its_13_conv_layers_first_so_that_conv_6_and_7_are_reachable():
    vgg = torchvision.models.vgg16(weights=None)
    layers = PaperLayers(vgg)
    assert len(layers.conv) == 13 and [layer.number for layer in layers.dense] == [14, 15]
    images = torch.randn(1, 3, 224, 224)  # 7 x 7 after the last pool: vgg's classifier follows its features at once
    features = LayerFeatures(vgg, layers=(6, 7, 14), channels_last=False)(images).features
    conv7_channels = vgg.features[layers[7].weights].out_channels
    assert features[7].shape[1] == conv7_channels * 56 * 56  # after two 2x2 pools
    assert features[14].shape == (1, 4096)
    with pytest.raises(ValueError, match=r"conv layers 1..13, hidden dense layers \[14, 15\]"):
        LayerFeatures(vgg, layers=(16,))


def test_every_engine_reads_the_same_layer():
    net = zfnet(10, width_multiplier=0.125, input_size=64)
    layers, deconv = PaperLayers(net), Deconvnet(net)
    assert deconv.num_layers == 5
    assert [deconv.feature_map_index(n) for n in range(1, 6)] == [layer.rectified for layer in layers.conv]
    blocks = BlockFeatures(net, layers=(2, 6))
    assert blocks.ends == {("features", layers[2].block_end): 2, ("classifier", layers[6].rectified): 6}


def test_a_network_without_features_is_refused_naming_what_it_needs():
    with pytest.raises(TypeError, match=r"`features` is an nn.Sequential.*got Linear"):
        PaperLayers(nn.Linear(3, 3))
    assert [layer.number for layer in PaperLayers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())).conv] == [1]
