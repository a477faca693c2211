"""Measured latency of search trials and of a Pareto front's members (MACs, parameters and latency side by side).

The speed of a pruned model depends only on its architecture -- which channels each group keeps -- not on its
weights, so a trial's latency is measured on the base model pruned by the trial's removal, before (and independent
of) fine-tuning, and cached by the removal digest: in memory and in ``<run_dir>/latency.json``
(:class:`autoprune.deploy.latency.LatencyCache`, keyed by the digest, the settings and the machine). A trial that
removes the same channels as an earlier one, a resumed search and ``autoprune report --latency`` reuse the
measurement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..deploy.latency import Latency, LatencyCache, measure_latency
from .digest import removal_digest

__all__ = ["wants_latency", "latency_settings", "RemovalLatency", "latency_attrs", "LATENCY_ATTRS", "speed_rows",
           "speed_table"]

#: Trial user attributes written by a search with latency (median, inter-quartile range, extremes, IQR/median).
LATENCY_ATTRS = ("latency_ms", "latency_iqr_ms", "latency_min_ms", "latency_max_ms", "latency_spread")


def wants_latency(cfg: Any) -> bool:
    """Whether a search measures latency: a ``latency`` objective or a ``constraints.max_latency_ms``."""
    return "latency" in cfg.objectives or getattr(cfg.constraints, "max_latency_ms", None) is not None


def latency_settings(cfg: Any) -> dict[str, Any]:
    """The ``latency`` section of a config as :func:`autoprune.deploy.latency.measure_latency` keywords."""
    s = cfg.latency
    return {"device": s.device, "batch_size": s.batch_size, "threads": s.threads, "runtime": s.runtime,
            "warmup": s.warmup, "repeats": s.repeats}


def latency_attrs(lat: Latency) -> dict[str, Any]:
    """A measurement as trial user attributes (:data:`LATENCY_ATTRS` plus the settings and the machine)."""
    return {"latency_ms": lat.median_ms, "latency_iqr_ms": lat.iqr_ms, "latency_min_ms": lat.min_ms,
            "latency_max_ms": lat.max_ms, "latency_spread": lat.spread,
            "latency_setup": {"device": lat.device, "runtime": lat.runtime, "batch_size": lat.batch_size,
                              "threads": lat.threads, "warmup": lat.warmup, "repeats": lat.repeats,
                              "machine": lat.machine}}


class RemovalLatency:
    """``latency(removal)``: the measured latency of ``graph``'s model with ``removal`` pruned, cached by the removal
    digest (in memory, and in ``cache_path`` when given)."""

    def __init__(self, graph: Any, example_inputs: Any, settings: Mapping[str, Any],
                 cache_path: str | Path | None = None) -> None:
        self.graph = graph
        self.example_inputs = example_inputs
        self.settings = dict(settings)
        self.cache = LatencyCache(cache_path)

    def __call__(self, removal: Mapping[str, Sequence[int]], sha: str | None = None) -> Latency:
        sha = sha or removal_digest(removal)
        settings = {k: v for k, v in self.settings.items() if k != "onnx_exporter"}
        hit = self.cache.get(sha, **settings)
        if hit is not None:
            return hit
        model = self.graph.prune_channels(removal)  # the architecture is all that matters for speed
        ex = self.example_inputs
        return measure_latency(model, ex, cache=self.cache, key=sha, **self.settings)


def speed_rows(front: Any, *, measure: bool = False, settings: Mapping[str, Any] | None = None,
               records: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """One row per front member (or ``records``), plus the unpruned model first: trial, accuracy, MACs, parameters
    and latency (stored by a search with latency; with ``measure`` also measured where missing, with ``settings`` or
    the config's ``latency`` section, cached in ``<run_dir>/latency.json``)."""
    recs = list(front.trials if records is None else records)
    meter = None
    if measure:
        cfg = front.config
        if cfg is None:
            raise ValueError("measuring latency rebuilds the pruned models, which needs the search config")
        prob = front.problem()
        s = dict(settings) if settings is not None else latency_settings(cfg)
        meter = RemovalLatency(prob.graph, prob.example_inputs, s, cfg.run_path / "latency.json")
    base = front.base or {}
    rows = [{"trial": None, "accuracy": base.get("accuracy"), "macs": base.get("macs"), "params": base.get("params"),
             "macs_fraction": 1.0, "params_fraction": 1.0, "latency": None}]
    if meter is not None:
        rows[0]["latency"] = meter({})
    elif base.get("latency_ms") is not None:  # measured by the search with its settings
        rows[0]["latency_ms"], rows[0]["latency_iqr_ms"] = base["latency_ms"], base.get("latency_iqr_ms")
    for r in recs:
        row = {"trial": r.number, "accuracy": r.accuracy, "macs": r.macs, "params": r.params,
               "macs_fraction": r.macs_fraction, "params_fraction": r.params_fraction, "latency": None}
        stored = getattr(r, "latency_ms", None)
        if meter is not None:
            prob = front.problem()
            row["latency"] = meter(prob.removal(r.ratios, r.criterion))
        elif stored is not None:
            row["latency_ms"], row["latency_iqr_ms"] = stored, getattr(r, "latency_iqr_ms", None)
        rows.append(row)
    for row in rows:
        lat = row.pop("latency")
        if lat is not None:
            row["latency_ms"], row["latency_iqr_ms"] = lat.median_ms, lat.iqr_ms
            row["latency_setup"] = f"{lat.device}, {lat.runtime}, batch {lat.batch_size}, {lat.threads} thr"
    base_ms = rows[0].get("latency_ms")
    for row in rows:
        ms = row.get("latency_ms")
        row["speedup"] = base_ms / ms if base_ms and ms else None
    return rows


def speed_table(front: Any, *, measure: bool = False, settings: Mapping[str, Any] | None = None,
                records: Sequence[Any] | None = None) -> str:
    """:func:`speed_rows` as a text table: does a smaller MAC count mean a faster model on this device?"""
    rows = speed_rows(front, measure=measure, settings=settings, records=records)
    out = [f"{'trial':>5}  {'accuracy':>8}  {'MACs':>12}  {'MACs %':>6}  {'params':>10}  {'params %':>8}  "
           f"{'latency ms':>10}  {'IQR ms':>7}  {'speed-up':>8}"]
    for row in rows:
        acc = f"{row['accuracy']:8.2%}" if row.get("accuracy") is not None else f"{'-':>8}"
        macs = f"{int(row['macs']):>12,}" if row.get("macs") is not None else f"{'-':>12}"
        params = f"{int(row['params']):>10,}" if row.get("params") is not None else f"{'-':>10}"
        ms = row.get("latency_ms")
        lat = f"{ms:10.3f}  {row.get('latency_iqr_ms') or 0.0:7.3f}" if ms is not None else f"{'-':>10}  {'-':>7}"
        sp = f"{row['speedup']:7.2f}x" if row.get("speedup") else f"{'-':>8}"
        name = "base" if row["trial"] is None else str(row["trial"])
        out.append(f"{name:>5}  {acc}  {macs}  {row['macs_fraction']:6.1%}  {params}  {row['params_fraction']:8.1%}  "
                   f"{lat}  {sp}")
    setup = next((r["latency_setup"] for r in rows if r.get("latency_setup")), None)
    if setup:
        out.append(f"latency: median of timed calls ({setup}); IQR = spread")
    elif any(r.get("latency_ms") for r in rows):
        out.append("latency: as the search measured it (the config's `latency` section); IQR = spread")
    else:
        out.append("latency: not measured (search without a latency objective); measure the front with "
                   "`autoprune report CONFIG --latency` or front.speed_table(measure=True)")
    return "\n".join(out)
