"""Tests for autoprune.data: splits, device-side augmentation, the uint8 cache and error messages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import autoprune.data as D
import autoprune.data.sources as sources
from autoprune.data import DataBundle, DatasetLayoutError, load_data, normalize, random_crop_flip

SHARED_EXTRACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg.py"  # ../shared


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never touch the user's ~/.cache from tests.
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    """5 images per class and split of the shared CIFAR-10-JPEG, as an ImageFolder tree."""
    if not SHARED_EXTRACT.exists():
        pytest.skip("shared CIFAR-10-JPEG pack not available")
    out = tmp_path_factory.mktemp("c10") / "cifar10-jpeg"
    subprocess.run([sys.executable, str(SHARED_EXTRACT), "--out", str(out), "--limit-per-class", "5"],
                   check=True, capture_output=True)
    return out


def small_synth(tmp_path, **kw) -> DataBundle:
    return load_data("synthetic", cache_dir=tmp_path / "c", device="cpu", train_per_class=20, test_per_class=5, **kw)


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_bundle_shapes_and_split(tmp_path):
    b = small_synth(tmp_path, val_fraction=0.1)
    assert (b.name, b.num_classes, b.image_size, b.input_shape) == ("synthetic", 10, (32, 32), (3, 32, 32))
    assert (len(b.train), len(b.val), len(b.test)) == (180, 20, 50)
    # stratified: every class gets the same share of the val split
    assert torch.bincount(b.val.labels, minlength=10).tolist() == [2] * 10
    assert b.train.labels.dtype == torch.int64
    x, y = next(b.train.batches(16))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert b.mean == D.DEFAULT_MEAN and b.std == D.DEFAULT_STD


def test_synthetic_is_deterministic_and_seed_dependent(tmp_path):
    a = small_synth(tmp_path / "a", seed=3)
    b = small_synth(tmp_path / "b", seed=3)
    c = small_synth(tmp_path / "c", seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.train.images, c.train.images)


def test_val_is_carved_from_train_and_num_train(tmp_path):
    full = small_synth(tmp_path, val_fraction=0.0)
    b = small_synth(tmp_path, val_fraction=0.25, num_train=50)
    assert len(full.val) == 0 and len(full.train) == 200
    assert len(b.val) == 50 and len(b.train) == 50
    rows = {bytes(img.flatten().numpy()) for img in full.train.images}
    tr = {bytes(img.flatten().numpy()) for img in b.train.images}
    va = {bytes(img.flatten().numpy()) for img in b.val.images}
    assert tr <= rows and va <= rows and not (tr & va)
    assert torch.bincount(b.train.labels, minlength=10).tolist() == [5] * 10  # num_train is stratified too


def test_val_from_test_splits_the_test_images(tmp_path):
    base = small_synth(tmp_path, val_fraction=0.0)
    b = small_synth(tmp_path, val_from="test", val_fraction=0.4)
    assert (len(b.train), len(b.val), len(b.test)) == (200, 20, 30)
    assert torch.equal(b.train.images, base.train.images)  # every training image stays for training
    rows = lambda s: {bytes(img.flatten().numpy()) for img in s.images}  # noqa: E731
    assert rows(b.val) | rows(b.test) == rows(base.test) and not (rows(b.val) & rows(b.test))
    again = small_synth(tmp_path, val_from="test", val_fraction=0.4)
    assert torch.equal(again.val.images, b.val.images)  # seeded
    other = small_synth(tmp_path, val_from="test", val_fraction=0.4, seed=1)
    assert rows(other.val) != rows(b.val)
    with pytest.raises(ValueError, match="val_from='test' needs val_fraction"):
        small_synth(tmp_path, val_from="test", val_fraction=0.0)
    with pytest.raises(ValueError, match="val_from must be 'train' or 'test'"):
        small_synth(tmp_path, val_from="holdout")


def test_val_from_test_streamed(cifar_slice, tmp_path):
    b = load_data("imagefolder", cifar_slice, cache_dir=tmp_path, device="cpu", stream=True, image_size=32,
                  num_workers=0, val_from="test", val_fraction=0.6)
    assert (len(b.train), len(b.val), len(b.test)) == (50, 30, 20)
    assert not {p for p, _ in b.val.samples} & {p for p, _ in b.test.samples}


def test_batches_order_normalisation_shuffle_drop_last(tmp_path):
    sp = small_synth(tmp_path).test  # 50 images
    xs, ys = zip(*sp.batches(16))
    assert [len(y) for y in ys] == [16, 16, 16, 2]
    assert torch.allclose(torch.cat(xs), normalize(sp.images, sp.mean, sp.std))
    ref = (sp.images.float() / 255 - torch.tensor(sp.mean).view(1, 3, 1, 1)) / torch.tensor(sp.std).view(1, 3, 1, 1)
    assert torch.allclose(torch.cat(xs), ref, atol=1e-5)
    assert torch.equal(torch.cat(ys), sp.labels)
    assert [len(y) for _, y in sp.batches(16, drop_last=True)] == [16, 16, 16]
    s1 = torch.cat([y for _, y in sp.batches(16, shuffle=True, augment=True, seed=7)])
    s2 = torch.cat([y for _, y in sp.batches(16, shuffle=True, augment=True, seed=7)])
    assert torch.equal(s1, s2) and not torch.equal(s1, sp.labels)
    assert torch.equal(s1.sort().values, sp.labels.sort().values)


# ---------------------------------------------------------------------------------------------- augmentation


def test_random_crop_flip_outputs_are_windows_of_padded_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 8, 10), dtype=torch.uint8)  # no zeros, so padding is recognisable
    out, dy, dx, flipped = random_crop_flip(x, 4, generator=g, return_params=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        win = padded[i, :, dy[i]: dy[i] + 8, dx[i]: dx[i] + 10]
        assert torch.equal(out[i], win.flip(-1) if flipped[i] else win)
    # the offsets and flips actually vary
    assert len(set(dy.tolist())) > 4 and len(set(dx.tolist())) > 4 and 0 < int(flipped.sum()) < len(x)


def test_random_crop_flip_brute_force_float_and_no_flip():
    x = torch.rand(6, 3, 5, 5) + 1
    out = random_crop_flip(x, 2, flip=False, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, a: a + 5, b: b + 5] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_augmented_batches_are_crops_of_the_split(tmp_path):
    sp = small_synth(tmp_path).test
    x, _ = next(sp.batches(50, augment=True, seed=0))
    pad_value = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), sp.mean, sp.std)
    padded = normalize(torch.nn.functional.pad(sp.images, (4, 4, 4, 4)), sp.mean, sp.std)
    assert pad_value.shape == (1, 3, 1, 1)
    for i in range(0, 50, 7):
        cands = [padded[i, :, a: a + 32, b: b + 32] for a in range(9) for b in range(9)]
        assert any(torch.allclose(x[i], c) or torch.allclose(x[i], c.flip(-1)) for c in cands)


# ---------------------------------------------------------------------------------------------- cache


def test_cache_written_once_and_reused(tmp_path, monkeypatch):
    b = small_synth(tmp_path)
    path = Path(b.cache_path)
    assert path.is_file() and path.parent == tmp_path / "c" / "data"
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(D, "make_synthetic", boom)
    b2 = small_synth(tmp_path)
    assert b2.cache_path == b.cache_path and path.stat().st_mtime_ns == mtime
    assert torch.equal(b2.train.images, b.train.images)


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "envcache"))
    b = load_data("synthetic", device="cpu", train_per_class=2, test_per_class=1)
    assert Path(b.cache_path).parent == tmp_path / "envcache" / "data"


def test_imagefolder_cache_reuse_and_invalidation(cifar_slice, tmp_path, monkeypatch):
    b = load_data("imagefolder", cifar_slice, cache_dir=tmp_path, device="cpu")
    assert (len(b.train) + len(b.val), len(b.test), b.num_classes) == (50, 50, 10)
    assert b.classes[0] == "airplane" and b.classes[-1] == "truck"
    calls = []
    real = sources._decode_files
    monkeypatch.setattr(sources, "_decode_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    b2 = load_data("imagefolder", cifar_slice, cache_dir=tmp_path, device="cpu")
    assert calls == [] and b2.cache_path == b.cache_path
    # Touching a file changes the key: the tree is decoded again into a new cache file.
    f = next((cifar_slice / "test" / "cat").iterdir())
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    b3 = load_data("imagefolder", cifar_slice, cache_dir=tmp_path, device="cpu")
    assert calls == [1, 1] and b3.cache_path != b.cache_path


def test_imagefolder_pixels_and_labels_match_pil(cifar_slice, tmp_path):
    b = load_data("imagefolder", cifar_slice, cache_dir=tmp_path, device="cpu", val_fraction=0.0)
    # test split keeps folder order: class-sorted, file-sorted
    first_dog = sorted((cifar_slice / "test" / "dog").iterdir())[0]
    i = b.classes.index("dog") * 5
    ref = torch.from_numpy(np.array(Image.open(first_dog).convert("RGB"))).permute(2, 0, 1)
    assert int(b.test.labels[i]) == b.classes.index("dog")
    assert (b.test.images[i].int() - ref.int()).abs().max() <= 2  # JPEG decoders may differ by rounding


def test_imagefolder_mixed_sizes_are_resized(tmp_path):
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        for c, colour in (("red", (250, 0, 0)), ("blue", (0, 0, 250))):
            for i, size in enumerate([(8, 8), (12, 10), (6, 9)]):
                (root / split / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", size, colour).save(root / split / c / f"{i}.png")
    b = load_data("imagefolder", root, cache_dir=tmp_path, device="cpu", image_size=8, val_fraction=0.0)
    assert b.image_size == (8, 8) and b.classes == ["blue", "red"] and len(b.test) == 6
    assert torch.equal(b.test.images[b.test.labels == 1][:, 0], torch.full((3, 8, 8), 250, dtype=torch.uint8))
    assert int(b.test.images[b.test.labels == 0][:, 0].max()) == 0


def test_imagefolder_stream_mode(cifar_slice, tmp_path):
    b = load_data("imagefolder", cifar_slice, cache_dir=tmp_path, device="cpu", stream=True,
                  image_size=32, num_workers=0)
    assert isinstance(b.train, D.StreamSplit) and len(b.train) == 45 and len(b.val) == 5
    x, y = next(b.train.batches(8, shuffle=True, augment=True, seed=0))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x2, _ = next(b.train.batches(8, shuffle=True, augment=True, seed=0))
    assert torch.equal(x, x2)


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10, cifar100, imagefolder, synthetic"):
        load_data("mnist")


def test_unknown_option_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="train_per_clas"):
        load_data("synthetic", cache_dir=tmp_path, train_per_clas=3)


def test_nonexistent_root_says_how_to_create_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        load_data("imagefolder", missing, cache_dir=tmp_path)
    assert str(missing) in str(e.value) and "cifar10_jpeg.py --out" in str(e.value)


def test_imagefolder_without_root():
    with pytest.raises(ValueError, match="root"):
        load_data("imagefolder")


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_wrong_layouts_explain_expected_layout(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match=r"no 'train/' folder.*train/<class>/<image>"):
        load_data("imagefolder", empty, cache_dir=tmp_path)

    loose = tmp_path / "loose"
    _img(loose / "train" / "a.png")
    _img(loose / "test" / "b" / "b.png")
    with pytest.raises(DatasetLayoutError, match="images directly in it"):
        load_data("imagefolder", loose, cache_dir=tmp_path)

    notest = tmp_path / "notest"
    _img(notest / "train" / "cls" / "a.png")
    with pytest.raises(DatasetLayoutError, match="no 'test/'"):
        load_data("imagefolder", notest, cache_dir=tmp_path)

    emptycls = tmp_path / "emptycls"
    _img(emptycls / "train" / "a" / "x.png")
    (emptycls / "train" / "b").mkdir()
    _img(emptycls / "test" / "a" / "y.png")
    with pytest.raises(DatasetLayoutError, match=r"without images.*\['b'\]"):
        load_data("imagefolder", emptycls, cache_dir=tmp_path)

    other = tmp_path / "other"
    _img(other / "train" / "a" / "x.png")
    _img(other / "test" / "zebra" / "y.png")
    with pytest.raises(DatasetLayoutError, match="zebra"):
        load_data("imagefolder", other, cache_dir=tmp_path)


def test_imagefolder_with_one_class_is_refused(tmp_path):
    one = tmp_path / "one"
    _img(one / "train" / "cats" / "x.png")
    _img(one / "test" / "cats" / "y.png")
    with pytest.raises(DatasetLayoutError, match=r"one class folder \('cats'\).*at least 2 classes"):
        load_data("imagefolder", one, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_data("synthetic", cache_dir=tmp_path, num_classes=1)


def test_split_folder_passed_as_root(cifar_slice, tmp_path):
    with pytest.raises(DatasetLayoutError, match="pass its parent"):
        load_data("imagefolder", cifar_slice / "train", cache_dir=tmp_path)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*cifar10_jpeg.py"):
        load_data("cifar10", tmp_path / "nowhere", cache_dir=tmp_path, download=False)


def test_bad_val_fraction(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        small_synth(tmp_path, val_fraction=1.0)
