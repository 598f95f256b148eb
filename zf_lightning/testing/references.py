"""The deconvnet written independently of `zf_lightning.deconv`: autograd with the projection rule as the
backward of each ReLU. Tests check the engine against it; the deconvnet benchmark times it as baseline (a)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

RECTIFICATION_RULES = ("deconvnet", "guided", "gradient")


class _Rectify(torch.autograd.Function):
    """relu forward; the method's rule backward (the deconvnet's inverse of a ReLU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, method: str) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        ctx.method = method
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        if ctx.method == "deconvnet":
            return grad.clamp_min(0), None
        if ctx.method == "guided":
            return grad.clamp_min(0) * (x > 0), None
        return grad * (x > 0), None


class _IdentityBackward(torch.autograd.Function):
    """`module(x)` forward, identity backward (the paper passes LocalResponseNorm through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module) -> torch.Tensor:  # noqa: ANN001
        return module(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None


def autograd_projections(
    features: nn.Sequential,
    image: torch.Tensor,
    top_index: int,
    seeds: Callable[[torch.Tensor], Iterable[torch.Tensor]],
    method: str = "deconvnet",
) -> torch.Tensor:
    """(S, C, H, W): the gradient of `features[: top_index + 1](image)` with respect to `image` (C, H, W), once per
    seed, every ReLU but the top one replaced by `method`'s rule and every LocalResponseNorm passed through.

    `seeds` gets the detached top output of the image (maps, h, w) and gives the S gradients to send down, each
    shaped like it (the chosen activations' values, zero elsewhere). A ReLU at `top_index` is an ordinary one:
    the projected feature map is the rectified conv output.
    """
    if method not in RECTIFICATION_RULES:
        raise ValueError(f"unknown method {method!r}; allowed: {RECTIFICATION_RULES}")
    x = image.detach().clone().unsqueeze(0).requires_grad_()
    h = x
    for index, module in enumerate(list(features)[: top_index + 1]):
        if isinstance(module, nn.ReLU):
            h = torch.relu(h) if index == top_index else _Rectify.apply(h, method)
        elif isinstance(module, nn.LocalResponseNorm):
            h = _IdentityBackward.apply(h, module)
        else:
            h = module(h)
    grads = [
        torch.autograd.grad(h, x, grad_outputs=seed.unsqueeze(0), retain_graph=True)[0][0]
        for seed in seeds(h.detach()[0])
    ]
    return torch.stack(grads)
