"""FilterDrift: the correlation of each filter with its initial value, against numpy's corrcoef."""

from __future__ import annotations

import numpy as np
import torch

from zf_lightning.callbacks.filter_drift import FilterDrift, filter_correlations


def test_filter_correlations_are_numpys_pearson_per_filter():
    generator = torch.Generator().manual_seed(0)
    initial = torch.randn(6, 3, 7, 7, generator=generator)
    final = 0.3 * initial + torch.randn(6, 3, 7, 7, generator=generator)
    final[0] = 2.5 * initial[0] + 1.0  # unchanged up to scale and offset: 1
    final[1] = -initial[1]  # reversed: -1
    expected = [np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] for a, b in zip(initial, final)]
    got = filter_correlations(initial, final)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert abs(float(got[0]) - 1.0) < 1e-12 and abs(float(got[1]) + 1.0) < 1e-12


def test_the_initial_filters_survive_a_checkpoint():
    drift = FilterDrift()
    drift.initial = {1: torch.randn(4, 3, 7, 7), 2: torch.randn(8, 4, 5, 5)}
    restored = FilterDrift()
    restored.load_state_dict(drift.state_dict())
    assert set(restored.initial) == {1, 2}
    assert all(torch.equal(restored.initial[k], drift.initial[k]) for k in drift.initial)
    assert restored.summary_entries() == {}  # nothing measured before fitting ends
