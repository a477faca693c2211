"""The gradient criterion ``taylor`` (first-order Taylor importance, Molchanov et al. 2019): its scores equal a hand
computation with autograd, it scores transformer heads and widths, and it asks for labelled data by name."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoprune as ap
from autoprune.criteria.scoring import score_groups


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


def test_taylor_is_the_squared_sum_of_weight_times_gradient_averaged_over_batches():
    model = _cnn()
    batches = [(torch.randn(5, 3, 8, 8), torch.randint(0, 4, (5,))) for _ in range(2)]
    graph = ap.ChannelGraph(model, batches[0][0][:1])
    scores = score_groups(graph, "taylor", data=batches, num_batches=2, batch_size=5)
    ref = copy.deepcopy(model)
    want = torch.zeros(8, dtype=torch.float64)
    for x, y in batches:  # by hand: (sum over the filter of w * dL/dw)^2 per batch, then the mean
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        w, g = ref[0].weight, ref[0].weight.grad
        want += (w.double() * g.double()).flatten(1).sum(1).pow(2) / 2
    assert set(scores) == {"0", "3"}
    torch.testing.assert_close(scores["0"], want, rtol=1e-4, atol=1e-12)
    assert not any(p.grad is not None for p in model.parameters())  # scored on a copy: the model is untouched


def test_taylor_scores_transformer_heads_widths_and_needs_labels():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4,
                              depth=1).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    graph = ap.ChannelGraph(model, x[:1])
    scores = score_groups(graph, "taylor", data=[(x, y)])
    assert scores["blocks.0.attn:heads"].shape == (6,) and scores["blocks.0.attn:head_width"].shape == (64,)
    assert all(bool((s >= 0).all()) and s.std() > 0 for s in scores.values())
    with pytest.raises(ValueError, match="'taylor' is gradient-based and needs data"):
        score_groups(graph, "taylor")
    with pytest.raises(ValueError, match="'taylor' needs labels"):
        score_groups(graph, "taylor", data=torch.utils.data.DataLoader(x, batch_size=3))
