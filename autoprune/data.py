"""Datasets for the fine-tuning inner loop of a pruning search.

`load_data` returns a :class:`DataBundle` with ``train``/``val``/``test`` splits. Small-image data sets
(CIFAR, small ImageFolder trees, the procedural ``synthetic`` set) are decoded once into a uint8 tensor
cache file on disk and then held as one uint8 tensor on the device; batches are gathered, augmented
(random crop with zero padding + horizontal flip) and normalised on the device, so a trial's data loading
costs a few kernel launches per batch instead of a process pool decoding JPEGs. Large ImageFolder trees
stream through a ``torch.utils.data.DataLoader`` with standard torchvision transforms.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

import torch

from ._files import atomic_write
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetLayoutError",
    "StreamSplit",
    "TensorSplit",
    "default_cache_dir",
    "load_data",
    "make_synthetic",
    "normalize",
    "random_crop_flip",
]

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")

# The shared CIFAR-10-JPEG checkpoints were trained with these statistics (see ../shared/models/README.md);
# using them for every data set keeps those checkpoints usable without a per-dataset table.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)

# Bump when the cache file layout or a decoder/generator changes, so stale caches are not reused.
_CACHE_VERSION = 1
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_EXTRACT_HINT = "python ../shared/data/cifar10_jpeg.py --out {root}"


class DatasetLayoutError(ValueError):
    """A data set directory exists but is not laid out as expected."""


# --------------------------------------------------------------------------------------------------
# device-side augmentation and normalisation


def random_crop_flip(
    x: Tensor,
    padding: int = 4,
    *,
    flip: bool = True,
    generator: torch.Generator | None = None,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random crop (same size, zero padding ``padding``) and random horizontal flip of a batch.

    ``x`` is ``(N, C, H, W)`` of any dtype on any device. The crop offsets are drawn on the CPU from
    ``generator`` (so results do not depend on the device) and applied with one advanced-indexing
    gather: no per-image Python loop. With ``return_params`` also returns ``(dy, dx, flipped)``:
    output ``i`` is ``pad(x)[i, :, dy:dy+H, dx:dx+W]``, mirrored along W where ``flipped[i]``.
    """
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flipped = (torch.rand(n, generator=generator) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy.to(dev)[:, None] + ar_h  # (N, H)
    # A flip is just a reversed column index, so it costs nothing extra in the gather.
    cols = dx.to(dev)[:, None] + torch.where(flipped.to(dev)[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    out = padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    if return_params:
        return out, dy, dx, flipped
    return out


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(N, C, H, W)`` in [0, 255] -> float32 ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    # One multiply-subtract instead of divide/subtract/divide: (x/255 - m)/s == x*(1/(255 s)) - m/s.
    return torch.addcmul(-m / s, x.to(torch.float32), 1.0 / (255.0 * s))


# --------------------------------------------------------------------------------------------------
# splits


def _resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _epoch_generator(seed: int | None) -> torch.Generator:
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
        gen = _epoch_generator(seed) if (shuffle or augment) else None
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
        from PIL import Image

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
        self.device = _resolve_device(device)
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
        from torchvision import transforms as T

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
        gen = _epoch_generator(seed)
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

    :func:`load_data` builds one; :func:`autoprune.data_adapter.as_bundle` wraps a user's Dataset or DataLoader
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


# --------------------------------------------------------------------------------------------------
# cache


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$AUTOPRUNE_CACHE``, else ``~/.cache/autoprune``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUTOPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoprune"


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _cached(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load ``path`` or build it; written to a temp file then os.replace'd so readers never see half a file."""
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # a truncated/foreign file: rebuild instead of failing every trial
            warnings.warn(f"ignoring unreadable data cache {path} ({e}); rebuilding it")
    arrays = build()
    atomic_write(path, lambda f: torch.save(arrays, f))
    return arrays


# --------------------------------------------------------------------------------------------------
# image folders


def _layout_msg(root: Path) -> str:
    return (
        f"expected an ImageFolder tree: {root}/train/<class>/<image> and {root}/test/<class>/<image> "
        f"(one subfolder per class; 'val/' is accepted instead of 'test/'). For CIFAR-10-JPEG create it with: "
        + _EXTRACT_HINT.format(root=root)
    )


def _listdir(p: Path) -> list[str]:
    return sorted(e for e in os.listdir(p) if not e.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMG_EXTENSIONS)


def _scan_split(split_dir: Path, root: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[str, int]]]:
    entries = _listdir(split_dir)
    class_dirs = [e for e in entries if (split_dir / e).is_dir()]
    if not class_dirs:
        loose = [e for e in entries if _is_image(e)]
        what = f"images directly in it ({loose[0]!r}, ...)" if loose else "no class subfolders"
        raise DatasetLayoutError(f"{split_dir} has {what}; " + _layout_msg(root))
    if classes is None:
        classes = class_dirs
    else:
        unknown = sorted(set(class_dirs) - set(classes))
        if unknown:
            raise DatasetLayoutError(
                f"{split_dir} has class folders not in {root}/train: {unknown[:5]}; both splits must use the same classes"
            )
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    empty = []
    for c in class_dirs:
        files = [f for f in _listdir(split_dir / c) if _is_image(f)]
        if not files:
            empty.append(c)
        # Plain string joins: pathlib objects cost ~15 us each, i.e. a second per CIFAR-sized tree.
        d = os.path.join(str(split_dir), c)
        samples.extend((os.path.join(d, f), index[c]) for f in files)
    if empty:
        raise DatasetLayoutError(
            f"class folder(s) without images ({', '.join(_IMG_EXTENSIONS)}) in {split_dir}: {empty[:5]}"
        )
    return classes, samples


def _scan_imagefolder(root: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    if not root.exists():
        raise FileNotFoundError(f"data set root {root} does not exist; " + _layout_msg(root))
    if not root.is_dir():
        raise NotADirectoryError(f"data set root {root} is not a directory; " + _layout_msg(root))
    train_dir = root / "train"
    if not train_dir.is_dir():
        found = _listdir(root)
        hint = ""
        if root.name in ("train", "test", "val"):
            hint = f" {root} looks like a split folder itself: pass its parent {root.parent}."
        raise DatasetLayoutError(
            f"{root} has no 'train/' folder (found: {found[:8]}{' ...' if len(found) > 8 else ''}).{hint} "
            + _layout_msg(root)
        )
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if test_dir is None:
        raise DatasetLayoutError(f"{root} has 'train/' but no 'test/' (or 'val/') folder; " + _layout_msg(root))
    classes, train = _scan_split(train_dir, root, None)
    _, test = _scan_split(test_dir, root, classes)
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{train_dir} has one class folder ({classes[0]!r}); a classifier needs at least 2 classes: one "
            "subfolder per class (train/<class>/<image>, test/<class>/<image>)"
        )
    return classes, train, test


def _decode_files(paths: Sequence[str], size: tuple[int, int]) -> Tensor:
    """Decode image files into one uint8 ``(N, 3, H, W)`` tensor, resizing any that are not ``size``."""
    import numpy as np
    from PIL import Image

    try:
        # About 2.5x faster than PIL for small JPEGs. Deprecated in torchvision 0.29 in favour of
        # torchcodec, hence the PIL fallback for when it is gone.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:
        decode_image = None

    out = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, p in enumerate(paths):
            img = None
            if decode_image is not None:
                try:
                    img = decode_image(read_file(p), mode=ImageReadMode.RGB)
                except Exception:  # formats torchvision.io lacks (some TIFF/BMP variants): PIL reads them
                    img = None
            if img is None:
                with Image.open(p) as im:
                    img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
            if tuple(img.shape[1:]) != size:
                img = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
                img = img[0].round_().clamp_(0, 255).to(torch.uint8)
            out[i] = img
    return out


def _load_imagefolder(root: Any, cache: Path, image_size: tuple[int, int] | None, opts: dict[str, Any]) -> dict[str, Any]:
    if root is None:
        raise ValueError("load_data('imagefolder') needs root=DIR; " + _layout_msg(Path("DIR")))
    root = Path(root).expanduser().resolve()
    classes, train, test = _scan_imagefolder(root)
    from PIL import Image

    with Image.open(train[0][0]) as im:
        native = (im.height, im.width)
    stream = opts.get("stream")
    if stream is None:
        stream = max(native) > int(opts.get("max_cached_size", 64))
    if stream:
        return {"stream": True, "classes": classes, "train": train, "test": test,
                "size": image_size or (224, 224)}
    size = image_size or native
    # Keyed by every file's path/size/mtime, so re-extracting or editing the tree invalidates the cache.
    stats = [(p[len(str(root)):], s.st_size, s.st_mtime_ns) for p, _ in train + test for s in [os.stat(p)]]
    key = _key({"v": _CACHE_VERSION, "root": str(root), "files": stats, "classes": classes, "size": size})
    path = cache / "data" / f"imagefolder-{root.name}-{key}.pt"

    def build() -> dict[str, Any]:
        return {
            "train_x": _decode_files([p for p, _ in train], size),
            "train_y": torch.tensor([y for _, y in train], dtype=torch.int64),
            "test_x": _decode_files([p for p, _ in test], size),
            "test_y": torch.tensor([y for _, y in test], dtype=torch.int64),
            "classes": classes,
        }

    arrays = _cached(path, build)
    arrays["path"] = str(path)
    return arrays


# --------------------------------------------------------------------------------------------------
# CIFAR (torchvision)


def _load_cifar(name: str, root: Any, cache: Path, image_size: tuple[int, int] | None, opts: dict[str, Any]) -> dict[str, Any]:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = Path(root).expanduser().resolve() if root is not None else cache / "datasets"
    download = bool(opts.get("download", True))
    folder = root / cls.base_folder
    files = sorted(folder.glob("*")) if folder.is_dir() else []
    if not files:
        if not download:
            raise FileNotFoundError(
                f"{name} not found: no {folder}. Pass download=True (needs internet), point root= at the "
                f"directory holding '{cls.base_folder}/', or use load_data('imagefolder', DIR) with CIFAR-10-JPEG: "
                + _EXTRACT_HINT.format(root="DIR")
            )
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:
            raise ConnectionError(  # an OSError: the CLI reports it as a user error, without a traceback
                f"could not download {name} into {root} ({e}). Without internet, use load_data('imagefolder', DIR) "
                f"with CIFAR-10-JPEG: " + _EXTRACT_HINT.format(root="DIR")
            ) from e
        files = sorted(folder.glob("*"))
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = _key({"v": _CACHE_VERSION, "name": name, "root": str(root), "files": stats, "size": image_size})
    path = cache / "data" / f"{name}-{key}.pt"

    def build() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split, train in (("train", True), ("test", False)):
            ds = cls(str(root), train=train, download=False)
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            if image_size is not None and tuple(x.shape[2:]) != image_size:
                x = F.interpolate(x.float(), size=image_size, mode="bilinear", antialias=True).round_().clamp_(0, 255).to(torch.uint8)
            out[f"{split}_x"] = x
            out[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.int64)
            out["classes"] = list(ds.classes)
        return out

    arrays = _cached(path, build)
    arrays["path"] = str(path)
    return arrays


# --------------------------------------------------------------------------------------------------
# synthetic


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Vectorised HSV -> RGB; inputs (N,), output (N, 3) in [0, 1]."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n[None, :] + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def make_synthetic(
    n_per_class: int, *, num_classes: int = 10, size: tuple[int, int] = (32, 32), seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Procedural, learnable images: uint8 ``(N, 3, H, W)`` and int64 labels, deterministic from ``seed``.

    Class ``c`` is a grating at orientation ``pi * c / num_classes`` inside a randomly placed disc, tinted
    with a hue near ``c / num_classes``. Hue jitter makes colour alone ambiguous between neighbouring
    classes, so a model has to see the orientation; random phase, frequency, position, background and
    pixel noise keep it from being a lookup table.
    """
    g = torch.Generator().manual_seed(int(seed))
    k = int(num_classes)
    n = n_per_class * k
    h, w = size
    y = torch.arange(k).repeat_interleave(n_per_class)
    y = y[torch.randperm(n, generator=g)]

    def u(lo: float, hi: float, shape: tuple[int, ...] = (n,)) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    theta = math.pi * y.float() / k + u(-0.15, 0.15) * math.pi / k
    freq = u(2.5, 4.5)  # cycles across the image
    phase = u(0.0, 2 * math.pi)
    hue = (y.float() + u(-0.8, 0.8)) / k % 1.0
    fg = _hsv_to_rgb(hue, u(0.6, 1.0), u(0.7, 1.0))  # (N, 3)
    bg = u(0.15, 0.85)[:, None] * (1 - 0.3 * torch.rand((n, 3), generator=g))  # greyish, slightly tinted
    cy, cx = u(0.35, 0.65) * h, u(0.35, 0.65) * w
    radius = u(0.3, 0.45) * min(h, w)

    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    proj = torch.cos(theta).view(n, 1, 1) * xx + torch.sin(theta).view(n, 1, 1) * yy
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * freq.view(n, 1, 1) * proj / max(h, w) + phase.view(n, 1, 1))
    dist = torch.sqrt((yy - cy.view(n, 1, 1)) ** 2 + (xx - cx.view(n, 1, 1)) ** 2)
    mask = torch.sigmoid(radius.view(n, 1, 1) - dist)[:, None]  # soft-edged disc, (N, 1, H, W)
    inside = grating[:, None] * fg[:, :, None, None] + (1 - grating[:, None]) * 0.15
    img = (1 - mask) * bg[:, :, None, None] + mask * inside
    img = img + 0.06 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


def _load_synthetic(cache: Path, image_size: tuple[int, int] | None, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    params = {
        "num_classes": int(opts.get("num_classes", 10)),
        "train_per_class": int(opts.get("train_per_class", 500)),
        "test_per_class": int(opts.get("test_per_class", 100)),
        "size": list(image_size or (32, 32)),
        "seed": int(seed),
    }
    key = _key({"v": _CACHE_VERSION, **params})
    path = cache / "data" / f"synthetic-{key}.pt"

    def build() -> dict[str, Any]:
        size = tuple(params["size"])
        k = params["num_classes"]
        # Different seeds for the two splits so test images are never copies of training images.
        tx, ty = make_synthetic(params["train_per_class"], num_classes=k, size=size, seed=2 * params["seed"])
        vx, vy = make_synthetic(params["test_per_class"], num_classes=k, size=size, seed=2 * params["seed"] + 1)
        return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy, "classes": [f"class{i}" for i in range(k)]}

    arrays = _cached(path, build)
    arrays["path"] = str(path)
    return arrays


# --------------------------------------------------------------------------------------------------
# splitting and the public entry point


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


_OPTIONS = {
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
    unknown = set(kw) - _OPTIONS[key]
    if unknown:
        raise TypeError(f"load_data({key!r}) got unexpected option(s) {sorted(unknown)}; accepted: {sorted(_OPTIONS[key])}")
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
    dev = _resolve_device(device)
    cache = default_cache_dir(cache_dir)
    mean = tuple(kw.get("mean", DEFAULT_MEAN))
    std = tuple(kw.get("std", DEFAULT_STD))

    if key == "synthetic":
        if int(kw.get("num_classes", 10)) < 2:
            raise ValueError(f"num_classes={kw['num_classes']}: a classifier needs at least 2 classes")
        arrays = _load_synthetic(cache, image_size, seed, kw)
    elif key in ("cifar10", "cifar100"):
        arrays = _load_cifar(key, root, cache, image_size, kw)
    else:
        arrays = _load_imagefolder(root, cache, image_size, kw)
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
