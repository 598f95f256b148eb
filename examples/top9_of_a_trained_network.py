"""Fig. 2 (top-9 activations and their deconvnet projections) of a network trained elsewhere, on a folder of images.

The whole recipe is the ten lines of `top9` below: load the network with its own preprocessing, scan the folder
once for the strongest activations of some maps, project each one back to pixels, draw them.

    python examples/top9_of_a_trained_network.py IMAGE_DIR --source torchvision --name alexnet --weights IMAGENET1K_V1
    python examples/top9_of_a_trained_network.py IMAGE_DIR --source pytorchcv --name zfnet --weights pytorchcv
    python examples/top9_of_a_trained_network.py IMAGE_DIR --source torchvision --name resnet50 --layer layer4.2

`--weights` takes a weights name of the network (downloaded once when online, then read from the cache), a local
state-dict file, or `none` (random weights: no download, for a dry run). The same in a notebook::

    from zf_lightning.models import load_network
    loaded = load_network(pretrained={"source": "torchvision", "name": "alexnet", "weights": "IMAGENET1K_V1"})
    with styled():
        figure = top9(loaded, "val_images/", layer=5, maps=range(8))
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from zf_lightning.data.user_images import UserImages
from zf_lightning.deconv import Deconvnet
from zf_lightning.deconv.topk import find_top_activations, project_all_top_activations
from zf_lightning.models import LoadedNetwork, load_network
from zf_lightning.models.layers import layer_key
from zf_lightning.visualize.style import save_figure, styled
from zf_lightning.visualize.top9_figure import top9_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def top9(loaded: LoadedNetwork, image_dir: str | Path, layer: int | str, maps: Iterable[int], k: int = 9) -> Figure:
    """The Fig. 2 figure of `maps` of `layer` over the images in `image_dir` (sub-folders too)."""
    recipe = loaded.preprocessing
    inputs = UserImages(image_dir, transform=recipe.transform(), recursive=True, decode_up_front=False)
    shown = UserImages(image_dir, transform=recipe.display_transform(), recursive=True, decode_up_front=False)
    deconv = Deconvnet(loaded.net)
    batches = (
        (images, torch.arange(i * 32, i * 32 + len(images))) for i, (images, _) in enumerate(DataLoader(inputs, 32))
    )
    top = find_top_activations(deconv, batches, {layer: list(maps)}, k=k)
    load = lambda dataset: lambda indices: torch.stack([dataset[i][0] for i in indices])  # noqa: E731
    projected = project_all_top_activations(deconv, top, load(inputs), load(shown))[layer]
    title = f"{loaded.source}: layer {layer}, top-{k} of maps {projected.top.maps.tolist()} in {image_dir}"
    size = loaded.preprocessing.crop_size
    return top9_figure(projected, (size, size), title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image_dir")
    parser.add_argument("--source", default="torchvision", choices=["torchvision", "pytorchcv", "module"])
    parser.add_argument("--name", default="alexnet", help="the network's name in its source")
    parser.add_argument("--weights", default="IMAGENET1K_V1", help="weights name, a state-dict file, or none")
    parser.add_argument("--layer", default="5", help="the paper's conv layer number, or a module name")
    parser.add_argument("--maps", default="0-7", help="maps of the layer: a range 0-7 or a list 3,17,40")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--out", default="top9.png")
    args = parser.parse_args()
    weights = None if args.weights.lower() == "none" else args.weights
    loaded = load_network(pretrained={"source": args.source, "name": args.name, "weights": weights})
    first, _, last = args.maps.partition("-")
    maps = range(int(first), int(last) + 1) if last else [int(m) for m in args.maps.split(",")]
    layer = layer_key(int(args.layer) if args.layer.isdigit() else args.layer)
    with styled():
        print(f"wrote {save_figure(top9(loaded, args.image_dir, layer, maps, args.k), Path(args.out))}")


if __name__ == "__main__":
    main()
