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


def zero_columns(mods: dict, module: str, dim: int, idx: list) -> None:
    """Zero the input columns ``idx`` of a layer, or (``"attn:q"``, ``:k``, ``:v``) of one projection of an attention
    module (timm's Attention: its packed qkv Linear; nn.MultiheadAttention: its in_proj or q/k/v_proj weights)."""
    cols = torch.tensor(idx)
    name, _, part = module.partition(":")
    m = mods[name]
    if not part:
        m.weight.data.index_fill_(dim, cols, 0.0)
    elif isinstance(m, torch.nn.MultiheadAttention):
        if m.in_proj_weight is not None:
            e = m.embed_dim
            k = "qkv".index(part)
            m.in_proj_weight.data[k * e:(k + 1) * e].index_fill_(1, cols, 0.0)
        else:
            getattr(m, f"{part}_proj_weight").data.index_fill_(1, cols, 0.0)
    else:  # a packed qkv layer; LeViT's attention: each LinearNorm (a Linear then BatchNorm1d) reading the input
        for layer in [getattr(m, n, None) for n in ("qkv", "kv")] + [getattr(getattr(m, "q", None), "ln", None)]:
            if layer is not None:
                getattr(layer, "linear", layer).weight.data.index_fill_(1, cols, 0.0)


def zero_rows(m: torch.nn.Module, dim: int, idx: list) -> None:
    """Zero output rows ``idx`` (along weight dim ``dim``) of a layer and its bias; for nn.MultiheadAttention, rows of
    its packed q, k, v projections (``[3 * embed_dim]``)."""
    if isinstance(m, torch.nn.MultiheadAttention):
        rows = torch.tensor(idx)
        if m.in_proj_weight is not None:
            m.in_proj_weight.data.index_fill_(0, rows, 0.0)
        else:
            for part, w in enumerate((m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)):
                inner = w.shape[0]
                sel = rows[(rows >= part * inner) & (rows < (part + 1) * inner)] - part * inner
                w.data.index_fill_(0, sel, 0.0)
        if m.in_proj_bias is not None:
            m.in_proj_bias.data.index_fill_(0, rows, 0.0)
        return
    m.weight.data.index_fill_(dim, torch.tensor(idx), 0.0)
    if getattr(m, "bias", None) is not None:
        m.bias.data.index_fill_(0, torch.tensor(idx), 0.0)


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
            zero_columns(mods, module, dim, idx)
        for module, dim, idx in graph.contracted_slices(dead):  # q/k widths, heads: no reader, zero their writers
            zero_rows(mods[module], dim, idx)
            parent = mods.get(module.rpartition(".")[0])  # LeViT's LinearNorm: its BatchNorm1d writes the rows
            if module.endswith(".linear") and isinstance(getattr(parent, "bn", None), torch.nn.BatchNorm1d):
                zero_rows(parent.bn, 0, idx)
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
