"""The tiny ZFNet the analysis tests share."""

from __future__ import annotations

import torch
from torch import nn

from zf_lightning.models import zfnet


def lively_tiny_zfnet(num_classes: int = 10, size: int = 64, seed: int = 0) -> nn.Module:
    """ZFNet at 1/8 width in eval mode. PyTorch's default init lets the signal fade to near-uniform
    probabilities at this width; Kaiming weights and a sharper last layer give features and outputs that
    occlusions and transformations visibly change."""
    torch.manual_seed(seed)
    net = zfnet(num_classes, width_multiplier=0.125, input_size=size, init_std=None).eval()
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            assert module.bias is not None  # zfnet's layers all have biases
            nn.init.normal_(module.bias, 0.0, 0.1)
    last = net.classifier[-1]
    assert isinstance(last, nn.Linear)  # fc8
    with torch.no_grad():
        last.weight.mul_(3)
    return net
