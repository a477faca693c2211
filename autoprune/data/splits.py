"""The splits of a data set -- in-memory uint8 tensors (:class:`TensorSplit`) or streamed image files
(:class:`StreamSplit`) -- and the :class:`DataBundle` of train/val/test splits."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, Union

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from .augment import DEFAULT_MEAN, DEFAULT_STD, random_crop_flip

__all__ = ["DataBundle", "Split", "StreamSplit", "TensorSplit", "epoch_generator", "resolve_device"]


def resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_generator(seed: int | None) -> torch.Generator:
    if seed is None:
        # Draw from the global RNG so torch.manual_seed() still makes unseeded runs reproducible.
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(int(seed))


class TensorSplit:
    """A split held in memory as uint8 ``(N, C, H, W)`` images and int64 labels on one device."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        name: str = "",
        padding: int = 4,
        device: Any = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        dev = torch.device(device) if device is not None else images.device
        self.images = images.to(dev)
        self._labels = labels.to(device=dev, dtype=torch.int64)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.num_classes = int(num_classes)
        self.name = name
        self.padding = int(padding)
        self.device = dev
        # Built once: creating them per batch would cost two host-to-device copies per batch on CUDA.
        s = torch.tensor(self.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * s)
        self._shift = -torch.tensor(self.mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1) / s

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"TensorSplit({self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, device={self.device})"

    @property
    def labels(self) -> Tensor:
        """int64 labels, on the split's device."""
        return self._labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one model input."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Tensor, name: str | None = None) -> "TensorSplit":
        """A new split holding ``indices`` of this one (copies the selected images)."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        return TensorSplit(
            self.images.index_select(0, idx), self._labels.index_select(0, idx),
            mean=self.mean, std=self.std, num_classes=self.num_classes,
            name=self.name if name is None else name, padding=self.padding,
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: x float32 normalised NCHW and y int64, both on the split's device.

        ``augment`` applies random crop (zero padding ``self.padding``) and horizontal flip on the
        device. ``seed`` fixes shuffle order and augmentation; ``None`` draws one from torch's RNG.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        gen = epoch_generator(seed) if (shuffle or augment) else None
        order = torch.randperm(n, generator=gen).to(self.device) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                xb, yb = self.images[start:end], self._labels[start:end]
            else:
                idx = order[start:end]
                xb, yb = self.images.index_select(0, idx), self._labels.index_select(0, idx)
            if augment:
                xb = random_crop_flip(xb, self.padding, generator=gen)  # type: ignore[assignment]
            yield torch.addcmul(self._shift, xb.to(torch.float32), self._scale), yb


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, seed: int) -> None:
        self.samples = samples
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, y = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        # Seed per (epoch seed, sample): augmentation is then reproducible whatever the number of workers,
        # and the caller's global RNG is not consumed when num_workers == 0.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + i)
            return self.transform(img), y


class StreamSplit:
    """A split of image files streamed through a DataLoader (workers + pinned memory)."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        image_size: tuple[int, int],
        name: str = "",
        device: Any = None,
        num_workers: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.num_classes = int(num_classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.name = name
        self.device = resolve_device(device)
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else int(num_workers)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"StreamSplit({self.name!r}, n={len(self)}, size={self.image_size}, workers={self.num_workers})"

    @property
    def labels(self) -> Tensor:
        """int64 labels (CPU)."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, *self.image_size)

    def subset(self, indices: Tensor, name: str | None = None) -> "StreamSplit":
        idx = torch.as_tensor(indices, dtype=torch.long).tolist()
        return StreamSplit(
            [self.samples[i] for i in idx], mean=self.mean, std=self.std, num_classes=self.num_classes,
            image_size=self.image_size, name=self.name if name is None else name, device=self.device,
            num_workers=self.num_workers,
        )

    def _transform(self, augment: bool) -> Callable:
        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if augment:
            return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), *norm])
        # The usual 0.875 centre-crop ratio of ImageNet evaluation.
        resize = [int(round(s / 0.875)) for s in self.image_size]
        return T.Compose([T.Resize(resize), T.CenterCrop(self.image_size), *norm])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` on the split's device; augmentation is RandomResizedCrop + flip."""
        gen = epoch_generator(seed)
        sample_seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.samples, self._transform(augment), sample_seed),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=gen,  # shuffle order
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


Split = Union[TensorSplit, StreamSplit]


@dataclass
class DataBundle:
    """Train/val/test splits of one data set, plus what a model needs to know about it.

    :func:`load_data` builds one; :func:`autoprune.data.adapter.as_bundle` wraps a user's Dataset or DataLoader
    (or a ``(train, val)`` pair of them) in one, with ``num_classes=None`` when the data does not say (the model's
    output width is then used), ``test=None`` for a pair, and ``held_out=False`` when one object serves as both the
    train and the val split.
    """

    name: str
    train: Split
    val: Split
    test: Split | None
    num_classes: int | None
    image_size: tuple[int, int]
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    classes: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_path: str | None = None
    held_out: bool = True
    #: Set by :func:`autoprune.data.adapter.warn_if_not_held_out` once it warned about this bundle (one warning per
    #: bundle through prune_to_budget -> sensitivity).
    not_held_out_warned: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one model input."""
        return self.train.input_shape

    def split(self, name: str) -> Split:
        """The split called ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose 'train', 'val' or 'test'")
        sp = getattr(self, name)
        if sp is None:
            raise ValueError(f"this data has no {name!r} split: pass (train, val, test), or the {name} data itself "
                             f"(e.g. evaluate(model, {name}_loader))")
        return sp

    def __repr__(self) -> str:
        n = lambda sp: "-" if sp is None else len(sp)  # noqa: E731
        return (
            f"DataBundle({self.name!r}, classes={self.num_classes}, size={self.image_size}, "
            f"train={n(self.train)}, val={n(self.val)}, test={n(self.test)}, device={self.device})"
        )

