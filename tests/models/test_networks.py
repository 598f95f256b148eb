"""ZFNet, AlexNet and every Table 3 variant: parameter counts, map sizes, module types, bad options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from zf_lightning.config import config_dir
from zf_lightning.models import alexnet, build_network, zfnet

# Written out from the papers, independently of the builder: (maps, kernel) of conv1-5.
ZF_CONVS = [(96, 7), (256, 5), (384, 3), (384, 3), (256, 3)]
ALEX_CONVS = [(96, 11), (256, 5), (384, 3), (384, 3), (256, 3)]


def expected_parameters(convs, fc=(4096, 4096), classes=1000, removed=(), pool5=6) -> int:
    kept = [c for i, c in enumerate(convs, start=1) if i not in removed]
    total, channels = 0, 3
    for out, kernel in kept:
        total += channels * out * kernel * kernel + out
        channels = out
    features = channels * pool5 * pool5
    for layer, width in zip((6, 7), fc):
        if layer not in removed:
            total += features * width + width
            features = width
    return total + features * classes + classes


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zfnet_has_the_papers_parameter_count():
    assert count(zfnet()) == 62_357_608 == expected_parameters(ZF_CONVS)


def test_alexnet_single_tower_parameter_count():
    assert count(alexnet()) == 62_378_344 == expected_parameters(ALEX_CONVS)


def widths(convs, maps):
    return [(m, kernel) for m, (_, kernel) in zip(maps, convs)]


TABLE3 = {
    "alexnet": (ALEX_CONVS, (4096, 4096), ()),
    "alexnet_no_conv34": (ALEX_CONVS, (4096, 4096), (3, 4)),
    "alexnet_no_fc7": (ALEX_CONVS, (4096, 4096), (7,)),
    "alexnet_no_fc67": (ALEX_CONVS, (4096, 4096), (6, 7)),
    "alexnet_no_conv34_fc67": (ALEX_CONVS, (4096, 4096), (3, 4, 6, 7)),
    "alexnet_fc2048": (ALEX_CONVS, (2048, 2048), ()),
    "alexnet_fc8192": (ALEX_CONVS, (8192, 8192), ()),
    "zfnet": (ZF_CONVS, (4096, 4096), ()),
    "zfnet_fc2048": (ZF_CONVS, (2048, 2048), ()),
    "zfnet_fc8192": (ZF_CONVS, (8192, 8192), ()),
    "zfnet_conv512_1024_512": (widths(ZF_CONVS, [96, 256, 512, 1024, 512]), (4096, 4096), ()),
    "zfnet_fc8192_conv512_1024_512": (widths(ZF_CONVS, [96, 256, 512, 1024, 512]), (8192, 8192), ()),
}


def test_every_table3_row_has_a_config():
    names = {p.stem for p in (Path(config_dir()) / "model").glob("*.yaml")}
    assert set(TABLE3) <= names


@pytest.mark.parametrize("name", sorted(TABLE3))
def test_table3_variant_parameter_count(name):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", "experiment=imagenet", "data.root=/unused"])
    options = {k: v for k, v in cfg.model.net.items()}
    assert options["num_classes"] == 1000 and options["input_size"] == 224
    with torch.device("meta"):  # counts need no memory: the largest variant has 220M parameters
        net = build_network(**options)
    convs, fc, removed = TABLE3[name]
    assert count(net) == expected_parameters(convs, fc, removed=removed)


def feature_widths(model: nn.Module, size: int = 224) -> list[int]:
    """Spatial width after every conv and every pool, from a real forward pass."""
    x, out = torch.zeros(1, 3, size, size), []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            out.append(x.shape[-1])
    return out


def test_zfnet_map_sizes_match_fig3():
    # conv1 110, pool1 55, conv2 26, pool2 13, conv3-5 13, pool5 6
    assert feature_widths(zfnet()) == [110, 55, 26, 13, 13, 13, 13, 6]


def test_alexnet_map_sizes():
    assert feature_widths(alexnet()) == [55, 27, 27, 13, 13, 13, 13, 6]


def test_forward_of_two_images_gives_class_scores():
    model = zfnet().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


STANDARD = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.LocalResponseNorm, nn.Dropout, nn.Linear)


@pytest.mark.parametrize("factory", [zfnet, alexnet])
def test_features_and_classifier_are_sequentials_of_standard_modules(factory):
    model = factory(10, width_multiplier=0.25, input_size=96)
    assert isinstance(model.features, nn.Sequential) and isinstance(model.classifier, nn.Sequential)
    for layer in [*model.features, *model.classifier]:
        assert type(layer) in STANDARD


def layer_types(model):
    return [type(m).__name__ for m in model.features if not isinstance(m, nn.ReLU)]


def test_normalisation_follows_pooling_in_zfnet_and_precedes_it_in_alexnet():
    assert layer_types(zfnet())[:3] == ["Conv2d", "MaxPool2d", "LocalResponseNorm"]
    assert layer_types(alexnet())[:3] == ["Conv2d", "LocalResponseNorm", "MaxPool2d"]
    assert "LocalResponseNorm" not in layer_types(zfnet(local_response_norm=False))


def test_paper_init_is_normal_with_std_0_01_and_zero_biases():
    model = zfnet()
    fc6 = model.classifier[0]
    assert abs(fc6.weight.std().item() - 0.01) < 2e-4 and abs(fc6.weight.mean().item()) < 2e-4
    assert all(
        float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )


def test_width_multiplier_and_removed_layers():
    model = zfnet(10, width_multiplier=0.25, removed_layers=[3, 4, 7], input_size=96)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 64, 64]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [1024, 10]
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 10)


def test_too_small_input_names_the_layer():
    with pytest.raises(ValueError, match=r"zfnet: pool\d .*input_size=40"):
        zfnet(input_size=40)
    with pytest.raises(ValueError, match="conv1"):
        alexnet(input_size=8)


def test_only_layers_3_4_6_7_can_be_removed():
    with pytest.raises(ValueError, match=r"cannot remove layer\(s\) \[5\].*\[3, 4, 6, 7\]"):
        zfnet(removed_layers=[5])


def test_bad_widths_and_names():
    with pytest.raises(ValueError, match="fc_widths"):
        zfnet(fc_widths=[4096])
    with pytest.raises(ValueError, match="conv_widths"):
        zfnet(conv_widths=[96, 256])
    with pytest.raises(ValueError, match="norm_position"):
        zfnet(norm_position="middle")
    with pytest.raises(ValueError, match=r"unknown model architecture 'resnet'.*alexnet.*zfnet"):
        build_network("resnet")
