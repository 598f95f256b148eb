"""PASCAL VOC classification average precision, computed as the VOC2012 devkit computes it.

Table 6 of Zeiler & Fergus (2014) reports per-class AP and mean AP on VOC2012, scored by the
devkit's ``VOCevalcls.m``, which calls ``VOCap.m`` (the VOC2010+ rule; VOC2007 used 11-point
interpolation instead). For one class, with targets 1 (positive), 0 (negative) or -1 (ignored):

1. Ignored images count for nothing, as if dropped. (The devkit ranks its "difficult" images,
   gt == 0, with the others but counts them as neither true nor false positives, which only
   repeats the previous point of the precision-recall curve; we do the same, as it vectorises
   over classes with different ignored images.)
2. Images are ranked by score, highest first, with MATLAB's ``sort(-confidence)``, which is
   stable: **tied scores keep the images' input order**, so each tied image is its own point.
3. ``tp = cumsum(positive)``, ``fp = cumsum(negative)``, ``rec = tp / #positives``,
   ``prec = tp / (tp + fp)``.
4. ``VOCap``: ``mrec = [0; rec; 1]``, ``mpre = [0; prec; 0]``; precision is made monotone from the
   right, ``mpre(i) = max(mpre(i), mpre(i+1))``; AP is ``sum((mrec(i) - mrec(i-1)) .* mpre(i))``
   over the indices ``i`` where recall changes. Recall changes exactly at the positives, by
   ``1 / #positives`` each, so AP is the mean, over positives, of the best precision reached at
   or after that positive's rank.

A class with no positive has no AP: NaN, with a warning; the mean AP skips such classes.

Checked against copies of the devkit code found in public repositories (``VOCevalcls.m``
calling ``VOCap``; ``VOCevalcls.m`` of VOC2007 with the 11-point rule): the ``sort(-out)``,
the ``gt > 0`` / ``gt < 0`` tp/fp rule that leaves ``gt == 0`` images out of both counts, the
``rec`` / ``prec`` formulas and ``VOCap`` line by line are as above.

Difference from torchmetrics' ``MultilabelAveragePrecision`` (with ``ignore_index=-1`` for our
ignored targets): it computes the non-interpolated AP, ``sum_n (R_n - R_{n-1}) P_n`` over
distinct score thresholds, with no monotone precision envelope, and a group of tied scores is
one threshold (one point, at the end of the group). The two agree when there are no ties and
precision already never rises along the ranking. Otherwise the devkit's value is higher or equal:
every recall step is weighted by the envelope, the best precision at or after it, which is at
least the precision torchmetrics uses for that step (that of the step's own point, or of the
end of its tie group). E.g. ranking (negative, positive, positive): devkit 2/3, torchmetrics 7/12.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from zf_lightning.utils.errors import InputError

IGNORED, NEGATIVE, POSITIVE = -1, 0, 1


def _check_inputs(scores: Tensor, targets: Tensor) -> None:
    if scores.shape != targets.shape:
        raise InputError(
            f"scores and targets must have the same shape, got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if torch.isnan(scores).any():
        raise InputError("scores contain NaN")
    valid = (targets == POSITIVE) | (targets == NEGATIVE) | (targets == IGNORED)  # bool targets too
    if not valid.all():
        found = torch.unique(targets[~valid])[:5].tolist()
        raise InputError(f"targets must be 1 (positive), 0 (negative) or -1 (ignored), found {found}")


def _per_class_ap(scores: Tensor, targets: Tensor) -> Tensor:
    """Devkit AP of each column of (N, C) scores/targets, all columns at once; NaN without positives."""
    # Stable ascending sort of -score is MATLAB's sort(-confidence): ties keep input order.
    order = torch.sort(-scores.double(), dim=0, stable=True).indices
    ranked = targets.gather(0, order)
    is_positive = ranked == POSITIVE
    true_pos = is_positive.cumsum(0, dtype=torch.float64)
    false_pos = (ranked == NEGATIVE).cumsum(0, dtype=torch.float64)
    # Ignored images stay in the ranking adding to neither count, as in the devkit; before the
    # first counted image 0/0 is taken as 0, which no recall step ever uses.
    precision = true_pos / (true_pos + false_pos).clamp(min=1)
    # VOCap's right-to-left max: the best precision at or after each rank.
    envelope = torch.flip(torch.cummax(torch.flip(precision, [0]), dim=0).values, [0])
    num_positives = is_positive.sum(0)
    # Each positive is a recall step of 1/#positives; 0/0 = NaN for a class without positives.
    ap = (envelope * is_positive).sum(0) / num_positives
    missing = (num_positives == 0).nonzero().flatten().tolist()
    if missing:
        warnings.warn(
            f"VOC AP is undefined (NaN) for classes without positive targets: {missing}", UserWarning, stacklevel=3
        )
    return ap


def voc_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Devkit AP of one class from scores (N,) and targets (N,) in {1, 0, -1}; NaN, with a warning,
    if there is no positive."""
    _check_inputs(scores, targets)
    if scores.dim() != 1:
        raise InputError(f"expected 1-d scores and targets, got shape {tuple(scores.shape)}")
    return _per_class_ap(scores[:, None], targets[:, None]).item()


def voc_mean_average_precision(scores: Tensor, targets: Tensor) -> tuple[Tensor, float]:
    """Per-class devkit APs (C,) of (N, C) scores/targets, and their mean over classes with positives."""
    _check_inputs(scores, targets)
    if scores.dim() != 2:
        raise InputError(f"expected (N, C) scores and targets, got shape {tuple(scores.shape)}")
    per_class = _per_class_ap(scores, targets)
    return per_class, torch.nanmean(per_class).item()


class VOCAveragePrecision(Metric):
    """Devkit per-class AP over everything seen since the last reset; ``compute()`` -> (C,) tensor.

    Keeps every score and target (like torchmetrics' exact AP metrics, ``thresholds=None``):
    AP depends on the full ranking, so there is no exact running summary. Under DDP the lists
    are concatenated process by process before ``compute``; that order, not the dataset's, then
    breaks ties, and a ``DistributedSampler`` may repeat images to even out the processes. For
    the exact devkit number of a Table 6 run, evaluate in one process.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    # list states made by `add_state`
    scores: list[Tensor]
    targets: list[Tensor]

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        _check_inputs(scores, targets)
        if scores.dim() != 2 or scores.shape[1] != self.num_classes:
            raise InputError(f"expected (N, {self.num_classes}) scores and targets, got shape {tuple(scores.shape)}")
        self.scores.append(scores.detach())
        self.targets.append(targets.detach())

    def compute(self) -> Tensor:
        # float32, the dtype loggers and other torchmetrics results use.
        return _per_class_ap(dim_zero_cat(self.scores), dim_zero_cat(self.targets)).float()
