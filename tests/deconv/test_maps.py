"""One choice of maps for every figure: listed ones checked against the network, the others a per-layer draw."""

from __future__ import annotations

import pytest

from zf_lightning.deconv import Deconvnet
from zf_lightning.deconv.maps import choose_maps, draw_maps
from zf_lightning.models import zfnet


@pytest.fixture(scope="module")
def deconv() -> Deconvnet:
    return Deconvnet(zfnet(10, width_multiplier=0.125, input_size=64))  # 12, 32, 48, 48, 32 maps


def test_each_layer_draws_on_its_own_so_adding_a_layer_keeps_the_others():
    both = choose_maps(Deconvnet(zfnet(10, width_multiplier=0.125, input_size=64)), [2, 5], 4, seed=3)
    alone = choose_maps(Deconvnet(zfnet(10, width_multiplier=0.125, input_size=64)), [5], 4, seed=3)
    assert both[5] == alone[5] == draw_maps(32, 4, 3, 5) and len(set(both[2])) == 4


def test_listed_maps_win_and_asking_for_more_than_a_layer_has_gives_all(deconv):
    chosen = choose_maps(deconv, None, 100, seed=0, explicit={1: [3, 0]})
    assert chosen == {1: [3, 0]}
    assert choose_maps(deconv, [1, 2], 100, seed=0, explicit={2: [5]}) == {1: list(range(12)), 2: [5]}
    assert list(choose_maps(deconv, None, 1, seed=0)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("layers", "explicit", "count", "message"),
    [
        ([6], None, 1, r"top9: unknown layer\(s\) \[6\]: the model has 5 conv layers"),
        ([1], {1: [12]}, 1, r"top9: map\(s\) \[12\] of layer 1 out of range: it has 12 maps \(valid indices 0..11\)"),
        ([1], {2: [0]}, 1, r"top9: maps are listed for layer\(s\) \[2\], which are not among the layers \[1\]"),
        ([1], None, 0, r"top9: maps_per_layer must be an int >= 1, got 0"),
    ],
)
def test_bad_choices_are_refused_naming_the_option(deconv, layers, explicit, count, message):
    with pytest.raises(ValueError, match=message):
        choose_maps(deconv, layers, count, seed=0, explicit=explicit, owner="top9")
