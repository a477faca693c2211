"""Group scores: weight criteria per producer, activation criteria from one tapped pass, and the criteria study."""
import pytest
import torch

import autoprune as ap
from autoprune.criteria import get_criterion
from autoprune.data import load_data


@pytest.fixture(scope="module")
def tiny():
    data = load_data("synthetic", num_train=200, train_per_class=30, test_per_class=5, device="cpu")
    model = ap.get_model("resnet20", num_classes=data.num_classes).eval()
    return model, data


def test_weight_scores_are_the_producer_scores(tiny):
    model, _ = tiny
    scores = ap.score(model, criterion="l1", example_inputs=torch.zeros(1, 3, 32, 32))
    want = model.layer1[0].conv1.weight.detach().abs().sum((1, 2, 3)).double()
    assert torch.allclose(scores["layer1.0.conv1"], want)
    # A stage-1 residual unit is channel c of the stem and of each stage-1 block's last conv, and (through the
    # option-A zero padding) channel c+8 of stage 2's and c+24 of stage 3's: its score averages all of them.
    mods = dict(model.named_modules())
    l1 = lambda name: mods[name].weight.detach().abs().sum((1, 2, 3)).double()  # noqa: E731
    c = torch.arange(16)
    parts = [l1("conv1")] + [l1(f"layer1.{i}.conv2") for i in range(3)]
    parts += [l1(f"layer2.{i}.conv2")[c + 8] for i in range(3)] + [l1(f"layer3.{i}.conv2")[c + 24] for i in range(3)]
    assert torch.allclose(scores["conv1"], torch.stack(parts).mean(0))


def test_activation_scores_match_a_direct_hook(tiny):
    model, data = tiny
    batches = [(x, y) for x, _ in [(None, None)] for x, y in data.train.batches(16)][:2]
    scores = ap.score(model, batches, "hrank", num_batches=None, device="cpu", num_classes=data.num_classes)
    crit = get_criterion("hrank")
    state = crit.init(channels=16, num_classes=10, device="cpu")
    maps = []
    h = model.layer1[0].relu1.register_forward_hook(lambda m, i, o: maps.append(o.clone()))
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    h.remove()
    for m in maps:
        crit.update(state, m)
    assert torch.allclose(scores["layer1.0.conv1"], crit.finalize(state))


def test_several_activation_criteria_in_one_pass_and_prune(tiny):
    model, data = tiny
    graph = ap.ChannelGraph(model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="needs data"):
        graph.prune(0.3, criterion="ezcrop")
    pruned = graph.prune(0.3, criterion="tt", data=data, num_batches=1, device="cpu")
    assert ap.count_macs(pruned, torch.zeros(1, 3, 32, 32)) < graph.macs()


def test_compare_criteria_table(tiny, tmp_path):
    model, data = tiny
    res = ap.compare_criteria(model, data, ["l1", "random", "ezcrop"], ratios=(0.3, 0.6), bn_batches=1,
                              score_batches=1, progress=False)
    assert {(r.criterion, r.ratio) for r in res.rows} == {(c, r) for c in ("l1", "random", "ezcrop") for r in (0.3, 0.6)}
    macs = {r.ratio: r.macs for r in res.rows}
    assert macs[0.6] < macs[0.3] < res.base_macs
    assert "| l1 |" in res.table()
    res.plot(str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000
