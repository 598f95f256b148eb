"""The Fig. 7 layout: panels (a)-(e) per image, wording that follows where the labels came from, a legend with
exactly the classes of each (e) map by name, panel (c) with the map in other images, nothing cut."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from zf_lightning.analysis.occlusion import OcclusionSensitivity
from zf_lightning.models import zfnet
from zf_lightning.visualize.occlusion_figure import occlusion_figure
from zf_lightning.visualize.style import styled, texts_outside_canvas


@pytest.fixture(scope="module")
def occluded():
    torch.manual_seed(0)
    net = zfnet(4, width_multiplier=0.125, input_size=64, init_std=None)
    images = torch.randn(2, 3, 64, 64)
    result = OcclusionSensitivity(net, window=16, stride=8).compute(images, [1, 2])
    result.top_class[0] = 0
    result.top_class[0, :2] = 3  # image 0 shows classes 0 and 3 only
    result.top_class[1] = 2
    return images.sigmoid(), result


NAMES = ["tabby cat", "golden retriever", "red fox", "great grey owl"]


def test_panels_titles_and_legend(occluded):
    display, result = occluded
    with styled():
        figure = occlusion_figure(display, result, ["a.jpg", "b.jpg"], NAMES, label_source="labels")
    panels = [axis for axis in figure.axes if axis.get_title()]  # colour bars have no title
    assert len(panels) == 2 * 5
    chosen = int(result.chosen_map[0])
    assert [axis.get_title() for axis in panels[:5]] == [
        "(a) input, occluder to scale",
        f"(b) layer 5, map {chosen}:\ntotal activation",
        f"(c) map {chosen}: projection",
        "(d) p(correct class)",
        "(e) most probable class",
    ]
    assert panels[0].get_xlabel() == "a.jpg: correct golden\nretriever"
    assert [t.get_text() for t in panels[4].get_legend().get_texts()] == ["tabby cat", "great grey owl"]
    assert [t.get_text() for t in panels[9].get_legend().get_texts()] == ["red fox"]
    # The maps cover the occluder centres: from half a window in, one stride per cell.
    left, right, bottom, top = panels[3].get_images()[0].get_extent()
    assert (left, top) == (8 - 4, 8 - 4) and (right, bottom) == (48 + 8 + 4, 48 + 8 + 4)
    assert texts_outside_canvas(figure) == []
    plt.close(figure)


def test_without_labels_the_class_is_the_predicted_one_and_c_shows_the_map_elsewhere(occluded):
    display, result = occluded
    others = {int(m): [torch.randn(3, 30, 30) for _ in range(4)] for m in result.chosen_map}
    with styled():
        figure = occlusion_figure(display, result, ["a.jpg", "b.jpg"], None, "predicted", others)
    panels = [axis for axis in figure.axes if axis.get_title()]
    assert panels[0].get_xlabel().startswith("a.jpg: predicted class 1")
    assert panels[3].get_title() == "(d) p(predicted class)"
    assert panels[2].get_title().endswith("| top 4 elsewhere")
    (image,) = panels[2].get_images()
    height, width = image.get_array().shape[:2]
    assert height == 64 and width > 64 + 2 * 30  # its own projection, then a 2 x 2 grid of the others
    assert texts_outside_canvas(figure) == []
    plt.close(figure)
