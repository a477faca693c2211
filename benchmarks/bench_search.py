"""Pruning-ratio search benchmark: wall time of a search, and its Pareto front against a uniform baseline.

    python benchmarks/bench_search.py                                   # quickstart on the CPU (~1-2 min)
    python benchmarks/bench_search.py --config search_spaces/resnet56_cifar10_jpeg.yaml --trials 60 \\
        --levels 0.3 0.4 0.5 0.6                                        # ResNet-56 / CIFAR-10-JPEG, on a GPU

Runs the search in a fresh run directory (``--run-dir``; default a temporary one), then the *uniform baseline*:
the same model, criterion (the config's first), fine-tuning and evaluation, with one ratio for every group
(:func:`autoprune.allocation.allocate`, ``method="uniform"``) at each ``--levels`` budget (fraction of MACs kept).
Both fronts are compared by their 2-D hypervolume in (accuracy, MAC fraction) space, reference point
(``--hv-ref-acc``, default base accuracy - 0.2; MAC fraction 1.0): higher is better.

Recorded figures (2026-11-22, CPU: the 2-vCPU development VM, shared with other jobs; details in docs/search.md)
-------------------------------------------------------------------------------------------------------------
quickstart.yaml (ResNet-20, synthetic 16x16, 16 trials, NSGA-II, threads 1): 28.4 s wall at load ~2 (10.1 s setup,
1.1 s per trial), 52.6 s at load 5-8. Hypervolume (ref. accuracy 0.595): search 0.126, uniform baseline 0.085;
at <= 49.5% of the MACs 78.0% vs 71.5% (base 79.5%, 200 validation images).
ResNet-56 / CIFAR-10-JPEG, CPU (benchmarks/configs/resnet56_cifar10_jpeg_cpu.yaml, 36 trials x 60 batches, val = a
test half): 1,403 s; hypervolume search 0.0949 vs uniform 0.0609; at 30/40/50/60% of the MACs the front beats uniform
by 6.7/6.5/5.2/3.3 points on the untouched test half (docs/search.md, docs/search_resnet56_cpu.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def uniform_baseline(front, levels, log=print, test=False):
    """(level, record dict) of uniform pruning at each level, measured like a trial (``test``: also on the test
    split, which the search never saw)."""
    import torch

    from autoprune.train import evaluate

    prob = front.problem()
    cfg = front.config
    crit = cfg.criteria[0]
    out = []
    for level in levels:
        t0 = time.perf_counter()
        try:
            from autoprune.allocation import allocate

            ratios = dict(allocate(prob.graph, macs=float(level), method="uniform", scores=prob.scores(crit)))
        except ImportError:  # allocate not available: the search's own uniform guide
            from autoprune.study.space import RatioSpace

            ratios = RatioSpace(cfg, prob)._uniform(float(level))
        removal = prob.removal(ratios, crit)
        with torch.random.fork_rng():
            model, o = prob.build(removal)
        rec = {"level": level, "accuracy": o.accuracy, "macs_fraction": o.macs_fraction, "macs": o.macs,
               "params_fraction": o.params_fraction, "seconds": time.perf_counter() - t0, "ratios": ratios}
        if test:
            rec["test_accuracy"] = evaluate(model, prob.data, split="test").accuracy
        log(f"uniform @ {level:.2f}: accuracy {o.accuracy:.2%}, MACs {o.macs_fraction:.1%}, {rec['seconds']:.1f} s")
        out.append(rec)
    return out


def plot_comparison(result: dict, path: str) -> None:
    """Front (val accuracy vs MAC fraction) with the uniform baseline and, where measured, both on the test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = sorted(result["front"], key=lambda r: r["macs_fraction"])
    ax.step([100 * r["macs_fraction"] for r in front], [100 * r["accuracy"] for r in front], where="post",
            color="C0", lw=1)
    ax.plot([100 * r["macs_fraction"] for r in front], [100 * r["accuracy"] for r in front], "o", color="C0",
            label=f"search front, val ({result['trials']} trials)")
    uni = result.get("uniform") or []
    ax.plot([100 * u["macs_fraction"] for u in uni], [100 * u["accuracy"] for u in uni], "s--", color="C3",
            label="uniform ratios, val")
    matched = [m for m in result.get("matched") or [] if m.get("search_test") is not None]
    if matched:
        ax.plot([100 * m["search_macs"] for m in matched], [100 * m["search_test"] for m in matched], "o",
                mfc="none", color="C0", ms=10, label="matched front trial, test")
        ax.plot([100 * m["uniform_macs"] for m in matched], [100 * m["uniform_test"] for m in matched], "s",
                mfc="none", color="C3", ms=10, label="uniform, test")
    ax.set_xlabel("MACs kept (% of the unpruned model)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['config']}: search front vs uniform baseline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--trials", type=int, help="override n_trials")
    ap.add_argument("--run-dir", help="run directory (default: a fresh temporary one)")
    ap.add_argument("--levels", type=float, nargs="*", default=[0.25, 0.3, 0.4, 0.5, 0.6],
                    help="uniform-baseline budgets (fraction of MACs kept); empty to skip")
    ap.add_argument("--hv-ref-acc", type=float, help="hypervolume reference accuracy (default base - 0.2)")
    ap.add_argument("--threads", type=int, help="torch threads (overrides the config's `threads`; 1 is fastest for "
                                                "small models on a busy CPU)")
    ap.add_argument("--test", action="store_true",
                    help="also evaluate each uniform model and the best front trial under its MACs (rebuilt) on the "
                         "test split")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--plot", help="write a PNG of the front and the uniform baseline here")
    ap.add_argument("--replot", metavar="JSON", help="only redraw --plot from a JSON written by --out")
    args = ap.parse_args(argv)
    if args.replot:
        if not args.plot:
            ap.error("--replot needs --plot PATH")
        plot_comparison(json.loads(Path(args.replot).read_text()), args.plot)
        return 0

    import torch

    import optuna

    from autoprune.study import hypervolume_2d, load_config, search

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="bench_search_")
    cfg = load_config(args.config, run_dir=run_dir, n_trials=args.trials, threads=args.threads)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # for the uniform baseline too
    os.environ.setdefault("AUTOPRUNE_CACHE", str(Path(run_dir) / "cache"))
    log = lambda s: print(s, flush=True)  # noqa: E731
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else
              f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} torch threads")
    log(f"# bench_search: {cfg.name}, {cfg.n_trials} trials, {device}, torch {torch.__version__}")

    t0 = time.perf_counter()
    front = search(cfg, log=log)
    total = time.perf_counter() - t0
    trial_s = [r.seconds for r in front.all]
    setup = total - sum(trial_s)
    base = front.base
    log(front.table())
    log(f"search: {total:.1f} s wall ({setup:.1f} s data/model/pretrain/sensitivity/scoring, {len(trial_s)} trials "
        f"x {sum(trial_s) / max(1, len(trial_s)):.2f} s)")

    uni = uniform_baseline(front, args.levels, log, test=args.test) if args.levels else []
    ref = (args.hv_ref_acc if args.hv_ref_acc is not None else base["accuracy"] - 0.2, 1.0)
    hv_search = front.hypervolume(ref)
    hv_uniform = hypervolume_2d([(u["accuracy"], u["macs_fraction"]) for u in uni], ref) if uni else None
    log(f"hypervolume (ref acc {ref[0]:.3f}, MACs 1.0): search {hv_search:.4f}"
        + (f", uniform {hv_uniform:.4f}" if hv_uniform is not None else ""))
    from autoprune.train import evaluate

    matched = []
    search_test: dict[int, float] = {}  # trial number -> test accuracy: two budgets may pick the same trial
    for u in uni:
        # matched at the budget: the best trial keeping at most the MACs the uniform allocation was given (both
        # land within 1% below it); `strict_*`: at most the uniform model's exact MACs
        best = front.best_under(macs=u["level"])
        strict = front.best_under(macs=u["macs_fraction"])
        row = {"level": u["level"], "uniform_macs": u["macs_fraction"], "uniform_val": u["accuracy"],
               "trial": best.number if best else None, "search_macs": best.macs_fraction if best else None,
               "search_val": best.accuracy if best else None, "strict_trial": strict.number if strict else None,
               "strict_val": strict.accuracy if strict else None}
        if args.test:
            row["uniform_test"] = u.get("test_accuracy")
            if best is not None:
                # the search selected its trials on val: the matched comparison on the untouched test split
                if best.number not in search_test:
                    model, _ = front.rebuild(best.number)
                    search_test[best.number] = evaluate(model, front.problem().data, split="test").accuracy
                row["search_test"] = search_test[best.number]
        matched.append(row)
        log(f"  budget {u['level']:.0%} MACs: uniform {u['accuracy']:.2%} ({u['macs_fraction']:.2%}), search "
            + (f"{best.accuracy:.2%} (trial {best.number}, {best.macs_fraction:.2%})" if best else "-")
            + (f"; at <= {u['macs_fraction']:.2%}: {strict.accuracy:.2%} (trial {strict.number})" if strict else "")
            + (f"; test: uniform {row['uniform_test']:.2%}, search {row.get('search_test', float('nan')):.2%}"
               if args.test else ""))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "config": cfg.name, "trials": cfg.n_trials, "device": device, "date": time.strftime("%Y-%m-%d"),
            "wall_s": total, "setup_s": setup, "trial_s": trial_s, "base": base, "front": front.to_dicts(),
            "uniform": uni, "matched": matched, "hv_ref": ref, "hv_search": hv_search, "hv_uniform": hv_uniform}, indent=2))
    if args.plot:
        plot_comparison({"config": cfg.name, "trials": cfg.n_trials, "front": front.to_dicts(), "uniform": uni,
                         "matched": matched}, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
