"""The result of :func:`~autoprune.allocation.sensitivity_analysis.sensitivity`: :class:`SensitivityTable` (one
:class:`SensitivityRow` per group and ratio), its JSON form (the disk cache) and its displays."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .._files import atomic_write

__all__ = ["CACHE_VERSION", "DEFAULT_RATIOS", "SensitivityRow", "SensitivityTable"]

DEFAULT_RATIOS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(1, 10))

# Bump when the measurement procedure changes so stale cache entries are not reused.
CACHE_VERSION = 2  # 2: damage measured against the BN-re-estimated unpruned model


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


def damage_per_mac(d_acc: float, d_loss: float, macs_saved: int, metric: str) -> float:
    """A row's damage per MAC saved: the accuracy drop (``metric="accuracy"``) or the loss rise (``"loss"``) over the
    MACs saved; 0 when none are saved."""
    return ((d_acc if metric == "accuracy" else d_loss) / macs_saved) if macs_saved > 0 else 0.0


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
    def with_metric(self, metric: str) -> "SensitivityTable":
        """This table with ``damage_per_mac`` from the accuracy drop (``"accuracy"``) or the loss rise (``"loss"``):
        every row holds both, so one measurement serves both metrics."""
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}")
        if metric == self.metric:
            return self
        rows = [dataclasses.replace(r, damage_per_mac=damage_per_mac(r.d_acc, r.d_loss, r.macs_saved, metric))
                for r in self.rows]
        return dataclasses.replace(self, rows=rows, metric=metric)

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
        d["version"] = CACHE_VERSION
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
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, lambda f: f.write(text), binary=False)
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
