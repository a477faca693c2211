"""Every data form (DataBundle, map-style Dataset, DataLoader, (train, val) pairs) through every public function that
takes ``data``, and the errors for data a classifier cannot use."""
import warnings

import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import autoprune as ap
from autoprune.data.adapter import as_bundle

K = 4  # classes


def tiny_cnn(num_classes: int = K) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    ).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return ap.load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data"), device="cpu", num_classes=K,
                        train_per_class=12, test_per_class=6, image_size=8, val_fraction=0.25)


def _tensors(split):
    x, y = zip(*split.batches(1024))
    return torch.cat(x), torch.cat(y)


@pytest.fixture(scope="module")
def forms(bundle):
    """The bundle's own (normalised) images in every form, so that every form measures the same thing."""
    train, val = TensorDataset(*_tensors(bundle.train)), TensorDataset(*_tensors(bundle.val))
    return {
        "bundle": bundle,
        "dataset": val,
        "loader": DataLoader(val, batch_size=8),
        "pair of loaders": (DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=8)),
        "pair of datasets": (train, val),
    }


FORMS = ["bundle", "dataset", "loader", "pair of loaders", "pair of datasets"]
SINGLE = {"dataset", "loader"}  # one object serves as train and val: measuring functions warn


def test_evaluate_measures_the_same_images_in_every_form(forms):
    model = tiny_cnn()
    results = {name: ap.evaluate(model, forms[name]) for name in FORMS}
    assert {r.n for r in results.values()} == {len(forms["dataset"])}
    acc = {round(r.accuracy, 9) for r in results.values()}
    loss = {round(r.loss, 4) for r in results.values()}
    assert len(acc) == 1 and len(loss) == 1, results


@pytest.mark.parametrize("form", FORMS)
def test_finetune_every_form(forms, form):
    model = tiny_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    res = ap.finetune(model, forms[form], epochs=2, lr=0.05, batch_size=8, max_batches=1, progress=False)
    assert res.steps == 2 and res.images > 0 and torch.isfinite(torch.tensor(res.final_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not model.training


def test_finetune_on_a_dataset_is_reproducible(forms):
    runs = []
    for _ in range(2):
        model = tiny_cnn()
        ap.finetune(model, forms["pair of datasets"], batch_size=8, max_batches=3, seed=3, progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*runs)


@pytest.mark.parametrize("form", FORMS)
def test_score_every_form_without_num_classes(forms, form):
    model = tiny_cnn()
    for criterion in ("hrank", "tt"):  # no labels used / class-aware: class count from the labels
        scores = ap.score(model, forms[form], criterion=criterion, num_batches=2, batch_size=8, device="cpu")
        assert set(scores) and all(s.shape == (8,) and torch.isfinite(s).all() for s in scores.values())


def test_loader_and_dataset_give_the_same_scores(forms):
    model = tiny_cnn()
    kw = dict(criterion="hrank", num_batches=None, batch_size=8, device="cpu")
    a = ap.score(model, forms["loader"], **kw)
    b = ap.score(model, forms["dataset"], **kw)  # shuffled internally: HRank is a mean over images
    assert all(torch.allclose(a[g], b[g]) for g in a)


def test_class_aware_scores_do_not_depend_on_absent_classes(forms):
    x, y = forms["dataset"].tensors
    keep = y < 2  # only classes 0 and 1 present; the model has K outputs
    loader = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=8)
    model = tiny_cnn()
    for criterion in ("tt", "fdr", "di"):
        inferred = ap.score(model, loader, criterion=criterion, num_batches=None, device="cpu")
        given = ap.score(model, loader, criterion=criterion, num_batches=None, device="cpu", num_classes=K)
        assert all(torch.allclose(inferred[g], given[g]) for g in given)


@pytest.mark.parametrize("form", FORMS)
def test_sensitivity_every_form(forms, form):
    model = tiny_cnn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = ap.sensitivity(model, forms[form], ratios=(0.5,), bn_batches=1, bn_batch_size=8, cache_dir=False,
                               progress=False)
    optimistic = [w for w in caught if "optimistic" in str(w.message)]
    assert len(optimistic) == (1 if form in SINGLE else 0)
    assert len(table.rows) == len(table.groups) >= 1 and table.eval_n == len(forms["dataset"])


def test_sensitivity_cache_is_keyed_by_the_data_contents(forms, tmp_path):
    model = tiny_cnn()
    train, val = forms["pair of datasets"]
    kw = dict(ratios=(0.5,), bn_batches=1, bn_batch_size=8, cache_dir=tmp_path, progress=False)
    assert not ap.sensitivity(model, (train, val), **kw).from_cache
    assert ap.sensitivity(model, (train, TensorDataset(*[t.clone() for t in val.tensors])), **kw).from_cache
    x, y = val.tensors
    assert not ap.sensitivity(model, (train, TensorDataset(x, (y + 1) % K)), **kw).from_cache


@pytest.mark.parametrize("form", FORMS)
def test_prune_to_budget_every_form(forms, form):
    model = tiny_cnn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ap.prune_to_budget(model, forms[form], macs=0.6, criterion="l1", allocation="uniform",
                                 finetune_epochs=1, finetune_kwargs={"batch_size": 8, "max_batches": 2},
                                 progress=False)
    assert res.macs <= 0.6 * res.base_macs and 0.0 <= res.accuracy <= 1.0
    assert sum("optimistic" in str(w.message) for w in caught) == (1 if form in SINGLE else 0)


def test_prune_to_budget_with_a_sensitivity_allocation_on_loaders(forms):
    res = ap.prune_to_budget(tiny_cnn(), forms["pair of loaders"], macs=0.7, criterion="hrank",
                             finetune_epochs=0, sensitivity_kwargs={"ratios": (0.3, 0.6), "cache_dir": False},
                             score_kwargs={"num_batches": 2}, progress=False)
    assert res.macs <= 0.7 * res.base_macs and res.sensitivity is not None


def test_compare_criteria_on_a_pair(forms):
    res = ap.compare_criteria(tiny_cnn(), forms["pair of loaders"], ["l1", "hrank"], ratios=(0.5,), bn_batches=1,
                              progress=False)
    assert {r.criterion for r in res.rows} == {"l1", "hrank"}


# ---------------------------------------------------------------------------------------------------- errors


class _PILDataset(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return Image.new("RGB", (8, 8)), 0


def test_data_a_classifier_cannot_use_gets_a_clear_message(forms):
    model = tiny_cnn()
    x, y = forms["dataset"].tensors
    with pytest.raises(ValueError, match=f"a label is 9 but the model outputs {K} logits"):
        ap.evaluate(model, TensorDataset(x, torch.full((len(x),), 9)))
    with pytest.raises(TypeError, match="uint8 images.*float"):
        ap.evaluate(model, TensorDataset(x.to(torch.uint8), y))
    with pytest.raises(TypeError, match="PIL.*ToTensor"):
        ap.evaluate(model, _PILDataset())
    with pytest.raises(TypeError, match=r"argmax"):
        ap.finetune(model, DataLoader(TensorDataset(x, nn.functional.one_hot(y, K).float()), batch_size=8),
                    progress=False)
    with pytest.raises(TypeError, match="TensorDataset"):
        ap.evaluate(model, (x, y))
    with pytest.raises(ValueError, match="no 'test' split"):
        ap.evaluate(model, forms["pair of datasets"], split="test")
    with pytest.raises(ValueError, match="without labels; evaluation needs"):
        ap.evaluate(model, DataLoader(x, batch_size=8))
    with pytest.raises(ValueError, match=r"\['tt'\] compare classes and need labels"):
        ap.score(model, DataLoader(x, batch_size=8), criterion="tt", device="cpu")
    assert ap.score(model, DataLoader(x, batch_size=8), criterion="hrank", device="cpu")  # no labels needed


def test_a_dataset_naming_its_classes_is_checked_against_the_model(forms):
    class Named(TensorDataset):
        classes = ["a", "b", "c"]

    ds = Named(*forms["dataset"].tensors)
    assert as_bundle(ds).num_classes == 3 and as_bundle(DataLoader(ds)).num_classes == 3
    with pytest.raises(ValueError, match=f"model outputs {K} logits per image but the data has 3 classes"):
        ap.evaluate(tiny_cnn(), ds)


def test_adapter_shapes_and_pass_through(bundle, forms):
    assert as_bundle(bundle) is bundle
    b = as_bundle(forms["pair of loaders"])
    assert b.held_out and b.test is None and b.input_shape == (3, 8, 8) and b.num_classes is None
    assert not as_bundle(forms["loader"]).held_out
    with pytest.raises(TypeError, match="DataLoader"):
        as_bundle(3)
