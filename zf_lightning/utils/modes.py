"""Running a network for analysis without changing it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (dropout off) and no autograd inside the block; every submodule's own train/eval flag comes
    back afterwards, a mixed state included, even when the block raises."""
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for sub, training in modes.items():
            sub.training = training
