"""The Fig. 7 layout: panels (a)-(e) per image and a legend with exactly the classes of each (e) map."""

from __future__ import annotations

import torch

from zf_lightning.analysis.occlusion import OcclusionSensitivity
from zf_lightning.models import zfnet
from zf_lightning.visualize.occlusion_figure import occlusion_figure


def test_panels_titles_and_legend(tmp_path):
    torch.manual_seed(0)
    net = zfnet(4, width_multiplier=0.125, input_size=64, init_std=None)
    images = torch.randn(2, 3, 64, 64)
    result = OcclusionSensitivity(net, window=16, stride=8).compute(images, [1, 2])
    result.top_class[0] = 0
    result.top_class[0, :2] = 3  # image 0 shows classes 0 and 3 only
    result.top_class[1] = 2
    names = ["cat", "dog", "fox", "owl"]
    figure = occlusion_figure(
        images.sigmoid(), result, tmp_path / "fig.png", ["a.jpg", "b.jpg"], names, return_figure=True
    )
    assert (tmp_path / "fig.png").stat().st_size > 3000
    panels = [axis for axis in figure.axes if axis.get_title()]  # colour bars have no title
    assert len(panels) == 2 * 5
    assert panels[0].get_title() == "(a) input" and panels[0].get_ylabel() == "a.jpg\ncorrect: dog"
    assert panels[1].get_title() == f"(b) layer-5 map {int(result.chosen_map[0])}: total activation"
    assert [t.get_text() for t in panels[4].get_legend().get_texts()] == ["cat", "owl"]
    assert [t.get_text() for t in panels[9].get_legend().get_texts()] == ["fox"]
    # The maps cover the occluder centres: from half a window in, one stride per cell.
    left, right, bottom, top = panels[3].get_images()[0].get_extent()
    assert (left, top) == (8 - 4, 8 - 4) and (right, bottom) == (48 + 8 + 4, 48 + 8 + 4)
