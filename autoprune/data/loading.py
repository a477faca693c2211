"""Splitting (seeded, stratified) and the public entry point :func:`load_data`."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .augment import DEFAULT_MEAN, DEFAULT_STD
from .cache import default_cache_dir
from .sources import DATASETS, load_cifar, load_imagefolder
from .splits import DataBundle, StreamSplit, TensorSplit, resolve_device
from .synthetic import load_synthetic

__all__ = ["DATA_OPTIONS", "load_data"]


def _stratified_order(labels: Tensor, gen: torch.Generator) -> Tensor:
    """A permutation in which every prefix holds each class in proportion to its frequency."""
    perm = torch.randperm(len(labels), generator=gen)
    lab = labels[perm]
    # Rank of each element within its class (in random order), as a centred fraction of the class size;
    # sorting on it interleaves the classes.
    grouped = torch.sort(lab, stable=True).indices
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(len(lab), dtype=torch.float64)
    rank[grouped] = (torch.arange(len(lab)) - starts[lab[grouped]]).double()
    frac = (rank + 0.5) / counts[lab].double()
    return perm[torch.sort(frac, stable=True).indices]


def _carve(labels: Tensor, val_fraction: float, num_train: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded, stratified (train indices, val indices) of a training set."""
    gen = torch.Generator().manual_seed(int(seed))
    order = _stratified_order(labels, gen)
    n_val = int(round(len(labels) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    if num_train is not None:
        if num_train <= 0:
            raise ValueError(f"num_train must be positive, got {num_train}")
        train = train[: int(num_train)]  # still stratified: any prefix of the order is
    return torch.sort(train).values, torch.sort(val).values


def _split(train_labels: Tensor, n_test: int, val_fraction: float, val_from: str, num_train: int | None,
           seed: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """(train indices, val indices, test indices or None = the whole test split). ``val_from="train"``: val is
    carved from the training images (:func:`_carve`); ``"test"``: val is a seeded random ``val_fraction`` of the
    ``n_test`` test images and test the disjoint rest, every training image stays for training."""
    if val_from == "train":
        tr_idx, va_idx = _carve(train_labels, val_fraction, num_train, seed)
        return tr_idx, va_idx, None
    tr_idx, _ = _carve(train_labels, 0.0, num_train, seed)
    perm = torch.randperm(n_test, generator=torch.Generator().manual_seed(int(seed)))
    n_val = int(round(n_test * val_fraction))
    if not 0 < n_val < n_test:
        raise ValueError(f"val_fraction={val_fraction} of {n_test} test images leaves an empty val or test split")
    return tr_idx, perm[:n_val].sort().values, perm[n_val:].sort().values


DATA_OPTIONS = {
    "cifar10": {"download", "mean", "std", "padding"},
    "cifar100": {"download", "mean", "std", "padding"},
    "imagefolder": {"stream", "max_cached_size", "num_workers", "mean", "std", "padding"},
    "synthetic": {"num_classes", "train_per_class", "test_per_class", "mean", "std", "padding"},
}


def load_data(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    image_size: int | tuple[int, int] | None = None,
    num_train: int | None = None,
    val_from: str = "train",
    **kw: Any,
) -> DataBundle:
    """Load a data set as a :class:`DataBundle` of train/val/test splits.

    ``name`` is one of ``cifar10``, ``cifar100`` (torchvision; ``download=True`` by default),
    ``imagefolder`` (``root`` holds ``train/<class>/*`` and ``test/<class>/*``), or ``synthetic``
    (procedural; options ``num_classes=10``, ``train_per_class=500``, ``test_per_class=100``).
    The val split is a seeded, stratified ``val_fraction`` of the training images; ``num_train`` then
    keeps a stratified subset of the remaining training images. Data lives on ``device`` (CUDA when
    available). ImageFolder options: ``stream`` (None = auto: stream when images exceed
    ``max_cached_size=64`` pixels), ``num_workers``. All: ``mean``, ``std``, ``padding`` (crop padding, 4).

    ``val_from="test"`` is for checkpoints trained on the *whole* training split (such as the shared
    ResNet-56): a val split carved from images the model was trained on scores ~100% and cannot measure
    damage. The val split is then a seeded random ``val_fraction`` of the test images, the test split is the
    rest (disjoint), and every training image is used for training and BN statistics.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    unknown = set(kw) - DATA_OPTIONS[key]
    if unknown:
        raise TypeError(f"load_data({key!r}) got unexpected option(s) {sorted(unknown)}; accepted: {sorted(DATA_OPTIONS[key])}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_from not in ("train", "test"):
        raise ValueError(f"val_from must be 'train' or 'test', got {val_from!r}")
    if val_from == "test" and val_fraction <= 0.0:
        raise ValueError("val_from='test' needs val_fraction in (0, 1): the share of the test images used as val")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    elif image_size is not None:
        image_size = (int(image_size[0]), int(image_size[1]))
    dev = resolve_device(device)
    cache = default_cache_dir(cache_dir)
    mean = tuple(kw.get("mean", DEFAULT_MEAN))
    std = tuple(kw.get("std", DEFAULT_STD))

    if key == "synthetic":
        if int(kw.get("num_classes", 10)) < 2:
            raise ValueError(f"num_classes={kw['num_classes']}: a classifier needs at least 2 classes")
        arrays = load_synthetic(cache, image_size, seed, kw)
    elif key in ("cifar10", "cifar100"):
        arrays = load_cifar(key, root, cache, image_size, kw)
    else:
        arrays = load_imagefolder(root, cache, image_size, kw)
    classes = list(arrays["classes"])
    k = len(classes)

    if arrays.get("stream"):
        common = dict(mean=mean, std=std, num_classes=k, image_size=arrays["size"], device=dev,
                      num_workers=kw.get("num_workers"))
        full = StreamSplit(arrays["train"], name="train", **common)
        test = StreamSplit(arrays["test"], name="test", **common)
        tr_idx, va_idx, te_idx = _split(full.labels, len(test), val_fraction, val_from, num_train, seed)
        val = (test if val_from == "test" else full).subset(va_idx, "val")
        if te_idx is not None:
            test = test.subset(te_idx, "test")
        return DataBundle(
            name=key, train=full.subset(tr_idx, "train"), val=val, test=test, num_classes=k,
            image_size=tuple(arrays["size"]), mean=mean, std=std, classes=classes, device=dev,
        )

    pad = int(kw.get("padding", 4))
    tx, ty = arrays["train_x"], arrays["train_y"]
    # Split on the CPU first, so the device only ever holds the images actually used.
    mk = lambda x, y, nm: TensorSplit(x, y, mean=mean, std=std, num_classes=k, name=nm, padding=pad, device=dev)  # noqa: E731
    sx, sy = arrays["test_x"], arrays["test_y"]
    tr_idx, va_idx, te_idx = _split(ty, len(sy), val_fraction, val_from, num_train, seed)
    vx, vy = (sx, sy) if val_from == "test" else (tx, ty)
    vx, vy = vx[va_idx], vy[va_idx]
    if te_idx is not None:
        sx, sy = sx[te_idx], sy[te_idx]
    return DataBundle(
        name=key,
        train=mk(tx[tr_idx], ty[tr_idx], "train"),
        val=mk(vx, vy, "val"),
        test=mk(sx, sy, "test"),
        num_classes=k,
        image_size=tuple(int(s) for s in tx.shape[2:]),  # type: ignore[arg-type]
        mean=mean, std=std, classes=classes, device=dev, cache_path=arrays.get("path"),
    )
