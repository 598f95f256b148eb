"""The deconvnet on any network: autograd, with the backward of every nn.ReLU replaced by the projection rule.

`Deconvnet` sends a layer here when the fast windowed path of `engine.py` cannot take it: BatchNorm, residual
additions, concatenations, adaptive pooling, any graph, or a layer given by the name of a module that is not a
paper layer of an nn.Sequential `features`.

Semantics (the same as the fast path's where both apply)
--------------------------------------------------------
* The feature map of a layer is the output of one module of the network (by name, as in `named_modules()`); a
  module called several times in one forward (a reused nn.ReLU) gives the output of its last call. A 2-D output
  (B, F) (a dense layer) counts as F maps of 1x1.
* The projection of chosen activations is the gradient, with respect to the input image, of those activations
  seeded with their own values (all others zero), through a copy of the network in eval mode in which every
  nn.ReLU module (in place or not, reused or not) applies relu forward and the method's rule backward, `g` being
  the gradient coming down and `x` the ReLU's input:
      "deconvnet": relu(g);   "guided": relu(g) * (x > 0);   "gradient": g * (x > 0)
  Max pooling then goes down through its switches, convolutions through their transposed filters, BatchNorm
  (eval) and adaptive pooling through their linear maps, residual additions and concatenations to each branch:
  all from autograd. Functional relu calls (`F.relu` in a forward) cannot be replaced and keep their gradient.
* The forward stops at the layer (a hook raises once the layer's output is there): nothing above it runs.

Many projections share one forward: images go forward in chunks, and the chunk's graph is sent down once per
"slot": slot r carries the r-th chosen activation of every image of the chunk. Images with as many projections
go in the same chunk, so that few slots are empty.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zf_lightning.utils.errors import InputError

RULES = ("deconvnet", "guided", "gradient")


# ------------------------------------------------------------------ the rules
class _DeconvnetRule(torch.autograd.Function):
    """relu forward, relu of the gradient backward (the paper: the forward activation is ignored)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp_min(0)


class _GuidedRule(torch.autograd.Function):
    """relu forward, relu of the gradient where the forward input was positive (guided backpropagation)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(output)  # output > 0 exactly where input > 0

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad.clamp_min(0) * (output > 0)


class _GradientRule(torch.autograd.Function):
    """relu, out of place (the plain gradient; the mask taken from the output, as for the guided rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad * (output > 0)


_RULE_OF: dict[str, type[torch.autograd.Function]] = {
    "deconvnet": _DeconvnetRule,
    "guided": _GuidedRule,
    "gradient": _GradientRule,
}


class _RuleReLU(nn.Module):
    """Stands in for an nn.ReLU of the working copy: relu forward (never in place), the rule backward."""

    def __init__(self, rule: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rule.apply(x)


class _Stop(Exception):
    """Raised by the capture hook once every wanted output is there: the rest of the network is not run."""


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def working_copy(model: nn.Module, method: str) -> nn.Module:
    """A copy of `model` in eval mode that shares its weights and buffers (no gradient), has none of its hooks, and
    has every nn.ReLU replaced by `method`'s rule (one stand-in per ReLU object, so reuse is kept)."""
    memo: dict[int, Any] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(parameter.detach(), requires_grad=False)  # same storage: live weights
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.detach()
    for module in model.modules():
        # Hooks are the caller's (a training callback, a profiler): they must not run, nor be deep-copied.
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks is not None:
                memo[id(hooks)] = type(hooks)() if isinstance(hooks, (dict, OrderedDict)) else copy.copy(hooks)
    net = copy.deepcopy(model, memo)
    rule = _RULE_OF[method]
    stand_ins: dict[int, _RuleReLU] = {}
    for module in list(net.modules()):
        for key, child in list(module._modules.items()):
            if isinstance(child, nn.ReLU):
                module._modules[key] = stand_ins.setdefault(id(child), _RuleReLU(rule))
    return net.eval()


# ------------------------------------------------------------------ forward to a layer
@dataclass(frozen=True)
class LayerProbe:
    """What one full forward of one image says about a layer: how often its module runs, its maps, memory use."""

    calls: int
    maps: int
    per_image: int  # numbers the forward produces per image up to the layer (a memory estimate)


def _as_maps(output: object, name: str) -> torch.Tensor:
    """A layer's output as (B, maps, h, w): 2-D outputs (B, F) as F maps of 1x1."""
    if not isinstance(output, torch.Tensor):
        raise InputError(f"Deconvnet: module {name!r} returns a {type(output).__name__}, not a tensor")
    if output.dim() == 4:
        return output
    if output.dim() == 2:
        return output[:, :, None, None]
    raise InputError(
        f"Deconvnet: module {name!r} returns a {output.dim()}-D tensor {tuple(output.shape)}; a layer's output "
        "must be (B, maps, h, w) or (B, F)"
    )


def _modules_by_name(net: nn.Module) -> dict[str, nn.Module]:
    return dict(net.named_modules(remove_duplicate=False))  # a module registered twice answers to both names


def run_to(net: nn.Module, images: torch.Tensor, calls: dict[str, int]) -> dict[str, torch.Tensor]:
    """{name: (B, maps, h, w)}: the output of call number `calls[name]` of each named module of `net`, stopping
    the forward as soon as all are there."""
    modules = _modules_by_name(net)
    seen = dict.fromkeys(calls, 0)
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            seen[name] += 1
            if seen[name] == calls[name]:
                outputs[name] = _as_maps(output, name)
                if len(outputs) == len(calls):
                    raise _Stop

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in calls]
    try:
        net(images)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in calls if name not in outputs]
    if missing:
        raise InputError(f"Deconvnet: the forward pass ended without running module(s) {missing}")
    return outputs


def probe(net: nn.Module, image: torch.Tensor, name: str) -> LayerProbe:
    """One full forward of `image` (1, C, H, W), counting the calls of module `name` and the numbers produced."""
    modules = _modules_by_name(net)
    produced = [0]
    at_call: list[tuple[int, int]] = []  # (maps, numbers produced so far) at each call of the layer's module

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[0] += output.numel()

    def layer_hook(module: nn.Module, inputs: Any, output: Any) -> None:
        at_call.append((_as_maps(output, name).shape[1], produced[0]))

    leaves = [module for module in net.modules() if not module._modules]
    handles = [leaf.register_forward_hook(count) for leaf in leaves]
    handles.append(modules[name].register_forward_hook(layer_hook))  # after `count`: its own output is counted
    try:
        with torch.no_grad():
            net(image)
    except InputError:
        raise
    except Exception as error:
        # A head that does not fit this image size (a fixed-size classifier) fails after the layer: what ran is enough.
        if not at_call:
            raise InputError(
                f"Deconvnet: the network's forward failed before module {name!r} ran: {type(error).__name__}: {error}"
            ) from error
    finally:
        for handle in handles:
            handle.remove()
    if not at_call:
        raise InputError(f"Deconvnet: module {name!r} is not run by the network's forward pass")
    maps, total = at_call[-1]
    return LayerProbe(len(at_call), maps, max(1, total))


# ------------------------------------------------------------------ the engine
class GeneralDeconvnet:
    """The deconvnet, guided backprop and gradient of any module's output of `model` (see the module docstring).

    Args:
        model: any nn.Module taking one (B, C, H, W) tensor; it is never run or changed (a working copy that shares
            its weights is).
        max_batch_elements: memory budget in tensor elements of one chunk's forward and backward (at least one
            image at a time); None: all images at once.
    """

    def __init__(self, model: nn.Module, max_batch_elements: int | None = 2**25) -> None:
        self.model = model
        self.max_batch_elements = max_batch_elements
        self._probes: dict[str, LayerProbe] = {}

    # ------------------------------------------------------------ bookkeeping
    def check_method(self, method: str) -> None:
        """An InputError for an unknown method, or for a rectification rule on a network without nn.ReLU modules."""
        if method not in RULES:
            raise InputError(f"Deconvnet: unknown method {method!r}; allowed methods are {list(RULES)}")
        if method != "gradient" and not any(isinstance(m, nn.ReLU) for m in self.model.modules()):
            raise InputError(
                f"Deconvnet: method {method!r} needs nn.ReLU modules, and this {type(self.model).__name__} has none: "
                "the rule replaces the backward of nn.ReLU modules (functional relu calls cannot be replaced); "
                "use method='gradient' or build the network with nn.ReLU modules"
            )

    def layer_probe(self, name: str, images: torch.Tensor | None = None) -> LayerProbe:
        """The probe of `name`, from the first image of `images` or, without images, a 224x224 zero image."""
        if name not in self._probes:
            image = images[:1] if images is not None else self._dummy_image()
            self._probes[name] = probe(working_copy(self.model, "gradient"), image, name)
        return self._probes[name]

    def _dummy_image(self) -> torch.Tensor:
        first = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        tensor = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        channels = first.in_channels if first is not None else 3
        device, dtype = (tensor.device, tensor.dtype) if tensor is not None else (None, torch.float32)
        return torch.zeros(1, channels, 224, 224, device=device, dtype=dtype)

    def num_maps(self, name: str, images: torch.Tensor | None = None) -> int:
        """The channels of module `name`'s output (from a probe forward, once per layer)."""
        return self.layer_probe(name, images).maps

    # ------------------------------------------------------------ forward
    def feature_maps(self, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """{name: (B, maps, h, w)} from one forward (no gradient), stopped after the last of the layers."""
        calls = {name: self.layer_probe(name, images).calls for name in names}
        with torch.no_grad():
            return run_to(working_copy(self.model, "gradient"), images, calls)

    # ------------------------------------------------------------ projections
    def project(
        self,
        images: torch.Tensor,
        name: str,
        image_index: torch.Tensor,
        maps: torch.Tensor,
        rows: torch.Tensor | None,
        cols: torch.Tensor | None,
        method: str,
        whole_map: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project N chosen activations of layer `name`: entry n is map `maps[n]` of image `image_index[n]`, at
        (`rows[n]`, `cols[n]`), or at its strongest location (first in row-major order) when rows is None, or the
        whole map when `whole_map`.

        Returns (values (N,), rows (N,), cols (N,), projections (N, C, H, W)): the projected activation and where
        it is (0 for a whole map).
        """
        self.check_method(method)
        count = image_index.numel()
        device = images.device
        values = images.new_zeros(count)
        found_rows = torch.zeros(count, dtype=torch.long, device=device)
        found_cols = torch.zeros(count, dtype=torch.long, device=device)
        out = images.new_zeros(count, *images.shape[1:])
        if not count:
            return values, found_rows, found_cols, out
        layer = self.layer_probe(name, images)
        net = working_copy(self.model, method)

        # Images with as many entries share chunks: each slot is one backward over the whole chunk, and an image
        # with fewer entries than the chunk's busiest leaves its later slots empty.
        used, per_image = torch.unique(image_index, return_counts=True)
        used = used[per_image.argsort(descending=True, stable=True)]
        budget = self.max_batch_elements
        image_chunk = len(used) if budget is None else max(1, budget // (2 * layer.per_image))
        for start in range(0, len(used), image_chunk):
            chunk = used[start : start + image_chunk]
            local_of = torch.full((images.shape[0],), -1, dtype=torch.long, device=device)
            local_of[chunk] = torch.arange(len(chunk), device=device)
            entries = (local_of[image_index] >= 0).nonzero().flatten()
            local = local_of[image_index[entries]]
            x = images.index_select(0, chunk).detach().requires_grad_(True)
            with torch.enable_grad():
                activation = run_to(net, x, {name: layer.calls})[name]
            plain = activation.detach()
            width = plain.shape[3]
            chosen = plain[local, maps[entries]]  # (E, h, w)
            if whole_map:
                live = chosen.flatten(1).ne(0).any(dim=1)
            else:
                if rows is None or cols is None:
                    where = chosen.flatten(1).argmax(dim=1)  # first maximum in row-major order
                    at_row, at_col = where // width, where % width
                else:
                    at_row, at_col = rows[entries], cols[entries]
                found_rows[entries], found_cols[entries] = at_row, at_col
                values[entries] = chosen[torch.arange(len(entries), device=device), at_row, at_col]
                live = values[entries] != 0  # a zero activation projects to zero under every rule
            entries, local, chosen = entries[live], local[live], chosen[live]
            if not len(entries):
                continue
            order = local.argsort(stable=True)
            entries, local, chosen = entries[order], local[order], chosen[order]
            slot = torch.arange(len(local), device=device) - torch.searchsorted(local, local, side="left")
            slots = int(slot.max()) + 1
            for rank in range(slots):
                pick = (slot == rank).nonzero().flatten()
                picked, where_image, where_map = entries[pick], local[pick], maps[entries[pick]]
                seed = torch.zeros_like(plain)
                if whole_map:
                    seed[where_image, where_map] = chosen[pick]
                else:
                    seed[where_image, where_map, found_rows[picked], found_cols[picked]] = values[picked]
                # One backward per slot over the chunk: on CPU faster than is_grads_batched (whose vmap loops over
                # convolution_backward anyway) and than one replicated image per projection (measured).
                (grads,) = torch.autograd.grad(activation, x, seed, retain_graph=rank + 1 < slots)
                out[picked] = grads[where_image]
        return values, found_rows, found_cols, out
