"""Tests of eplcanet.data: task loading, splits, normalisation, augmentation and loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, Subset

from eplcanet.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    TASKS,
    TORCHVISION_TASKS,
    DataSplits,
    ImageDataset,
    load_task,
    make_loader,
    resize_images,
    stratified_split,
)

CIFAR_4K = Path(__file__).parents[2] / "shared/data/cifar10-train-4k.npz"


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a dataset: x (N, C, H, W), y (N,)."""
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


def _sorted_rows(images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Images and labels as rows sorted lexicographically: a multiset that ignores order."""
    rows = np.concatenate([images.reshape(len(images), -1).numpy(), labels[:, None].numpy()], 1)
    return rows[np.lexsort(rows.T[::-1])]


def _split_union(splits: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_stack(ds) for ds in (splits.train, splits.val, splits.test)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _write_npz(path: Path, n: int = 60, size: int = 12, channels: int | None = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = np.arange(n) % 3
    np.savez(path, x=x, y=y)
    return x, y


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_task("digits", seed=0, data_aug=True)


# ------------------------------------------------------------------------------------ splits


def test_stratified_split_is_a_proportional_partition():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    rest, part = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert len(part) == 20 and len(rest) == 80
    assert np.array_equal(np.sort(np.concatenate([rest, part])), np.arange(100))
    assert np.array_equal(np.bincount(labels[part]), [10, 6, 3, 1])
    empty_rest, empty = stratified_split(labels, 0.0, np.random.default_rng(0))
    assert len(empty) == 0 and len(empty_rest) == 100


def test_digits_shapes_ranges_and_sizes(digits):
    assert (digits.in_channels, digits.image_size, digits.n_classes) == (1, 8, 10)
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359)
    x, y = digits.val[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.dim() == 0
    xs, ys = _stack(digits.test)
    assert xs.min() >= 0 and xs.max() <= 1 and xs.max() == 1  # 16/16, no normalisation
    assert set(ys.tolist()) == set(range(10))


def test_digits_splits_partition_the_data_and_are_stratified(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    original = (torch.tensor(raw.images / 16.0, dtype=torch.float32).unsqueeze(1), raw.target)
    plain = load_task("digits", seed=0)  # same split, no augmentation
    images, labels = _split_union(plain)
    assert np.array_equal(
        _sorted_rows(images, labels), _sorted_rows(original[0], torch.tensor(original[1]))
    )
    overall = np.bincount(raw.target) / len(raw.target)
    for split in (plain.train, plain.val, plain.test):
        freq = np.bincount(split.labels.numpy(), minlength=10) / len(split)
        assert np.abs(freq - overall).max() < 0.01


def test_split_depends_on_seed_only():
    a, b, c = (load_task("digits", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, c.test.images)


def test_image_size_resizes_and_pads():
    up = load_task("digits", image_size=16)
    assert up.image_size == 16 and up.train[0][0].shape == (1, 16, 16)
    plain = load_task("digits")
    padded = load_task("digits", image_size=12, resize="pad")
    assert torch.equal(padded.test.images[:, :, 2:10, 2:10], plain.test.images)
    assert padded.test.images[:, :, :2].abs().sum() == 0
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    assert torch.equal(resize_images(img, 8, "nearest")[0, 0, ::2, ::2], img[0, 0])
    with pytest.raises(ValueError, match="resize"):
        load_task("digits", image_size=16, resize="cubic")
    with pytest.raises(ValueError, match="image_size"):
        load_task("digits", image_size=0)


# ------------------------------------------------------------------------------------- npz


def test_npz_round_trip_with_cifar_normalisation(tmp_path):
    x, y = _write_npz(tmp_path / "d.npz")
    splits = load_task("npz", data_path=str(tmp_path / "d.npz"), val_fraction=0.2)
    assert (splits.in_channels, splits.image_size, splits.n_classes) == (3, 12, 3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (43, 11, 6)
    images, labels = _split_union(splits)
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    raw = ((images * std + mean) * 255).round().to(torch.uint8)
    original = torch.from_numpy(x).permute(0, 3, 1, 2)
    assert np.array_equal(_sorted_rows(raw, labels), _sorted_rows(original, torch.tensor(y)))


def test_npz_grayscale_is_not_normalised(tmp_path):
    x, y = _write_npz(tmp_path / "g.npz", channels=None)
    splits = load_task("npz", data_path=str(tmp_path / "g.npz"), test_fraction=0.5)
    assert splits.in_channels == 1 and len(splits.test) == 30
    images, labels = _split_union(splits)
    assert images.min() >= 0 and images.max() <= 1
    raw = (images * 255).round().to(torch.uint8)
    original = torch.from_numpy(x).unsqueeze(1)
    assert np.array_equal(_sorted_rows(raw, labels), _sorted_rows(original, torch.tensor(y)))


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((4, 5, 5), np.uint8)}, r"lacks array\(s\) \['y'\]"),
        ({"x": np.zeros((4, 5, 5), np.float32), "y": np.zeros(4, int)}, "uint8"),
        ({"x": np.zeros((4, 5), np.uint8), "y": np.zeros(4, int)}, "shape"),
        ({"x": np.zeros((4, 5, 5, 7), np.uint8), "y": np.zeros(4, int)}, "channels last"),
        ({"x": np.zeros((4, 5, 6), np.uint8), "y": np.zeros(4, int)}, "square"),
        ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.zeros(3, int)}, "4 images but 3 labels"),
        ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.zeros(4, float)}, "integer"),
        ({"x": np.zeros((4, 5, 5), np.uint8), "y": -np.ones(4, int)}, ">= 0"),
    ],
)
def test_npz_validation(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        load_task("npz", data_path=str(path))


def test_npz_missing_corrupt_or_absent_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_task("npz", data_path=str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz.*not a readable"):
        load_task("npz", data_path=str(tmp_path / "junk.npz"))
    with pytest.raises(ValueError, match="data_path"):
        load_task("npz")


@pytest.mark.skipif(not CIFAR_4K.is_file(), reason="shared CIFAR-10 subset not available")
def test_shared_cifar10_subset():
    splits = load_task("npz", data_path=str(CIFAR_4K))
    assert (splits.in_channels, splits.image_size, splits.n_classes) == (3, 32, 10)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 4660
    assert len(splits.test) == 466
    xs, _ = _stack(splits.test)
    # CIFAR constants: roughly centred, and std near 1/3 (three times the usual std).
    assert xs.mean((0, 2, 3)).abs().max() < 0.1
    assert ((xs.std((0, 2, 3)) - 1 / 3).abs() < 0.1).all()


# ----------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("task", TORCHVISION_TASKS)
def test_missing_torchvision_files_raise_a_helpful_error(tmp_path, task):
    with pytest.raises(FileNotFoundError) as info:
        load_task(task, data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "--download" in message and "npz" in message


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's big-endian idx format for uint8 arrays."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("task", ["MNIST", "FashionMNIST"])
def test_torchvision_idx_files_load_with_official_test_split(tmp_path, task):
    raw = tmp_path / task / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(40) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(10))
    splits = load_task(task.lower(), data_dir=str(tmp_path), val_fraction=0.25)
    assert (splits.in_channels, splits.image_size, splits.n_classes) == (1, 28, 10)
    assert (len(splits.train), len(splits.val)) == (30, 10)
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(test_x))
    assert splits.test[3][1] == 3


# ---------------------------------------------------------------------------- bad arguments


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="task must be one of") as info:
        load_task("imagenet")
    assert all(t in str(info.value) for t in TASKS)
    with pytest.raises(ValueError, match="val_fraction"):
        load_task("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_task("MNIST", test_fraction=0.2)
    with pytest.raises(ValueError, match="data_path"):
        load_task("digits", data_path="x.npz")
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2)), 0, shuffle=False)


# ---------------------------------------------------------------------------------- loaders


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


def test_loader_batches_are_a_function_of_seed_and_epoch_only(digits):
    reference = _batches(make_loader(digits.train, 64, shuffle=True, seed=5, epoch=3))
    torch.manual_seed(123)  # global RNG state must not matter
    np.random.seed(7)
    resumed = load_task("digits", seed=0, data_aug=True)  # as after a restart
    loader = make_loader(resumed.train, 64, shuffle=True, seed=5, epoch=3)
    assert _same(reference, _batches(loader))
    assert _same(reference, _batches(loader))  # iterating again gives the same epoch
    other_epoch = _batches(make_loader(digits.train, 64, shuffle=True, seed=5, epoch=4))
    other_seed = _batches(make_loader(digits.train, 64, shuffle=True, seed=6, epoch=3))
    assert not torch.equal(reference[0][1], other_epoch[0][1])
    assert not torch.equal(reference[0][1], other_seed[0][1])
    ordered = _batches(make_loader(digits.val, 50, shuffle=False))
    assert torch.equal(torch.cat([y for _, y in ordered]), digits.val.labels)
    assert len(_batches(make_loader(digits.val, 50, shuffle=False, drop_last=True))) == 2


def test_loader_uses_a_given_sampler_and_sets_its_epoch(digits):
    sampler = DistributedSampler(digits.val, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = make_loader(digits.val, 8, shuffle=True, epoch=2, sampler=sampler)
    assert loader.sampler is sampler and sampler.epoch == 2
    assert sum(len(y) for _, y in loader) == 72


def test_augmentation_changes_images_keeps_shape_and_never_mirrors_digits(digits):
    plain = load_task("digits", seed=0)
    x_aug, _ = _stack(make_loader(digits.train, 1, shuffle=False, epoch=1).dataset)
    x_plain = plain.train.images
    assert x_aug.shape == x_plain.shape
    changed = (x_aug != x_plain).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 1.0  # (2p+1)^2 = 9 offsets, one is the identity
    # Every augmented digit is a shift of the edge-padded original by at most 1 pixel.
    padded = torch.nn.functional.pad(x_plain, (1, 1, 1, 1), mode="replicate")
    shifts = torch.stack(
        [padded[:, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
    )
    assert (shifts == x_aug).flatten(2).all(2).any(0).all()
    assert not digits.train.hflip and digits.train.crop_padding == 1
    # Validation and test data are never augmented.
    assert torch.equal(_stack(digits.val)[0], plain.val.images)


def test_load_task_crop_padding_sets_the_largest_shift():
    plain = load_task("digits", seed=0).train.images
    none = load_task("digits", seed=0, data_aug=True, crop_padding=0)
    assert torch.equal(_stack(make_loader(none.train, 1, shuffle=False, epoch=1).dataset)[0],
                       plain)
    wide = load_task("digits", seed=0, data_aug=True, crop_padding=2)
    assert wide.train.crop_padding == 2
    x_aug = _stack(make_loader(wide.train, 1, shuffle=False, epoch=1).dataset)[0]
    padded = torch.nn.functional.pad(plain, (2, 2, 2, 2), mode="replicate")
    offsets = [(dy, dx) for dy in range(5) for dx in range(5)]
    hits = torch.stack([(padded[:, :, dy:dy + 8, dx:dx + 8] == x_aug).flatten(1).all(1)
                        for dy, dx in offsets])
    assert hits.any(0).all()  # every image is a shift by at most 2 pixels
    far = torch.tensor([max(abs(dy - 2), abs(dx - 2)) == 2 for dy, dx in offsets])
    only_far = hits[far].any(0) & ~hits[~far].any(0)
    assert only_far.sum() > 100  # and shifts of 2 pixels occur (padding 1 never gives them)


def test_crop_padding_must_be_smaller_than_the_image():
    images = torch.zeros(2, 1, 8, 6, dtype=torch.uint8)
    assert ImageDataset(images, torch.zeros(2), crop_padding=5).crop_padding == 5
    for bad in (-1, 6, 8):
        with pytest.raises(ValueError, match=r"crop_padding must be in \[0, 6\) for 8x6 images"):
            ImageDataset(images, torch.zeros(2), crop_padding=bad)


def test_main_names_the_crop_pad_flag_when_it_is_too_large(tmp_path, capsys):
    from eplcanet.app.experiment import main

    code = main(["--data-aug", "--crop-pad", "8", "--epochs", "1", "--device", "cpu", "--save",
                 "--results-dir", str(tmp_path)])
    assert code != 0
    assert "--crop-pad 8 is too large for these images" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before any run directory was made


def test_augmentation_of_colour_images_crops_and_flips():
    assert ImageDataset(torch.zeros(1, 3, 32, 32), torch.zeros(1)).crop_padding == 4
    images = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8)
    ds = ImageDataset(images, torch.zeros(48), augment=True, hflip=True)
    assert ds.crop_padding == 2
    x_aug = _stack(make_loader(ds, 48, shuffle=False, seed=1, epoch=0).dataset)[0]
    centre = x_aug[:, :, 2:14, 2:14]
    # A flipped image has its centre inside a mirrored shift, never inside an unmirrored one.
    padded = torch.nn.functional.pad(images.float() / 255, (2, 2, 2, 2), mode="replicate")
    shifts = [padded[:, :, dy : dy + 16, dx : dx + 16] for dy in range(5) for dx in range(5)]
    plain_hit = torch.stack([(s[:, :, 2:14, 2:14] == centre).flatten(1).all(1) for s in shifts])
    flip_hit = torch.stack(
        [(s.flip(-1)[:, :, 2:14, 2:14] == centre).flatten(1).all(1) for s in shifts]
    )
    assert (plain_hit.any(0) | flip_hit.any(0)).all()
    assert 10 < flip_hit.any(0).sum() < 38  # about half are mirrored
    again = _stack(make_loader(Subset(ds, range(48)), 48, shuffle=False, seed=1).dataset)[0]
    assert torch.equal(again, x_aug)  # Subsets see the same (seed, epoch) augmentation
