"""The paper's feature-analysis table: a linear SVM or a softmax trained on the features of one layer.

Features of a pretrained network's layer l (arXiv 1311.2901v3, section 5.3, "Feature Analysis", Table 7):

- conv layers 1-5: the output of the layer's whole block (conv, ReLU, and the pooling and contrast
  normalisation where the layer has them), average-pooled to at most `grid` x `grid` cells per map
  (`adaptive_avg_pool2d`), flattened. The paper does not say how it fed layer 1's 96 x 55 x 55 outputs
  to an SVM; pooling to a 6 x 6 grid (layer 5's own size at 224 px) keeps every layer's vector near
  layer 5's 9,216 numbers, so a whole Caltech set fits in memory;
- dense layers 6, 7: the rectified fc6 / fc7 output (dropout off).

Classifiers (scikit-learn): features standardised on the training images (`StandardScaler`), then
`LinearSVC` ("SVM") or multinomial `LogisticRegression` ("Softmax"). The score is the mean of per-class
accuracies (`balanced_accuracy_score`), the Caltech protocols' measure, in percent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zf_lightning.models.layers import PaperLayers
from zf_lightning.utils.errors import InputError, InputTypeError
from zf_lightning.utils.io import atomic_write_npz
from zf_lightning.utils.modes import evaluating

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

FEATURE_LAYERS = (1, 2, 3, 4, 5, 7)
PAPER_ROWS = (("svm", 1), ("svm", 2), ("svm", 3), ("svm", 4), ("svm", 5), ("svm", 7), ("softmax", 5), ("softmax", 7))
CLASSIFIERS = ("svm", "softmax")


def row_name(classifier: str, layer: int) -> str:
    return f"{'SVM' if classifier == 'svm' else 'Softmax'}({layer})"


class BlockFeatures:
    """`BlockFeatures(net, layers, grid)(images)` -> {layer: (B, D)} as defined in the module docstring."""

    def __init__(self, net: nn.Module, layers: Sequence[int] = FEATURE_LAYERS, grid: int = 6) -> None:
        features, classifier = getattr(net, "features", None), getattr(net, "classifier", None)
        if not isinstance(features, nn.Sequential) or not isinstance(classifier, nn.Sequential):
            raise InputTypeError(
                "BlockFeatures needs a network with `features` and `classifier` nn.Sequential, "
                f"got {type(net).__name__}"
            )
        if grid < 1:
            raise InputError(f"grid must be >= 1, got {grid}")
        numbering = PaperLayers(net)
        # A conv layer's block ends just before the next conv (after its pooling and normalisation); a dense
        # layer's at its ReLU.
        ends = {layer.number: (layer.part, layer.block_end) for layer in numbering.conv}
        ends.update({layer.number: (layer.part, layer.rectified) for layer in numbering.dense})
        missing = [int(layer) for layer in layers if int(layer) not in ends]
        if missing or not layers:
            raise InputError(
                f"layers {missing or list(layers)} are not in this network; expected some of {sorted(ends)} "
                f"({numbering.describe()})"
            )
        self.net, self.grid = net, grid
        self.layers = sorted({int(layer) for layer in layers})
        self.ends = {ends[layer]: layer for layer in self.layers}

    def __call__(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        with evaluating(self.net):
            x = images
            for part in ("features", "classifier"):
                if part == "classifier":
                    if len(out) == len(self.layers):
                        break  # no dense layer asked for
                    x = x.flatten(1)
                for index, module in enumerate(getattr(self.net, part)):
                    x = module(x)
                    layer = self.ends.get((part, index))
                    if layer is not None:
                        pooled = F.adaptive_avg_pool2d(x, min(self.grid, x.shape[-1])) if x.ndim == 4 else x
                        out[layer] = pooled.flatten(1).float().clone()
        return out


def extract_features(
    net: nn.Module,
    dataset: Dataset,
    layers: Sequence[int],
    grid: int = 6,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({layer: (N, D) float32}, labels (N,)) for every item of `dataset`, in order."""
    extractor = BlockFeatures(net.to(device), layers, grid)
    chunks: dict[int, list[np.ndarray]] = {layer: [] for layer in extractor.layers}
    labels = []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        for layer, value in extractor(images.to(device)).items():
            chunks[layer].append(value.cpu().numpy())
        labels.append(np.asarray(targets))
    return {layer: np.concatenate(parts) for layer, parts in chunks.items()}, np.concatenate(labels)


def file_identity(path: str | Path) -> str:
    """A file as its resolved path, size and modification time: another file after retraining or a download."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


def cache_key(network: str | Path, dataset_key: str, layers: Sequence[int], grid: int, input_key: str) -> str:
    """Identifies features: the network (a checkpoint `Path`, by `file_identity`; or a string that names it,
    such as a pretrained network's source and weights), the images, the layers, the pooling, the input transform."""
    identity = file_identity(network) if isinstance(network, Path) else str(network)
    text = f"{identity}|{dataset_key}|{sorted(layers)}|grid={grid}|{input_key}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cached_features(
    cache_file: Path, compute: Callable[[], tuple[dict[int, np.ndarray], np.ndarray]]
) -> tuple[dict[int, np.ndarray], np.ndarray, bool]:
    """Features from `cache_file`, or computed by `compute()` and written there (atomically). Third value: hit."""
    if cache_file.is_file():
        with np.load(cache_file) as stored:
            features = {int(name[len("layer") :]): stored[name] for name in stored.files if name.startswith("layer")}
            return features, stored["labels"], True
    features, labels = compute()
    atomic_write_npz({**{f"layer{layer}": value for layer, value in features.items()}, "labels": labels}, cache_file)
    return features, labels, False


def make_classifier(kind: str, regularisation: float = 1.0, seed: int = 0) -> Pipeline:
    """A scikit-learn pipeline: standardisation, then a linear SVM or a multinomial softmax."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind == "svm":
        model = LinearSVC(C=regularisation, random_state=seed, max_iter=5000)
    elif kind == "softmax":
        model = LogisticRegression(C=regularisation, max_iter=2000, random_state=seed)
    else:
        raise InputError(f"classifier must be one of {list(CLASSIFIERS)}, got {kind!r}")
    return make_pipeline(StandardScaler(), model)


@dataclass
class RowResult:
    classifier: str
    layer: int
    accuracy: float  # mean per-class accuracy, percent

    @property
    def name(self) -> str:
        return row_name(self.classifier, self.layer)


def score_rows(
    features: dict[int, np.ndarray],
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    rows: Sequence[tuple[str, int]] = PAPER_ROWS,
    regularisation: float = 1.0,
    seed: int = 0,
) -> list[RowResult]:
    """Train each (classifier, layer) row on `train` indices and score it on `test` indices."""
    from sklearn.metrics import balanced_accuracy_score

    results = []
    for kind, layer in rows:
        model = make_classifier(kind, regularisation, seed)
        model.fit(features[layer][train], labels[train])
        predicted = model.predict(features[layer][test])
        results.append(RowResult(kind, layer, 100.0 * float(balanced_accuracy_score(labels[test], predicted))))
    return results
