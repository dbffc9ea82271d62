"""Datasets: the offline defaults (scikit-learn digits, scikit-image photographs) and torchvision.

Every classification task loads into memory once, as a uint8 (or, for digits, float32) tensor of
shape (N, C, H, W), and is served by :class:`ImageDataset`, which converts, augments and
normalises one item at a time with tensor operations (no PIL image per item).

Determinism: :func:`make_loader` derives the shuffling order and the augmentation randomness from
(seed, epoch) only, so a run resumed at epoch e sees exactly the batches that an uninterrupted
run sees at epoch e. Build one loader per epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

TASKS = ("digits", "MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN", "npz")
TORCHVISION_TASKS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN")
RESIZE_MODES = ("bilinear", "nearest", "pad")

# Laborieux et al.'s CIFAR-10 normalisation: the usual channel means, and three times the usual
# standard deviations, which keeps inputs mostly inside the hard-sigmoid's linear range.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)

# Where torchvision looks for each dataset's files, relative to data_dir.
_TORCHVISION_FILES = {
    "MNIST": "MNIST/raw",
    "FashionMNIST": "FashionMNIST/raw",
    "CIFAR10": "cifar-10-batches-py",
    "CIFAR100": "cifar-100-python",
    "SVHN": "train_32x32.mat and test_32x32.mat",
}
_N_CLASSES = {"MNIST": 10, "FashionMNIST": 10, "CIFAR10": 10, "CIFAR100": 100, "SVHN": 10}
_DEFAULT_TEST_FRACTION = {"digits": 0.2, "npz": 0.1}

# Separate hash streams so that shuffling and augmentation never share random numbers.
_SHUFFLE_STREAM = 1
_AUGMENT_STREAM = 2
_MASK64 = (1 << 64) - 1

# Bundled colour photographs of scikit-image (no download needed).
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def natural_image_patches(
    patch_size: int = 8, n_patches: int = 1000, seed: int = 0, gray: bool = False
) -> torch.Tensor:
    """Random square patches from scikit-image's bundled photographs.

    Returns a float32 tensor (n_patches, C, patch_size, patch_size) with values in [0, 1],
    C = 1 if gray else 3. Patches are drawn uniformly over photographs and positions.
    """
    from skimage import data as skdata

    if patch_size < 1 or n_patches < 1:
        raise ValueError(f"patch_size and n_patches must be >= 1, got {patch_size}, {n_patches}")
    rng = np.random.default_rng(seed)
    photos = [getattr(skdata, name)().astype(np.float32) / 255.0 for name in _SKIMAGE_PHOTOS]
    if gray:
        photos = [p @ np.array([0.299, 0.587, 0.114], np.float32) for p in photos]
        photos = [p[..., None] for p in photos]
    which = rng.integers(len(photos), size=n_patches)
    out = np.empty((n_patches, photos[0].shape[-1], patch_size, patch_size), np.float32)
    for i, w in enumerate(which):
        img = photos[w]
        r = rng.integers(img.shape[0] - patch_size + 1)
        c = rng.integers(img.shape[1] - patch_size + 1)
        out[i] = img[r : r + patch_size, c : c + patch_size].transpose(2, 0, 1)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------
# Seeds


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_seed(*values: int) -> int:
    """A well-mixed non-negative 63-bit seed that depends on every value and their order.

    Nearby inputs such as (seed, epoch) and (seed, epoch + 1) give unrelated outputs, unlike
    ``seed + epoch``, which makes (0, 1) and (1, 0) collide.
    """
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


# --------------------------------------------------------------------------------------------
# Dataset


class CropPaddingError(ValueError):
    """A crop padding the images cannot take (known only once their size is), so a caller can
    name its own flag."""


class ImageDataset(Dataset):
    """In-memory labelled images, converted, augmented and normalised per item.

    Args:
        images: (N, C, H, W) uint8 (scaled by 1/255) or float32 already in [0, 1].
        labels: (N,) integer class indices.
        mean, std: per-channel normalisation constants (length C), or None for none.
        augment: random crop (and optional horizontal flip); use on training splits only.
        crop_padding: the crop's padding in pixels (edge replicated, as Laborieux et al.);
            default 4 for 32x32 images, scaled with the image size, at least 1.
        hflip: also flip horizontally with probability 1/2 when augmenting.
        seed, epoch: the augmentation's randomness; :func:`make_loader` sets them.

    Items are ``(x, y)``: x float32 (C, H, W), y a 0-d int64 tensor. The augmentation of item i
    is a function of (seed, epoch, i) alone, so it does not depend on the batch order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: bool = False,
        crop_padding: int | None = None,
        hflip: bool = False,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 or float32, got {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        channels, height, width = images.shape[1:]
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        if mean is not None and not (len(mean) == len(std) == channels):
            raise ValueError(f"mean and std need {channels} values (one per channel)")
        self.images = images
        self.labels = labels.to(torch.int64)
        self._mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self._std = None if std is None else torch.tensor(std).view(-1, 1, 1)
        self.augment = augment
        self.hflip = hflip
        self.crop_padding = (
            max(1, round(4 * height / 32)) if crop_padding is None else int(crop_padding)
        )
        if not 0 <= self.crop_padding < min(height, width):
            # A shift as large as the image would show only replicated edge pixels.
            raise CropPaddingError(f"crop_padding must be in [0, {min(height, width)}) for "
                                   f"{height}x{width} images, got {crop_padding}")
        self.seed = seed
        self.epoch = epoch

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def __len__(self) -> int:
        return self.images.shape[0]

    def at_epoch(self, seed: int, epoch: int) -> ImageDataset:
        """A view sharing this dataset's tensors whose augmentation follows (seed, epoch)."""
        view = copy.copy(self)
        view.seed, view.epoch = seed, epoch
        return view

    def _augmented(self, img: torch.Tensor, index: int) -> torch.Tensor:
        """img (C, H, W) -> (C, H, W): a shifted crop of the edge-padded image, maybe flipped."""
        pad = self.crop_padding
        h = mix_seed(self.seed, self.epoch, _AUGMENT_STREAM, index)
        span = 2 * pad + 1
        dy, dx = h % span - pad, (h // span) % span - pad
        height, width = img.shape[-2:]
        # Clamped indices crop the replicate-padded image without building it.
        if dy:
            img = img.index_select(1, (torch.arange(height) + dy).clamp_(0, height - 1))
        if dx:
            img = img.index_select(2, (torch.arange(width) + dx).clamp_(0, width - 1))
        if self.hflip and (h >> 40) & 1:
            img = img.flip(-1)
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        img = self.images[index]
        if self.augment:
            img = self._augmented(img, index % len(self))
        x = img.float() / 255.0 if img.dtype == torch.uint8 else img.clone()
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return x, self.labels[index]


@dataclass
class DataSplits:
    """The three splits of a task and what a model needs to know about its inputs."""

    train: Dataset
    val: Dataset
    test: Dataset
    in_channels: int
    image_size: int
    n_classes: int


# --------------------------------------------------------------------------------------------
# Splits and resizing


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into (rest, part), part holding round(fraction * N) of them.

    Every class contributes to part in proportion to its size (largest remainders, ties broken
    at random). Both index arrays are sorted.
    """
    labels = np.asarray(labels)
    n_part = round(fraction * len(labels))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))
    take[order[: n_part - int(take.sum())]] += 1
    part = [rng.permutation(np.flatnonzero(inverse == c))[: take[c]] for c in range(len(classes))]
    part_idx = np.sort(np.concatenate(part)) if part else np.zeros(0, np.int64)
    rest_mask = np.ones(len(labels), bool)
    rest_mask[part_idx] = False
    return np.flatnonzero(rest_mask), part_idx


def resize_images(images: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Square images (N, C, H, H) -> (N, C, size, size), keeping the dtype.

    mode: "bilinear" (antialiased when shrinking) or "nearest" interpolation, or "pad" (zeros
    around the centred image; size >= H). uint8 results are rounded.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if size < 1:
        raise ValueError(f"image_size must be >= 1, got {size}")
    height = images.shape[-1]
    if size == height:
        return images
    if mode == "pad":
        if size < height:
            raise ValueError(f"resize mode 'pad' needs image_size >= {height}, got {size}")
        before = (size - height) // 2
        after = size - height - before
        return F.pad(images, (before, after, before, after))
    out = torch.empty(*images.shape[:2], size, size, dtype=images.dtype)
    # Chunks bound the float32 copy of large uint8 datasets.
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].float()
        if mode == "nearest":
            chunk = F.interpolate(chunk, size=(size, size), mode="nearest")
        else:
            shrink = size < height
            chunk = F.interpolate(
                chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
            )
        if images.dtype == torch.uint8:
            chunk = chunk.round_().clamp_(0, 255)
        out[start : start + 4096] = chunk.to(images.dtype)
    return out


# --------------------------------------------------------------------------------------------
# Sources


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits: float32 (N, 1, 8, 8) in [0, 1], int64 (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.as_tensor(bunch.target, dtype=torch.int64)


def _load_npz(data_path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrays x (N, H, W) or (N, H, W, C) uint8 and y (N,) integers -> uint8 (N, C, H, W), (N,)."""
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"data_path {str(path)!r}: no such file (expected an .npz file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x", "y") if k in npz.files}
            files = list(npz.files)
    except Exception as exc:  # zipfile / pickle errors of a corrupt or foreign file
        raise ValueError(f"data_path {str(path)!r} is not a readable .npz file: {exc}") from exc
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(
            f"data_path {str(path)!r} lacks array(s) {missing}; it holds {files}, and needs "
            "x (N, H, W) or (N, H, W, C) uint8 and y (N,) integer labels"
        )
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8:
        raise ValueError(f"data_path {str(path)!r}: x must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"data_path {str(path)!r}: x must have shape (N, H, W) or (N, H, W, C) with C in "
            f"(1, 3) (channels last), got {x.shape}"
        )
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"data_path {str(path)!r}: images must be square, got {x.shape[1:3]}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"data_path {str(path)!r}: y must be a 1-d integer array, got {y.dtype} {y.shape}"
        )
    if len(y) != len(x):
        raise ValueError(f"data_path {str(path)!r}: {len(x)} images but {len(y)} labels")
    if len(y) and y.min() < 0:
        raise ValueError(f"data_path {str(path)!r}: labels must be >= 0, got {y.min()}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(y.astype(np.int64))


def _load_torchvision(
    task: str, data_dir: str | Path, download: bool, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One official split of a torchvision dataset: uint8 (N, C, H, W), int64 (N,)."""
    import torchvision.datasets as tvd

    root = str(data_dir)
    try:
        if task == "SVHN":
            ds = tvd.SVHN(root, split="train" if train else "test", download=download)
        else:
            ds = getattr(tvd, task)(root, train=train, download=download)
    except RuntimeError as exc:
        where = f"{Path(data_dir) / _TORCHVISION_FILES[task]}"
        if task == "SVHN":  # its files lie directly in data_dir
            where = f"{Path(data_dir)} ({_TORCHVISION_FILES[task]})"
        offline = "use --task npz --data-path FILE.npz or --task digits, which need no download"
        if download:
            raise RuntimeError(
                f"could not download {task} into {where}: {exc}; where the network cannot "
                f"reach the dataset hosts, {offline}"
            ) from exc
        raise FileNotFoundError(
            f"{task} files not found (or incomplete) in {where}: torchvision looks for them "
            f"there (data_dir={str(data_dir)!r}); pass --download (download=True) where the "
            f"network allows, or {offline}"
        ) from exc
    except OSError as exc:  # network failures while downloading
        raise RuntimeError(
            f"could not download {task} into {data_dir}: {exc}; use --task npz or --task digits"
        ) from exc
    if task in ("MNIST", "FashionMNIST"):
        images = ds.data.unsqueeze(1)
        labels = ds.targets
    elif task == "SVHN":
        images = torch.from_numpy(ds.data)  # already (N, 3, 32, 32)
        labels = torch.from_numpy(ds.labels)
    else:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
        labels = torch.tensor(ds.targets)
    return images.contiguous(), labels.to(torch.int64)


# --------------------------------------------------------------------------------------------
# Public entry points


def _check_fraction(name: str, value: float, low_inclusive: bool) -> None:
    ok = (0.0 <= value < 1.0) if low_inclusive else (0.0 < value < 1.0)
    if not ok:
        interval = "[0, 1)" if low_inclusive else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def load_task(
    task: str,
    data_dir: str = "./data",
    data_path: str | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_aug: bool = False,
    image_size: int | None = None,
    *,
    crop_padding: int | None = None,
    test_fraction: float | None = None,
    resize: str = "bilinear",
    hflip: bool | None = None,
) -> DataSplits:
    """Load a classification task into memory and split it into train / val / test.

    Args:
        task: one of TASKS (case-insensitive).
            digits: scikit-learn's 1,797 8x8 handwritten digits, values 0..16 scaled to [0, 1].
            MNIST, FashionMNIST, CIFAR10, CIFAR100, SVHN: torchvision's files under data_dir
                (fetched when download=True); the official test split is the test set.
            npz: the file data_path with arrays x (N, H, W) or (N, H, W, C) uint8 (channels
                last, C in 1 or 3) and y (N,) integer labels 0..K-1.
        val_fraction: the part of the training data held out for validation (stratified,
            seeded), in [0, 1).
        test_fraction: digits and npz only: the part of all images held out for testing
            (stratified, seeded); default 0.2 for digits and 0.1 for npz. Validation is then
            val_fraction of the rest (npz: 81/9/10 by default).
        seed: the split's seed (and the default augmentation seed).
        data_aug: random crops (edge-replicated padding of 4 pixels at 32x32, scaled with the
            image size) of the training split, plus horizontal flips where hflip.
        crop_padding: the crops' padding in pixels instead of that default (0: no shifts).
        hflip: flip while augmenting; default True for 3-channel images except SVHN (digits must
            not be mirrored), False for 1-channel images.
        image_size: square side the images are resized to (default: the native size), with
            resize = "bilinear" (default; antialiased when shrinking), "nearest", or "pad"
            (zero border around the centred image).

    Normalisation: 1-channel images stay in [0, 1] (as the seed does for MNIST); 3-channel
    images (CIFAR, SVHN and 3-channel npz alike) use CIFAR_MEAN and CIFAR_STD (three times
    CIFAR-10's std, as Laborieux et al.).

    Returns DataSplits whose datasets yield (x float32 (C, H, W), y int64).
    """
    canonical = {t.lower(): t for t in TASKS}
    if not isinstance(task, str) or task.lower() not in canonical:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    task = canonical[task.lower()]
    _check_fraction("val_fraction", val_fraction, low_inclusive=True)
    if test_fraction is not None:
        if task in TORCHVISION_TASKS:
            raise ValueError(
                f"test_fraction applies to tasks 'digits' and 'npz' only; {task} uses its "
                "official test split"
            )
        _check_fraction("test_fraction", test_fraction, low_inclusive=False)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if task == "npz" and data_path is None:
        raise ValueError("task 'npz' needs data_path (--data-path FILE.npz)")
    if task != "npz" and data_path is not None:
        raise ValueError(f"data_path is used only with task 'npz', got task {task!r}")

    rng = np.random.default_rng(seed)
    if task in TORCHVISION_TASKS:
        images, labels = _load_torchvision(task, data_dir, download, train=True)
        test_images, test_labels = _load_torchvision(task, data_dir, download, train=False)
        n_classes = _N_CLASSES[task]
    else:
        images, labels = _load_digits() if task == "digits" else _load_npz(data_path)
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        frac = _DEFAULT_TEST_FRACTION[task] if test_fraction is None else test_fraction
        keep, test_idx = stratified_split(labels.numpy(), frac, rng)
        test_images, test_labels = images[test_idx], labels[test_idx]
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = stratified_split(labels.numpy(), val_fraction, rng)

    if image_size is not None:
        images = resize_images(images, image_size, resize)
        test_images = resize_images(test_images, image_size, resize)
    channels, size = images.shape[1], images.shape[2]
    norm: dict[str, Any] = {}
    if channels == 3:
        norm = {"mean": CIFAR_MEAN, "std": CIFAR_STD}
    if hflip is None:
        hflip = channels == 3 and task != "SVHN"
    train_idx_t, val_idx_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return DataSplits(
        train=ImageDataset(
            images[train_idx_t],
            labels[train_idx_t],
            augment=data_aug,
            crop_padding=crop_padding,
            hflip=hflip,
            seed=seed,
            **norm,
        ),
        val=ImageDataset(images[val_idx_t], labels[val_idx_t], **norm),
        test=ImageDataset(test_images, test_labels, **norm),
        in_channels=channels,
        image_size=size,
        n_classes=n_classes,
    )


class SeededShuffleSampler(Sampler[int]):
    """A random permutation of range(n) that is a function of (seed, epoch) alone.

    Iterating twice gives the same order (unlike a sampler driven by a stateful generator).
    """

    def __init__(self, n: int, seed: int = 0, epoch: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, _SHUFFLE_STREAM))
        return iter(torch.randperm(self.n, generator=gen).tolist())


class WithIndex(Dataset):
    """A dataset whose items also carry their index: (x, y, i). The training loader uses it for
    --warm-start, which keeps each sample's last free equilibrium by index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (*self.dataset[i], i)


def _at_epoch(dataset: Dataset, seed: int, epoch: int) -> Dataset:
    """The dataset with its augmentation bound to (seed, epoch), looking through Subsets."""
    if isinstance(dataset, ImageDataset):
        return dataset.at_epoch(seed, epoch)
    if isinstance(dataset, Subset):
        return Subset(_at_epoch(dataset.dataset, seed, epoch), dataset.indices)
    if isinstance(dataset, WithIndex):
        return WithIndex(_at_epoch(dataset.dataset, seed, epoch))
    return dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    *,
    pin_memory: bool = False,
) -> DataLoader:
    """A single-process DataLoader whose batches are a function of (seed, epoch) only.

    Shuffling (when shuffle) and the augmentation of :class:`ImageDataset` items (also inside
    a Subset) both follow (seed, epoch); build one loader per epoch. A given sampler (e.g. a
    DistributedSampler) decides the order instead, and shuffle is ignored; its set_epoch(epoch)
    is called when it has one.

    Batches are (x (B, C, H, W) float32, y (B,) int64), and the indices (B,) int64 with a
    :class:`WithIndex` dataset.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if sampler is not None:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
    elif shuffle:
        sampler = SeededShuffleSampler(len(dataset), seed, epoch)
    return DataLoader(
        _at_epoch(dataset, seed, epoch),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=0,
        pin_memory=pin_memory,
    )
