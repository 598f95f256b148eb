"""Every figure drawn on tiny inputs and read back through matplotlib's objects: the titles and labels it must
have, no text cut at the canvas edge, and how many tiles of what size it shows."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from zf_lightning.deconv.engine import ReceptiveField
from zf_lightning.deconv.topk import TopActivations, TopProjections
from zf_lightning.visualize.evolution_figure import ZERO_NOTE, evolution_figure
from zf_lightning.visualize.figures import filters_grid, panels_figure
from zf_lightning.visualize.style import check_formats, save_figure, styled, texts_outside_canvas
from zf_lightning.visualize.top9_figure import GAP, VALUE_STRIP, fit_tile, inside_image, top9_figure, top9_overview


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def tiny_top(maps=(3, 11), k=9, field=(20, 20), image=32, seed=0) -> TopProjections:
    """Top-k projections of `maps` whose windows sit at known places, some reaching into the padding."""
    generator = torch.Generator().manual_seed(seed)
    m = len(maps)
    values = torch.arange(m * k, 0, -1, dtype=torch.float32).reshape(m, k) / 7
    top = TopActivations(
        layer=3,
        maps=torch.tensor(maps),
        values=values,
        image_index=torch.arange(m * k).reshape(m, k),
        rows=torch.zeros(m, k, dtype=torch.long),
        cols=torch.zeros(m, k, dtype=torch.long),
    )
    window_top = torch.full((m, k), 4)
    window_left = torch.full((m, k), 4)
    window_top[0, 0], window_left[0, 0] = -6, -2  # in the top-left padding: 14 x 18 of it inside the image
    return TopProjections(
        top,
        torch.randn(m, k, 3, *field, generator=generator),
        torch.rand(m, k, 3, *field, generator=generator),
        window_top,
        window_left,
        ReceptiveField(field, (4, 4), (0, 0)),
    )


# ------------------------------------------------------------------ tiles
def test_a_window_is_cut_to_the_part_inside_the_image():
    window = torch.arange(3 * 10 * 10, dtype=torch.float32).reshape(3, 10, 10)
    assert torch.equal(inside_image(window, -3, -2, (32, 32)), window[:, 3:, 2:])
    assert torch.equal(inside_image(window, 28, 25, (32, 32)), window[:, :4, :7])
    assert torch.equal(inside_image(window, 5, 5, (32, 32)), window)


def test_a_tile_is_filled_by_its_picture_scaled_up_whole_pixels_or_down():
    small = torch.rand(3, 7, 7)
    tile = fit_tile(small, 56)
    assert tile.shape == (3, 56, 56)
    assert torch.equal(tile[:, :8, :8], small[:, :1, :1].expand(3, 8, 8))  # each pixel an 8 x 8 block
    wide = fit_tile(torch.zeros(3, 10, 20), 40)  # the longer side fills the tile, centred, white around
    assert torch.equal(wide[:, 10:30], torch.zeros(3, 20, 40)) and torch.equal(wide[:, :10], torch.ones(3, 10, 40))


# ------------------------------------------------------------------ Fig. 2
def test_top9_figure_has_a_titled_panel_per_map_and_the_value_under_each_projection():
    projected = tiny_top()
    with styled():
        figure = top9_figure(projected, (32, 32), "zfnet (last.ckpt): layer 3, top-9 of maps [3, 11]", tile=40)
    assert figure.get_suptitle() == "zfnet (last.ckpt): layer 3, top-9 of maps [3, 11]"
    panels = [axis for axis in figure.axes if axis.get_images()]
    assert [axis.get_title() for axis in panels] == [
        "map 3: top-9 projections | patches",
        "map 11: top-9 projections | patches",
    ]
    for row, axis in enumerate(panels):
        values = [text.get_text() for text in axis.texts]
        assert values == [f"{float(v):.3g}" for v in projected.top.values[row]]
        (image,) = axis.get_images()
        height, width = image.get_array().shape[:2]
        assert height == 3 * (40 + VALUE_STRIP)  # 3 rows of tiles, each with its value strip
        assert width == 2 * 3 * (40 + 2) + GAP  # 3 projections | 3 patches
    assert texts_outside_canvas(figure) == []


def test_top9_overview_has_a_row_per_layer():
    projected = {1: tiny_top(maps=(0, 1, 2)), 5: tiny_top(maps=(7,), seed=1)}
    with styled():
        figure = top9_overview(projected, (32, 32), "overview", maps_per_layer=2, tile=24)
    titles = [axis.get_title() for axis in figure.axes if axis.get_images()]
    assert titles == ["layer 1, map 0", "layer 1, map 1", "layer 5, map 7"]
    assert texts_outside_canvas(figure) == []


# ------------------------------------------------------------------ Fig. 4
def snapshot(zero: bool = False) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    arrays = {"layers": np.array([1, 5]), "image_size": np.array([32, 32])}
    for layer, size in ((1, 7), (5, 40)):
        windows = generator.normal(size=(2, 3, size, size)).astype(np.float32)
        if zero and layer == 5:
            windows[1] = 0
        arrays |= {
            f"maps_layer{layer}": np.array([4, 9]),
            f"windows_layer{layer}": windows,
            f"patches_layer{layer}": generator.random((2, 3, size, size)).astype(np.float32),
            f"top_layer{layer}": np.array([0, -4]),
            f"left_layer{layer}": np.array([0, -4]),
        }
    return arrays


def test_evolution_figure_labels_every_row_and_epoch_and_says_why_a_cell_is_empty():
    with styled():
        figure = evolution_figure({1: snapshot(), 2: snapshot(), 5: snapshot(zero=True)}, cell_size=50)
    (axis,) = figure.axes
    texts = [text.get_text() for text in axis.texts]
    assert texts[:3] == ["epoch 1", "epoch 2", "epoch 5"]
    assert texts[3:7] == ["layer 1, map 4", "layer 1, map 9", "layer 5, map 4", "layer 5, map 9"]
    assert texts[7:] == ["projection 0"]  # layer 5, map 9 at epoch 5
    assert " ".join(text.get_text() for text in figure.texts).replace("\n", " ") == ZERO_NOTE
    height, width = axis.get_images()[0].get_array().shape[:2]
    assert width == 3 * (50 + 2) + 2  # three snapshot columns of 50 px cells
    assert height == 2 * (2 * (50 + 2) + 2) + 50 // 4  # two layers of two maps each, a gap between them
    assert texts_outside_canvas(figure) == []


def test_evolution_figure_without_empty_cells_has_no_note():
    with styled():
        figure = evolution_figure({1: snapshot()}, cell_size=40)
    assert figure.texts == [] and "projection 0" not in [t.get_text() for t in figure.axes[0].texts]


# ------------------------------------------------------------------ Fig. 6
def test_filters_panels_are_titled_and_nothing_is_cut():
    weights = [torch.randn(16, 3, 7, 7), torch.randn(9, 3, 11, 11)]
    titles = ["zfnet (last.ckpt): conv1 7x7/2", "alexnet (last.ckpt): conv1 11x11/4"]
    with styled():
        figure = panels_figure([filters_grid(w) for w in weights], titles, "Layer-1 filters (Fig. 6)")
    assert [axis.get_title() for axis in figure.axes] == titles
    assert figure.get_suptitle() == "Layer-1 filters (Fig. 6)"
    assert texts_outside_canvas(figure) == []


def test_figures_are_png_and_on_request_pdf_and_svg_beside_it(tmp_path):
    with styled():
        figure = panels_figure([torch.rand(3, 30, 30)], ["a panel"], "title")
        png = save_figure(figure, tmp_path / "figure.png", ["svg", "pdf"])
    assert png == tmp_path / "figure.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figure.pdf").read_bytes()[:4] == b"%PDF"
    assert b"<svg" in (tmp_path / "figure.svg").read_bytes()[:400]
    with pytest.raises(ValueError, match=r"figure formats \['jpg'\] are not supported"):
        check_formats(["png", "jpg"])


# ------------------------------------------------------------------ correspondence
def test_correspondence_figure_names_images_rows_and_layers_and_cuts_nothing():
    from zf_lightning.analysis.correspondence import CorrespondenceResult
    from zf_lightning.visualize.correspondence_figure import _figure

    generator = np.random.default_rng(1)
    parts = ["left eye", "nose"]
    result = CorrespondenceResult(
        parts=parts,
        layers=(5, 7),
        repeats=3,
        num_images=3,
        deltas={row: {5: generator.random(3), 7: generator.random(3)} for row in [*parts, "random"]},
        pair_deltas={row: {5: generator.random(3), 7: generator.random(3)} for row in [*parts, "random"]},
        part_boxes=np.tile(np.array([[4, 4, 12, 12], [14, 14, 24, 24]]), (3, 1, 1)),
        random_boxes=np.tile(np.array([[6, 6, 14, 14], [2, 2, 12, 12]]), (3, 3, 1, 1)),
    )
    with styled():
        figure = _figure(torch.rand(3, 3, 32, 32), result, ["dog_1.jpg", "dog_2.jpg", "dog_3.jpg"], per_pair=True)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:3] == ["dog_1.jpg", "dog_2.jpg", "dog_3.jpg"]
    bars = figure.axes[3]
    assert [label.get_text() for label in bars.get_xticklabels()] == ["Layer 5", "Layer 7"]
    assert [text.get_text() for text in bars.get_legend().get_texts()] == ["left eye", "nose", "Random"]
    assert bars.get_ylabel() == "Delta per image pair\n(mean ± std over pairs)"
    assert texts_outside_canvas(figure) == []
