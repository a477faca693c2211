#!/usr/bin/env python3
"""Polish the front member keeping at most 50% of the MACs of a finished search, with distillation.

    python benchmarks/polish_front_member.py JOURNAL STUDY MAX_BATCHES [OUT.json]

Rebuilds the trial (its search accuracy), fine-tunes it one epoch capped at MAX_BATCHES batches with distillation
from the unpruned model (alpha 0.9, T 4; the search config's lr, batch size, seed), and reports val and test accuracy
before and after, with the unpruned model's test accuracy. ``autoprune export CONFIG OUT --trial N
--finetune-epochs E`` is the full-epoch version.
"""
import json
import sys
import time
from autoprune.study import load_front
from autoprune.polish import polish
from autoprune.train import evaluate

front = load_front(storage=sys.argv[1], study_name=sys.argv[2])
rec = front.best_under(macs=0.5)
print("member", rec.number, rec.macs_fraction, rec.accuracy, flush=True)
t = time.perf_counter()
model, out = front.rebuild(rec.number)
prob = front.problem()
base_test = evaluate(prob.base_model, prob.data, split="test").accuracy
res = polish(model, prob.data, epochs=1, teacher=prob.teacher(), distill={"alpha": 0.9, "temperature": 4.0},
             progress=False, finetune_kwargs={"max_batches": int(sys.argv[3])})
d = {"trial": rec.number, "macs_fraction": rec.macs_fraction, "search_val": rec.accuracy, "base_test": base_test,
     **res.to_dict(), "seconds": time.perf_counter() - t}
print(json.dumps(d, indent=1))
if len(sys.argv) > 4:
    with open(sys.argv[4], "w") as f:
        json.dump(d, f, indent=1)
