"""The data sets on disk: ImageFolder trees (scan and decode) and CIFAR (torchvision), read into the cache."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import datasets

from .cache import CACHE_VERSION, cache_key, cached

try:
    # About 2.5x faster than PIL for small JPEGs. Deprecated in torchvision 0.29 in favour of
    # torchcodec, hence the PIL fallback for when it is gone.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image, read_file
except ImportError:
    decode_image = None

__all__ = ["DATASETS", "DatasetLayoutError", "load_cifar", "load_imagefolder"]

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_EXTRACT_HINT = "python ../shared/data/cifar10_jpeg.py --out {root}"


class DatasetLayoutError(ValueError):
    """A data set directory exists but is not laid out as expected."""


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


def load_imagefolder(root: Any, cache: Path, image_size: tuple[int, int] | None, opts: dict[str, Any]) -> dict[str, Any]:
    if root is None:
        raise ValueError("load_data('imagefolder') needs root=DIR; " + _layout_msg(Path("DIR")))
    root = Path(root).expanduser().resolve()
    classes, train, test = _scan_imagefolder(root)
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
    key = cache_key({"v": CACHE_VERSION, "root": str(root), "files": stats, "classes": classes, "size": size})
    path = cache / "data" / f"imagefolder-{root.name}-{key}.pt"

    def build() -> dict[str, Any]:
        return {
            "train_x": _decode_files([p for p, _ in train], size),
            "train_y": torch.tensor([y for _, y in train], dtype=torch.int64),
            "test_x": _decode_files([p for p, _ in test], size),
            "test_y": torch.tensor([y for _, y in test], dtype=torch.int64),
            "classes": classes,
        }

    arrays = cached(path, build)
    arrays["path"] = str(path)
    return arrays


# --------------------------------------------------------------------------------------------------
# CIFAR (torchvision)


def load_cifar(name: str, root: Any, cache: Path, image_size: tuple[int, int] | None, opts: dict[str, Any]) -> dict[str, Any]:
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
    key = cache_key({"v": CACHE_VERSION, "name": name, "root": str(root), "files": stats, "size": image_size})
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

    arrays = cached(path, build)
    arrays["path"] = str(path)
    return arrays
