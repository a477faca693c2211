#!/usr/bin/env python3
"""Polish the most accurate front member within a MAC budget of a finished search, with distillation.

    python benchmarks/polish_front_member.py --storage JOURNAL_OR_URL --study NAME [--macs 0.5] [--epochs 3]
        [--max-batches N] [--no-distill] [--threads N] [--out FILE.md]

Rebuilds the trial exactly as searched, then ``ParetoFront.polish`` (what ``autoprune export CONFIG OUT --trial N
--finetune-epochs E`` runs): ``--epochs`` more epochs with distillation from the unpruned model (the config's
``finetune.distill`` or alpha 0.5, T 4) at the search's learning rate and batch size, cosine schedule. Reports the
trial's val accuracy as searched, val and test accuracy before and after the polish, and the unpruned model's test
accuracy on the same split. ``--max-batches`` caps each epoch (a reduced-scale run). Not a test; prints and writes
markdown (+ .json beside it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune.study import load_front  # noqa: E402
from autoprune.train import evaluate  # noqa: E402

from bench_sensitivity import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True, help="the search's journal file or database URL")
    ap.add_argument("--study", required=True, help="the study name")
    ap.add_argument("--macs", type=float, default=0.5, help="MAC budget (fraction of the unpruned model)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-batches", type=int, default=None, help="cap each epoch at N batches")
    ap.add_argument("--no-distill", action="store_true", help="labels only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    front = load_front(storage=args.storage, study_name=args.study)
    rec = front.best_under(macs=args.macs)
    if rec is None:
        sys.exit(f"no front trial keeps at most {args.macs:.0%} of the MACs")
    print(f"trial {rec.number}: {rec.macs_fraction:.2%} MACs, {rec.accuracy:.2%} val as searched", flush=True)
    t0 = time.perf_counter()
    model, _ = front.rebuild(rec.number)
    prob = front.problem()
    base_val = evaluate(prob.base_model, prob.data).accuracy
    base_test = evaluate(prob.base_model, prob.data, split="test").accuracy
    res = front.polish(rec.number, args.epochs, distill=not args.no_distill, model=model, progress=False,
                       max_batches=args.max_batches)
    seconds = time.perf_counter() - t0
    d = {"trial": rec.number, "macs_fraction": rec.macs_fraction, "params_fraction": rec.params_fraction,
         "search_val": rec.accuracy, "base_val": base_val, "base_test": base_test, "seconds": seconds,
         **res.to_dict()}
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kd = f"distillation alpha {res.distill['alpha']:g}, T {res.distill['temperature']:g}" if res.distill else "labels"
    lines = ["Polish of a front member", "", f"- date: {date}", f"- machine: {machine()}", f"- command: `{cmd}`",
             f"- trial {rec.number}: {rec.macs_fraction:.2%} MACs, {rec.params_fraction:.2%} params; polish "
             f"{args.epochs} epoch(s) ({kd}), {res.finetune.images:,} images, {seconds:.0f} s", "",
             "| model | val | test |", "|---|---|---|",
             f"| unpruned | {base_val:.2%} | {base_test:.2%} |",
             f"| trial {rec.number} as searched (rebuilt) | {res.val_before:.2%} | {res.test_before:.2%} |",
             f"| after the polish | **{res.val_accuracy:.2%}** | **{res.test_accuracy:.2%}** |",
             "", f"Test gap to the unpruned model: {100 * (base_test - res.test_accuracy):.2f} points."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"date": date, "machine": machine(),
                                                                   "command": cmd, **d}, indent=2,
                                                                  default=str) + "\n")


if __name__ == "__main__":
    main()
