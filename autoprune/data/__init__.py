"""Datasets for the fine-tuning inner loop of a pruning search.

`load_data` returns a :class:`DataBundle` with ``train``/``val``/``test`` splits. Small-image data sets
(CIFAR, small ImageFolder trees, the procedural ``synthetic`` set) are decoded once into a uint8 tensor
cache file on disk and then held as one uint8 tensor on the device; batches are gathered, augmented
(random crop with zero padding + horizontal flip) and normalised on the device, so a trial's data loading
costs a few kernel launches per batch instead of a process pool decoding JPEGs. Large ImageFolder trees
stream through a ``torch.utils.data.DataLoader`` with standard torchvision transforms.

One job per module: :mod:`~autoprune.data.augment` (device-side augmentation), :mod:`~autoprune.data.splits`
(splits and the bundle), :mod:`~autoprune.data.cache` (the on-disk cache), :mod:`~autoprune.data.sources` (image
folders, CIFAR), :mod:`~autoprune.data.synthetic`, :mod:`~autoprune.data.loading` (:func:`load_data`),
:mod:`~autoprune.data.adapter` (the data forms a user can pass) and :mod:`~autoprune.data.fingerprint` (a data set's
identity for cache keys).
"""
from .adapter import DataLike, as_bundle, check_labels, split_of, warn_if_not_held_out
from .augment import DEFAULT_MEAN, DEFAULT_STD, normalize, random_crop_flip
from .cache import default_cache_dir
from .fingerprint import data_fingerprint
from .loading import DATA_OPTIONS, load_data
from .sources import DATASETS, DatasetLayoutError
from .splits import DataBundle, StreamSplit, TensorSplit, epoch_generator
from .synthetic import make_synthetic

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
