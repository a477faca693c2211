"""The one place where the data forms a user can pass become what the internals use.

Every public function taking ``data`` accepts (:data:`DataLike`):

- a :class:`~autoprune.data.DataBundle` from :func:`autoprune.load_data` (or one of its splits): the fast path,
  unchanged -- cached uint8 tensors on the device, augmentation on the device;
- a map-style :class:`torch.utils.data.Dataset` yielding ``(image, label)`` (image: a float ``[C, H, W]`` tensor,
  label: a class index). It is batched here with a :class:`~torch.utils.data.DataLoader` in the calling process,
  with its own transforms and no added augmentation;
- a :class:`~torch.utils.data.DataLoader` yielding ``(images, labels)`` batches, used as it is (its batch size,
  order, workers and transforms) and streamed to the model's device;
- a ``(train, val)`` pair (or ``(train, val, test)``) of any of these, where a function needs held-out data.

A single Dataset or DataLoader serves every role (fine-tuning, scores, BN statistics *and* measurements); the
functions that measure accuracy after using training data warn about that (:func:`warn_if_not_held_out`).

Input shape comes from one sample; the class count from the data's ``classes`` attribute (torchvision data sets)
or, failing that, from the model's output width, against which every batch's labels are checked.
"""
from __future__ import annotations

import hashlib
import itertools
import warnings
from typing import Any, Iterable, Iterator, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from .._hashing import tensor_bytes
from .splits import DataBundle, StreamSplit, TensorSplit, epoch_generator

__all__ = ["DataLike", "DatasetSplit", "LoaderSplit", "as_bundle", "split_of", "warn_if_not_held_out", "check_labels",
           "example_inputs_for"]

#: What a public function's ``data`` argument may be.
DataLike = Union[DataBundle, TensorSplit, StreamSplit, Dataset, DataLoader, Sequence[Any]]

_FORMS = ("a DataBundle from autoprune.load_data, a map-style torch Dataset yielding (image, label), a DataLoader "
          "yielding (images, labels) batches, or a (train, val) pair of these")


# ------------------------------------------------------------------------------------------------ batches


def _xy(batch: Any, where: str, batched: bool = True) -> tuple[Tensor, Tensor | None]:
    """``(images, labels or None)`` of one batch (one sample when not ``batched``), with a clear error for what a
    classifier cannot take."""
    if isinstance(batch, Tensor):
        x, y = batch, None
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        kind = type(batch).__name__ + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise TypeError(f"{where} yields items of type {kind}, not (images, labels); pass {_FORMS}")
    if not isinstance(x, Tensor):
        kind = f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")
        raise TypeError(f"{where} yields images of type {kind}, not tensors; add "
                        "torchvision.transforms.ToTensor() (and Normalize) to the dataset's transform")
    if not x.is_floating_point():
        raise TypeError(f"{where} yields {x.dtype} images; models take float tensors: convert them "
                        "(e.g. transforms.ToTensor(), or x.float() / 255 and the normalisation the model was "
                        "trained with)")
    if y is not None:
        y = torch.as_tensor(y)
        if y.dim() != int(batched) or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise TypeError(f"{where} yields labels of dtype {y.dtype} and shape {tuple(y.shape)}; autoprune needs "
                            "class indices, integers (one-hot labels: y.argmax(-1))")
        y = y.long()
    return x, y


def check_labels(y: Tensor, num_logits: int) -> None:
    """Raise ``ValueError`` unless every label of ``y`` indexes one of the model's ``num_logits`` outputs."""
    lo, hi = (int(v) for v in torch.stack([y.min(), y.max()]).tolist())
    if lo < 0 or hi >= num_logits:
        raise ValueError(f"a label is {lo if lo < 0 else hi} but the model outputs {num_logits} logits per image "
                         f"(labels must be 0..{num_logits - 1}); replace the classifier (e.g. its last nn.Linear) "
                         "with one output per class")


class _UserSplit:
    """What the internals need of a split (``batches``, ``input_shape``, ``num_classes``, ``device``, ``len``,
    ``subset``), for data the user brought. Batches come back on the CPU (or wherever the data put them); the
    caller moves them to the model's device."""

    device = None  # the model's device is used
    padding = None
    checks_labels = True  # labels are checked against the model's output width batch by batch

    def __init__(self, name: str, num_classes: int | None) -> None:
        self.name = name
        self.num_classes = num_classes
        self._shape: tuple[int, ...] | None = None

    def _source(self, batch_size: int, shuffle: bool, seed: int | None, drop_last: bool) -> Iterable[Any]:
        raise NotImplementedError

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield ``(x, y)`` batches (``y`` None when the data has no labels). ``augment`` is ignored: the user's
        transforms are the augmentation."""
        for b in self._source(batch_size, shuffle, seed, drop_last):
            yield _xy(b, self.name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one model input, from the first sample."""
        if self._shape is None:
            try:
                x, _ = next(iter(self.batches(2)))
            except StopIteration:
                raise ValueError(f"{self.name} is empty") from None
            self._shape = tuple(int(s) for s in x.shape[1:])
        return self._shape

    def fingerprint(self, full: bool) -> str:
        """sha256 of the images and labels read: every batch when ``full``, else the first 2048 images (unshuffled
        order; a loader that shuffles gives a new value each time, so nothing stale is ever reused)."""
        h = hashlib.sha256(str(len(self)).encode())
        src = self.batches(256)
        for x, y in (src if full else itertools.islice(src, 8)):
            h.update(tensor_bytes(x))
            if y is not None:
                h.update(tensor_bytes(y))
        return h.hexdigest()


class DatasetSplit(_UserSplit):
    """A map-style Dataset of ``(image, label)``, batched with a DataLoader in this process (``num_workers=0``:
    pass a DataLoader of your own to use worker processes)."""

    def __init__(self, dataset: Dataset, name: str = "the dataset", num_classes: int | None = None) -> None:
        super().__init__(name, num_classes if num_classes is not None else _classes_of(dataset))
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"DatasetSplit({type(self.dataset).__name__}, n={len(self)})"

    def _source(self, batch_size: int, shuffle: bool, seed: int | None, drop_last: bool) -> Iterable[Any]:
        gen = epoch_generator(seed) if shuffle else None
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=gen)

    def subset(self, indices: Tensor, name: str | None = None) -> "DatasetSplit":
        return DatasetSplit(Subset(self.dataset, torch.as_tensor(indices).tolist()), name or self.name,
                            self.num_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            if len(self) == 0:
                raise ValueError(f"{self.name} is empty")
            x, _ = _xy(self.dataset[0], self.name, batched=False)
            self._shape = tuple(int(s) for s in x.shape)
        return self._shape

    def fingerprint(self, full: bool) -> str:
        if isinstance(self.dataset, TensorDataset):  # in memory: hash the tensors, no batching
            h = hashlib.sha256()
            for t in self.dataset.tensors:
                step = 1 if full else max(1, len(t) // 2048)
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(tensor_bytes(t[::step]))
            return h.hexdigest()
        return super().fingerprint(full)


class LoaderSplit(_UserSplit):
    """A DataLoader (or any re-iterable of batches) used as it is: ``batch_size``, ``shuffle``, ``seed`` and
    ``drop_last`` asked by the caller are the loader's business, not ours."""

    def __init__(self, loader: Iterable[Any], name: str = "the DataLoader", num_classes: int | None = None) -> None:
        dataset = getattr(loader, "dataset", None)
        super().__init__(name, num_classes if num_classes is not None else _classes_of(dataset))
        self.loader = loader

    def __len__(self) -> int:
        """Number of images (the sampler's length for a DataLoader)."""
        loader = self.loader
        if isinstance(loader, DataLoader):
            if loader.batch_size is not None and not isinstance(loader.dataset, IterableDataset):
                return len(loader.sampler)  # type: ignore[arg-type]
            return len(loader.dataset)  # type: ignore[arg-type]
        return sum(len(_xy(b, self.name)[0]) for b in loader)

    def __repr__(self) -> str:
        return f"LoaderSplit({type(self.loader).__name__})"

    def num_batches(self) -> int | None:
        """Batches per pass, or None when the loader cannot tell (an iterable-style data set)."""
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def _source(self, batch_size: int, shuffle: bool, seed: int | None, drop_last: bool) -> Iterable[Any]:
        return self.loader

    def subset(self, indices: Tensor, name: str | None = None) -> DatasetSplit:
        """The images ``indices`` of the loader's map-style dataset, batched like the loader (no shuffling)."""
        dataset = getattr(self.loader, "dataset", None)
        if dataset is None or isinstance(dataset, IterableDataset):
            raise TypeError(f"{self.name} has no map-style dataset to take a subset of; pass eval_batches=None or a "
                            "map-style Dataset")
        return DatasetSplit(Subset(dataset, torch.as_tensor(indices).tolist()), name or self.name, self.num_classes)


def _classes_of(dataset: Any) -> int | None:
    """``len(dataset.classes)`` of torchvision-style data sets (ImageFolder, CIFAR10, ...), else None."""
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        return len(classes)
    return None


# ---------------------------------------------------------------------------------------------- the adapter


def _is_split(obj: Any) -> bool:
    return isinstance(obj, (TensorSplit, StreamSplit, _UserSplit))


def _one(obj: Any, role: str) -> Any:
    """One split from one user object (``role``: "train", "val", "test" or "" for a single one), or None when
    ``obj`` is not a data form."""
    the = f"the {role} " if role else "the "
    if _is_split(obj):
        return obj
    if isinstance(obj, DataLoader):
        return LoaderSplit(obj, name=the + "DataLoader")
    if isinstance(obj, IterableDataset):
        raise TypeError(f"{the}data is an IterableDataset; wrap it in a DataLoader(dataset, batch_size=...)")
    if isinstance(obj, Dataset):
        return DatasetSplit(obj, name=the + "dataset")
    return None


def as_bundle(data: Any) -> DataBundle:
    """``data`` in any of the forms of :data:`DataLike` as a :class:`~autoprune.data.DataBundle` whose splits have
    ``batches()``; a DataBundle is returned unchanged. ``bundle.held_out`` is False when one object serves as both
    the train and the val split."""
    if isinstance(data, DataBundle):
        return data
    if data is None:
        raise ValueError(f"this needs data: {_FORMS}")
    single = _one(data, "")
    if single is not None:
        return _bundle(single, single, single, held_out=False)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not any(isinstance(d, Tensor) for d in data):
        roles = ("train", "val", "test")
        parts = [_one(d, r) for d, r in zip(data, roles)]
        if all(p is not None for p in parts):
            return _bundle(parts[0], parts[1], parts[2] if len(parts) == 3 else None, held_out=True)
    if isinstance(data, (tuple, list)) and any(isinstance(d, Tensor) for d in data):
        raise TypeError("got a tuple of tensors; wrap images and labels in torch.utils.data.TensorDataset(images, "
                        f"labels) (or pass {_FORMS})")
    if isinstance(data, (list, tuple)) or (hasattr(data, "__iter__") and not isinstance(data, (str, bytes, dict))):
        # A list (or other re-iterable) of (images, labels) batches: what a DataLoader yields.
        sp = LoaderSplit(data, name="the batches")
        return _bundle(sp, sp, sp, held_out=False)
    raise TypeError(f"expected {_FORMS}; got {type(data).__name__}")


def split_of(data: Any, split: str) -> Any:
    """The split ``split`` of ``data`` (a single Dataset/DataLoader/split serves every split name)."""
    return as_bundle(data).split(split)


def _bundle(train: Any, val: Any, test: Any, *, held_out: bool) -> DataBundle:
    known = [s.num_classes for s in (train, val, test) if s is not None and s.num_classes is not None]
    if len(set(known)) > 1:
        raise ValueError(f"the splits have different numbers of classes ({sorted(set(known))}); they must share one "
                         "label set")
    kind = {TensorSplit: "load_data", StreamSplit: "load_data", DatasetSplit: "dataset", LoaderSplit: "dataloader"}
    return DataBundle(
        name=kind.get(type(train), type(train).__name__), train=train, val=val, test=test,
        num_classes=known[0] if known else None,  # type: ignore[arg-type]  # None: taken from the model's output
        image_size=(), held_out=held_out,  # type: ignore[arg-type]
    )


def warn_if_not_held_out(bundle: DataBundle, what: str) -> None:
    """Warn (once per bundle) when ``what`` will measure accuracy on the images it trained or calibrated on."""
    if not bundle.held_out and not bundle.not_held_out_warned:
        bundle.not_held_out_warned = True  # prune_to_budget -> sensitivity: one warning
        warnings.warn(
            f"{what} got one data set: it is used both to fine-tune/score/re-estimate BatchNorm and to measure "
            "accuracy, so the accuracy is optimistic. Pass (train_data, val_data) to measure on held-out images.",
            UserWarning, stacklevel=3)


def example_inputs_for(data: DataBundle, example_inputs: Any, what: str) -> Any:
    """``example_inputs`` checked against one input of ``data`` (a bundle from :func:`as_bundle`), or, when None,
    ``torch.zeros(1, *data.input_shape)``.

    A tensor (or a 1-tuple of one) whose per-sample shape differs from the data's is refused: the channel analysis and
    every MAC count would be those of inputs the model never sees. Several inputs (a tuple of tensors) are the
    caller's business and are not checked. ``what`` names the function in the message."""
    shape = tuple(int(s) for s in data.input_shape)
    if example_inputs is None:
        return torch.zeros((1, *shape))
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1 \
        else example_inputs
    if isinstance(x, Tensor) and x.dim() >= 1 and tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{what}: example_inputs has shape {list(x.shape)} (one input {list(x.shape[1:])}) but one input of the "
            f"data has shape {list(shape)}: MACs would be counted for inputs the model never sees. Pass "
            f"example_inputs=torch.zeros(1, {', '.join(map(str, shape))}), or leave it out (it defaults to zeros "
            "shaped like one input of the data), or give data of the size you mean to measure")
    return example_inputs
