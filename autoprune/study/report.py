"""Reports of a pruning search: Pareto-front plot (PNG), an HTML page, and per-group ratio bar charts.

>>> from autoprune.study import load_front
>>> from autoprune.study.report import make_report
>>> make_report(load_front("search_spaces/quickstart.yaml"), "runs/quickstart/report")

The HTML page is interactive (hover shows each trial) when plotly is installed; otherwise it is a self-contained
page with the PNG plots embedded and the tables of the front and of every trial.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_pareto", "plot_ratios", "write_html", "make_report", "default_trials"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _budget(front: Any, key: str) -> float | None:
    cfg = getattr(front, "config", None)
    return None if cfg is None else getattr(cfg.constraints, key)


def default_trials(front: Any, k: int = 4) -> list[int]:
    """Up to ``k`` front trials spread evenly over the MAC range (always the cheapest and the most accurate)."""
    recs = list(front)
    if len(recs) <= k:
        return [r.number for r in recs]
    idx = sorted({round(i * (len(recs) - 1) / (k - 1)) for i in range(k)})
    return [recs[i].number for i in idx]


def plot_pareto(front: Any, path: str | os.PathLike, *, title: str | None = None, annotate: bool = True) -> str:
    """Accuracy vs MACs of every COMPLETE trial (infeasible ones as red crosses), the feasible Pareto front as a
    step line, the unpruned base model as a star and the MAC budget as a dashed line. Returns the path."""
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    crits = sorted({r.criterion for r in front.all})
    color = {c: _COLORS[i % len(_COLORS)] for i, c in enumerate(crits)}
    feas = [r for r in front.all if r.feasible]
    infeas = [r for r in front.all if not r.feasible]
    for c in crits:
        pts = [r for r in feas if r.criterion == c]
        if pts:
            ax.scatter([r.macs / 1e6 for r in pts], [100 * r.accuracy for r in pts], s=18, alpha=0.45,
                       color=color[c], label=f"trials ({c})" if len(crits) > 1 else "trials")
    if infeas:
        ax.scatter([r.macs / 1e6 for r in infeas], [100 * r.accuracy for r in infeas], s=22, marker="x",
                   color="#d62728", alpha=0.6, label="infeasible (budget)")
    if len(front):
        xs = [r.macs / 1e6 for r in front]
        ys = [100 * r.accuracy for r in front]
        ax.step(xs, ys, where="post", color="black", lw=1.2, alpha=0.8)
        ax.scatter(xs, ys, s=40, facecolor="none", edgecolor="black", lw=1.2, label="Pareto front", zorder=3)
        if annotate:
            for r, x, y in zip(front, xs, ys):
                ax.annotate(str(r.number), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    base = front.base
    if base.get("macs"):
        if base.get("accuracy") is not None:
            ax.scatter([base["macs"] / 1e6], [100 * base["accuracy"]], marker="*", s=140, color="gold",
                       edgecolor="black", zorder=4, label="unpruned")
        mb = _budget(front, "max_macs")
        if mb is not None:
            ax.axvline(mb * base["macs"] / 1e6, ls="--", color="#d62728", lw=1, label=f"max_macs {mb:.0%}")
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or f"{front.study.study_name}: {len(front.all)} trials, {len(front)} on the front")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_ratios(front: Any, trials: Sequence[int] | None, path: str | os.PathLike) -> str:
    """Bar chart of the per-group pruning ratios of ``trials`` (default: up to 4 front trials)."""
    numbers = list(trials) if trials else default_trials(front)
    recs = [front.trial(n) for n in numbers]
    groups: list[str] = []
    for r in recs:
        for g in r.ratios:
            if g not in groups:
                groups.append(g)
    fig = _figure(max(7.0, 0.28 * len(groups) * max(1, len(recs)) ** 0.5 + 2), 4.4)
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(recs))
    width = 0.8 / n
    for i, r in enumerate(recs):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [r.ratios.get(g, 0.0) for g in groups], width=width, color=_COLORS[i % len(_COLORS)],
               label=f"trial {r.number}: {r.accuracy:.1%} acc, {r.macs_fraction:.0%} MACs, {r.criterion}")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=75, fontsize=7, ha="right")
    ax.set_ylabel("fraction of channels removed")
    ax.set_ylim(0, 1)
    ax.set_title("per-group pruning ratios")
    ax.grid(axis="y", alpha=0.3)
    if recs:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _table_html(front: Any, recs: Sequence[Any]) -> str:
    head = ("<tr><th>trial</th><th>accuracy</th><th>MACs</th><th>MACs %</th><th>params</th><th>params %</th>"
            "<th>criterion</th><th>feasible</th><th>seconds</th></tr>")
    rows = []
    for r in recs:
        rows.append(f"<tr><td>{r.number}</td><td>{r.accuracy:.2%}</td><td>{r.macs:,}</td><td>{r.macs_fraction:.1%}</td>"
                    f"<td>{r.params:,}</td><td>{r.params_fraction:.1%}</td><td>{html.escape(r.criterion)}</td>"
                    f"<td>{'yes' if r.feasible else 'no'}</td><td>{r.seconds:.1f}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def _plotly_div(front: Any) -> str | None:
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    fig = go.Figure()
    for label, recs, sym in (("trials", [r for r in front.all if r.feasible], "circle"),
                             ("infeasible", [r for r in front.all if not r.feasible], "x")):
        if recs:
            fig.add_trace(go.Scatter(
                x=[r.macs / 1e6 for r in recs], y=[100 * r.accuracy for r in recs], mode="markers", name=label,
                marker={"symbol": sym, "opacity": 0.5},
                text=[f"trial {r.number}<br>{r.criterion}<br>{r.macs_fraction:.1%} MACs, "
                      f"{r.params_fraction:.1%} params" for r in recs], hoverinfo="text+x+y"))
    if len(front):
        fig.add_trace(go.Scatter(x=[r.macs / 1e6 for r in front], y=[100 * r.accuracy for r in front],
                                 mode="lines+markers", line={"shape": "hv"}, name="Pareto front",
                                 text=[f"trial {r.number} ({r.criterion})" for r in front], hoverinfo="text+x+y"))
    if front.base.get("accuracy") is not None:
        fig.add_trace(go.Scatter(x=[front.base["macs"] / 1e6], y=[100 * front.base["accuracy"]], mode="markers",
                                 name="unpruned", marker={"symbol": "star", "size": 14}))
    fig.update_layout(xaxis_title="MACs per image (millions)", yaxis_title="validation accuracy (%)",
                      height=480, margin={"l": 50, "r": 20, "t": 30, "b": 50})
    return fig.to_html(full_html=False, include_plotlyjs=True)


def write_html(front: Any, path: str | os.PathLike, *, pareto_png: str | None = None,
               ratios_png: str | None = None) -> str:
    """An HTML report: interactive plotly plot when plotly is installed, else the PNG embedded; tables of the
    front and of all trials; the ratio chart."""
    name = html.escape(front.study.study_name)
    base = front.base
    base_line = ""
    if base.get("macs"):
        acc = f"{base['accuracy']:.2%}" if base.get("accuracy") is not None else "?"
        base_line = (f"<p>Unpruned model: accuracy {acc}, {int(base['macs']):,} MACs, "
                     f"{int(base['params']):,} parameters.</p>")
    plot = _plotly_div(front)
    if plot is None and pareto_png:
        plot = _img(pareto_png)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>autoprune search {name}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>Search {name}</h1>", base_line,
        f"<p>{len(front.all)} complete trials, {sum(r.feasible for r in front.all)} feasible, "
        f"{len(front)} on the Pareto front.</p>",
        "<h2>Pareto front</h2>", plot or "", _table_html(front, list(front)),
    ]
    if ratios_png:
        parts += ["<h2>Per-group ratios</h2>", _img(ratios_png)]
    parts += ["<h2>All trials</h2>", _table_html(front, front.all), "</body></html>"]
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts))
    return path


def make_report(front: Any, out_dir: str | os.PathLike, *, trials: Sequence[int] | None = None) -> dict[str, str]:
    """Write ``pareto.png``, ``ratios.png`` and ``report.html`` to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pareto_png": plot_pareto(front, out / "pareto.png")}
    if front.all:
        paths["ratios_png"] = plot_ratios(front, trials, out / "ratios.png")
    paths["html"] = write_html(front, out / "report.html", pareto_png=paths["pareto_png"],
                               ratios_png=paths.get("ratios_png"))
    return paths
