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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ._files import atomic_write
from .data_adapter import DataLike, as_bundle, example_inputs_for, warn_if_not_held_out
from .graph.core import check_finite

__all__ = ["DEFAULT_RATIOS", "SensitivityRow", "SensitivityTable", "sensitivity", "sensitivity_cache_dir",
           "model_fingerprint", "data_fingerprint", "cpu_graph"]

#: The default ratio grid 0.1, 0.2, ..., 0.9.
DEFAULT_RATIOS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(1, 10))

# Bump when the measurement procedure changes so stale cache entries are not reused.
_CACHE_VERSION = 2  # 2: damage measured against the BN-re-estimated unpruned model


# ------------------------------------------------------------------------------------------------------- table


@dataclass
class SensitivityRow:
    """One (group, ratio) measurement. ``d_acc`` is in accuracy fractions (0.01 = one percentage point)."""

    group: str
    ratio: float
    channels_removed: int
    acc: float
    loss: float
    d_acc: float
    d_loss: float
    macs_saved: int
    params_saved: int
    damage_per_mac: float


@dataclass
class SensitivityTable:
    """Result of :func:`sensitivity`: the unpruned baseline and one :class:`SensitivityRow` per (group, ratio).

    ``scores`` ({group: per-channel scores}) records the channel order the rows were measured with, so that
    :func:`autoprune.allocation.allocate` removes the same channels. ``from_cache`` is not serialized.
    """

    base_accuracy: float
    base_loss: float
    base_macs: int
    base_params: int
    rows: list[SensitivityRow]
    criterion: str = "l1"
    metric: str = "accuracy"
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    group_channels: dict[str, int] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    bn_batches: int = 0
    eval_n: int = 0
    seconds: float = 0.0
    key: str | None = None
    reference_accuracy: float | None = None
    reference_loss: float | None = None
    from_cache: bool = False

    # -- access ----------------------------------------------------------------------------------------------
    @property
    def groups(self) -> list[str]:
        """Group names in measurement order."""
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.setdefault(r.group, None)
        return list(seen)

    def curve(self, group: str) -> list[SensitivityRow]:
        """Rows of ``group``, sorted by ratio."""
        rows = [r for r in self.rows if r.group == group]
        if not rows:
            raise KeyError(f"no rows for group {group!r}; groups: {', '.join(self.groups)}")
        return sorted(rows, key=lambda r: r.ratio)

    def damage(self, group: str) -> dict[float, float]:
        """{ratio: damage per MAC saved} of ``group``."""
        return {r.ratio: r.damage_per_mac for r in self.curve(group)}

    # -- (de)serialization -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``from_cache`` excluded)."""
        d = asdict(self)
        d.pop("from_cache", None)
        d["version"] = _CACHE_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SensitivityTable":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d.pop("version", None)
        d.pop("from_cache", None)
        rows = [r if isinstance(r, SensitivityRow) else SensitivityRow(**r) for r in d.pop("rows")]
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SensitivityTable fields {sorted(unknown)}")
        return cls(rows=rows, **d)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (atomically: temp file + ``os.replace``); returns the path."""
        path = Path(path)
        _atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SensitivityTable":
        """Read a table written by :meth:`save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    # -- display ---------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        ratios = sorted({r.ratio for r in self.rows})
        head = (f"sensitivity ({self.criterion}, metric={self.metric}, {self.eval_n} val images, "
                f"BN re-estimated on {self.bn_batches} batches{', from cache' if self.from_cache else ''}): "
                f"base acc {100 * self.base_accuracy:.2f}%, loss {self.base_loss:.4f}, "
                + (f"after BN re-estimation {100 * self.reference_accuracy:.2f}% (the reference of the drops), "
                   if self.reference_accuracy is not None and self.bn_batches else "")
                + f"{self.base_macs / 1e6:.2f}M MACs, {self.base_params / 1e6:.3f}M params")
        lines = [head, "accuracy drop (percentage points) when pruning only this group at ratio r; "
                       "last column: MACs saved at the largest ratio"]
        width = max([5] + [len(g) for g in self.groups])
        lines.append(f"{'group':{width}s} {'ch':>4s} " + " ".join(f"{r:>6.2f}" for r in ratios) + "   MACs saved")
        for g in self.groups:
            by_r = {r.ratio: r for r in self.curve(g)}
            cells = " ".join(f"{100 * by_r[r].d_acc:6.2f}" if r in by_r else f"{'-':>6s}" for r in ratios)
            last = self.curve(g)[-1]
            pct = 100 * last.macs_saved / self.base_macs if self.base_macs else 0.0
            lines.append(f"{g:{width}s} {self.group_channels.get(g, 0):4d} {cells}   {pct:5.1f}%")
        return "\n".join(lines)

    def format_rows(self) -> str:
        """Every row: group, ratio, channels removed, accuracy, deltas, MACs saved and damage per MMAC."""
        lines = [f"{'group':24s} {'ratio':>5s} {'rm':>4s} {'acc%':>6s} {'dAcc pp':>7s} {'dLoss':>7s} "
                 f"{'MACs saved':>11s} {'dmg/MMAC':>9s}"]
        for r in self.rows:
            lines.append(f"{r.group:24s} {r.ratio:5.2f} {r.channels_removed:4d} {100 * r.acc:6.2f} "
                         f"{100 * r.d_acc:7.2f} {r.d_loss:7.4f} {r.macs_saved:11d} {1e6 * r.damage_per_mac:9.5f}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, *, title: str | None = None) -> Path:
        """PNG (matplotlib Agg): accuracy-drop curves per group vs ratio, and vs the share of MACs saved."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        groups = self.groups
        cmap = plt.get_cmap("viridis")
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
        for i, g in enumerate(groups):
            rows = self.curve(g)
            color = cmap(i / max(1, len(groups) - 1))
            xs = [r.ratio for r in rows]
            ys = [100 * r.d_acc for r in rows]
            ms = [100 * r.macs_saved / max(1, self.base_macs) for r in rows]
            axes[0].plot(xs, ys, marker=".", color=color, label=g, lw=1)
            axes[1].plot(ms, ys, marker=".", color=color, lw=1)
        axes[0].set_xlabel("pruning ratio of the group")
        axes[1].set_xlabel("MACs saved (% of the unpruned model)")
        for ax in axes:
            ax.set_ylabel("accuracy drop (pp)")
            ax.axhline(0, color="grey", lw=0.5)
            ax.grid(alpha=0.3)
        fig.suptitle(title or f"Sensitivity ({self.criterion}, BN re-estimated, no fine-tuning): "
                              f"base {100 * self.base_accuracy:.2f}% on {self.eval_n} val images")
        ncol = 1 if len(groups) <= 20 else 2
        fig.legend(loc="center right", fontsize=6, ncol=ncol, frameon=False)
        fig.tight_layout(rect=(0, 0, 0.86 if ncol == 1 else 0.8, 0.95))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


# ------------------------------------------------------------------------------------------------ fingerprints


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model class and every state_dict tensor (name, dtype, shape and bytes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _split_fingerprint(sp: Any, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(sp).__name__}
    try:
        out["n"] = len(sp)
    except TypeError:
        pass
    images = getattr(sp, "images", None)
    if isinstance(images, torch.Tensor):
        h = hashlib.sha256()
        labels = getattr(sp, "labels", None)
        if isinstance(labels, torch.Tensor):
            h.update(_tensor_bytes(labels))
        # the val split is hashed in full; a training split by a strided sample of ~2k images (plus all labels)
        step = 1 if full else max(1, len(images) // 2048)
        h.update(_tensor_bytes(images[::step]))
        out.update(shape=list(images.shape), sha=h.hexdigest(), padding=getattr(sp, "padding", None),
                   mean=list(getattr(sp, "mean", ())), std=list(getattr(sp, "std", ())))
        return out
    if hasattr(sp, "fingerprint"):  # a user's Dataset or DataLoader (autoprune.data_adapter)
        out["sha"] = sp.fingerprint(full)
        return out
    samples = getattr(sp, "samples", None)
    if samples is not None:
        out["sha"] = hashlib.sha256(json.dumps([[str(p), int(y)] for p, y in samples]).encode()).hexdigest()
        out.update(size=list(getattr(sp, "image_size", ())), mean=list(getattr(sp, "mean", ())),
                   std=list(getattr(sp, "std", ())))
        return out
    # anything else: the first batch
    out["sha"] = _first_batch_sha(sp)
    return out


def _first_batch_sha(it: Any) -> str:
    src = it.batches(256) if hasattr(it, "batches") else it
    h = hashlib.sha256()
    for b in src:
        for t in (b if isinstance(b, (tuple, list)) else (b,)):
            if isinstance(t, torch.Tensor):
                h.update(_tensor_bytes(t))
        break
    return h.hexdigest()


def data_fingerprint(data: Any) -> dict[str, Any]:
    """The data's identity for cache keys: name, classes, cache file, and the contents of the val split (hashed in
    full) and of the train split used for BN re-estimation and activation scores (labels + a strided sample).
    Objects without ``val`` fall back to hashing their first batch."""
    ident: dict[str, Any] = {"type": type(data).__name__}
    for attr in ("name", "num_classes", "cache_path", "image_size"):
        v = getattr(data, attr, None)
        if v is not None:
            ident[attr] = v if isinstance(v, (int, float, str)) else str(v)
    if hasattr(data, "val"):
        ident["val"] = _split_fingerprint(data.val, full=True)
        if hasattr(data, "train"):
            ident["train"] = _split_fingerprint(data.train, full=False)
    else:
        ident["first_batch"] = _first_batch_sha(data)
    return ident


def sensitivity_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` as given, else ``$AUTOPRUNE_CACHE/sensitivity``, else ``~/.cache/autoprune/sensitivity``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUTOPRUNE_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "autoprune"
    return base / "sensitivity"


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


# ------------------------------------------------------------------------------------------------------ runner


def cpu_graph(model: nn.Module, example_inputs: Any) -> Any:
    """A :class:`~autoprune.graph.ChannelGraph` of ``model`` built on the CPU (a copy; the model stays where it is):
    graph surgery is cheap on the CPU, and pruned models are moved to the evaluation device afterwards."""
    import copy

    from .graph import ChannelGraph

    ex = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    ex = tuple(x.detach().cpu() if isinstance(x, torch.Tensor) else x for x in ex)
    return ChannelGraph(copy.deepcopy(model).cpu(), ex)


def _val_split(data: Any, eval_batches: int | None, batch_size: int) -> Any:
    from .train import _split_of

    sp = _split_of(data, "val")
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
    """
    from .scoring import score_groups
    from .train import _model_device, evaluate, recalibrate_bn

    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}")
    ratios = sorted({float(r) for r in ratios})
    if not ratios or any(not (0.0 < r < 1.0) for r in ratios):
        raise ValueError(f"ratios must be numbers in (0, 1), got {ratios}")
    criterion_kwargs = dict(criterion_kwargs or {})
    data = as_bundle(data)
    warn_if_not_held_out(data, "sensitivity")
    if device is None:
        device = data.val.device or _model_device(model)
    device = torch.device(device)
    example_inputs = example_inputs_for(data, example_inputs, "sensitivity")
    check_finite(model)  # before the cache: a table cached for this model must not come back either

    # -- cache lookup --------------------------------------------------------------------------------------------
    group_filter = sorted(groups) if groups is not None else None
    key = None
    cache_path = None
    if cache_dir is not False:
        key_obj = {
            "version": _CACHE_VERSION, "model": model_fingerprint(model), "data": data_fingerprint(data),
            "criterion": criterion, "criterion_kwargs": _jsonable(criterion_kwargs), "ratios": ratios,
            "bn_batches": int(bn_batches), "bn_batch_size": int(bn_batch_size), "eval_batches": eval_batches,
            "batch_size": int(batch_size), "metric": metric, "groups": group_filter,
            **({"bn_augment": True} if bn_augment else {}),  # absent when False: earlier caches stay valid
            "input_shape": [list(x.shape) for x in (example_inputs if isinstance(example_inputs, (tuple, list))
                                                    else (example_inputs,))],
        }
        key = hashlib.sha256(json.dumps(_jsonable(key_obj), sort_keys=True).encode()).hexdigest()[:32]
        cache_path = sensitivity_cache_dir(cache_dir if cache_dir is not None else None) / f"{key}.json"
        if cache_path.exists() and not refresh:
            try:
                table = SensitivityTable.load(cache_path)
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

    def measure(m: nn.Module) -> Any:
        """What every pruned model gets: BN re-estimation (same batches each time), then evaluation."""
        if bn_batches > 0:
            recalibrate_bn(m, data, batches=bn_batches, batch_size=bn_batch_size, augment=bn_augment)
        return evaluate(m, val, batch_size=batch_size, device=device)

    # the reference: the unpruned model measured exactly like the pruned ones (a copy: `model` stays untouched)
    ref = measure(copy.deepcopy(model).to(device)) if bn_batches > 0 else base
    base_macs = graph.macs()
    base_params = graph.macs(params=True)

    from tqdm.auto import tqdm

    rows: list[SensitivityRow] = []
    bar = tqdm(total=len(names) * len(ratios), desc="sensitivity", disable=not progress, leave=False,
               dynamic_ncols=True)
    for name in names:
        done: dict[int, tuple[float, float]] = {0: (ref.accuracy, ref.loss)}
        for r in ratios:
            removal = graph.plan({name: r}, scores)
            n_rm = len(removal.get(name, ()))
            if n_rm not in done:
                ev = measure(graph.prune_channels(removal).to(device))
                done[n_rm] = (ev.accuracy, ev.loss)
            acc, loss = done[n_rm]
            macs_saved = base_macs - graph.macs(removal) if n_rm else 0
            params_saved = base_params - graph.macs(removal, params=True) if n_rm else 0
            d_acc, d_loss = ref.accuracy - acc, loss - ref.loss
            damage = d_acc if metric == "accuracy" else d_loss
            rows.append(SensitivityRow(
                group=name, ratio=r, channels_removed=n_rm, acc=acc, loss=loss, d_acc=d_acc, d_loss=d_loss,
                macs_saved=int(macs_saved), params_saved=int(params_saved),
                damage_per_mac=(damage / macs_saved) if macs_saved > 0 else 0.0,
            ))
            bar.update(1)
    bar.close()

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
