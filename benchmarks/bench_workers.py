"""Throughput of a search with 1, 2 and 4 parallel workers: trials per minute.

CPU mode (default): the quickstart search (search_spaces/quickstart.yaml), every worker with ``--threads`` torch
threads (default 1: with small models, and on a machine shared with other jobs, several threads per process mostly
spin in OpenMP barriers), on

* ``--backend workers`` (default): that many ``autoprune worker`` processes on one study in a PostgreSQL server
  started here on 127.0.0.1 (``--storage postgres``, the default when the server binaries exist), or that many
  ``autoprune search`` processes sharing one journal file (``--storage journal``);
* ``--backend ray``: ``autoprune search --backend ray`` on a local Ray instance, ``--max-concurrent`` = workers.

GPU mode (``--gpu``): ResNet-20 trials on CIFAR-sized synthetic data (32x32, 5000 training images, 2 fine-tuning
epochs) on ``cuda``, the workers sharing one GPU (``--backend ray``: ``--gpus-per-trial 1/workers``).

The base model is pretrained and the sensitivity table built once before timing (both cached). Reported per worker
count: the wall time of the whole run (start-up included), and the steady-state rate: COMPLETE trials divided by
the time from the first trial's start to the last trial's end (Optuna's trial timestamps).

    python benchmarks/bench_workers.py                       # CPU, postgres, 1/2/4 workers, 8 trials each
    python benchmarks/bench_workers.py --storage journal
    python benchmarks/bench_workers.py --backend ray --workers 1,2
    python benchmarks/bench_workers.py --gpu --workers 1,2,4 --trials 16
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

GPU_CONFIG = """
name: bench_gpu
seed: 0
model:
  name: resnet20
  pretrain: {epochs: 3, lr: 0.05, batch_size: 128}
data:
  dataset: synthetic
  image_size: 32
  val_fraction: 0.1
  options: {train_per_class: 500, test_per_class: 100}
criteria: [l1, l2]
ratios: {mode: guided, guide: uniform, offset: 0.15, default: [0.0, 0.8]}
objectives: [accuracy, macs]
constraints: {max_macs: 0.6}
sampler: {name: nsga2, population_size: 8}
finetune: {epochs: 2, batch_size: 128, lr: 0.02}
device: cuda
"""


def _config(args: argparse.Namespace, tmp: Path, name: str, threads: int | None) -> Path:
    import yaml

    if args.gpu:
        d = yaml.safe_load(GPU_CONFIG)
    else:
        d = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    d["name"] = name
    d["n_trials"] = args.trials
    d["run_dir"] = str(tmp / "run")  # shared: the pretrained base model is cached there once
    if threads is not None:
        d["threads"] = threads
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _env(tmp: Path, threads: int | None) -> dict[str, str]:
    from conftest_services import child_env

    env = child_env(AUTOPRUNE_CACHE=str(tmp / "cache"))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _rates(study) -> dict[str, float]:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return {"complete": 0}
    start = min(t.datetime_start for t in done).timestamp()
    end = max(t.datetime_complete for t in done).timestamp()
    secs = [t.user_attrs.get("seconds", 0.0) for t in done]
    return {"complete": len(done), "steady_s": round(end - start, 2),
            "trials_per_min": round(60 * len(done) / max(end - start, 1e-9), 2),
            "mean_trial_s": round(sum(secs) / len(secs), 2),
            "finetuned": sum(bool(t.user_attrs.get("finetuned")) for t in done)}


def run(args: argparse.Namespace) -> tuple[list[dict], str]:
    import optuna

    from autoprune.study import check_config
    from autoprune.study.space import RatioSpace

    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    cores = os.cpu_count() or 1
    counts = [int(k) for k in args.workers.split(",")]
    pg = None
    storage_kind = args.storage
    if storage_kind == "auto":
        from conftest_services import postgres_bindir

        storage_kind = "postgres" if postgres_bindir() is not None else "journal"
    if args.backend == "workers" and storage_kind == "postgres":
        from conftest_services import postgres_server

        pg_ctx = postgres_server()
        pg = pg_ctx.__enter__()
    rows = []
    try:
        # Prepare once: data, pretrained base model, sensitivity table (all cached for the timed runs).
        t0 = time.perf_counter()
        prep = _config(args, tmp, "prepare", None if args.gpu else args.threads)
        os.environ["AUTOPRUNE_CACHE"] = str(tmp / "cache")
        cfg, problem = check_config(prep)
        space = RatioSpace(cfg, problem)
        if cfg.ratios.mode == "guided":
            for lv in cfg.ratios.level:
                space.allocation(lv)
        print(f"prepared in {time.perf_counter() - t0:.1f} s (pretraining, sensitivity table)", file=sys.stderr)
        for k in counts:
            threads = None if args.gpu else args.threads
            name = f"w{k}"
            path = _config(args, tmp, name, threads)
            env = _env(tmp, threads)
            t0 = time.perf_counter()
            if args.backend == "ray":
                cmd = [sys.executable, "-m", "autoprune.cli", "search", str(path), "--backend", "ray", "--quiet",
                       "--max-concurrent", str(k)]
                if args.gpu:
                    cmd += ["--gpus-per-trial", f"{1.0 / k:.4f}", "--cpus-per-trial", "1"]
                else:
                    cmd += ["--cpus-per-trial", str(max(1, min(args.threads, cores // k)))]
                r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(r.stderr[-3000:])
                storage = optuna.storages.JournalStorage(
                    optuna.storages.journal.JournalFileBackend(str(tmp / "run" / "optuna.journal")))
            else:
                if pg is not None:
                    url = pg.createdb(name)
                    cmd = [sys.executable, "-m", "autoprune.cli", "worker", str(path), "--storage", url, "--quiet"]
                    storage = url
                else:
                    journal = tmp / f"{name}.journal"
                    cmd = [sys.executable, "-m", "autoprune.cli", "search", str(path), "--storage", str(journal),
                           "--quiet"]
                    storage = optuna.storages.JournalStorage(
                        optuna.storages.journal.JournalFileBackend(str(journal)))
                procs = [subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True) for _ in range(k)]
                for p in procs:
                    _, err = p.communicate()
                    if p.returncode != 0:
                        raise RuntimeError(f"worker failed ({p.returncode}):\n{err[-3000:]}")
            wall = time.perf_counter() - t0
            study = optuna.load_study(study_name=name, storage=storage)
            row = {"workers": k, "threads_per_worker": threads, "wall_s": round(wall, 1),
                   "trials_per_min_wall": round(60 * args.trials / wall, 2), **_rates(study)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    finally:
        if pg is not None:
            pg_ctx.__exit__(None, None, None)
    return rows, storage_kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts (default 1,2,4)")
    ap.add_argument("--trials", type=int, default=8, help="COMPLETE trials per run (default 8)")
    ap.add_argument("--threads", type=int, default=1, help="CPU mode: torch threads per worker (default 1)")
    ap.add_argument("--backend", choices=("workers", "ray"), default="workers")
    ap.add_argument("--storage", choices=("auto", "postgres", "journal"), default="auto",
                    help="workers backend: PostgreSQL server started here, or a shared journal file")
    ap.add_argument("--gpu", action="store_true", help="ResNet-20 on 32x32 data on cuda, workers sharing one GPU")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    rows, storage_kind = run(args)
    import torch

    meta = {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "backend": args.backend, "storage": storage_kind if args.backend == "workers" else "journal",
            "trials": args.trials, "mode": "gpu" if args.gpu else "cpu",
            "load_average_1m_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(meta))
    print(f"{'workers':>7}  {'threads':>7}  {'wall s':>7}  {'trials/min (wall)':>17}  {'trials/min (steady)':>19}  "
          f"{'mean trial s':>12}  finetuned")
    for r in rows:
        print(f"{r['workers']:>7}  {str(r['threads_per_worker']):>7}  {r['wall_s']:>7}  "
              f"{r['trials_per_min_wall']:>17}  {r.get('trials_per_min', '-'):>19}  {r.get('mean_trial_s', '-'):>12}  "
              f"{r.get('finetuned', '-')}/{r.get('complete', '-')}")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
