#!/usr/bin/env python3
"""Early stopping (multi-objective successive halving) vs full trials, at the same number of fine-tuning images.

    python benchmarks/bench_early_stopping.py [--config benchmarks/configs/resnet56_cifar10_jpeg_cpu.yaml]
        [--trials 36] [--batches 60] [--rungs 0,0.333] [--eta 3] [--guide CONFIG's|uniform] [--anchors N]
        [--val-fraction 0.5] [--sampler-seed N] [--test] [--run-dir DIR] [--out FILE.md]
        [--baseline-images N --baseline-hv HV [--baseline-seconds S]] [--budget-fraction F, e.g. 1/3]

1. *Without* early stopping: the config's search with ``--trials`` COMPLETE trials of ``--batches`` fine-tuning
   batches each. Its fine-tuning budget = the images its fine-tuned trials consumed.
2. *With* early stopping (``early_stopping: {enabled: true, rungs, reduction_factor}``): the same search (same seed,
   sampler, space), run until it has consumed the same number of fine-tuning images (a COMPLETE trial costs its full
   budget, a stopped one the steps it ran).
Reported for both: trials evaluated (COMPLETE + stopped), fine-tuning images, wall time, the 2-D hypervolume of the
val front (reference: base val accuracy - 0.2, 100% MACs, as in docs/search.md) and, with ``--test``, of the front's
models rebuilt and evaluated on the untouched test split. Not a test; prints and writes markdown (+ .json).

``--baseline-images N --baseline-hv HV`` skip run 1 and take a recorded search instead (docs/search.md's 36-trial
search: 36 x 60 x 128 = 276,480 images, val hypervolume 0.0949, 1,403 s); ``--budget-fraction F`` gives run 2 only F
times the baseline's images (the issue's goal: the baseline's hypervolume with a third of its fine-tuning). With
``--batches`` larger than the baseline's, run 2's complete trials fine-tune longer on the same total (what the
measured result in docs/better_fronts.md does). The markdown lists every trial's rung values and decision and, with
``--test``, the test front.
"""
from __future__ import annotations

import argparse
import datetime
import fractions
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune.config import load_config  # noqa: E402
from autoprune.study.early_stopping import RUNG_ATTR, STOP_ATTR  # noqa: E402
from autoprune.study.front import ParetoFront, hypervolume_2d, pareto_filter  # noqa: E402
from autoprune.study.session import open_session  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from bench_sensitivity import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class BudgetReached(Exception):
    pass


def images_used(study, cfg) -> int:
    """Fine-tuning images consumed by the study's trials (COMPLETE fine-tuned trials: the full budget)."""
    total, full = 0, full_trial_images(study, cfg)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.state == TrialState.PRUNED:
            total += int((t.user_attrs.get(STOP_ATTR) or {}).get("images") or 0)
        elif t.user_attrs.get("finetuned") and "reused_from" not in t.user_attrs:
            total += full
    return total


def full_trial_images(study, cfg) -> int:
    """Fine-tuning images of one trial that runs its whole budget."""
    from autoprune.allocation.repetitive import steps_per_epoch

    ft = cfg.finetune
    return ft.epochs * steps_per_epoch(_data_of(study), ft.batch_size, ft.max_batches) * ft.batch_size


_DATA: dict[int, object] = {}


def _data_of(study):
    return _DATA[id(study)]


def run(cfg_dict: dict, budget_images: int | None, log) -> dict:
    t0 = time.perf_counter()
    with open_session(cfg_dict, log=log) as s:
        _DATA[id(s.study)] = s.problem.data
        cfg = s.cfg

        def on_trial(session, trial) -> None:
            used = images_used(session.study, cfg)
            log(f"  trial {trial.number} {trial.state.name}: {used:,} fine-tuning images so far")
            # stop before a trial that could overrun the budget (one that runs all its rungs)
            if budget_images is not None and used + full_trial_images(session.study, cfg) > budget_images:
                raise BudgetReached

        try:
            s.run(on_trial=on_trial)
        except BudgetReached:
            pass
        seconds = time.perf_counter() - t0
        front = ParetoFront(s.study, cfg, problem=s.problem)
        trials = s.study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        return {"session": s, "front": front, "cfg": cfg, "seconds": seconds,
                "images": images_used(s.study, cfg), "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED), "base": dict(front.base),
                "rung_evals": sum(len(t.user_attrs.get(RUNG_ATTR) or {}) for t in trials)}


def trial_table(study) -> list[str]:
    """One markdown row per COMPLETE or stopped trial: MACs, accuracy at each rung, final val accuracy or where it
    stopped (and the rung's decision: place in the order / results / quota)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    steps = sorted({int(k) for t in trials for k in (t.user_attrs.get(RUNG_ATTR) or {})})
    head = ["trial", "MACs", *(f"rung {k}" for k in steps), "result"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        rr = t.user_attrs.get(RUNG_ATTR) or {}
        stop = t.user_attrs.get(STOP_ATTR)
        macs = t.user_attrs.get("macs_fraction") or next(iter(rr.values()), [None, None])[1]
        cells = [f"{rr[str(k)][0]:.2%}" if str(k) in rr else "" for k in steps]
        if stop:
            d = stop["decision"]
            result = (f"stopped at step {stop['step']} (placed {d.get('position', 0) + 1} of {d['n']}, "
                      f"quota {d['quota']})")
        else:
            result = f"**{t.values[0]:.2%}**" + (f" (reused #{t.user_attrs['reused_from']})"
                                                  if "reused_from" in t.user_attrs else "")
        anchor = " (anchor)" if "fixed_params" in t.system_attrs else ""
        out.append("| " + " | ".join([f"{t.number}{anchor}", f"{macs:.2%}", *cells, result]) + " |")
    return out


def test_front(front: ParetoFront, log) -> list[tuple[float, float]]:
    """(test accuracy, MAC fraction) of the val front's members, rebuilt."""
    from autoprune.train import evaluate

    out = []
    for r in front:
        model, _ = front.rebuild(r.number)
        acc = evaluate(model, front.problem().data, split="test").accuracy
        log(f"  rebuilt trial {r.number}: val {r.accuracy:.2%} test {acc:.2%} at {r.macs_fraction:.1%} MACs")
        out.append((acc, r.macs_fraction))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "benchmarks/configs/resnet56_cifar10_jpeg_cpu.yaml"))
    ap.add_argument("--trials", type=int, default=36, help="COMPLETE trials of the search without early stopping")
    ap.add_argument("--batches", type=int, default=None, help="fine-tuning batches per trial (default: the config's)")
    ap.add_argument("--rungs", default="0,0.333", help="rungs as fractions of the fine-tuning budget")
    ap.add_argument("--eta", type=float, default=3.0, help="reduction factor")
    ap.add_argument("--guide", default=None, help="override ratios.guide (uniform: no sensitivity table)")
    ap.add_argument("--anchors", type=int, default=None, help="override ratios.anchors")
    ap.add_argument("--val-fraction", type=float, default=None, help="override data.val_fraction")
    ap.add_argument("--data-root", default=None, help="override data.root")
    ap.add_argument("--threads", type=int, default=None, help="override threads")
    ap.add_argument("--sampler-seed", type=int, default=None,
                    help="override sampler.seed (other trials; the sensitivity table and fine-tuning keep the seed)")
    ap.add_argument("--test", action="store_true", help="rebuild the fronts' models and evaluate them on test")
    ap.add_argument("--baseline-images", type=int, default=None,
                    help="skip the search without early stopping: its fine-tuning images, as recorded")
    ap.add_argument("--baseline-hv", type=float, default=None, help="with --baseline-images: its val hypervolume")
    ap.add_argument("--budget-fraction", type=lambda v: float(fractions.Fraction(v)), default=1.0,
                    help="the early-stopping search gets this fraction of the baseline's images (e.g. 1/3)")
    ap.add_argument("--baseline-seconds", type=float, default=None,
                    help="with --baseline-images: its search's wall time, as recorded")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench_es_"))
    base = load_config(args.config).to_dict()
    for k in ("storage", "study_name"):
        base.pop(k, None)
    base["n_trials"] = args.trials
    if args.batches is not None:
        base["finetune"]["max_batches"] = args.batches
    if args.guide is not None:
        base["ratios"]["guide"] = args.guide
        if args.guide != "sensitivity":
            base["ratios"].pop("sensitivity", None)
    if args.anchors is not None:
        base["ratios"]["anchors"] = args.anchors
    if args.val_fraction is not None:
        base["data"]["val_fraction"] = args.val_fraction
    if args.data_root is not None:
        base["data"]["root"] = args.data_root
    if args.threads is not None:
        base["threads"] = args.threads
    if args.sampler_seed is not None:
        base.setdefault("sampler", {})["seed"] = args.sampler_seed
    base["model"]["weights"] = str((Path(args.config).parent / base["model"]["weights"]).resolve()) \
        if base["model"].get("weights") and not os.path.isabs(os.path.expanduser(base["model"]["weights"])) \
        else base["model"].get("weights")

    off = json.loads(json.dumps(base))
    off.update(name="bench_es_off", run_dir=str(run_dir / "off"))
    off["early_stopping"] = {"enabled": False}
    on = json.loads(json.dumps(base))
    on.update(name="bench_es_on", run_dir=str(run_dir / "on"), n_trials=50 * args.trials)
    on["early_stopping"] = {"enabled": True, "rungs": [float(r) for r in args.rungs.split(",")],
                            "reduction_factor": args.eta}

    if args.baseline_images is not None:
        if args.baseline_hv is None:
            ap.error("--baseline-images needs --baseline-hv (the recorded search's val hypervolume)")
        budget = int(args.baseline_images * args.budget_fraction)
        log(f"with early stopping: up to {budget:,} fine-tuning images "
            f"({args.budget_fraction:g} x the recorded {args.baseline_images:,})")
        r_on = run(on, budget, log)
        runs = [("with early stopping", r_on)]
        base_acc = r_on["base"].get("accuracy", 0.9)
    else:
        log(f"without early stopping: {args.trials} trials")
        r_off = run(off, None, log)
        budget = int(r_off["images"] * args.budget_fraction)
        log(f"with early stopping: up to {budget:,} fine-tuning images")
        r_on = run(on, budget, log)
        runs = [("without early stopping", r_off), ("with early stopping", r_on)]
        base_acc = r_off["base"].get("accuracy", 0.9)

    ref_acc = base_acc - 0.2
    rows = []
    if args.baseline_images is not None:
        rows.append({"name": f"without early stopping ({args.trials} trials, recorded)", "trials": args.trials,
                     "complete": args.trials, "pruned": 0, "images": args.baseline_images,
                     "seconds": args.baseline_seconds, "front": "-", "rung_evals": 0, "hv_val": args.baseline_hv})
    for name, r in runs:
        row = {"name": name, "trials": r["complete"] + r["pruned"], "complete": r["complete"], "pruned": r["pruned"],
               "images": r["images"], "seconds": r["seconds"], "front": len(r["front"]),
               "rung_evals": r["rung_evals"], "hv_val": r["front"].hypervolume((ref_acc, 1.0))}
        if args.test:
            pts = test_front(r["front"], log)
            r["test_front"] = [(x.number, x.macs_fraction, x.accuracy, acc) for x, (acc, _) in zip(r["front"], pts)]
            recs = [type(x)(**{**x.to_dict(), "accuracy": a}) for x, (a, _) in zip(r["front"], pts)]
            row["hv_test"] = hypervolume_2d([(x.accuracy, x.macs_fraction) for x in pareto_filter(recs)],
                                            (ref_acc, 1.0))
        rows.append(row)

    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["Early stopping vs full trials at the same fine-tuning images", "", f"- date: {date}",
             f"- machine: {machine()}", f"- command: `{cmd}`",
             f"- base val accuracy {base_acc:.2%}; hypervolume reference "
             f"({ref_acc:.4f}, 100% MACs)", "",
             "| search | trials evaluated | complete | stopped | fine-tuning images | rung evaluations | seconds "
             "| front | HV val | HV test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hv_t = f"{r['hv_test']:.4f}" if "hv_test" in r else "-"
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['name']} | {r['trials']} | {r['complete']} | {r['pruned']} | {r['images']:,} | "
                     f"{r['rung_evals']} | {secs} | {r['front']} | {r['hv_val']:.4f} | {hv_t} |")
    for name, r in runs:
        lines += ["", f"Trials of the search {name} (val accuracy at each rung, by fine-tuning steps):", ""]
        lines += trial_table(r["session"].study)
        if r.get("test_front"):
            lines += ["", f"Front of the search {name}, rebuilt and evaluated on the test split:", "",
                      "| trial | MACs | val | test |", "|---|---|---|---|"]
            lines += [f"| {n} | {m:.2%} | {v:.2%} | {a:.2%} |" for n, m, v, a in r["test_front"]]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"date": date, "machine": machine(),
                                                                   "command": cmd, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
