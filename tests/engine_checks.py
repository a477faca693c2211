"""Shared checks for engine tests: one graph per model, every property the zoo tests assert.

``check_model`` builds the graph once and checks, in order: pruning at ``ratio`` runs and keeps output shapes; the
cost model equals fvcore's count on the model and on the pruned model; ratio 0 reproduces the outputs; and cutting
channels whose outgoing weights were zeroed leaves the outputs unchanged while cutting others moves them.
"""
from __future__ import annotations

import numpy as np
import torch

from autoprune import ChannelGraph, count_macs


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _flat(o)]


def randomise_norms(model: torch.nn.Module, seed: int = 2) -> None:
    """Fresh norm layers are identities; random statistics make the checks sensitive to which channels are cut.
    Layer scales (ConvNeXt starts them at 1e-6, CaiT at 1e-5) are set to 1 so that branches matter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
        if isinstance(rm, torch.Tensor) and isinstance(rv, torch.Tensor) and rm.dim() == 1:
            rm.copy_(torch.randn(rm.shape, generator=g) * 0.1)
            rv.copy_(torch.rand(rv.shape, generator=g) + 0.5)
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(rm, torch.Tensor) and isinstance(w, torch.Tensor) and w.dim() == 1:
            w.data.copy_(torch.rand(w.shape, generator=g) + 0.5)
            if isinstance(b, torch.Tensor):
                b.data.copy_(torch.randn(b.shape, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if name.endswith(("layer_scale", "gamma", "gamma_1", "gamma_2")) and p.dim() >= 1:
            p.data.fill_(1.0)


def check_model(model: torch.nn.Module, x, *, ratio: float = 0.3, approximate: bool = False,
                min_drop: float | None = None, teeth: bool = True, graph: ChannelGraph | None = None,
                count_original: bool = True):
    """Run every check on ``model`` (in eval mode); returns (graph, MAC fraction removed at ``ratio``).

    One graph and three prunings: ``ratio`` of each group's channels, chosen at random, whose outgoing weights were
    zeroed first (output shapes kept, cost model == fvcore on the pruned model, outputs unchanged); the same
    number of other channels (outputs must move: the check has teeth); ratio 0 (outputs identical)."""
    model.eval()
    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        ref = _flat(model(*xs))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = graph or ChannelGraph(model, x, approximate=approximate)
    assert graph.prunable_groups, "no prunable group:\n" + graph.summary()

    full = graph.macs()  # fvcore's count of the traced model, unless the cost model matches it exactly
    if count_original:
        assert full == count_macs(model, x)

    with torch.no_grad():
        same = _flat(graph.prune(0.0)(*xs))
    for a, b in zip(same, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)

    rng = np.random.default_rng(0)
    dead = {}
    for g in graph.prunable_groups:
        k = int(ratio * g.channels + 1e-9)
        if k:
            dead[g.name] = sorted(rng.choice(g.channels, size=k, replace=False).tolist())
    mods = dict(graph.gm.named_modules())
    with torch.no_grad():
        for module, dim, idx in graph.consumer_slices(dead):
            mods[module].weight.data.index_fill_(dim, torch.tensor(idx), 0.0)
        for module, dim, idx in graph.contracted_slices(dead):  # q/k widths: no reader, zero their writers
            mods[module].weight.data.index_fill_(dim, torch.tensor(idx), 0.0)
            if getattr(mods[module], "bias", None) is not None:
                mods[module].bias.data.index_fill_(0, torch.tensor(idx), 0.0)
        want = _flat(graph.gm(*xs))
        pruned = graph.prune_channels(dead)
        got = _flat(pruned(*xs))
    assert [o.shape for o in got] == [r.shape for r in ref]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the original was modified"
    for a, b in zip(got, want):
        scale = b.abs().max().item() + 1e-6
        assert torch.allclose(a, b, atol=1e-4 * scale, rtol=1e-4), (a - b).abs().max()

    after = count_macs(pruned, x)
    assert graph.macs(dead) == after
    drop = 1 - after / full
    if min_drop is not None:
        assert drop >= min_drop, f"only {drop:.1%} of MACs removed:\n" + graph.summary()

    if teeth and dead:
        other = {n: [i for i in range(graph.group(n).channels) if i not in idx][: len(idx)] for n, idx in dead.items()}
        with torch.no_grad():
            moved = _flat(graph.prune_channels(other)(*xs))
        assert any(not torch.allclose(a, b, atol=1e-4 * (b.abs().max().item() + 1e-6), rtol=1e-4)
                   for a, b in zip(moved, want)), "cutting live channels did not change the outputs"
    return graph, drop
