"""A training step's non-finite-loss check that does not make a GPU wait."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import torch


class DeferredFiniteCheck:
    """A training step's non-finite-loss check without making the host wait for the device.

    Reading a CUDA loss each step (`bool(torch.isfinite(loss))`) stalls the host until the step's forward pass has
    run, so it cannot queue the next step meanwhile. Here the flag stays on the device: `guard` zeroes the
    gradients there when it is false, so the optimiser writes no NaN into the weights (SGD's momentum and weight
    decay keep them finite), and a copy of it made without blocking is read once it has arrived, a step or so
    later (`raise_finished`), and always before validation and before a checkpoint is written (`block=True`).
    """

    def __init__(self) -> None:
        self._pending: deque = deque()  # (host copy of the flag, CUDA event or None, message)
        self._flag: torch.Tensor | None = None

    def push(self, finite: torch.Tensor, message: Callable[[], str]) -> None:
        """Queue this step's flag (a bool tensor on the device); `message()` names the step if it is false."""
        event = None
        host = finite.to("cpu", non_blocking=True)
        if finite.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._pending.append((host, event, message))
        self._flag = finite if self._flag is None else self._flag & finite  # every accumulated batch's

    def guard(self, parameters: Iterable[torch.Tensor]) -> None:
        """Zero every gradient, on the device, if a loss since the last optimiser step was not finite (call before
        it)."""
        if self._flag is None:
            return
        not_finite, self._flag = ~self._flag, None
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad.masked_fill_(not_finite, 0)

    def raise_finished(self, block: bool = False) -> None:
        """Raise FloatingPointError for the first queued non-finite flag; without `block`, only flags already copied."""
        while self._pending:
            host, event, message = self._pending[0]
            if event is not None:
                if not block and not event.query():
                    return
                event.synchronize()
            self._pending.popleft()
            if not bool(host):  # a host copy that has arrived: no wait
                self._pending.clear()
                raise FloatingPointError(message())
