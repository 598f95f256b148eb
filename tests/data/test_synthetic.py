import numpy as np
import pytest
import torch

from zf_lightning.data.synthetic import HUES, MAX_CLASSES, SyntheticShapes


def _stack(ds):
    return np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.float32) / 255


def test_items_shape_dtype_range_and_labels():
    ds = SyntheticShapes("train", num_classes=7, images_per_class=3, image_size=40)
    assert len(ds) == 21 and len(ds.targets) == 21
    assert len(ds.classes) == 7 and len(set(ds.classes)) == 7
    assert np.bincount(ds.targets).tolist() == [3] * 7
    images = []
    for i in range(len(ds)):
        image, label = ds[i]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
        assert image.shape == (3, 40, 40)
        assert label == ds.targets[i] and 0 <= label < 7
        images.append(image)
    allpix = torch.stack(images)
    assert allpix.min() >= 0 and allpix.max() <= 255 and allpix.float().std() > 20  # not blank
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_deterministic_and_order_independent():
    a = SyntheticShapes("val", num_classes=5, images_per_class=4, seed=3)
    b = SyntheticShapes("val", num_classes=5, images_per_class=4, seed=3)
    forward = [a[i][0] for i in range(len(a))]
    backward = [b[i][0] for i in reversed(range(len(b)))][::-1]
    for x, y in zip(forward, backward):
        assert torch.equal(x, y)
    assert torch.equal(a[7][0], a[7][0])
    assert a.classes == b.classes


def test_same_items_with_dataloader_workers():
    ds = SyntheticShapes("test", num_classes=4, images_per_class=3, image_size=24, seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    images, labels = map(torch.cat, zip(*loader))
    assert torch.equal(images, torch.stack([ds[i][0] for i in range(len(ds))]))
    assert labels.tolist() == ds.targets


def test_splits_and_seeds_differ_but_classes_depend_only_on_seed():
    kw = dict(num_classes=5, images_per_class=4)
    train, val, test = (SyntheticShapes(s, seed=0, **kw) for s in SyntheticShapes.splits)
    other_seed = SyntheticShapes("train", seed=1, **kw)
    assert train.classes == val.classes == test.classes
    assert other_seed.classes != train.classes
    for i in range(len(train)):
        imgs = [train[i][0], val[i][0], test[i][0], other_seed[i][0]]
        for j in range(4):
            for k in range(j + 1, 4):
                assert not torch.equal(imgs[j], imgs[k])
    # image_size must not change the class definitions either
    assert SyntheticShapes(image_size=32, seed=0, **kw).classes == train.classes


def test_transform_is_applied():
    ds = SyntheticShapes(num_classes=3, images_per_class=2, transform=lambda x: x.float() / 255 - 1)
    raw = SyntheticShapes(num_classes=3, images_per_class=2)
    image, label = ds[4]
    assert image.dtype == torch.float32 and image.max() <= 0
    assert torch.allclose(image, raw[4][0].float() / 255 - 1) and label == raw[4][1]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(split="training"), "split"),
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=MAX_CLASSES + 1), "num_classes"),
        (dict(images_per_class=0), "images_per_class"),
        (dict(image_size=15), "image_size"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_raise_with_clear_message(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticShapes(**kwargs)


def test_error_messages_say_what_is_allowed():
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        SyntheticShapes(split="training")
    with pytest.raises(ValueError, match=str(MAX_CLASSES)):
        SyntheticShapes(num_classes=MAX_CLASSES + 1)


def test_supports_many_classes_with_distinct_attribute_triples():
    for n in (2, 100, MAX_CLASSES):
        ds = SyntheticShapes(num_classes=n, images_per_class=1, image_size=16)
        triples = [ds.class_attributes(c) for c in range(n)]
        assert len(set(triples)) == n and len(set(ds.classes)) == n
    assert ds[MAX_CLASSES - 1][0].shape == (3, 16, 16)


def test_colour_alone_is_not_the_label():
    ds = SyntheticShapes(num_classes=len(HUES) + 2, images_per_class=1)
    by_hue = {}
    for c in range(ds.num_classes):
        shape, texture, hue = ds.class_attributes(c)
        by_hue.setdefault(hue, []).append((shape, texture))
    shared = [v for v in by_hue.values() if len(v) > 1]
    assert shared, "expected classes sharing a hue"
    assert all(len(set(v)) == len(v) for v in shared)  # same hue => different shape or texture


def _features(x):
    """Coarse colour layout, gradient orientation histogram, colour of the most saturated pixels."""
    n = len(x)
    g = x.mean(1)
    gx, gy = np.diff(g, axis=2)[:, :-1], np.diff(g, axis=1)[:, :, :-1]
    mag, ang = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((ang / np.pi * 8).astype(int), 7)
    hog = np.stack([(mag * (bins == k)).sum((1, 2)) for k in range(8)], 1)
    hog /= hog.sum(1, keepdims=True) + 1e-6
    sat = x.max(1) - x.min(1)
    top = (sat > np.quantile(sat.reshape(n, -1), 0.85, axis=1)[:, None, None])[:, None]
    return np.c_[hog, (x * top).sum((2, 3)) / top.sum((2, 3)), x.mean((2, 3))]


def _ridge_accuracy(f_train, y_train, f_val, y_val, classes):
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a = np.c_[(f_train - mu) / sd, np.ones(len(f_train))]
    b = np.c_[(f_val - mu) / sd, np.ones(len(f_val))]
    w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(classes)[y_train])
    return ((b @ w).argmax(1) == y_val).mean()


def test_classes_are_learnable_but_not_from_mean_colour():
    train = SyntheticShapes("train", num_classes=10, images_per_class=40, seed=0)
    val = SyntheticShapes("val", num_classes=10, images_per_class=20, seed=0)
    x_train, x_val = _stack(train), _stack(val)
    y_train, y_val = np.array(train.targets), np.array(val.targets)
    rich = _ridge_accuracy(_features(x_train), y_train, _features(x_val), y_val, 10)
    mean_colour = _ridge_accuracy(x_train.mean((2, 3)), y_train, x_val.mean((2, 3)), y_val, 10)
    assert rich > 0.5  # chance is 0.1
    assert mean_colour < 0.4 and mean_colour < rich - 0.2
