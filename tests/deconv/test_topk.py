"""The streaming top-k against a brute-force ranking, and the projections of what it finds."""

from __future__ import annotations

import pytest
import torch

from zf_lightning.deconv import Deconvnet, cut_windows
from zf_lightning.deconv.topk import (
    RunningTopK,
    find_top_activations,
    project_all_top_activations,
    project_top_activations,
)
from zf_lightning.models import zfnet


def brute_force_top(activations: torch.Tensor, k: int):
    """activations (N, M, h, w) of a whole dataset -> per map a list of (value, image, row, col), best first."""
    n, maps, h, w = activations.shape
    result = []
    for m in range(maps):
        entries = []
        for i in range(n):
            flat = activations[i, m].flatten().tolist()
            best = max(flat)
            where = flat.index(best)  # first maximum
            entries.append((best, i, where // w, where % w))
        entries.sort(key=lambda e: (-e[0], e[1]))
        result.append(entries[:k])
    return result


def _as_entries(top, m):
    return list(zip(top.values[m].tolist(), top.image_index[m].tolist(), top.rows[m].tolist(), top.cols[m].tolist()))


@pytest.mark.parametrize("batch_sizes", [[50], [7, 13, 1, 29], [1] * 50])
def test_running_top_k_equals_brute_force(batch_sizes):
    torch.manual_seed(0)
    activations = torch.randn(50, 4, 5, 6).relu()
    activations[:, 3] = 0.0  # a dead map: all ties, ranked by image index, first location
    activations[10:20, 2] = 7.0  # ties at the top of a map
    tracker = RunningTopK(layer=1, maps=[0, 1, 2, 3], k=9)
    start = 0
    for size in batch_sizes:
        tracker.update(activations[start : start + size], torch.arange(start, start + size))
        start += size
    top = tracker.result()
    expected = brute_force_top(activations, 9)
    for m in range(4):
        assert _as_entries(top, m) == expected[m]
    assert _as_entries(top, 3)[0] == (0.0, 0, 0, 0)
    assert top.image_index[2].tolist() == list(range(10, 19))


def test_fewer_images_than_k_and_shuffled_order():
    activations = torch.rand(5, 2, 3, 3)
    tracker = RunningTopK(layer=2, maps=[4, 9], k=9)
    order = [3, 0, 4, 1, 2]  # batches need not come in index order
    for i in order:
        tracker.update(activations[i : i + 1], torch.tensor([i]))
    top = tracker.result()
    assert top.values.shape == (2, 5)
    assert [_as_entries(top, m) for m in range(2)] == brute_force_top(activations, 9)
    assert top.maps.tolist() == [4, 9]


def test_empty_dataset_and_bad_k():
    with pytest.raises(ValueError, match="k >= 1"):
        RunningTopK(1, [0], k=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        RunningTopK(1, [0]).result()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return zfnet(10, width_multiplier=0.125, input_size=64, init_std=None).eval()


def test_find_and_project_top_activations(net):
    deconv = Deconvnet(net)
    torch.manual_seed(1)
    images = torch.randn(23, 3, 64, 64)
    display = torch.rand(23, 3, 64, 64)
    chosen = {1: [0, 3], 3: [5], 5: [1, 2, 7]}
    batches = [(images[i : i + 8], torch.arange(i, min(i + 8, 23))) for i in range(0, 23, 8)]
    found = find_top_activations(deconv, batches, chosen, k=9)
    full = deconv.feature_maps(images, list(chosen))
    for layer, maps in chosen.items():
        expected = brute_force_top(full[layer][:, maps], 9)
        for m in range(len(maps)):
            got = _as_entries(found[layer], m)
            assert [e[1:] for e in got] == [e[1:] for e in expected[m]]  # images and locations exactly
            assert [e[0] for e in got] == pytest.approx([e[0] for e in expected[m]], rel=1e-5)

    layer = 5
    top = found[layer]
    result = project_top_activations(deconv, top, lambda idx: images[idx], lambda idx: display[idx], images_per_chunk=5)
    field = deconv.receptive_field(layer)
    assert result.projections.shape == (3, 9, 3, *field.size)
    assert result.patches.shape == (3, 9, 3, *field.size)
    for m, map_id in enumerate(chosen[layer]):
        for j in (0, 4, 8):
            image = top.image_index[m, j].item()
            # The top entries are each image's strongest location: the engine's mode="max" gives the same.
            whole = deconv.project(images[image : image + 1], layer, [map_id], mode="max")[0, 0]
            top_row, left = field.window(top.rows[m, j].item(), top.cols[m, j].item())
            expected = cut_windows(whole[None], [0], [top_row], [left], field.size)[0]
            torch.testing.assert_close(result.projections[m, j], expected, rtol=1e-5, atol=1e-6)
            patch = cut_windows(display[image : image + 1], [0], [top_row], [left], field.size)[0]
            torch.testing.assert_close(result.patches[m, j], patch, rtol=0, atol=0)
            assert (result.window_top[m, j].item(), result.window_left[m, j].item()) == (top_row, left)


def test_all_layers_at_once_equals_layer_by_layer(net):
    # Sharing forward passes across layers (and chunks of images) must not change any projection.
    deconv = Deconvnet(net, max_batch_elements=50_000)
    torch.manual_seed(2)
    images = torch.randn(15, 3, 64, 64)
    chosen = {1: [1, 2], 2: [0], 4: [3, 9], 5: [4]}
    found = find_top_activations(deconv, [(images, torch.arange(15))], chosen, k=4)
    together = project_all_top_activations(
        deconv, found, lambda idx: images[idx], lambda idx: images[idx].sigmoid(), method="guided", images_per_chunk=4
    )
    for layer, top in found.items():
        alone = project_top_activations(
            deconv,
            top,
            lambda idx: images[idx],
            lambda idx: images[idx].sigmoid(),
            method="guided",
            images_per_chunk=100,
        )
        torch.testing.assert_close(together[layer].projections, alone.projections, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(together[layer].patches, alone.patches, rtol=0, atol=0)
        assert torch.equal(together[layer].window_top, alone.window_top)


def test_cut_windows_pads_with_zeros():
    images = torch.arange(2 * 1 * 4 * 5, dtype=torch.float).reshape(2, 1, 4, 5)
    out = cut_windows(images, [1, 0], [-1, 2], [-2, 3], (3, 3))
    expected0 = torch.zeros(3, 3)
    expected0[1:, 2] = images[1, 0, 0:2, 0]
    torch.testing.assert_close(out[0, 0], expected0)
    expected1 = torch.zeros(3, 3)
    expected1[:2, :2] = images[0, 0, 2:4, 3:5]
    torch.testing.assert_close(out[1, 0], expected1)


def test_draw_maps_is_seeded_and_sorted():
    from zf_lightning.deconv.maps import draw_maps

    a = draw_maps(256, 9, seed=3, layer=5)
    assert a == draw_maps(256, 9, seed=3, layer=5) and a == sorted(a) and len(set(a)) == 9
    assert a != draw_maps(256, 9, seed=4, layer=5)
    assert draw_maps(5, 9, seed=0, layer=1) == [0, 1, 2, 3, 4]
