"""The LightningModule's recipe: filter renormalisation, 10-crop averaging, optimiser, checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from zf_lightning.data import SyntheticDataModule
from zf_lightning.models import ImageClassifier
from zf_lightning.models.classifier import renormalize_filters_

TINY_NET = {"arch": "zfnet", "num_classes": 10, "input_size": 64, "width_multiplier": 0.125}


def filter_rms(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().flatten(1).pow(2).mean(dim=1).sqrt()


def test_renormalisation_brings_large_filters_to_the_radius_and_leaves_small_ones():
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        for i, rms in enumerate([0.05, 0.3, 0.1, 2.0]):
            w = torch.randn(3, 3, 3)
            conv.weight[i] = w / w.pow(2).mean().sqrt() * rms
    before = conv.weight.detach().clone()
    renormalize_filters_(conv, radius=0.1)
    torch.testing.assert_close(filter_rms(conv), torch.tensor([0.05, 0.1, 0.1, 0.1]))
    assert torch.equal(conv.weight[0], before[0])  # below the radius: untouched, bit for bit
    # rescaled, not clipped: the direction of a large filter is kept
    torch.testing.assert_close(conv.weight[3] / conv.weight[3].norm(), before[3] / before[3].norm())


def train_one_step_from_large_filters(tmp_path, radius):
    """Filters start at RMS 1; one SGD step with a negligible lr; the RMS of conv1's filters after it."""
    model = ImageClassifier(
        TINY_NET, optimizer={"_target_": "torch.optim.SGD", "lr": 1e-9}, lr_scheduler=None, filter_rms_radius=radius
    )
    conv1 = model.net.features[0]
    with torch.no_grad():
        conv1.weight.normal_(0.0, 1.0)
    data = SyntheticDataModule(
        train_per_class=2, val_per_class=1, test_per_class=1, batch_size=20, num_workers=0, cache_dir=tmp_path
    )
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0
    )
    trainer.fit(model, datamodule=data)
    return filter_rms(conv1)


def test_renormalisation_runs_after_the_optimiser_step(tmp_path):
    torch.testing.assert_close(train_one_step_from_large_filters(tmp_path, 0.1), torch.full((12,), 0.1))
    assert float(train_one_step_from_large_filters(tmp_path, None).min()) > 0.5  # off: the step alone keeps them large


def test_ten_crop_prediction_is_the_average_of_the_crop_softmaxes():
    model = ImageClassifier(TINY_NET, filter_rms_radius=None).eval()
    crops = torch.randn(3, 10, 3, 64, 64)
    with torch.no_grad():
        averaged = model.predict_proba(crops)
        one_by_one = torch.stack(
            [torch.stack([model(c[None])[0].softmax(-1) for c in image]).mean(0) for image in crops]
        )
    torch.testing.assert_close(averaged, one_by_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(averaged.sum(-1), torch.ones(3))


def test_weight_decay_applies_to_weights_not_biases():
    model = ImageClassifier(TINY_NET, lr_scheduler=None)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert decayed["lr"] == 0.01 and decayed["momentum"] == 0.9


def test_plateau_scheduler_divides_by_ten_and_watches_val_top1_error():
    model = ImageClassifier(TINY_NET)
    config = model.configure_optimizers()
    scheduler = config["lr_scheduler"]
    assert scheduler["monitor"] == "val/top1_err" and scheduler["interval"] == "epoch"
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler["scheduler"].factor == pytest.approx(0.1)


def test_hyperparameters_are_plain_containers():
    from omegaconf import OmegaConf

    model = ImageClassifier(OmegaConf.create(TINY_NET))
    assert type(model.hparams.net) is dict and type(model.hparams.optimizer) is dict


def test_mean_class_accuracy_is_the_mean_of_per_class_accuracies():
    model = ImageClassifier({"arch": "zfnet", "num_classes": 3, "input_size": 64, "width_multiplier": 0.125})
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2])  # class accuracies 3/4, 1/1, 1/2
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    metrics = model.metrics("test")
    metrics.update(logits, labels)
    computed = metrics.compute()
    assert computed["test/mean_class"].item() == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    assert computed["test/top1"].item() == pytest.approx(5 / 7)  # the plain accuracy differs on unbalanced data


def test_multilabel_loss_leaves_out_ignored_labels():
    from zf_lightning.models.classifier import masked_multilabel_loss

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.5, -2.0]])
    targets = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    kept = targets >= 0
    expected = nn.functional.binary_cross_entropy_with_logits(logits[kept], targets[kept])
    assert masked_multilabel_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    from_probabilities = masked_multilabel_loss(logits.sigmoid(), targets, probabilities=True)
    assert from_probabilities.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pretrained_weights_of_another_variant_are_refused_with_the_differences(tmp_path):
    from zf_lightning.models.classifier import load_pretrained_weights

    source = ImageClassifier({"arch": "zfnet", "num_classes": 10, "input_size": 64, "width_multiplier": 0.125})
    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    same = ImageClassifier({"arch": "zfnet", "num_classes": 3, "input_size": 64, "width_multiplier": 0.125})
    fresh = load_pretrained_weights(same.net, path)
    assert fresh == ["classifier.6.weight", "classifier.6.bias"]
    assert torch.equal(same.net.features[0].weight, source.net.features[0].weight)
    wider = ImageClassifier({"arch": "zfnet", "num_classes": 3, "input_size": 64, "width_multiplier": 0.25})
    with pytest.raises(
        ValueError,
        match=r"does not fit the configured network.*features.0.weight: "
        r"checkpoint \(12, 3, 7, 7\) vs model \(24, 3, 7, 7\)",
    ):
        load_pretrained_weights(wider.net, path)


def test_the_papers_voc_softmax_counts_an_image_of_n_labels_as_n_images_of_weight_1_over_n():
    import torch.nn.functional as F

    from zf_lightning.models.classifier import softmax_multilabel_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 5)
    targets = torch.tensor(
        [
            [1, 0, 1, -1, 0],  # two labels present, one difficult-only (ignored)
            [0, 1, 0, 0, 0],
            [-1, -1, 0, 0, 0],  # nothing present: left out
            [1, 1, 1, 0, 0],
        ]
    )
    # Independent formulation: one row per (image, present label), weight 1/n, plain cross-entropy.
    rows, labels, weights = [], [], []
    for image, row in enumerate(targets):
        present = (row == 1).nonzero().flatten().tolist()
        for label in present:
            rows.append(image)
            labels.append(label)
            weights.append(1 / len(present))
    per_row = F.cross_entropy(logits[rows], torch.tensor(labels), reduction="none")
    expected = (per_row * torch.tensor(weights)).sum() / 3  # three images have a label
    torch.testing.assert_close(softmax_multilabel_loss(logits, targets), expected)
    # from averaged crop probabilities: the same loss on softmax(logits)
    torch.testing.assert_close(
        softmax_multilabel_loss(logits.softmax(dim=-1), targets, probabilities=True), expected, rtol=1e-5, atol=1e-6
    )
