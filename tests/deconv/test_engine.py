"""The deconvnet engine against an independent autograd formulation, plus its bookkeeping and errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from zf_lightning.deconv import METHODS, Deconvnet
from zf_lightning.models import alexnet, zfnet
from zf_lightning.testing.references import autograd_projections

# ------------------------------------------------------------------ reference


def reference(
    features: nn.Sequential, image: torch.Tensor, layer: int, maps: list[int], mode: str, method: str, at=None
):
    """(len(maps), C, H, W): x.grad of the chosen activation(s) of each map of conv `layer`, for one image.

    mode "at": the activation at location `at` = (row, col) of each map.
    """
    modules = list(features)
    conv_positions = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    top = conv_positions[layer - 1]
    if top + 1 < len(modules) and isinstance(modules[top + 1], nn.ReLU):
        top += 1  # conv L's own ReLU

    def seeds(output):
        for channel in maps:
            seed = torch.zeros_like(output)
            act = output[channel]
            if mode == "at":
                seed[channel][at] = act[at]
            elif mode == "max":
                flat = act.flatten()
                first = (flat == flat.max()).nonzero()[0, 0]  # first maximum in row-major order
                seed[channel].view(-1)[first] = flat[first]
            else:
                seed[channel] = act
            yield seed

    return autograd_projections(features, image, top, seeds, method)


def assert_matches_reference(net, images, layer, maps, mode, method):
    out = Deconvnet(net).project(images, layer, maps, mode=mode, method=method)
    assert out.shape == (images.shape[0], len(maps), *images.shape[1:])
    expected = torch.stack([reference(net.features, image, layer, maps, mode, method) for image in images])
    scale = expected.abs().max().item()
    assert scale > 0, "degenerate test: all-zero reference"
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * scale)


def _zfnet():
    torch.manual_seed(0)
    return zfnet(10, width_multiplier=0.125, input_size=64, init_std=None)


def _alexnet():
    torch.manual_seed(1)
    return alexnet(10, width_multiplier=0.125, input_size=67, init_std=None)


# --------------------------------------------------------------- equivalence


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["max", "map"])
@pytest.mark.parametrize("layer", [1, 2, 3, 4, 5])
@pytest.mark.parametrize(
    ("make_net", "size", "seed", "maps"),
    [(_zfnet, 64, 10, [0, 5, 11]), (_alexnet, 67, 20, [1, 7])],
    ids=["zfnet", "alexnet"],
)
def test_paper_nets_match_autograd(make_net, size, seed, maps, layer, mode, method):
    net = make_net()
    torch.manual_seed(seed + layer)
    images = torch.randn(2, 3, size, size)
    assert_matches_reference(net, images, layer, maps, mode, method)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(2)
    return torchvision.models.vgg16(weights=None)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["max", "map"])
@pytest.mark.parametrize("layer", range(1, 14))  # every conv of vgg16
def test_vgg16_matches_autograd(vgg, layer, mode, method):
    torch.manual_seed(30 + layer)
    images = torch.randn(1, 3, 32, 32)
    assert_matches_reference(vgg, images, layer, [3, 40], mode, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", [1, 2, 5])
def test_torchvision_alexnet_with_remainders_matches_autograd(layer, method):
    # 69 px: conv1 (11/4, pad 2) leaves a remainder of 2, pool1 (3/2, floor) one of 1.
    torch.manual_seed(3)
    net = torchvision.models.alexnet(weights=None)
    torch.manual_seed(40 + layer)
    images = torch.randn(1, 3, 69, 69)
    assert_matches_reference(net, images, layer, [2, 9], "max", method)


# ------------------------------------------------ single activations, windows


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", [1, 2, 3, 5])
def test_project_activations_matches_autograd_at_any_location(layer, method):
    net = _zfnet()
    deconv = Deconvnet(net, max_batch_elements=20_000)  # forces image and entry chunks
    torch.manual_seed(50 + layer)
    images = torch.randn(3, 3, 64, 64)
    h, w = deconv.feature_maps(images, [layer])[layer].shape[2:]
    generator = torch.Generator().manual_seed(layer)
    n = 7
    image_index = torch.randint(0, 3, (n,), generator=generator)
    maps = torch.randint(0, deconv.num_maps(layer), (n,), generator=generator)
    rows = torch.randint(0, h, (n,), generator=generator)
    cols = torch.randint(0, w, (n,), generator=generator)
    rows[0], cols[0] = 0, w - 1  # a corner: the window reaches into the padding
    projections = deconv.project_activations(images, layer, image_index, maps, rows, cols, method=method)
    field = deconv.receptive_field(layer)
    assert projections.windows.shape == (n, 3, *field.size)
    pasted = projections.paste((64, 64))
    for i in range(n):
        expected = reference(
            net.features, images[image_index[i]], layer, [int(maps[i])], "at", method, at=(rows[i], cols[i])
        )[0]
        torch.testing.assert_close(pasted[i], expected, rtol=1e-4, atol=1e-5 * max(expected.abs().max().item(), 1e-6))
        activation = deconv.feature_maps(images[image_index[i]][None], [layer])[layer][0, maps[i], rows[i], cols[i]]
        assert projections.values[i].item() == pytest.approx(activation.item(), rel=1e-6)


@pytest.mark.parametrize("net_factory", [_zfnet, _alexnet])
def test_projections_stay_inside_their_receptive_field(net_factory):
    # With positive filters and a positive image nothing cancels: layer 1 fills its whole window, and
    # higher layers (where pooling switches thin the paths out) stay inside theirs.
    net = net_factory()
    size = 64 if net_factory is _zfnet else 67
    with torch.no_grad():
        for module in net.features:
            if isinstance(module, nn.Conv2d):
                module.weight.uniform_(0.01, 1.0)
    deconv = Deconvnet(net)
    images = torch.rand(1, 3, size, size) + 0.1
    for layer in range(1, 6):
        h, w = deconv.feature_maps(images, [layer])[layer].shape[2:]
        row, col = h // 2, w // 2
        out = deconv.project_activations(images, layer, [0], [0], [row], [col])
        support = out.paste((size, size))[0].abs().sum(0).nonzero()
        top, left = deconv.receptive_field(layer).window(row, col)
        fh, fw = deconv.receptive_field(layer).size
        inside = [max(top, 0), min(top + fh, size) - 1, max(left, 0), min(left + fw, size) - 1]
        found = [support[:, 0].min(), support[:, 0].max(), support[:, 1].min(), support[:, 1].max()]
        if layer == 1:
            assert found == inside
        assert found[0] >= inside[0] and found[1] <= inside[1] and found[2] >= inside[2] and found[3] <= inside[3]


def test_receptive_field_of_full_size_zfnet():
    deconv = Deconvnet(zfnet(1000, input_size=224))
    sizes = [deconv.receptive_field(layer).size[0] for layer in range(1, 6)]
    strides = [deconv.receptive_field(layer).stride[0] for layer in range(1, 6)]
    # conv1 7/2; pool 3/2; conv2 5/2; pool 3/2; conv3-5 3/1: sizes grow by (k - 1) * stride below.
    assert sizes == [7, 7 + 2 * 2 + 4 * 4, 27 + 2 * 8 + 2 * 16, 75 + 2 * 16, 107 + 2 * 16]
    assert strides == [2, 8, 16, 16, 16]


def test_feature_maps_are_the_rectified_conv_outputs():
    net = _zfnet().eval()
    deconv = Deconvnet(net)
    images = torch.randn(2, 3, 64, 64)
    maps = deconv.feature_maps(images, [2, 5])
    assert sorted(maps) == [2, 5]
    x = images
    conv_seen = 0
    for module in net.features:
        x = module(x)
        if isinstance(module, nn.ReLU):
            conv_seen += 1
            if conv_seen in maps:
                torch.testing.assert_close(maps[conv_seen], x, rtol=0, atol=0)


def test_project_activations_errors(deconv):
    images = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="same length"):
        deconv.project_activations(images, 1, [0, 1], [0], [0], [0])
    with pytest.raises(ValueError, match="image_index out of range for 2 images"):
        deconv.project_activations(images, 1, [2], [0], [0], [0])
    with pytest.raises(ValueError, match="out of range: layer 1 has 12 maps"):
        deconv.project_activations(images, 1, [0], [12], [0], [0])


# ------------------------------------------------------------------- methods


def test_methods_agree_at_layer_one():
    # No ReLU lies below conv1: all three rules reduce to the transposed conv.
    deconv = Deconvnet(_zfnet())
    images = torch.randn(2, 3, 64, 64)
    for mode in ("max", "map"):
        results = [deconv.project(images, 1, [0, 4], mode=mode, method=m) for m in METHODS]
        torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
        torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


@pytest.mark.parametrize("layer", [2, 3, 5])
def test_methods_differ_above_layer_one(layer):
    deconv = Deconvnet(_zfnet())
    torch.manual_seed(5)
    images = torch.randn(2, 3, 64, 64)
    out = {m: deconv.project(images, layer, [0, 1, 2], mode="map", method=m) for m in METHODS}
    for a, b in [("deconvnet", "gradient"), ("guided", "gradient"), ("deconvnet", "guided")]:
        scale = out[a].abs().max() + out[b].abs().max()
        assert (out[a] - out[b]).abs().max() > 1e-3 * scale, f"{a} and {b} agree at layer {layer}"


def test_guided_equals_deconvnet_where_the_forward_mask_is_all_ones():
    # With a positive image and positive conv1 filters every ReLU input below layer 2 is > 0, so the
    # forward mask is all ones and guided backprop reduces to the deconvnet.
    conv1 = nn.Conv2d(3, 4, 3)
    conv2 = nn.Conv2d(4, 2, 3)
    with torch.no_grad():
        conv1.weight.uniform_(0.1, 1.0)
        conv1.bias.fill_(0.1)
    features = nn.Sequential(conv1, nn.ReLU(inplace=True), nn.MaxPool2d(2), conv2, nn.ReLU(inplace=True))
    deconv = Deconvnet(features)
    images = torch.rand(2, 3, 12, 12)
    guided = deconv.project(images, 2, [0, 1], mode="map", method="guided")
    plain = deconv.project(images, 2, [0, 1], mode="map", method="deconvnet")
    torch.testing.assert_close(guided, plain)


# ------------------------------------------------------------------ semantics


def test_max_mode_picks_first_location_on_ties():
    # A 1x1 conv of a constant image: every location ties, so the first (0, 0) is kept.
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]).view(2, 3, 1, 1))
        conv.bias.zero_()
    deconv = Deconvnet(nn.Sequential(conv, nn.ReLU()))
    images = torch.ones(1, 3, 5, 7)
    out = deconv.project(images, 1, [0, 1], mode="max")
    activation = torch.tensor([6.0, 1.5])
    expected = torch.zeros(1, 2, 3, 5, 7)
    expected[0, :, :, 0, 0] = activation[:, None] * conv.weight[:, :, 0, 0]
    torch.testing.assert_close(out, expected)
    # "map" keeps every location
    out_map = deconv.project(images, 1, [0], mode="map")
    torch.testing.assert_close(out_map[0, 0], (6.0 * conv.weight[0, :, 0, 0])[:, None, None].expand(3, 5, 7))


def test_overlapping_pool_windows_add_at_shared_switches():
    # One bright pixel wins every 3x3/2 window that covers it: the unpooled signal must be the sum.
    features = nn.Sequential(
        nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(1, 1, 1, bias=False)
    )
    with torch.no_grad():
        features[0].weight.fill_(1.0)
        features[3].weight.fill_(1.0)
    image = torch.zeros(1, 1, 7, 7)
    image[0, 0, 2, 2] = 1.0  # covered by the windows starting at rows/cols 0 and 2 -> 4 windows
    out = Deconvnet(features).project(image, 2, [0], mode="map")
    assert out[0, 0, 0, 2, 2].item() == pytest.approx(4.0)
    assert out.sum().item() == pytest.approx(4.0)


@pytest.mark.parametrize("size", [64, 66, 71, 80])
def test_output_keeps_input_size(size):
    deconv = Deconvnet(_zfnet())
    images = torch.randn(2, 3, size, size + 3)
    for layer in (1, 2, 5):
        out = deconv.project(images, layer, [1, 2, 3], mode="max", method="deconvnet")
        assert out.shape == (2, 3, 3, size, size + 3)


def test_single_int_map_and_integer_like_indices():
    deconv = Deconvnet(_zfnet())
    images = torch.randn(2, 3, 64, 64)
    out = deconv.project(images, 3, 4)
    assert out.shape == (2, 1, 3, 64, 64)
    same = deconv.project(images, torch.tensor(3), torch.tensor([4]))
    torch.testing.assert_close(same, out, rtol=0, atol=0)
    assert deconv.num_layers == 5 and deconv.num_maps(3) == 48


@pytest.mark.parametrize("budget", [1, 5000, 100_000])
def test_chunking_gives_the_same_result(budget):
    net = _zfnet()
    images = torch.randn(3, 3, 64, 64)
    whole = Deconvnet(net, max_batch_elements=None).project(images, 4, [0, 3, 7, 11], mode="map", method="guided")
    chunked = Deconvnet(net, max_batch_elements=budget).project(images, 4, [0, 3, 7, 11], mode="map", method="guided")
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
def test_model_and_input_untouched(training):
    net = _zfnet()
    net.train(training)
    net.features[3].train(not training)  # a mixed state must be restored module by module
    before = copy.deepcopy(net.state_dict())
    modes = {name: m.training for name, m in net.named_modules()}
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    images_before = images.detach().clone()
    out = Deconvnet(net).project(images, 5, [0, 1], mode="map", method="gradient")
    assert not out.requires_grad
    assert images.grad is None
    torch.testing.assert_close(images.detach(), images_before, rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert {name: m.training for name, m in net.named_modules()} == modes


def test_inplace_relus_do_not_corrupt_recorded_masks():
    # The net's ReLUs are in place; the result must not depend on that.
    net = _zfnet()
    images = torch.randn(2, 3, 64, 64)
    out = Deconvnet(net).project(images, 3, [2], mode="map", method="gradient")
    no_inplace = copy.deepcopy(net)
    for module in no_inplace.features:
        if isinstance(module, nn.ReLU):
            module.inplace = False
    torch.testing.assert_close(out, Deconvnet(no_inplace).project(images, 3, [2], mode="map", method="gradient"))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    net = _zfnet()
    images = torch.randn(2, 3, 64, 64)
    cpu = Deconvnet(net).project(images, 5, [0, 3], mode="map", method="guided")
    gpu = Deconvnet(net.cuda()).project(images.cuda(), 5, [0, 3], mode="map", method="guided")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * cpu.abs().max().item())


# -------------------------------------------------------------------- errors


@pytest.fixture
def deconv():
    return Deconvnet(_zfnet())


@pytest.mark.parametrize("layer", [0, 6, -1, 2.0])
def test_layer_out_of_range(deconv, layer):
    with pytest.raises(ValueError, match="5 conv layers"):
        deconv.project(torch.randn(1, 3, 64, 64), layer, [0])


@pytest.mark.parametrize("maps", [[12], [0, -1], [100]])
def test_map_out_of_range(deconv, maps):
    with pytest.raises(ValueError, match="out of range: layer 1 has 12 maps"):
        deconv.project(torch.randn(1, 3, 64, 64), 1, maps)


def test_empty_maps(deconv):
    with pytest.raises(ValueError, match="maps is empty"):
        deconv.project(torch.randn(1, 3, 64, 64), 1, [])


def test_unknown_mode(deconv):
    with pytest.raises(ValueError, match=r"unknown mode 'top'.*\['max', 'map'\]"):
        deconv.project(torch.randn(1, 3, 64, 64), 1, [0], mode="top")


def test_unknown_method(deconv):
    with pytest.raises(ValueError, match=r"unknown method 'lrp'.*\['deconvnet', 'guided', 'gradient'\]"):
        deconv.project(torch.randn(1, 3, 64, 64), 1, [0], method="lrp")


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 3, 64, 64)])
def test_images_not_4d(deconv, shape):
    with pytest.raises(ValueError, match="4-D"):
        deconv.project(torch.randn(*shape), 1, [0])


@pytest.mark.parametrize("method", METHODS)
def test_a_module_the_fast_path_cannot_invert_goes_the_general_way(method):
    torch.manual_seed(3)
    # A BatchNorm after the ReLU cannot be folded into the conv before it
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3))
    features.append(nn.ReLU())
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        features[2].running_mean.uniform_(-0.5, 0.5)
        features[2].running_var.uniform_(0.5, 2.0)
    features.eval()
    deconv = Deconvnet(features)
    assert not deconv.fast
    assert "features[2] is a BatchNorm2d" in deconv.fast_path_problem
    image = torch.randn(1, 3, 20, 20)
    out = deconv.project(image, 2, [1, 3], mode="map", method=method)[0]

    def seeds(top):
        return [torch.where(torch.arange(5)[:, None, None] == m, top, 0) for m in (1, 3)]

    torch.testing.assert_close(out, autograd_projections(features, image[0], 5, seeds, method), rtol=1e-5, atol=1e-6)


def test_model_without_features():
    with pytest.raises(TypeError, match="nn.Sequential"):
        Deconvnet(nn.Linear(3, 4))


def test_a_map_carried_by_its_bias_projects_to_zero_under_the_deconvnet_rule_as_in_captum():
    """Fig. 4's empty cells: a positive activation whose deconvnet projection is exactly zero. Conv2's map 1 has
    only negative weights and a positive bias: its activation is the bias minus what the (rectified) inputs
    take away. Going down, the transposed filter turns the positive seed negative, and the deconvnet rectifies it
    away at layer 1's ReLU. A property of the rule (Captum's implementation agrees), not of this engine: the
    plain gradient of the same activation is not zero."""
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(5)
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU()).eval()
    with torch.no_grad():
        features[2].weight[1] = -0.01 * features[2].weight[1].abs()
        features[2].bias[1] = 5.0
    image = torch.randn(1, 3, 16, 16)
    deconv = Deconvnet(features)
    strongest = deconv.project_strongest(image, 2, [1])
    assert float(strongest.values[0]) > 4.0  # clearly active
    assert strongest.windows.abs().max() == 0
    assert deconv.project(image, 2, [1], method="gradient").abs().max() > 0
    neuron = (1, int(strongest.rows[0]), int(strongest.cols[0]))
    captum = captum_attr.NeuronDeconvolution(features, features[3]).attribute(image, neuron_selector=neuron)
    assert captum.abs().max() == 0
