"""ChannelGraph: the public face of the engine."""
from __future__ import annotations

import copy
import math
import warnings
import difflib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from .._lineage import lineage_of, set_lineage
from .analysis import Analysis, analyse
from .flops import count_macs
from .groups import ChannelGroup, build_groups
from .attention_rules import site_macs
from .surgery import Keep, apply_pruning, expected_shape
from .trace import trace

__all__ = ["ChannelGraph", "as_inputs", "check_finite", "check_scores", "NonFiniteError", "NothingToPruneWarning",
           "set_group_scorer"]


class NonFiniteError(ValueError):
    """A model's weights (parameters or buffers such as BatchNorm running statistics), or channel scores, hold NaN or
    Inf: scores, pruning, MAC budgets and accuracies computed from them would be meaningless."""


class NothingToPruneWarning(UserWarning):
    """:meth:`ChannelGraph.prune` was asked for a ratio above 0 but removed no channel (no prunable group, or ratios
    too small to remove one channel of any group): the model comes back unchanged."""


#: Scores channels for :meth:`ChannelGraph.prune` and :meth:`ChannelGraph.removal_for` given a criterion name:
#: ``scorer(graph, criterion, data=..., groups=[names], **criterion_kwargs) -> {group: scores}``. The engine knows
#: nothing of criteria (a lower layer); :mod:`autoprune.criteria.scoring` fills this slot when it is imported, which
#: ``import autoprune`` always does.
GroupScorer = Callable[..., "dict[str, torch.Tensor]"]
_group_scorer: list[GroupScorer] = []


def set_group_scorer(scorer: GroupScorer) -> None:
    """Install the function that turns a criterion name into channel scores (see :data:`GroupScorer`)."""
    _group_scorer[:] = [scorer]


def _score(graph: "ChannelGraph", criterion: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    if not _group_scorer:
        raise RuntimeError("no channel scorer is installed: import autoprune (or autoprune.criteria.scoring) before "
                           "asking ChannelGraph for a criterion, or pass scores=")
    return _group_scorer[0](graph, criterion, **kwargs)


_NORM_BUFFERS = (nn.modules.batchnorm._NormBase,)  # BatchNorm / InstanceNorm running statistics


def _nonfinite_names(model: nn.Module) -> list[str]:
    """Names of the parameters holding NaN or Inf, and of the buffers holding NaN (or Inf, for the running statistics
    of norm layers; elsewhere an infinite value can be legitimate, e.g. -inf in an attention mask)."""
    def bad(t: Any, inf_too: bool) -> bool:
        if not isinstance(t, torch.Tensor) or t.is_meta or isinstance(t, nn.parameter.UninitializedTensorMixin):
            return False
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            return False
        with torch.no_grad():
            return bool(~torch.isfinite(t).all()) if inf_too else bool(torch.isnan(t).any())

    names = [n for n, p in model.named_parameters() if bad(p, True)]
    for mname, m in model.named_modules():
        inf_too = isinstance(m, _NORM_BUFFERS)
        names += [f"{mname}.{b}" if mname else b for b, t in m.named_buffers(recurse=False) if bad(t, inf_too)]
    return names


def check_finite(model: nn.Module, what: str = "model") -> None:
    """Raise :class:`NonFiniteError` naming the tensors of ``model`` that hold NaN or Inf (parameters, and buffers
    such as BatchNorm running statistics; a buffer outside a norm layer may hold -inf, e.g. an attention mask, but
    never NaN). ``what`` names the model in the message (``"model"``, ``"model.weights w.pt"``...).

    The one check of every entry point that takes weights: :func:`autoprune.build.load_weights` (every command),
    :class:`ChannelGraph` (hence :func:`autoprune.score`, :func:`autoprune.prune_to_budget`, ...) and
    :func:`autoprune.sensitivity`."""
    names = _nonfinite_names(model)
    if not names:
        return
    n = len(names)
    shown = ", ".join(names[:4]) + (f", ... ({n - 4} more)" if n > 4 else "")
    raise NonFiniteError(
        f"{what}: {n} tensor{'s hold' if n != 1 else ' holds'} NaN or Inf ({shown}): the weights are corrupt or the "
        "training that produced them diverged; load a checkpoint saved before the loss became NaN (or retrain, e.g. "
        "with a smaller learning rate). Scores, pruning and accuracies of such a model would be meaningless")


def check_scores(scores: Mapping[str, Any], source: str) -> None:
    """Raise :class:`NonFiniteError` when the channel scores of a group ({group: tensor}) hold NaN or -Inf, which
    give no order of the channels (+Inf is a valid score: a channel ranked above every finite one, as the
    discrimination criteria give a perfectly separating channel with ``eps=0``). ``source`` names where the scores
    come from (``"criterion 'l1'"``, ``"ChannelGraph.plan"``)."""
    bad = []
    for name, s in scores.items():
        t = torch.as_tensor(s)
        if t.is_floating_point() and bool((torch.isnan(t) | torch.isneginf(t)).any()):
            bad.append(name)
    if not bad:
        return
    n = len(bad)
    shown = ", ".join(repr(b) for b in bad[:4]) + (f", ... ({n - 4} more)" if n > 4 else "")
    raise NonFiniteError(
        f"{source}: NaN or -Inf scores for {n} channel group{'s' if n != 1 else ''} ({shown}), so their channels "
        "cannot be ordered: the model's weights or the data hold NaN/Inf, or the criterion is numerically unstable "
        "on them (e.g. eps=0); check the data (torch.isfinite(x).all() on a batch) and the criterion's parameters")


def as_inputs(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


class ChannelGraph:
    """Channel dependency analysis of ``model`` on ``example_inputs``; the model itself is never modified.

    >>> graph = ChannelGraph(model, torch.randn(1, 3, 32, 32))
    >>> [g.name for g in graph.groups if g.prunable]
    >>> pruned = graph.prune(0.3, criterion="l1")

    ``approximate=True`` also prunes through layers where removing a channel changes the others a little
    (LayerNorm over the channel dim, as in ConvNeXt); every group it affects lists it in ``group.approximate``.
    Never the default.

    A model whose weights hold NaN or Inf is refused (:func:`check_finite`); :meth:`prune` warns
    (:class:`NothingToPruneWarning`) when a ratio above 0 removes no channel.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *, approximate: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_finite(model)
        self.example_inputs = as_inputs(example_inputs)
        self._training = model.training
        self._lineage = lineage_of(model)
        base = copy.deepcopy(model).eval()
        self.gm = trace(base, len(self.example_inputs), self.example_inputs)
        self.analysis: Analysis = analyse(self.gm, self.example_inputs, approximate=bool(approximate))
        self.groups: list[ChannelGroup] = build_groups(self.analysis)
        self._by_name = {g.name: g for g in self.groups}
        self._macs_exact: bool | None = None

    # -- introspection -------------------------------------------------------------------------------------------
    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def group(self, name: str) -> ChannelGroup:
        """The group called ``name`` (KeyError with close matches otherwise)."""
        try:
            return self._by_name[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._by_name), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; groups: {', '.join(self._by_name)}"
            raise KeyError(f"no channel group named {name!r}{hint}") from None

    def summary(self) -> str:
        """A table of the groups: name, channels, prunable or why locked."""
        rows = [f"{'group':40s} {'channels':>8s}  status"]
        for g in self.groups:
            state = "prunable" if g.prunable else "locked: " + str(g.reason)
            if g.approximate:
                state += " (approximate: " + "; ".join(g.approximate) + ")"
            rows.append(f"{g.name:40s} {g.channels:8d}  {state}")
        return "\n".join(rows)

    # -- pruning -------------------------------------------------------------------------------------------------
    def resolve_ratios(self, ratios: float | Mapping[str, float]) -> dict[str, float]:
        """Validate ``ratios`` (one float for every prunable group, or {group name: ratio})."""
        if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
            _check_ratio("ratio", ratios)
            return {g.name: float(ratios) for g in self.prunable_groups}
        if not isinstance(ratios, Mapping):
            raise TypeError("ratios must be a float or a mapping {group name: ratio}")
        out = {}
        for name, r in ratios.items():
            g = self.group(name)
            _check_ratio(f"ratio for {name!r}", r)
            if not g.prunable and r > 0:
                raise ValueError(f"group {name!r} is locked and cannot be pruned: {g.reason}")
            if g.prunable:
                out[name] = float(r)
        return out

    def plan(self, ratios: float | Mapping[str, float], scores: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        """Channels to remove per group: ``floor(ratio * channels)`` lowest scores (stable sort, so ties keep order)."""
        removal = {}
        for name, r in self.resolve_ratios(ratios).items():
            g = self._by_name[name]
            n = min(int(math.floor(r * g.channels + 1e-9)), g.channels - 1)
            if n <= 0:
                continue
            s = torch.as_tensor(scores[name], dtype=torch.float64).cpu()
            if s.shape != (g.channels,):
                raise ValueError(f"scores for {name!r} have shape {tuple(s.shape)}, expected ({g.channels},)")
            check_scores({name: s}, "ChannelGraph.plan")
            order = torch.sort(s, stable=True).indices
            removal[name] = sorted(order[:n].tolist())
        return removal

    def prune(self, ratios: float | Mapping[str, float], criterion: str = "l1", *, data: Any = None,
              scores: Mapping[str, torch.Tensor] | None = None, **criterion_kwargs: Any) -> nn.Module:
        """Return a new, physically smaller model; the original is untouched.

        ``ratios``: one float in [0, 1) for every prunable group, or {group name: ratio}. ``criterion``: a registered
        criterion name (weight-based ones need no data; activation-based ones take ``data``, an iterable of
        ``(x, y)`` batches or a DataBundle). ``scores`` ({group: tensor}) bypasses the criterion.
        """
        resolved = self.resolve_ratios(ratios)
        if scores is None:
            needed = [n for n, r in resolved.items() if math.floor(r * self._by_name[n].channels + 1e-9) > 0]
            scores = _score(self, criterion, data=data, groups=needed, **criterion_kwargs) if needed else {}
        removal = self.plan(resolved, scores)
        self._warn_if_nothing_removed(ratios, resolved, removal)
        return self.prune_channels(removal)

    def _warn_if_nothing_removed(self, ratios: Any, resolved: Mapping[str, float],
                                 removal: Mapping[str, Sequence[int]]) -> None:
        """:class:`NothingToPruneWarning` when a ratio above 0 was asked and no channel goes."""
        asked = ratios > 0 if isinstance(ratios, (int, float)) else any(r > 0 for r in ratios.values())
        if not asked or any(len(v) for v in removal.values()):
            return
        if not self.prunable_groups:
            locked = "; ".join(f"{g.name}: {g.reason}" for g in self.groups[:3])
            more = f"; ... ({len(self.groups) - 3} more)" if len(self.groups) > 3 else ""
            why = (f"the model has no prunable channel group (every group is locked: {locked}{more}). "
                   "graph.summary() lists the groups; a layer the engine has no channel rule for can be taught with "
                   "autoprune.register_channel_rule (docs/engine.md)")
        else:
            largest = max((self._by_name[n].channels for n in resolved), default=0)
            why = (f"the ratios remove less than one channel of every group asked (floor(ratio * channels) is 0; the "
                   f"largest group has {largest} channels, so a ratio of at least 1/{largest} removes one there)")
        warnings.warn(f"ChannelGraph.prune removed no channel and returns the model unchanged: {why}",
                      NothingToPruneWarning, stacklevel=3)

    def prune_channels(self, remove: Mapping[str, Sequence[int]]) -> nn.Module:
        """Remove explicit channels: {group name: [channel indices within the group]}."""
        removed_roots: set[int] = set()
        clean: dict[str, list[int]] = {}
        for name, idx in remove.items():
            g = self.group(name)
            idx = sorted({int(i) for i in idx})
            if not idx:
                continue
            if not g.prunable:
                raise ValueError(f"group {name!r} is locked and cannot be pruned: {g.reason}")
            if idx[0] < 0 or idx[-1] >= g.channels:
                raise ValueError(f"channel index out of range for group {name!r} ({g.channels} channels)")
            if len(idx) >= g.channels:
                raise ValueError(f"cannot remove all {g.channels} channels of group {name!r}")
            removed_roots.update(int(r) for r in g.roots[idx])
            clean[name] = idx
        pruned = apply_pruning(self.analysis, removed_roots, self.example_inputs)
        pruned.train(self._training)
        # what autoprune.save needs to rebuild this model without pickled code
        set_lineage(pruned, self._lineage.pruned(clean, [x.shape for x in self.example_inputs]))
        return pruned

    def removal_for(self, ratios: float | Mapping[str, float], scores: Mapping[str, torch.Tensor] | None = None,
                    criterion: str = "l1") -> dict[str, list[int]]:
        """The channels :meth:`prune` would remove (weight criteria need no data), without pruning."""
        if scores is None:
            scores = _score(self, criterion, groups=list(self.resolve_ratios(ratios)))
        return self.plan(ratios, scores)

    def _roots(self, remove: Mapping[str, Sequence[int]]) -> set[int]:
        """Union-find roots of the channel units in ``remove`` ({group: indices})."""
        return {int(r) for name, idx in remove.items() for r in self.group(name).roots[list(idx)]}

    @property
    def macs_exact(self) -> bool:
        """Whether the cost model sees every MAC :func:`autoprune.count_macs` counts on this model (checked once).
        When it does not (matmuls in attention, convs called as functions), :meth:`macs` counts on the pruned
        model instead, and says so with a warning."""
        if self._macs_exact is None:
            counted = count_macs(self.gm, self.example_inputs)
            modelled = self._site_macs(None)
            self._macs_exact = counted == modelled
            if not self._macs_exact:
                warnings.warn(f"ChannelGraph.macs: the cost model sees {modelled:,} of the {counted:,} MACs fvcore "
                              "counts on this model (ops outside conv/linear layers); MACs are counted on each pruned "
                              "model instead (slower)", stacklevel=3)
        return self._macs_exact

    def macs(self, remove: Mapping[str, Sequence[int]] | None = None, *, params: bool = False) -> int:
        """MACs per sample (conv + linear, the papers' convention) of the model after removing ``remove``
        ({group: channel indices}), computed from the analysis without building the model: the per-group cost model
        behind sensitivity analysis and allocation. It equals :func:`autoprune.count_macs` on the pruned model;
        where the cost model cannot see every MAC (see :attr:`macs_exact`) the pruned model is built and counted.
        ``params=True`` counts conv/linear/norm parameters instead."""
        if params:
            return self._site_macs(remove, params=True)
        if self.macs_exact:
            return self._site_macs(remove)
        model = self.prune_channels(remove) if remove and any(len(v) for v in remove.values()) else self.gm
        return count_macs(model, self.example_inputs)

    def _site_macs(self, remove: Mapping[str, Sequence[int]] | None, *, params: bool = False) -> int:
        keep = Keep(self.analysis, self._roots(remove or {}))
        modules = dict(self.gm.named_modules())
        values = self.analysis.values
        batch = self.example_inputs[0].shape[0] if self.example_inputs[0].dim() else 1
        total, seen = 0, set()
        kept_numel = lambda ti: int(np.prod(expected_shape(ti, keep, "the cost model")))  # noqa: E731
        for s in self.analysis.sites:
            if s.kind == "filter" and not params:  # a fixed depthwise filter (BlurPool): C * k * k per position
                total += int(keep(s.data["elem"]).sum()) * s.data["k"] * int(np.prod(values[s.node][2:]))
                continue
            if s.kind == "attention_module":  # a module rule's own count (its layers are inside a leaf)
                total += s.rule.macs(s, keep, batch, params)
                continue
            if s.kind in ("matmul", "attention"):  # activation x activation products: MACs, no parameters
                if not params:
                    total += site_macs(s.kind, s.data, keep, kept_numel, batch)
                continue
            if s.kind not in ("conv", "linear") and not (params and s.kind in ("bn", "prelu")):
                continue
            m = modules[s.module]
            if params and s.module in seen:
                continue
            seen.add(s.module)
            if s.kind in ("bn", "prelu"):
                n_aff = (2 if getattr(m, "weight", None) is not None else 0) if s.kind == "bn" else 1
                total += n_aff * int(keep(s.data["elem"]).sum())
                continue
            out_k = int(keep(s.data["out"]).sum())
            in_mask = keep(s.data["in"])
            w = tuple(getattr(m, getattr(s.rule, "weight", None) or "weight").shape)
            if s.kind == "conv":
                g = s.data["groups"]
                in_k = int(in_mask.sum())
                g_k = g if g == 1 else int(in_mask.reshape(g, -1)[:, 0].sum())
                if s.data.get("transposed"):  # fvcore: in * (out / groups) * k * input positions
                    k = int(np.prod(w[2:]))
                    if params:
                        total += in_k * (out_k // g_k) * k + (out_k if m.bias is not None else 0)
                    else:
                        total += in_k * (out_k // g_k) * k * int(np.prod(s.data["in_shape"][2:]))
                    continue
                in_per = in_k // g_k
                k = int(np.prod(w)) // (w[0] * w[1]) if len(w) > 1 else 1
                if params:
                    total += out_k * in_per * k + (out_k if getattr(m, "bias", None) is not None else 0)
                else:
                    total += out_k * in_per * k * int(np.prod(values[s.node][2:]))
            else:
                in_k = int(in_mask.sum())
                if params:
                    total += out_k * in_k + (out_k if m.bias is not None else 0)
                else:
                    out_shape = values[s.node]
                    total += out_k * in_k * int(np.prod(out_shape[:-1])) // batch
        return int(total)

    def consumer_slices(self, remove: Mapping[str, Sequence[int]]) -> list[tuple[str, int, list[int]]]:
        """(module, weight dim, indices) of the weights that *read* the given channels: the input slices of every
        dense conv and linear layer, and ``"module:q"`` (``:k``, ``:v``) for the q, k, v projections of an attention
        module cut by its rule. Zeroing them makes the channels dead, which tests use to check the cut."""
        E = self.analysis.elements
        roots = self._roots(remove)
        out = []
        done = set()
        for s in self.analysis.sites:
            if s.kind in ("conv", "linear") and s.data.get("groups", 1) == 1 and s.module not in done:
                done.add(s.module)
                hit = _hits(E, s.data["in"], roots)
                if hit:
                    out.append((s.module, s.data.get("in_dim", 1), hit))
            elif s.kind == "attention_module":  # its q/k/v projections read its inputs: "module:q|k|v"
                for key, part in (("in", "q"), ("k_in", "k"), ("v_in", "v")):
                    hit = _hits(E, s.data.get(key, []), roots)
                    if hit:
                        out.append((f"{s.module}:{part}", 1, hit))
        return out

    def contracted_slices(self, remove: Mapping[str, Sequence[int]]) -> list[tuple[str, int, list[int]]]:
        """(module, weight dim, indices) of the layers that *write* the given channels where a matmul or attention
        contracts them (q's and k's head width): no layer reads those, so tests make them dead by zeroing their
        producers' output rows (and bias entries) instead."""
        E = self.analysis.elements
        roots = self._roots(remove)
        contracted: set[int] = set()
        for s in self.analysis.sites:
            if s.kind in ("matmul", "attention"):
                for key in ("k", "q"):
                    if s.data.get(key) is not None:
                        contracted.update(int(r) for r in np.ravel(E.roots(s.data[key])) if int(r) in roots)
        out, done = [], set()
        for s in self.analysis.sites:
            if s.kind == "rows" and s.data.get("contracted"):  # a module rule's q/k/v rows (heads, head width)
                hit = _hits(E, s.data["out"], roots)
                if hit:
                    out.append((s.module, 0, hit))
            if contracted and s.kind in ("conv", "linear") and s.module not in done:
                done.add(s.module)
                hit = _hits(E, s.data["out"], contracted)
                if hit:
                    out.append((s.module, getattr(s.rule, "out_dim", 0), hit))
        return out


def _hits(E: Any, elem: Any, roots: set[int]) -> list[int]:
    """Positions of ``elem`` whose channel set (union-find root) is one of ``roots``."""
    return [i for i, r in enumerate(E.roots(elem).tolist()) if r in roots]


def _check_ratio(what: str, r: Any) -> None:
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not (0.0 <= float(r) < 1.0) or np.isnan(r):
        raise ValueError(f"{what} must be a number in [0, 1), got {r!r}")
