"""Bad input is refused with a message naming the problem and the fix (issue 21, items 6 and 8): NaN/Inf weights and
scores, example inputs of another size than the data, a prune that removes nothing, unreadable weights files and a
config path that is a directory."""
import random
import warnings

import pytest
import torch
import torch.nn as nn
import yaml
from torch.utils.data import TensorDataset

import autoprune as ap
from autoprune.build import load_weights
from autoprune.cli import main
from autoprune.criteria import get_criterion
from autoprune.criteria.kernels import ezcrop_ratio
from autoprune.criteria.base import WeightCriterion
from autoprune.graph.core import NonFiniteError, NothingToPruneWarning, check_finite
from autoprune.deploy.files import read_checkpoint
from autoprune.criteria.scoring import score_groups
from tiny_models import TINYNET, tiny_cnn

X32 = torch.zeros(1, 3, 32, 32)


def _config(tmp_path, weights=None, **model):
    (tmp_path / "tinynet.py").write_text(TINYNET)
    model = {"name": "tinynet:build", **({"weights": str(weights)} if weights is not None else {}), **model}
    raw = {"name": "t", "run_dir": str(tmp_path / "run"), "device": "cpu", "threads": 1, "model": model,
           "data": {"dataset": "synthetic", "image_size": 16, "options": {"train_per_class": 2, "test_per_class": 1}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _fails(argv, capsys, *needles):
    """The command exits with status 2 and one paragraph on stderr containing every needle, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for n in needles:
        assert n in err, (n, err)
    return err


def _tinynet_state(fill=None):
    ns = {}
    exec(TINYNET, ns)
    torch.manual_seed(0)
    sd = ns["build"]().state_dict()
    if fill is not None:
        sd = {k: torch.full_like(v, fill) if v.is_floating_point() else v for k, v in sd.items()}
    return sd


# ------------------------------------------------------------------------------------------ NaN / Inf weights


@pytest.mark.parametrize("cmd", [["prune", "--macs", "0.5", "--quiet"], ["search", "--dry-run", "--quiet"],
                                 ["sensitivity", "--quiet"], ["groups"]])
def test_every_command_refuses_a_nan_checkpoint(tmp_path, monkeypatch, capsys, cmd):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "nan.pt"
    torch.save(_tinynet_state(float("nan")), weights)
    cfg = _config(tmp_path, weights)
    _fails([cmd[0], str(cfg), *cmd[1:]], capsys, f"model.weights {weights}:", "tensors hold NaN or Inf",
           "0.weight, 1.weight", "more)", "corrupt or the training that produced them diverged")
    assert not (tmp_path / "run" / "pruned.pt").exists()


def test_a_diverged_pretraining_is_refused_and_not_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path, pretrain={"epochs": 1, "max_batches": 2, "batch_size": 8, "lr": 1e30})
    with pytest.warns(UserWarning, match="fine-tuning diverged"):
        _fails(["search", str(cfg), "--dry-run", "--quiet"], capsys, "model.pretrain (1 epoch(s) at lr 1e+30):",
               "tensors hold NaN or Inf", "smaller learning rate")
    assert not list(tmp_path.glob("run/**/base-*.pt"))


def test_only_the_bad_tensors_are_named_and_autoprune_files_are_checked_too(tmp_path):
    sd = _tinynet_state()
    sd["4.running_var"][3] = float("inf")  # a BatchNorm statistic: corrupt, not a mask
    path = tmp_path / "w.pt"
    torch.save({"state_dict": sd}, path)
    ns = {}
    exec(TINYNET, ns)
    with pytest.raises(NonFiniteError, match=r"w\.pt: 1 tensor holds NaN or Inf \(4\.running_var\)") as e:
        load_weights(ns["build"](), path)
    assert "0.weight" not in str(e.value)
    # an autoprune model file (pruned, saved with autoprune.save) goes through the same check
    model = ns["build"]()
    pruned = ap.ChannelGraph(model, torch.zeros(1, 3, 16, 16)).prune(0.5)
    with torch.no_grad():
        pruned.get_submodule("0").weight.fill_(float("nan"))
    ap.save(pruned, tmp_path / "pruned.pt")
    with pytest.raises(NonFiniteError, match=r"--weights .*pruned\.pt: 1 tensor holds NaN or Inf \(0\.weight\)"):
        load_weights(ns["build"](), tmp_path / "pruned.pt", what="--weights")


def _nan_model():
    m = tiny_cnn()
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("nan")
        m[5].running_mean[2] = float("inf")
    return m


def _data16(n=16, size=16):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 4)
    return ds, ds


@pytest.mark.parametrize("entry", ["ChannelGraph", "score", "prune_to_budget", "sensitivity"])
def test_api_entry_points_refuse_nonfinite_weights(tmp_path, entry):
    m = _nan_model()
    data = _data16(size=32)
    call = {
        "ChannelGraph": lambda: ap.ChannelGraph(m, X32),
        "score": lambda: ap.score(m, criterion="l1", example_inputs=X32),
        "prune_to_budget": lambda: ap.prune_to_budget(m, data, macs=0.5, criterion="l1", allocation="uniform",
                                                      finetune_epochs=0, progress=False),
        "sensitivity": lambda: ap.sensitivity(m, data, cache_dir=tmp_path / "cache", progress=False),
    }[entry]
    with pytest.raises(NonFiniteError, match=r"^model: 2 tensors hold NaN or Inf \(0\.weight, 5\.running_mean\)"):
        call()
    assert not (tmp_path / "cache").exists()


def test_an_infinite_mask_buffer_is_not_corruption_but_nan_is():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)
            self.register_buffer("mask", torch.tensor([0.0, float("-inf")]))

        def forward(self, x):
            return self.head(self.conv(x)).mean((2, 3)) + self.mask.clamp(min=-1e4)

    m = Masked()
    graph = ap.ChannelGraph(m, X32)  # -inf in a mask buffer is a value, not corruption
    assert [g.name for g in graph.prunable_groups] == ["conv"]
    m.mask[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"1 tensor holds NaN or Inf \(mask\)"):
        check_finite(m)


# ------------------------------------------------------------------------------------------ NaN scores


class _NaNForConv(WeightCriterion):
    """l1, but NaN for the layer named ``bad``."""

    name = "nan_for_conv"

    def __init__(self, bad):
        self.bad = bad

    def score_weight(self, module, name=None):
        s = module.weight.detach().abs().flatten(1).sum(1).to(torch.float64)
        return torch.full_like(s, float("nan")) if name == self.bad else s


def test_nan_scores_from_a_criterion_name_the_criterion_and_group():
    graph = ap.ChannelGraph(tiny_cnn(), X32)
    with pytest.raises(NonFiniteError, match=r"criterion 'nan_for_conv': NaN or -Inf scores for 1 channel group "
                                             r"\('4'\), so their channels cannot be ordered"):
        score_groups(graph, _NaNForConv("4"))
    with pytest.raises(NonFiniteError, match="criterion 'nan_for_conv'.*'4'"):
        graph.prune(0.5, _NaNForConv("4"))
    # scores handed to prune/plan are checked too; +inf (ranked above every finite score) is a valid score
    scores = score_groups(graph, "l1")
    with pytest.raises(NonFiniteError, match=r"ChannelGraph.plan: NaN or -Inf scores for 1 channel group \('8'\)"):
        graph.plan(0.5, {**scores, "8": torch.full((16,), float("nan"))})
    keep_first = {**scores, "0": torch.tensor([float("inf")] + [0.0] * 7, dtype=torch.float64)}
    assert 0 not in graph.plan(0.5, keep_first)["0"]


def test_nan_images_are_refused_when_scoring():
    x = torch.randn(8, 3, 32, 32)
    x[3, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"training batch 0 holds NaN or Inf images.*\['tt'\]"):
        ap.score(tiny_cnn(), [(x, torch.arange(8) % 2)], "tt", num_batches=1, batch_size=8)


def test_criteria_keep_nan_features_nan_instead_of_ranking_them_last():
    f = torch.rand(8, 4, 6, 6)
    f[:, 3] = 0.0  # a dead channel: 0/0 with eps=0 stays a score of 0 (docs/criteria.md)
    f[0, 1, 2, 2] = float("nan")
    y = torch.arange(8) % 2
    assert torch.isnan(ezcrop_ratio(f)[0, 1]) and ezcrop_ratio(f)[1:, 1].isfinite().all()
    assert ezcrop_ratio(torch.zeros(2, 6, 6)).tolist() == [0.0, 0.0]
    for name in ("tt", "snr", "fdr", "sd"):
        crit = get_criterion(name, eps=0.0)
        state = crit.init()
        crit.update(state, f, y)
        s = crit.finalize(state)
        assert torch.isnan(s[1]) and s[[0, 2]].isfinite().all() and s[3] == 0, (name, s)
    hrank = get_criterion("hrank")
    with pytest.raises(ValueError, match="hrank: the feature maps hold NaN or Inf"):
        hrank.update(hrank.init(), f, y)


# ------------------------------------------------------------------------------------------ input size


@pytest.mark.parametrize("entry", ["prune_to_budget", "sensitivity", "compare_criteria"])
def test_example_inputs_of_another_size_than_the_data_is_refused(tmp_path, entry):
    data = _data16(size=16)
    m = tiny_cnn()
    call = {
        "prune_to_budget": lambda: ap.prune_to_budget(m, data, macs=0.5, criterion="l1", allocation="uniform",
                                                      finetune_epochs=0, example_inputs=X32, progress=False),
        "sensitivity": lambda: ap.sensitivity(m, data, example_inputs=(X32,), cache_dir=False, progress=False),
        "compare_criteria": lambda: ap.compare_criteria(m, data, ["l1"], example_inputs=X32, progress=False),
    }[entry]
    with pytest.raises(ValueError, match=rf"{entry}: example_inputs has shape \[1, 3, 32, 32\] .* one input of the "
                                         r"data has shape \[3, 16, 16\]: MACs would be counted for inputs the model "
                                         r"never sees. Pass example_inputs=torch.zeros\(1, 3, 16, 16\)"):
        call()


def test_example_inputs_of_the_data_size_give_the_macs_of_that_size():
    data = _data16(size=16)
    res = ap.prune_to_budget(tiny_cnn(), data, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=0,
                             example_inputs=torch.zeros(1, 3, 16, 16), progress=False)
    assert res.base_macs == ap.count_macs(tiny_cnn(), torch.zeros(1, 3, 16, 16))
    default = ap.prune_to_budget(tiny_cnn(), data, macs=0.5, criterion="l1", allocation="uniform",
                                 finetune_epochs=0, progress=False)  # example_inputs from the data
    assert default.base_macs == res.base_macs < ap.count_macs(tiny_cnn(), X32)


# ------------------------------------------------------------------------------------------ nothing to prune


def _prune_warnings(graph, ratio):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pruned = graph.prune(ratio)
    return pruned, [x for x in w if issubclass(x.category, NothingToPruneWarning)]


def test_prune_that_removes_nothing_warns_why():
    head_only = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    graph = ap.ChannelGraph(head_only, torch.zeros(1, 3, 2, 2))
    assert not graph.prunable_groups
    pruned, w = _prune_warnings(graph, 0.5)
    assert len(w) == 1 and "no prunable channel group" in str(w[0].message)
    assert "1: model output" in str(w[0].message) and "register_channel_rule" in str(w[0].message)
    assert w[0].filename == __file__  # points at the caller's line
    assert pruned.get_submodule("1").weight.shape == (4, 12)

    graph = ap.ChannelGraph(tiny_cnn(), X32)
    _, w = _prune_warnings(graph, 0.05)  # floor(0.05 * 16) == 0 for every group
    assert len(w) == 1 and "less than one channel" in str(w[0].message) and "1/16" in str(w[0].message)
    _, w = _prune_warnings(graph, 0.0)  # asked for nothing: no warning
    assert not w
    pruned, w = _prune_warnings(graph, 0.5)
    assert not w and pruned.get_submodule("0").out_channels == 4


# ------------------------------------------------------------------------------------------ files


def test_weights_files_that_are_no_checkpoint_get_their_true_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00junk" + random.Random(0).randbytes(4096))  # neither a zip nor a pickle
    _fails(["groups", str(_config(tmp_path, junk))], capsys, "model.weights", str(junk),
           "is not a PyTorch checkpoint (not a zip/pickle file")
    folder = tmp_path / "weights"
    folder.mkdir()
    err = _fails(["groups", str(_config(tmp_path, folder))], capsys, "model.weights", str(folder),
                 "is a directory, not a weights file")
    assert "truncated" not in err and "bytes" not in err
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt \(0 bytes\): it is empty"):
        read_checkpoint(empty, "model.weights")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state_dict: still named so
    with pytest.raises(ValueError, match="module.pt .*holds pickled objects that weights_only loading refuses"):
        read_checkpoint(tmp_path / "module.pt", "model.weights")


@pytest.mark.parametrize("cmd", ["prune", "search"])
def test_config_path_that_is_a_directory(tmp_path, capsys, cmd):
    _config(tmp_path)
    err = _fails([cmd, str(tmp_path)], capsys, f"config path '{tmp_path}' is a directory; give one of its YAML "
                                               "files (cfg.yaml)")
    assert "Errno" not in err
