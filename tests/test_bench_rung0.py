"""benchmarks/bench_rung0.py's rank statistics (the benchmark itself needs the shared checkpoint and a recorded
search; it is run by hand, docs/vs_tools.md)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rung0.py"
spec = importlib.util.spec_from_file_location("bench_rung0", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_kendall_tau_b():
    assert bench.kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert bench.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert math.isclose(bench.kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]), 4 / 6)  # 5 concordant, 1 discordant
    # a tie in x: tau-b divides by sqrt((n0 - n1)(n0 - n2)) = sqrt(5 * 6)
    assert math.isclose(bench.kendall_tau_b([1, 1, 2, 3], [1, 2, 3, 4]), 5 / math.sqrt(30))
    assert math.isnan(bench.kendall_tau_b([1], [2]))


def test_pair_tau_compares_only_models_of_similar_size():
    members = [{"macs_fraction": 0.30, "accuracy": 0.70, "s": 0.2}, {"macs_fraction": 0.31, "accuracy": 0.72, "s": 0.1},
               {"macs_fraction": 0.60, "accuracy": 0.85, "s": 0.9}]
    tau, n = bench.pair_tau(members, "s", 0.05)
    assert (tau, n) == (-1.0, 1)  # the one similar pair is ranked the wrong way; the 60% model is not compared
    assert bench.pair_tau(members, "s", 1.0) == (1 / 3, 3)
