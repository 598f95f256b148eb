"""VOC AP against a line-by-line transcription of the VOC2012 devkit, and against torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MultilabelAveragePrecision

from zf_lightning.models.metrics import (
    VOCAveragePrecision,
    voc_average_precision,
    voc_mean_average_precision,
)


def devkit_ap(scores: list[float], targets: list[int]) -> float:
    """VOCevalcls.m + VOCap.m in plain Python, loops and all, keeping MATLAB's 1-based indexing.

    Like the devkit, ignored images are not dropped but ranked with gt == 0 (devkit encoding:
    1 positive, -1 negative, 0 difficult), so the ranking-based handling is checked too.
    """
    gt = [{1: 1, 0: -1, -1: 0}[t] for t in targets]
    n = len(gt)
    si = sorted(range(n), key=lambda i: -scores[i])  # [so,si]=sort(-out): stable, like MATLAB
    tp, fp = [], []
    tp_sum = fp_sum = 0
    for i in si:  # tp=cumsum(gt(si)>0); fp=cumsum(gt(si)<0)
        tp_sum += gt[i] > 0
        fp_sum += gt[i] < 0
        tp.append(tp_sum)
        fp.append(fp_sum)
    num_pos = sum(g > 0 for g in gt)
    rec = [t / num_pos for t in tp]
    prec = [t / (f + t) if f + t else math.nan for t, f in zip(tp, fp)]  # MATLAB: 0/0 = NaN

    # VOCap. MATLAB's max ignores NaN: max(NaN, x) = x.
    def matlab_max(a, b):
        return b if math.isnan(a) else a if math.isnan(b) else max(a, b)

    mrec = [None] + [0.0] + rec + [1.0]  # index 0 unused: mrec[1] is MATLAB's mrec(1)
    mpre = [None] + [0.0] + prec + [0.0]
    numel = len(mpre) - 1
    for i in range(numel - 1, 0, -1):  # for i=numel(mpre)-1:-1:1
        mpre[i] = matlab_max(mpre[i], mpre[i + 1])
    # i=find(mrec(2:end)~=mrec(1:end-1))+1; ap=sum((mrec(i)-mrec(i-1)).*mpre(i))
    change = [i for i in range(2, numel + 1) if mrec[i] != mrec[i - 1]]
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in change)


def random_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores with many ties (few discrete values) or none, targets with ignored images, >= 1 positive."""
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 40, (1,), generator=gen))
    if seed % 2:
        scores = torch.randint(0, 4, (n,), generator=gen).double() / 4
    else:
        scores = torch.randn(n, generator=gen, dtype=torch.float64)
    if seed % 5 == 0:  # all negative except one positive
        targets = torch.zeros(n, dtype=torch.long)
    else:
        targets = torch.randint(-1, 2, (n,), generator=gen)
    if not (targets == 1).any():
        targets[torch.randint(0, n, (1,), generator=gen)] = 1
    return scores, targets


@pytest.mark.parametrize("seed", range(200))
def test_matches_devkit_transcription(seed):
    scores, targets = random_case(seed)
    expected = devkit_ap(scores.tolist(), targets.tolist())
    assert voc_average_precision(scores, targets) == pytest.approx(expected, abs=1e-6)


def test_hand_worked_case():
    # Ranked labels (+, -, -, +, +); 3 positives.
    #   tp   = 1,   1,   1,   2,   3        fp = 0, 1, 2, 2, 2
    #   rec  = 1/3, 1/3, 1/3, 2/3, 1
    #   prec = 1,   1/2, 1/3, 1/2, 3/5
    #   mrec = [0, 1/3, 1/3, 1/3, 2/3, 1, 1]
    #   mpre = [0, 1, 1/2, 1/3, 1/2, 3/5, 0] -> monotone [1, 1, 3/5, 3/5, 3/5, 3/5, 0]
    #   recall changes at mrec(2), mrec(5), mrec(6):  AP = 1/3*1 + 1/3*3/5 + 1/3*3/5 = 11/15
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = torch.tensor([1, 0, 0, 1, 1])
    assert voc_average_precision(scores, targets) == pytest.approx(11 / 15)
    # Input order does not matter when no scores are tied.
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert voc_average_precision(scores[perm], targets[perm]) == pytest.approx(11 / 15)


def test_tied_scores_keep_input_order():
    tied = torch.tensor([0.5, 0.5])
    # Negative listed first: ranked (-, +), the positive is reached at precision 1/2.
    assert voc_average_precision(tied, torch.tensor([0, 1])) == pytest.approx(0.5)
    # Positive listed first: ranked (+, -), precision 1.
    assert voc_average_precision(tied, torch.tensor([1, 0])) == pytest.approx(1.0)
    # Within a larger tie too: (+, -, -) tied above a positive -> (1 + 2/4) / 2.
    scores = torch.tensor([0.7, 0.7, 0.7, 0.1])
    assert voc_average_precision(scores, torch.tensor([1, 0, 0, 1])) == pytest.approx(0.75)
    # (-, -, +) tied above a positive: precision 1/3 then 2/4; the envelope gives 1/2 to both.
    assert voc_average_precision(scores, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(50))
def test_ignored_images_same_as_removed(seed):
    scores, targets = random_case(seed)
    targets[::3] = -1
    if not (targets == 1).any():
        targets[-1] = 1
    kept = targets != -1
    assert voc_average_precision(scores, targets) == pytest.approx(
        voc_average_precision(scores[kept], targets[kept]), abs=1e-12
    )


def test_no_positive_is_nan_with_warning():
    with pytest.warns(UserWarning, match="without positive"):
        ap = voc_average_precision(torch.tensor([0.3, 0.2, 0.1]), torch.tensor([0, -1, 0]))
    assert math.isnan(ap)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="same shape"):
        voc_average_precision(torch.rand(4), torch.ones(3))
    with pytest.raises(ValueError, match=r"found \[2\]"):
        voc_average_precision(torch.rand(3), torch.tensor([1, 0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        voc_average_precision(torch.tensor([0.1, float("nan")]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="1-d"):
        voc_average_precision(torch.rand(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        voc_mean_average_precision(torch.rand(3), torch.ones(3))


def test_mean_ap_is_per_class_and_skips_classes_without_positives():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60, 4), generator=gen).float()
    targets = torch.randint(-1, 2, (60, 4), generator=gen)
    targets[:, 2] = torch.where(targets[:, 2] == 1, 0, targets[:, 2])  # class 2: no positive
    with pytest.warns(UserWarning, match=r"\[2\]"):
        per_class, mean = voc_mean_average_precision(scores, targets)
    for c in (0, 1, 3):
        assert per_class[c].item() == pytest.approx(voc_average_precision(scores[:, c], targets[:, c]))
    assert math.isnan(per_class[2])
    assert mean == pytest.approx(per_class[[0, 1, 3]].mean().item())


def test_metric_batches_equal_one_call_and_reset():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (50, 3), generator=gen).float()
    targets = torch.randint(-1, 2, (50, 3), generator=gen)
    metric = VOCAveragePrecision(num_classes=3)
    for chunk in (slice(0, 7), slice(7, 30), slice(30, 50)):  # batch order kept: ties keep input order
        metric.update(scores[chunk], targets[chunk])
    expected, _ = voc_mean_average_precision(scores, targets)
    torch.testing.assert_close(metric.compute(), expected.float())

    # What DDP does: the list states of two processes concatenated (dist_reduce_fx="cat"). The
    # concatenation is by process, not in dataset order, so only tie-free scores give the same AP.
    distinct = torch.rand(50, 3, generator=gen)
    first, second = VOCAveragePrecision(num_classes=3), VOCAveragePrecision(num_classes=3)
    first.update(distinct[:25], targets[:25])
    second.update(distinct[25:], targets[25:])
    first.merge_state(second)
    torch.testing.assert_close(first.compute(), voc_mean_average_precision(distinct, targets)[0].float())

    metric.reset()
    metric.update(scores[:20], targets[:20])
    expected_first_20, _ = voc_mean_average_precision(scores[:20], targets[:20])
    torch.testing.assert_close(metric.compute(), expected_first_20.float())

    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        metric.update(torch.rand(4, 2), torch.ones(4, 2))


def torchmetrics_ap(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    metric = MultilabelAveragePrecision(num_labels=scores.shape[1], average=None, ignore_index=-1)
    return metric(scores, targets)


def columns(*ranked_labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) data whose column c, ranked by its (distinct) score, has labels ranked_labels[c]."""
    n = len(ranked_labels[0])
    scores = torch.linspace(1, 0, n).repeat(len(ranked_labels), 1).T
    return scores, torch.tensor(ranked_labels).T


def test_equals_torchmetrics_without_ties_when_precision_is_monotone():
    # Precision at each positive is never exceeded further down the ranking:
    # (+, +, ignored, -, +, -) -> precision 1, 1, 3/4 at the positives, AP (1 + 1 + 3/4) / 3;
    # (-, +, -, -, +, -) -> precision 1/2 then 2/5 (with 1/3, 1/4, 1/3 in between), AP 0.45.
    scores, targets = columns([1, 1, -1, 0, 1, 0], [0, 1, 0, 0, 1, 0])
    ours, _ = voc_mean_average_precision(scores, targets)
    theirs = torchmetrics_ap(scores, targets)
    torch.testing.assert_close(ours.float(), theirs)
    assert ours.tolist() == pytest.approx([11 / 12, 0.45])


def test_above_torchmetrics_with_a_precision_dip_or_ties():
    # Column 0, the hand-worked (+, -, -, +, +): precision 1/2 at the second positive, 3/5 at the
    # third. Devkit: (1 + 3/5 + 3/5) / 3 = 11/15 = 0.7333; torchmetrics: (1 + 1/2 + 3/5) / 3 = 0.7.
    # Column 1, (-, +, +): devkit (2/3 + 2/3) / 2 = 0.6667; torchmetrics (1/2 + 2/3) / 2 = 0.5833.
    scores, targets = columns([1, 0, 0, 1, 1], [-1, 0, 1, 1, -1])
    ours, _ = voc_mean_average_precision(scores, targets)
    theirs = torchmetrics_ap(scores, targets)
    torch.testing.assert_close(ours.float(), torch.tensor([11 / 15, 2 / 3]))
    torch.testing.assert_close(theirs, torch.tensor([0.7, 7 / 12]))

    # Ties: torchmetrics scores a tie group as one point; the devkit ranks it in input order.
    # Tied (+, -): devkit 1, torchmetrics 1/2 (precision at the end of the group).
    tied = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    tied_targets = torch.tensor([[1, 0], [0, 1]])
    ours_tied, _ = voc_mean_average_precision(tied, tied_targets)
    torch.testing.assert_close(ours_tied.float(), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(torchmetrics_ap(tied, tied_targets), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("seed", range(30))
def test_never_below_torchmetrics(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5 if seed % 2 else 1000, (40, 5), generator=gen).float()
    targets = torch.randint(-1, 2, (40, 5), generator=gen)
    targets[0] = 1  # every class has a positive
    ours, _ = voc_mean_average_precision(scores, targets)
    assert (ours.float() >= torchmetrics_ap(scores, targets) - 1e-6).all()
