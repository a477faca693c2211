"""FLOP-normalized sensitivity analysis (methods.md §3).

For every prunable channel group ``l`` and every ratio ``r`` of a grid, :func:`sensitivity` prunes **only** ``l``
(physically, through :class:`~autoprune.graph.ChannelGraph`), re-estimates BatchNorm statistics on a few training
batches (no fine-tuning), and measures on the validation split

- ``d_acc = reference_accuracy - accuracy`` (a fraction, positive = damage) and ``d_loss = loss - reference_loss``,
  where the reference is the *unpruned* model with its BN statistics re-estimated the same way (same batches):
  re-estimation alone moves accuracy (on the shared ResNet-56, 5 x 128 images cost ~2.5 points), and against the
  stored statistics that constant would swamp the damage of pruning a few channels;
- ``macs_saved`` / ``params_saved``: exact conv+linear MACs (and parameters) removed, including the shrunken
  inputs of the layers that read the group (``graph.macs``);
- ``damage_per_mac = d_acc / macs_saved`` (or ``d_loss / macs_saved`` with ``metric="loss"``): the damage per MAC
  saved ``s_l(r)`` that :func:`autoprune.allocation.allocate` thresholds.

Channels are scored once for all groups (one scoring pass); which channels a ratio removes is
``graph.plan`` of those scores (``floor(r * channels)`` lowest, stable sort), and the scores are stored in the table
so that an allocation derived from it removes the same channels.

Results are cached on disk as JSON under ``$AUTOPRUNE_CACHE/sensitivity`` (default
``~/.cache/autoprune/sensitivity``), keyed by a hash of the model's state_dict tensors, the data's identity (split
contents), the criterion and its options, the ratio grid and the evaluation settings; a re-run with the same inputs
loads the table (``table.from_cache`` is then True) without evaluating anything.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .._hashing import model_fingerprint
from ..data.adapter import DataLike, as_bundle, example_inputs_for, split_of, warn_if_not_held_out
from ..data.fingerprint import data_fingerprint
from ..graph import ChannelGraph
from ..graph.core import check_finite
from ..criteria.scoring import score_groups
from ..train import evaluate, recalibrate_bn
from ..train.common import default_amp, model_device
from ..train.evaluation import bn_inputs
from .shared_prefix import SharedPrefix
from .sensitivity_table import CACHE_VERSION, DEFAULT_RATIOS, SensitivityRow, SensitivityTable, damage_per_mac

__all__ = ["sensitivity", "sensitivity_cache_dir", "cpu_graph"]


def cpu_graph(model: nn.Module, example_inputs: Any) -> Any:
    """A :class:`~autoprune.graph.ChannelGraph` of ``model`` built on the CPU (a copy; the model stays where it is):
    graph surgery is cheap on the CPU, and pruned models are moved to the evaluation device afterwards."""
    ex = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    ex = tuple(x.detach().cpu() if isinstance(x, torch.Tensor) else x for x in ex)
    return ChannelGraph(copy.deepcopy(model).cpu(), ex)


def sensitivity_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` as given, else ``$AUTOPRUNE_CACHE/sensitivity``, else ``~/.cache/autoprune/sensitivity``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUTOPRUNE_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "autoprune"
    return base / "sensitivity"


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


# ------------------------------------------------------------------------------------------------------ runner


def _val_split(data: Any, eval_batches: int | None, batch_size: int) -> Any:
    sp = split_of(data, "val")
    if eval_batches is not None:
        n = min(len(sp), int(eval_batches) * batch_size)
        if n <= 0:
            raise ValueError(f"eval_batches must be positive, got {eval_batches}")
        if n < len(sp):
            idx = torch.randperm(len(sp), generator=torch.Generator().manual_seed(0))[:n].sort().values
            sp = sp.subset(idx)
    return sp


def sensitivity(
    model: nn.Module,
    data: DataLike,
    *,
    criterion: str = "l1",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    example_inputs: Any = None,
    bn_batches: int = 5,
    eval_batches: int | None = None,
    metric: str = "accuracy",
    cache_dir: str | os.PathLike | None | bool = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    groups: Iterable[str] | None = None,
    batch_size: int = 256,
    bn_batch_size: int = 128,
    bn_augment: bool = False,
    criterion_kwargs: Mapping[str, Any] | None = None,
    refresh: bool = False,
    graph: Any = None,
    reuse_prefix: bool = True,
) -> SensitivityTable:
    """Prune each prunable group alone at each ratio, re-estimate BN, and measure the damage per MAC saved.

    ``data``: a ``(train, val)`` pair of DataLoaders or Datasets of ``(image, label)``, or a
    :class:`~autoprune.data.DataBundle` (val split for measurements, train split for BN statistics and
    activation scores); one DataLoader or Dataset alone serves both (with a warning). ``eval_batches``: evaluate on a fixed random subset of ``eval_batches * batch_size`` val
    images (None = the whole val split). ``bn_batches=0`` keeps the stored BN statistics. ``bn_augment``: re-estimate
    BN on training augmentation (crop + flip) — closer to the statistics a model trained with that augmentation
    stored (on the shared ResNet-56, 88.2% vs 85.0% without, against 88.2% stored). ``metric``:
    ``"accuracy"`` (s = Δacc/ΔMACs) or ``"loss"`` (s = Δloss/ΔMACs). ``groups`` restricts the analysis to some
    groups. ``cache_dir=False`` disables the disk cache; ``refresh=True`` recomputes and overwrites it.
    ``criterion_kwargs`` go to :func:`autoprune.scoring.score_groups` (e.g. ``num_batches``, ``hook``).
    ``graph``: a ChannelGraph already built for ``model`` (saves re-tracing; not part of the cache key).
    ``reuse_prefix`` (default): each pruned model runs only from the first layer its pruning changes, on values of
    the unpruned model computed once (:mod:`autoprune.allocation.shared_prefix`; the same results, about half the
    time on a ResNet); False measures every pruned model whole.
    """
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}")
    ratios = sorted({float(r) for r in ratios})
    if not ratios or any(not (0.0 < r < 1.0) for r in ratios):
        raise ValueError(f"ratios must be numbers in (0, 1), got {ratios}")
    criterion_kwargs = dict(criterion_kwargs or {})
    data = as_bundle(data)
    warn_if_not_held_out(data, "sensitivity")
    if device is None:
        device = data.val.device or model_device(model)
    device = torch.device(device)
    example_inputs = example_inputs_for(data, example_inputs, "sensitivity")
    check_finite(model)  # before the cache: a table cached for this model must not come back either

    # -- cache lookup --------------------------------------------------------------------------------------------
    group_filter = sorted(groups) if groups is not None else None
    key = None
    cache_path = None
    if cache_dir is not False:
        key_obj = {
            "version": CACHE_VERSION, "model": model_fingerprint(model), "data": data_fingerprint(data),
            "criterion": criterion, "criterion_kwargs": _jsonable(criterion_kwargs), "ratios": ratios,
            "bn_batches": int(bn_batches), "bn_batch_size": int(bn_batch_size), "eval_batches": eval_batches,
            # the rows hold both damages, so one table serves both metrics: every table is keyed under "accuracy",
            # the name the tables cached before this held (they stay valid)
            "batch_size": int(batch_size), "metric": "accuracy", "groups": group_filter,
            **({"bn_augment": True} if bn_augment else {}),  # absent when False: earlier caches stay valid
            "input_shape": [list(x.shape) for x in (example_inputs if isinstance(example_inputs, (tuple, list))
                                                    else (example_inputs,))],
        }
        key = hashlib.sha256(json.dumps(_jsonable(key_obj), sort_keys=True).encode()).hexdigest()[:32]
        cache_path = sensitivity_cache_dir(cache_dir if cache_dir is not None else None) / f"{key}.json"
        if cache_path.exists() and not refresh:
            try:
                table = SensitivityTable.load(cache_path).with_metric(metric)
                table.from_cache = True
                return table
            except Exception:  # a corrupt or foreign file: recompute and overwrite it
                pass

    t0 = time.perf_counter()
    if graph is None:
        graph = cpu_graph(model, example_inputs)
    names = [g.name for g in graph.prunable_groups]
    if group_filter is not None:
        unknown = [g for g in group_filter if g not in names]
        if unknown:
            raise ValueError(f"not prunable groups of this model: {unknown}; prunable: {', '.join(names)}")
        names = [n for n in names if n in set(group_filter)]
    if not names:
        raise ValueError("the model has no prunable channel group")

    # one scoring pass for every group
    scores = score_groups(graph, criterion, data=data, groups=names, **criterion_kwargs)

    val = _val_split(data, eval_batches, batch_size)
    base = evaluate(model, val, batch_size=batch_size, device=device)
    bn_args = {"batches": bn_batches, "batch_size": bn_batch_size, "augment": bn_augment}

    def measure(m: nn.Module) -> Any:
        """What every pruned model gets: BN re-estimation (same batches each time), then evaluation."""
        if bn_batches > 0:
            recalibrate_bn(m, data, **bn_args)
        return evaluate(m, val, batch_size=batch_size, device=device)

    # the reference: the unpruned model (as traced, like every variant) measured exactly like the pruned ones
    reference = copy.deepcopy(graph.analysis.gm).to(device)
    ref = measure(reference) if bn_batches > 0 else base
    base_macs = graph.macs()
    base_params = graph.macs(params=True)

    plans = {name: [(r, graph.plan({name: r}, scores)) for r in ratios] for name in names}
    order = names
    prefix = None
    if reuse_prefix:
        ev = val.batches(batch_size)
        prefix = SharedPrefix(reference, bn_inputs(data, **bn_args) if bn_batches > 0 else None, ev, device=device,
                              amp=default_amp(device, None))

        def first_variant(name: str) -> Any:
            removal = next((rm for _, rm in plans[name] if rm.get(name)), None)
            return graph.prune_channels(removal) if removal else None

        order = prefix.order(names, first_variant)

    measured: dict[str, list[SensitivityRow]] = {}
    bar = tqdm(total=len(names) * len(ratios), desc="sensitivity", disable=not progress, leave=False,
               dynamic_ncols=True)
    for name in order:
        done: dict[int, tuple[float, float]] = {0: (ref.accuracy, ref.loss)}
        rows = measured[name] = []
        for r, removal in plans[name]:
            n_rm = len(removal.get(name, ()))
            if n_rm not in done:
                pruned = graph.prune_channels(removal).to(device)
                ev = prefix.measure(pruned, measure) if prefix is not None else measure(pruned)
                done[n_rm] = (ev.accuracy, ev.loss)
            acc, loss = done[n_rm]
            macs_saved = base_macs - graph.macs(removal) if n_rm else 0
            params_saved = base_params - graph.macs(removal, params=True) if n_rm else 0
            d_acc, d_loss = ref.accuracy - acc, loss - ref.loss
            rows.append(SensitivityRow(
                group=name, ratio=r, channels_removed=n_rm, acc=acc, loss=loss, d_acc=d_acc, d_loss=d_loss,
                macs_saved=int(macs_saved), params_saved=int(params_saved),
                damage_per_mac=damage_per_mac(d_acc, d_loss, macs_saved, metric),
            ))
            bar.update(1)
    bar.close()
    rows = [row for name in names for row in measured[name]]

    table = SensitivityTable(
        base_accuracy=base.accuracy, base_loss=base.loss, base_macs=int(base_macs), base_params=int(base_params),
        rows=rows, criterion=criterion, metric=metric, ratios=list(ratios),
        group_channels={n: graph.group(n).channels for n in names},
        scores={n: [float(v) for v in scores[n].tolist()] for n in names},
        bn_batches=int(bn_batches), eval_n=base.n, seconds=time.perf_counter() - t0, key=key,
        reference_accuracy=ref.accuracy, reference_loss=ref.loss,
    )
    if cache_path is not None:
        table.save(cache_path)
    return table
