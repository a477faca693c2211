#!/usr/bin/env python3
"""autoprune vs NVIDIA ModelOpt FastNAS vs Torch-Pruning at fixed MAC budgets, one fine-tuning recipe for all.

    python benchmarks/bench_vs_tools.py                          # the CPU default (estimate below)
    python benchmarks/bench_vs_tools.py --smoke --out /tmp/vs.md # tiny model + synthetic data, < 30 s
    python benchmarks/bench_vs_tools.py --models resnet56 --budgets 0.5 --finetune-batches 200 --test-size 5000

Optional tools: ``pip install "autoprune[bench]"`` (nvidia-modelopt, torch-pruning 1.6.1, torchprofile 0.0.4,
the version ModelOpt's FLOP counter works with). A tool that is not installed is reported as **skipped** in every
table (and printed when the run starts), never silently left out.

Models (CIFAR-10-JPEG, ../shared/data, extracted to ``--data`` when missing): the shared ResNet-20 and ResNet-56
checkpoints (option-A shortcuts, ../shared/models) and torchvision's ``resnet18`` as built for ImageNet (its
stride-2 stem and max-pool kept, 37M MACs at 32x32; option-B 1x1-conv shortcuts), trained briefly here (``--r18-epochs``; cached in ``--cache``, default
``~/.cache/autoprune-bench``, outside the repository); ``vit`` (``--models vit``, not in the default set): timm's
``vit_tiny`` with patch 4 on 32x32 and 6 blocks, trained here the same way (``--vit-epochs``), where autoprune prunes
heads, head widths and MLP widths exactly and Torch-Pruning follows its ViT example (``num_heads`` per qkv; it also
prunes the residual stream through LayerNorm). Budgets (``--budgets``): fractions of the unpruned MACs
(conv + linear) to keep. Methods, each producing a pruned model at or under the budget:

(a) ``autoprune``: ``ap.prune_to_budget(model, data, macs=b, criterion="l1")`` as in the README (sensitivity
    allocation; ``--sens-ratios``/``--sens-eval-batches``: by default the grid 0.1, 0.2, ..., 0.8 on 8 val batches, finer than
    the README's short demo (0.3, 0.6 on 2 batches), which gave 5.6 test points less on ResNet-20 at 50%, see
    docs/vs_tools.md) with
    ``finetune_epochs=0``: the channels it chose (``result.ratios.remove``) are taken before its BN re-estimation
    and go through the common recipe below. The sensitivity table is computed once per model before the methods run
    (``shared_table``) and read from its cache by every budget, (a'') and (b); its time is counted in their rows.
(a'') ``autoprune-loss``: the same call with ``sensitivity_kwargs={..., "metric": "loss"}``: the same table (every row
    holds both damages), entries ranked by the rise of the loss per MAC saved instead of the accuracy drop.
(a') ``autoprune-global``: the same call with ``allocation="global"`` (one threshold on the L1 scores normalised by
    their group's mean, across every prunable group, bisected to the budget; no sensitivity table).
(b) ``autoprune-search``: one small guided Optuna search per model (``autoprune.study.search``; ``--search-trials``
    trials, ``--search-batches`` fine-tuning batches per trial, anchors at the budgets); per budget the front member
    nearest to it at or under it. Its time is that of the whole search, shown in every budget's row.
(c) ``modelopt-fastnas``: ``mtp.prune(model, mode="fastnas", constraints={"flops": f"{pct}%"}, dummy_input=x,
    config={"data_loader": train_loader, "score_func": val_acc, "checkpoint": path})`` with the documented default
    search space (``channel_divisor`` 32; ``--fastnas-divisor 16`` is the finer one of ModelOpt's ResNet-20
    tutorial). Its FLOPs are 2 x MACs from torchprofile; the residual widths of the option-A ResNets stay fixed.
    Its pre-search sensitivity map is checkpointed once per model (first budget) and reused for the others.
    A budget outside its search space is recorded as **infeasible** with the reachable minimum.
(d) ``torch-pruning`` 1.6.1: ``tp.pruner.BasePruner(model, x, importance=GroupMagnitudeImportance(p=2),
    global_pruning=True, pruning_ratio=r, ignored_layers=[final fc] + [option-A ResNets: the stem conv and every
    block's conv2, the layers feeding the zero-padding shortcut stream, which Torch-Pruning cannot prune; the
    pruned model would not run])``, ``r`` bisected until the MACs are at or under the budget within 1%; the time
    is the whole bisection (every step is one Torch-Pruning run).
(e) ``uniform-l1``: the same ratio in every prunable group of ``ap.ChannelGraph``, L1 order, bisected to the
    budget (at or under).

Every pruned model: MACs by ``ap.count_macs`` AND by fvcore (``FlopCountAnalysis``, conv + linear), parameters,
prune (or search) wall and CPU time (``time.process_time``, all threads), val accuracy right after pruning, after BN
re-estimation (``ap.recalibrate_bn``, ``--bn-batches`` augmented train batches), then the SAME fine-tuning
(``ap.finetune``: SGD nesterov, cosine, ``--finetune-epochs`` x ``--finetune-batches`` batches of
``--batch-size``, lr ``--lr``) once per seed of ``--seeds``, each fine-tuned model evaluated once on the test
images. Splits: ``ap.load_data(..., val_from="test", val_fraction=0.5, seed=0)``: val = half of the test split,
test = the other half (the checkpoints saw every training image); the tables use ``--val-size`` /
``--test-size`` images of each half in a fixed seeded random order (class-balanced in expectation; the search
selects on its whole val half; test is never seen before the end).

Output: markdown (``--out``, default docs/vs_tools.md) and JSON beside it, with machine, versions, date, command.

Cost (2-core AMD EPYC, no GPU, 2026-12-07/08, every cache cold): the default run took 3,402 s (57 min) as two
commands, ``--models resnet56`` 1,914 s (its sensitivity table 845 s, the search's 9 trials 191 s) and
``--models resnet20,resnet18`` 1,488 s (the ResNet-18 trained 3 epochs in 278 s; tables 116 s and 56 s). The tables
are cached in ``--cache``/sensitivity (content-keyed: a re-run reads them; ``--fresh-tables`` recomputes them);
docs/vs_tools.md has the tables and commands.
Not a test; ``tests/test_bench_vs_tools.py`` runs ``--smoke``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:  # the search imports `bench_vs_tools:resnet18_cifar` by name
    sys.path.insert(0, str(HERE))

import autoprune as ap  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHT_FILES = {"resnet20": "resnet20-cifar10jpeg.pt", "resnet56": "resnet56-cifar10jpeg.pt"}  # in --weights-dir
EXTRACT = SHARED / "data" / "cifar10_jpeg.py"
OPTION_A = ("resnet20", "resnet56")  # CIFAR ResNets with the zero-padding (option-A) shortcut
METHODS = ("autoprune", "autoprune-loss", "autoprune-global", "autoprune-search", "modelopt-fastnas", "torch-pruning",
           "uniform-l1")
TABLE_METHODS = ("autoprune", "autoprune-loss", "autoprune-search")  # the methods that read the sensitivity table
TOOLS = {"modelopt-fastnas": ("nvidia-modelopt", "modelopt.torch.prune"), "torch-pruning": ("torch-pruning", "torch_pruning")}


# ------------------------------------------------------------------------------------------------ models and data
def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 as built for ImageNet (7x7 stride-2 stem, max-pool, 1x1-conv downsample shortcuts) with
    10 classes, fed the 32x32 images as they are: 37.0M MACs. (The usual CIFAR adaptation, a 3x3 stride-1 stem
    without the max-pool, costs 555M MACs, 15 times more: the default run would not fit 2 hours on a 2-core CPU.)"""
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


def vit_cifar(num_classes: int = 10) -> nn.Module:
    """timm's ``vit_tiny_patch16_224`` for 32x32 inputs: patch 4 (64 tokens), 6 blocks of width 192, 3 heads."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=32,
                             patch_size=4, depth=6)


#: models trained here from scratch (cached): name -> builder importable by the search as ``bench_vs_tools:NAME``
SCRATCH = {"resnet18": resnet18_cifar, "vit": vit_cifar}
MODELS = ("resnet20", "resnet56", "resnet18", "vit")
#: part of the cached weights' key: bumped when a builder of SCRATCH changes (resnet18: the ImageNet stem, 2026-12-07)
BUILDER_VERSION = {"resnet18": 2}


def ensure_data(root: Path) -> None:
    if (root / "train").is_dir() and (root / "test").is_dir():
        return
    print(f"extracting CIFAR-10-JPEG into {root} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(EXTRACT), "--out", str(root)], check=True)


def first_batches(split, n: int, batch_size: int) -> list:
    """``n`` images of a split in a fixed seeded random order (the same for every method), as (x, y) batches. The
    split itself is stored in class order, so its first images would hold two or three classes only: the runs of
    2026-12-06/07 recorded in docs/vs_tools/ measured on such subsets (see docs/vs_tools.md)."""
    out, seen = [], 0
    for x, y in split.batches(batch_size, shuffle=True, seed=0):
        if seen >= n:
            break
        k = min(len(x), n - seen)
        out.append((x[:k], y[:k]))
        seen += k
    return out


class TrainBatches:
    """A re-iterable train loader for the tools: shuffled, augmented (crop + flip) batches of the bundle's train
    split, a new order each pass (seeded)."""

    def __init__(self, data, batch_size: int, seed: int = 0):
        self.data, self.batch_size, self.seed, self.passes = data, batch_size, seed, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.data.train.batches(self.batch_size, shuffle=True, augment=True,
                                            seed=self.seed * 1000 + self.passes, drop_last=True))

    def __len__(self):
        return len(self.data.train) // self.batch_size


def train_scratch(name: str, data, args, log) -> tuple[Path, dict]:
    """Train (or load from the cache) a model of :data:`SCRATCH` (``--r18-*`` for the ResNet-18, ``--vit-*`` for the
    ViT); returns (weights path, info)."""
    epochs, batches, lr = ((args.r18_epochs, args.r18_batches, args.r18_lr) if name == "resnet18" else
                           (args.vit_epochs, args.vit_batches, args.vit_lr))
    key = json.dumps({"v": BUILDER_VERSION.get(name, 1), "epochs": epochs, "batches": batches, "lr": lr,
                      "bs": args.batch_size, "data": str(getattr(data, "cache_path", "")), "n": len(data.train)},
                     sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = Path(args.cache) / f"{SCRATCH[name].__name__}-{digest}.pt"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        log(f"{name}: cached weights {path} (trained {info['epochs']} epoch(s), {info['seconds']:.0f} s)")
        return path, info
    torch.manual_seed(0)
    model = SCRATCH[name]()
    log(f"{name}: training from scratch, {epochs} epoch(s) x {batches or 'all'} batches of "
        f"{args.batch_size}, one-cycle lr {lr} (cached in {path}) ...")
    t = time.perf_counter()
    ap.finetune(model, data, epochs=epochs, lr=lr, schedule="onecycle", batch_size=args.batch_size,
                max_batches=batches, seed=0, progress=False)
    info = {"epochs": epochs, "batches": batches, "lr": lr, "seconds": time.perf_counter() - t, "key": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.cpu().state_dict(), tmp)
    os.replace(tmp, path)
    meta.write_text(json.dumps(info, indent=1))
    log(f"{name}: trained in {info['seconds']:.0f} s")
    return path, info


def base_model(name: str, data, args, log) -> tuple[nn.Module, dict]:
    """(unpruned model on the CPU in eval mode, its config `model` section for the search)."""
    if args.smoke:  # random initialisation, saved so that the search starts from the very same weights
        torch.manual_seed(0)
        m = (SCRATCH[name]() if name in SCRATCH else ap.get_model(name)).eval()
        path = Path(args.cache_run) / f"base-{name}.pt"
        torch.save(m.state_dict(), path)
        spec = f"bench_vs_tools:{SCRATCH[name].__name__}" if name in SCRATCH else name
        return m, {"name": spec, "weights": str(path)}
    if name in SCRATCH:
        path, info = train_scratch(name, data, args, log)
        m = SCRATCH[name]()
        m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return m.eval(), {"name": f"bench_vs_tools:{SCRATCH[name].__name__}", "weights": str(path)}
    path = Path(args.weights_dir).expanduser() / WEIGHT_FILES[name]
    m = ap.get_model(name)
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return m.eval(), {"name": name, "weights": str(path)}


# ------------------------------------------------------------------------------------------------ measuring
class Clock:
    """Wall and CPU time (time.process_time: every thread of this process) of a block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c
        return False


def _on(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return x.to(p.device) if p is not None else x


def _sdpa(inputs, outputs) -> int:
    """fvcore has no handle for the fused attention: its two matmuls, q [.., L, E] k^T and attn [.., L, S] v."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def fvcore_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv + linear (+ attention matmul) MACs of one sample counted by fvcore directly (independent of
    ap.count_macs's wrapping; the fused attention's handle is written here again)."""
    from fvcore.nn import FlopCountAnalysis

    was = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fca = FlopCountAnalysis(model, _on(x[:1], model)).set_op_handle(
                "aten::scaled_dot_product_attention", _sdpa)
            fca.unsupported_ops_warnings(False)
            fca.uncalled_modules_warnings(False)
            by_op = fca.by_operator()
    finally:
        model.train(was)
    return int(sum(v for k, v in by_op.items()
                   if k in ("conv", "linear", "addmm", "matmul", "bmm", "scaled_dot_product_attention")))


def bn_reestimate(model: nn.Module, data, args) -> nn.Module:
    """THE BatchNorm re-estimation of every pruned model (autoprune's public helper), in place."""
    return ap.recalibrate_bn(model, data, batches=args.bn_batches, batch_size=args.bn_batch_size, augment=True, seed=0)


def finetune_recipe(model: nn.Module, data, args, seed: int) -> nn.Module:
    """THE fine-tuning recipe, the same for every pruned model (in place; ends in eval mode)."""
    ap.finetune(model, data, epochs=args.finetune_epochs, max_batches=args.finetune_batches, lr=args.lr,
                batch_size=args.batch_size, schedule="cosine", seed=seed, progress=False)
    return model


# ------------------------------------------------------------------------------------------------ the methods
class Infeasible(Exception):
    """The method cannot produce a model at or under this budget."""


def bisect_ratio(macs_at, target: int, hi: float = 0.95, iters: int = 30, tol: float = 0.01):
    """The smallest ratio in [0, hi] whose MACs are <= target (MACs decrease with the ratio), stopping early once
    they are within ``tol`` below it. Returns (ratio, macs, steps)."""
    lo, steps = 0.0, 0
    m_hi = macs_at(hi)
    steps += 1
    if m_hi > target:
        raise Infeasible(f"even ratio {hi} keeps {m_hi:,} MACs > {target:,}")
    best = (hi, m_hi)
    for _ in range(iters):
        if best[1] >= (1 - tol) * target:
            break
        mid = 0.5 * (lo + hi)
        m = macs_at(mid)
        steps += 1
        if m <= target:
            hi, best = mid, (mid, m)
        else:
            lo = mid
    return best[0], best[1], steps


def run_uniform(ctx, budget):
    graph = ctx["graph"]
    target = math.floor(budget * ctx["base_macs"])
    r, macs, steps = bisect_ratio(lambda r: graph.macs(graph.removal_for(r, criterion="l1")), target)
    model = graph.prune(r, criterion="l1")
    return model, {"ratio": round(r, 5), "bisection_steps": steps}


def tp_ignored_layers(name: str, model: nn.Module) -> list[nn.Module]:
    """The final classifier, plus for the option-A ResNets the stem conv and every block's conv2 (their outputs are
    the residual stream that the zero-padding shortcut widens; Torch-Pruning cannot prune through the pad)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ignored = linears[-1:]
    if name in OPTION_A:
        ignored += [model.conv1] + [blk.conv2 for layer in (model.layer1, model.layer2, model.layer3) for blk in layer]
    return ignored


def run_torch_pruning(ctx, budget):
    import torch_pruning as tp

    base, x, name = ctx["base"], ctx["x"], ctx["name"]
    target = math.floor(budget * ctx["base_macs"])
    kept: dict[float, nn.Module] = {}  # the latest model at or under the target is the bisection's best

    def prune(r: float) -> nn.Module:
        m = copy.deepcopy(base)
        # a ViT: its timm example's recipe (examples/transformers/prune_timm_vit.py): num_heads per qkv, head dims and
        # hidden dims pruned, each attention's num_heads/head_dim set back after the step
        attns = [a for a in m.modules() if type(a).__name__ == "Attention" and hasattr(a, "qkv")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                          global_pruning=True, pruning_ratio=r,
                                          ignored_layers=tp_ignored_layers(name, m),
                                          num_heads={a.qkv: a.num_heads for a in attns})
            pruner.step()
        for a in attns:
            a.num_heads = pruner.num_heads.get(a.qkv, a.num_heads)
            a.head_dim = a.qkv.out_features // (3 * a.num_heads)
            a.attn_dim = a.num_heads * a.head_dim
        return m

    def macs_at(r: float) -> int:
        m = prune(r)
        macs = ap.count_macs(m, x)
        if macs <= target:
            kept.clear()
            kept[r] = m
        return macs

    r, macs, steps = bisect_ratio(macs_at, target)
    model = kept[r]
    return model, {"pruning_ratio": round(r, 5), "bisection_steps": steps,
                   "ignored_layers": len(tp_ignored_layers(name, base))}


def sensitivity_options(ctx) -> dict:
    """The sensitivity table's settings, the same for the budget call (a) and the search (b), so that they share one
    table: cached in ``--cache``/sensitivity, keyed by the model's weights, the data and these settings (a re-run
    reads it; ``--fresh-tables`` recomputes it). :func:`shared_table` computes it before either runs."""
    args = ctx["args"]
    opts = {"ratios": list(args.sens_ratios), "eval_batches": args.sens_eval_batches,
            "cache_dir": str(Path(args.cache) / "sensitivity")}
    if args.smoke:
        opts.update(bn_batches=1, bn_batch_size=16, batch_size=20)
    return opts


def shared_table(ctx, log) -> dict:
    """The sensitivity table of (a) and (b), computed once per model before them (timed here; they then read it
    from the cache)."""
    opts = sensitivity_options(ctx)
    with Clock() as c:
        table = ap.sensitivity(ctx["base"], ctx["data"], criterion="l1", example_inputs=ctx["x"],
                               refresh=ctx["args"].fresh_tables, progress=False, **opts)
    out = {"wall_s": round(c.wall, 2), "cpu_s": round(c.cpu, 2), "from_cache": bool(table.from_cache),
           "computed_in_s": round(table.seconds, 2), "entries": len(table.rows), "groups": len(table.groups)}
    log(f"  sensitivity table: {len(table.groups)} groups x {len(table.ratios)} ratios, "
        + (f"read from the cache (computed in {table.seconds:.0f} s)" if table.from_cache
           else f"{c.wall:.0f} s wall, {c.cpu:.0f} s CPU"))
    return out


def run_autoprune(ctx, budget, metric: str = "accuracy"):
    args = ctx["args"]
    sens = {**sensitivity_options(ctx), "metric": metric}
    res = ap.prune_to_budget(
        ctx["base"], ctx["data"], macs=budget, criterion="l1", finetune_epochs=0, example_inputs=ctx["x"],
        sensitivity_kwargs=sens, bn_batches=args.bn_batches, progress=False)
    # the channels it removed, before its own BN re-estimation: every method goes through the same recipe
    model = ctx["graph"].prune_channels(res.ratios.remove)
    info = {"tau": res.ratios.info.get("tau"), "sensitivity_s": round(res.seconds.get("sensitivity", 0.0), 2),
            "table_from_cache": bool(getattr(res.sensitivity, "from_cache", False)), "its_val_after_bn": res.accuracy}
    if ap.count_macs(model, ctx["x"]) != res.macs:
        info["warning"] = f"rebuilt model has {ap.count_macs(model, ctx['x'])} MACs, prune_to_budget {res.macs}"
    return model, info


def run_autoprune_loss(ctx, budget):
    """(a'') the budget call ranking the table's entries by the loss rise per MAC saved (the same table)."""
    return run_autoprune(ctx, budget, metric="loss")


def run_autoprune_global(ctx, budget):
    """(a') ``ap.prune_to_budget(..., allocation="global")``: one threshold on L1 scores normalised by their group's
    mean, across every group the engine can prune (the residual stream included), bisected to the budget."""
    res = ap.prune_to_budget(ctx["base"], ctx["data"], macs=budget, criterion="l1", allocation="global",
                             finetune_epochs=0, example_inputs=ctx["x"], bn_batches=ctx["args"].bn_batches,
                             progress=False)
    model = ctx["graph"].prune_channels(res.ratios.remove)
    return model, {"threshold": res.ratios.info.get("threshold"), "its_val_after_bn": res.accuracy}


def search_config(ctx) -> dict:
    args, budgets = ctx["args"], ctx["args"].budgets
    lo, hi = min(budgets), max(budgets)
    anchors = len(budgets)
    if lo == hi:  # one budget: a level range just below it
        lo, anchors = max(0.05, hi - 0.1), 2
    sens = sensitivity_options(ctx)
    cfg = {
        "name": f"vs_tools_{ctx['name']}", "seed": 0, "n_trials": args.search_trials,
        "run_dir": str(ctx["tmp"] / f"search-{ctx['name']}"), "device": str(ctx["device"]),
        "model": ctx["model_spec"], "data": ctx["data_spec"], "criteria": ["l1"],
        "ratios": {"mode": "guided", "guide": "sensitivity", "level": [lo, hi], "offset": 0.1, "anchors": anchors,
                   "default": [0.0, 0.9], "sensitivity": sens},
        "objectives": ["accuracy", "macs"], "constraints": {"max_macs": hi},
        "sampler": {"name": "nsga2", "population_size": max(4, min(12, args.search_trials // 2))},
        "finetune": {"epochs": 1, "max_batches": args.search_batches, "lr": args.lr, "batch_size": args.batch_size,
                     "recalibrate_bn": args.bn_batches},
    }
    if args.threads:
        cfg["threads"] = args.threads
    return cfg


def run_search_once(ctx, log):
    """The search of (b), once per model; returns (front, wall s, cpu s)."""
    import autoprune.study as study

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = search_config(ctx)
    with Clock() as c, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        front = study.search(cfg)
    log(f"  search: {cfg['n_trials']} trials, {c.wall:.0f} s wall, {c.cpu:.0f} s CPU; front: "
        + ", ".join(f"{r.macs_fraction:.1%}/{r.accuracy:.2%}" for r in front))
    return front, c.wall, c.cpu, cfg


def run_search_member(ctx, budget):
    front = ctx["front"]
    under = [r for r in front if r.macs_fraction <= budget + 1e-12]
    if not under:
        raise Infeasible(f"no front member at or under {budget:.0%} (front: "
                         + ", ".join(f"{r.macs_fraction:.1%}" for r in front) + ")")
    rec = max(under, key=lambda r: (r.macs_fraction, r.accuracy))
    model = ctx["graph"].prune(dict(rec.ratios), criterion=rec.criterion)
    info = {"trial": rec.number, "trial_val": rec.accuracy, "trial_macs_fraction": rec.macs_fraction,
            "front_size": len(front)}
    macs = ap.count_macs(model, ctx["x"])
    if macs != rec.macs:
        info["warning"] = f"rebuilt model has {macs} MACs, the trial recorded {rec.macs}"
    return model, info


def run_fastnas(ctx, budget):
    import modelopt.torch.prune as mtp

    args, data = ctx["args"], ctx["data"]
    dev = ctx["device"]
    model = copy.deepcopy(ctx["base"]).to(dev)
    x = ctx["x"].to(dev)
    mode = "fastnas"
    if args.fastnas_divisor:
        cfg = mtp.fastnas.FastNASConfig()
        cfg["nn.Conv2d"]["*"]["channel_divisor"] = args.fastnas_divisor
        cfg["nn.BatchNorm2d"]["*"]["feature_divisor"] = args.fastnas_divisor
        mode = [("fastnas", cfg)]
    val = ctx["val"]
    calls = [0]

    def val_acc(m: nn.Module) -> float:
        calls[0] += 1
        return ap.evaluate(m, val).accuracy

    pct = f"{100 * budget:g}%"
    ckpt = ctx["tmp"] / f"fastnas-{ctx['name']}-d{args.fastnas_divisor or 'default'}.pth"
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, hist = mtp.prune(model, mode=mode, constraints={"flops": pct}, dummy_input=x,
                                     config={"data_loader": TrainBatches(data, args.fastnas_batch_size),
                                             "score_func": val_acc, "checkpoint": str(ckpt)})
    except ValueError as e:
        if "constraints can be satisfied" in str(e):
            low = _fastnas_min(out.getvalue())
            raise Infeasible(f"FLOPs {pct} outside its search space{low}") from None
        raise
    best = hist.get("best", {}) if isinstance(hist, dict) else {}
    info = {"score_calls": calls[0], "modelopt_flops": (best.get("constraints") or {}).get("flops"),
            "divisor": args.fastnas_divisor or 32}
    return pruned.cpu().eval(), info


def _fastnas_min(printed: str) -> str:
    """The 'min' and 'max' FLOPs of ModelOpt's profiling table, as text for the infeasible note."""
    for line in printed.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│") if c.strip()]
        if len(cells) >= 4 and cells[0] == "flops":
            try:
                return f" (its smallest subnet: {cells[1]} of {cells[3]} FLOPs)"
            except IndexError:
                pass
    return ""


RUNNERS = {"autoprune": run_autoprune, "autoprune-loss": run_autoprune_loss, "autoprune-global": run_autoprune_global, "autoprune-search": run_search_member, "modelopt-fastnas": run_fastnas,
           "torch-pruning": run_torch_pruning, "uniform-l1": run_uniform}


# ------------------------------------------------------------------------------------------------ one row
def measure(ctx, name: str, budget: float, method: str, log) -> dict:
    args, data, x = ctx["args"], ctx["data"], ctx["x"]
    row = {"model": name, "budget": budget, "method": method, "status": "ok", "note": ""}
    target = math.floor(budget * ctx["base_macs"])
    missing = ctx["missing"].get(method)
    if missing:
        row.update(status="skipped", note=missing)
        return row
    if method == "autoprune-search" and ctx.get("front_error"):
        row.update(status="error", note=ctx["front_error"])
        return row
    torch.manual_seed(0)
    try:
        with Clock() as c:
            model, info = RUNNERS[method](ctx, budget)
        row["info"] = info
        if method == "autoprune-search":  # the whole search, for every budget
            row["prune_wall_s"], row["prune_cpu_s"] = ctx["search_wall"], ctx["search_cpu"]
            row["note"] = f"one {args.search_trials}-trial search for all budgets; trial {info['trial']}"
        else:
            row["prune_wall_s"], row["prune_cpu_s"] = c.wall, c.cpu
        table = ctx.get("table")
        if method in TABLE_METHODS and table:  # what this model cost from scratch
            row["prune_wall_s"] += table["wall_s"]
            row["prune_cpu_s"] += table["cpu_s"]
            shared = (f"time includes the sensitivity table ({table['wall_s']:.0f} s, once per model for every "
                      "budget and the search)") if not table["from_cache"] else (
                f"sensitivity table read from the cache (computed in {table['computed_in_s']:.0f} s by an earlier run)")
            row["note"] = f"{row['note']}; {shared}" if row["note"] else shared
    except Infeasible as e:
        row.update(status="infeasible", note=str(e))
        log(f"  {method:17s} @ {budget:.0%}: infeasible: {e}")
        return row
    except Exception as e:  # noqa: BLE001 -- recorded in the table, the run goes on
        row.update(status="error", note=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        row["traceback"] = traceback.format_exc(limit=8)
        log(f"  {method:17s} @ {budget:.0%}: ERROR {row['note']}")
        return row
    model = model.cpu().eval()
    row["macs"] = ap.count_macs(model, x)
    row["macs_fvcore"] = fvcore_macs(model, x)
    row["macs_fraction"] = row["macs"] / ctx["base_macs"]
    row["params"] = ap.count_params(model)
    row["within_budget"] = row["macs"] <= target
    row["fvcore_match"] = row["macs"] == row["macs_fvcore"]
    notes = [row["note"]] if row["note"] else []
    if not row["within_budget"]:
        notes.append(f"**over budget** ({row['macs_fraction']:.2%} > {budget:.0%})")
    if not row["fvcore_match"]:
        notes.append("**MACs differ from fvcore**")
    if info.get("warning"):
        notes.append(info["warning"])
    if row["within_budget"] and row["macs"] < 0.99 * target:
        notes.append(f"{100 * (budget - row['macs_fraction']):.1f} points under the budget (the next ratio step "
                     "is over it)")
    if method == "autoprune":
        notes.append(f"sensitivity table {info['sensitivity_s']:.0f} s" if info["sensitivity_s"] >= 1
                     else "sensitivity table from this run's cache")
    if method == "modelopt-fastnas":
        notes.append(f"{info['score_calls']} score calls" if info["score_calls"]
                     else "sensitivity map from this run's checkpoint")
    shapes = [tuple(t.shape) for t in model.state_dict().values()]
    row["shapes_digest"] = hashlib.sha1(repr(shapes).encode()).hexdigest()[:12]
    if method == "autoprune-search":
        same = [r for r in ctx["rows"] if r["method"] == "autoprune" and r["budget"] == budget
                and r.get("shapes_digest") == row["shapes_digest"]]
        if same:
            notes.append("same widths as autoprune (a): an anchor trial")
    row["note"] = "; ".join(notes)
    row["val_pruned"] = ap.evaluate(model, ctx["val"]).accuracy
    bn_reestimate(model, data, args)
    row["val_bn"] = ap.evaluate(model, ctx["val"]).accuracy
    row["test"] = {}
    for seed in args.seeds:
        m = copy.deepcopy(model)
        with Clock() as c:
            finetune_recipe(m, data, args, seed)
        row.setdefault("finetune_s", []).append(round(c.wall, 2))
        row["test"][str(seed)] = ap.evaluate(m, ctx["test"]).accuracy  # touched once per fine-tuned model
    row["test_mean"] = sum(row["test"].values()) / len(row["test"])
    log(f"  {method:17s} @ {budget:.0%}: MACs {row['macs_fraction']:6.2%} (fvcore {'=' if row['fvcore_match'] else '!='}), "
        f"prune {row['prune_wall_s']:6.1f} s, val {row['val_pruned']:.2%} -> BN {row['val_bn']:.2%}, test "
        + " ".join(f"{v:.2%}" for v in row["test"].values()))
    return row


# ------------------------------------------------------------------------------------------------ report
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for pkg in ("torch", "torchvision", "fvcore", "optuna", "nvidia-modelopt", "torch-pruning", "torchprofile"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["autoprune"] = ap.__version__
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(result: dict) -> str:
    a = result["args"]
    m = result["machine"]
    lines = [
        "# autoprune vs ModelOpt FastNAS vs Torch-Pruning",
        "",
        "Generated by `benchmarks/bench_vs_tools.py` (method details in its docstring); rewritten on each run.",
        "",
        f"- date: {result['date']}",
        f"- command: `{result['command']}` (total {result['total_s']:.0f} s wall, {result['total_cpu_s']:.0f} s CPU)",
        f"- machine: {m['platform']}, {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
        f"{m['gpu']}; device {result['device']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- data: {result['data']}; val = {a['val_size']} images of the val half, test = {a['test_size']} of the "
        "test half, each in a fixed seeded random order (touched once per fine-tuned model)",
        f"- common recipe: BN re-estimation on {a['bn_batches']} x {a['bn_batch_size']} augmented train images "
        f"(`ap.recalibrate_bn`), then `ap.finetune` {a['finetune_epochs']} epoch(s) x "
        f"{a['finetune_batches'] or 'all'} batches of {a['batch_size']}, lr {a['lr']}, cosine, seeds "
        f"{', '.join(map(str, a['seeds']))}",
        f"- autoprune: sensitivity ratios {a['sens_ratios']}, {a['sens_eval_batches']} eval batches; search: "
        f"{a['search_trials']} trials x {a['search_batches']} fine-tuning batches; FastNAS: channel divisor "
        f"{a['fastnas_divisor'] or '32 (default)'}, calibration batches of {a['fastnas_batch_size']}",
        "- MACs: conv + linear per image, `ap.count_macs` and fvcore (`FlopCountAnalysis`, conv + linear); "
        "time: prune or search, wall and CPU (`time.process_time`, all threads)",
    ]
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    for name, mres in result["models"].items():
        b = mres.get("base", {})
        lines += ["", f"## {name}", ""]
        if mres.get("error"):
            lines.append(f"**error**: {mres['error']}")
            continue
        lines.append(f"Unpruned: {b.get('macs', 0) / 1e6:.2f}M MACs, {b.get('params', 0) / 1e6:.3f}M params, val "
                     f"{_pct(b.get('val'))}, test {_pct(b.get('test'))}. {mres.get('base_note', '')}")
        t = mres.get("sensitivity")
        if t:
            how = (f"read from the cache (computed in {t['computed_in_s']:.0f} s)" if t["from_cache"]
                   else f"computed in {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU")
            lines.append(f"Sensitivity table of autoprune and its search (one, shared): {t['groups']} groups, "
                         f"{t['entries']} entries, {how}.")
        seeds = [str(s) for s in a["seeds"]]
        for budget in a["budgets"]:
            lines += ["", f"### {name} at {100 * budget:g}% of the MACs", "",
                      "| method | status | MACs (ap) | MACs (fvcore) | kept | params | prune wall s | prune CPU s "
                      "| val pruned | val +BN | " + " | ".join(f"test seed {s}" for s in seeds) + " | test mean | note |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(seeds) + "---:|---|"]
            for r in mres["rows"]:
                if r["budget"] != budget:
                    continue
                if r["status"] != "ok":
                    lines.append(f"| {r['method']} | **{r['status']}** | - | - | - | - | - | - | - | - | "
                                 + "- | " * len(seeds) + f"- | {r['note']} |")
                    continue
                lines.append(
                    f"| {r['method']} | ok | {r['macs'] / 1e6:.3f}M | {r['macs_fvcore'] / 1e6:.3f}M | "
                    f"{100 * r['macs_fraction']:.2f}% | {r['params'] / 1e6:.3f}M | {_s(r['prune_wall_s'])} | "
                    f"{_s(r['prune_cpu_s'])} | {_pct(r['val_pruned'])} | {_pct(r['val_bn'])} | "
                    + " | ".join(_pct(r["test"].get(s)) for s in seeds) + f" | {_pct(r['test_mean'])} | {r['note']} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main
def missing_tools(methods) -> dict[str, str]:
    out = {}
    for method, (pkg, module) in TOOLS.items():
        if method not in methods:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                __import__(module)
        except Exception as e:  # noqa: BLE001 -- ImportError, or a broken install
            out[method] = (f"not installed: `pip install \"autoprune[bench]\"` ({pkg}; import {module}: "
                           f"{type(e).__name__}: {' '.join(str(e).split())[:120]})")
    return out


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: random ResNet-20 on 16x16 synthetic images, one budget, a few batches (< 30 s)")
    p.add_argument("--models", default=None,
                   help="comma-separated: resnet20,resnet56,resnet18,vit (default the first three)")
    p.add_argument("--budgets", default=None, help="fractions of the MACs to keep (default 0.3,0.5,0.7)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--weights-dir", default=str(SHARED / "models"),
                   help="folder of the shared checkpoints resnet20-cifar10jpeg.pt, resnet56-cifar10jpeg.pt")
    p.add_argument("--data", default=os.path.expanduser("~/.cache/cifar10-jpeg"), help="CIFAR-10-JPEG ImageFolder")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/autoprune-bench"),
                   help="trained ResNet-18 weights and the per-run analysis caches (outside the repository)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--val-size", type=int, default=None, help="val images in the tables (default 1000)")
    p.add_argument("--test-size", type=int, default=None, help="test images (default 2000; 5000 = the whole half)")
    p.add_argument("--eval-batch-size", type=int, default=100, help="(small batches are faster per image on a CPU)")
    p.add_argument("--bn-batches", type=int, default=None, help="BN re-estimation batches (default 5)")
    p.add_argument("--bn-batch-size", type=int, default=None, help="(default 128)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-batches", type=int, default=None, help="cap per epoch (default 30; 0 = all)")
    p.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch size (default 128)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seeds", default="0,1", help="fine-tuning seeds")
    p.add_argument("--sens-ratios", default=None, help="autoprune sensitivity grid (default 0.1,...,0.8; the README's short demo uses 0.3,0.6)")
    p.add_argument("--sens-eval-batches", type=int, default=None, help="(default 8; the README's short demo uses 2)")
    p.add_argument("--search-trials", type=int, default=None, help="(b): COMPLETE trials of the search (default 9)")
    p.add_argument("--search-batches", type=int, default=None, help="(b): fine-tuning batches per trial (default 10)")
    p.add_argument("--fastnas-batch-size", type=int, default=None,
                   help="(c): batch size of its BN-calibration loader (it reads 50 batches per candidate; default 16)")
    p.add_argument("--fastnas-divisor", type=int, default=None,
                   help="(c): channel/feature divisor (default: ModelOpt's, 32; its ResNet-20 tutorial uses 16)")
    p.add_argument("--r18-epochs", type=int, default=3, help="ResNet-18 training epochs (cached)")
    p.add_argument("--r18-batches", type=int, default=None, help="cap on its batches per epoch")
    p.add_argument("--r18-lr", type=float, default=0.1, help="its one-cycle peak lr")
    p.add_argument("--vit-epochs", type=int, default=1, help="ViT training epochs (cached)")
    p.add_argument("--vit-batches", type=int, default=None, help="cap on its batches per epoch")
    p.add_argument("--vit-lr", type=float, default=0.05, help="its one-cycle peak lr (SGD)")
    p.add_argument("--out", default=str(ROOT / "docs" / "vs_tools.md"), help="markdown; the JSON goes beside it")
    p.add_argument("--keep-tmp", action="store_true", help="keep the per-run analysis caches and search journals")
    p.add_argument("--fresh-tables", action="store_true",
                   help="recompute the sensitivity tables cached in --cache/sensitivity (to time them)")
    args = p.parse_args(argv)
    # defaults: the CPU-sized run, or the tiny smoke run
    dflt = dict(models="resnet20,resnet56,resnet18", budgets="0.3,0.5,0.7", val_size=1000, test_size=2000,
                bn_batches=5, bn_batch_size=128, finetune_batches=30, batch_size=128, sens_ratios="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8",
                sens_eval_batches=8, search_trials=9, search_batches=10, fastnas_batch_size=16)
    if args.smoke:
        dflt.update(models="resnet20", budgets="0.9", val_size=40, test_size=40, bn_batches=2, bn_batch_size=16,
                    finetune_batches=2, batch_size=16, sens_ratios="0.5", sens_eval_batches=1, search_trials=3,
                    search_batches=2, fastnas_batch_size=8)
        args.eval_batch_size = min(args.eval_batch_size, 40)
    for k, v in dflt.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.models = [s.strip() for s in args.models.split(",") if s.strip()]
    args.budgets = [float(s) for s in args.budgets.split(",") if s.strip()]
    args.methods = [s.strip() for s in args.methods.split(",") if s.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.sens_ratios = tuple(float(s) for s in args.sens_ratios.split(",") if s.strip())
    args.finetune_batches = args.finetune_batches or None
    for mth in args.methods:
        if mth not in METHODS:
            p.error(f"unknown method {mth!r}; choose from {', '.join(METHODS)}")
    for name in args.models:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if any(not 0 < b <= 1 for b in args.budgets):
        p.error("--budgets are fractions in (0, 1]")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    t_start, c_start = time.perf_counter(), time.process_time()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=args.cache))
    args.cache_run = str(tmp)
    dev = torch.device(args.device)

    missing = missing_tools(args.methods)
    for method, note in missing.items():
        log(f"NOTE: {method} skipped -- {note}")

    data_cache = str(Path(args.cache) / "data")
    if args.smoke:
        opts = {"train_per_class": 16, "test_per_class": 8}
        side = 32 if "vit" in args.models else 16  # the ViT's patch grid is fixed at 32x32
        data = ap.load_data("synthetic", val_from="test", val_fraction=0.5, seed=0, image_size=side, device=dev,
                            cache_dir=data_cache, **opts)
        data_spec = {"dataset": "synthetic", "image_size": side, "val_from": "test", "val_fraction": 0.5,
                     "cache_dir": data_cache, "options": opts}
        data_desc = f"synthetic {side}x{side} (train {len(data.train)}, val {len(data.val)}, test {len(data.test)})"
    else:
        root = Path(args.data).expanduser()
        ensure_data(root)
        data = ap.load_data("imagefolder", root, val_from="test", val_fraction=0.5, seed=0, device=dev,
                            cache_dir=data_cache)
        data_spec = {"dataset": "imagefolder", "root": str(root), "val_from": "test", "val_fraction": 0.5,
                     "cache_dir": data_cache}
        data_desc = (f"CIFAR-10-JPEG {root} (train {len(data.train)}, val = half of the test split "
                     f"{len(data.val)}, test = the other half {len(data.test)}, seed 0)")
    val = first_batches(data.val, args.val_size, args.eval_batch_size)
    test = first_batches(data.test, args.test_size, args.eval_batch_size)
    args.val_size, args.test_size = sum(len(b[1]) for b in val), sum(len(b[1]) for b in test)
    log(f"# bench_vs_tools: {', '.join(args.models)} at {', '.join(f'{b:.0%}' for b in args.budgets)}; "
        f"methods {', '.join(args.methods)}; {data_desc}; device {dev}, {torch.get_num_threads()} threads")

    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python benchmarks/bench_vs_tools.py" + "".join(
                  " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
              "machine": machine(), "versions": versions(), "device": str(dev), "data": data_desc,
              "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "cache_run"},
              "skipped_tools": missing, "models": {}, "notes": []}
    if args.smoke:
        result["notes"].append("SMOKE run: random-init ResNet-20 on synthetic images; accuracies are meaningless")
    try:
        for name in args.models:
            mres = {"rows": []}
            result["models"][name] = mres
            try:
                base, spec = base_model(name, data, args, log)
            except Exception as e:  # noqa: BLE001
                mres["error"] = f"{type(e).__name__}: {e}"
                log(f"{name}: {mres['error']}")
                continue
            x = torch.zeros(1, *data.input_shape)
            base_macs = ap.count_macs(base, x)
            ctx = {"args": args, "name": name, "base": base, "x": x, "base_macs": base_macs, "data": data,
                   "val": val, "test": test, "tmp": tmp, "device": dev, "model_spec": spec, "data_spec": data_spec,
                   "graph": ap.ChannelGraph(base, x), "missing": missing}
            mres["base"] = {"macs": base_macs, "macs_fvcore": fvcore_macs(base, x), "params": ap.count_params(base),
                            "val": ap.evaluate(base, val).accuracy, "test": ap.evaluate(base, test).accuracy}
            if name in SCRATCH and not args.smoke:
                epochs, lr = (args.r18_epochs, args.r18_lr) if name == "resnet18" else (args.vit_epochs, args.vit_lr)
                mres["base_note"] = f"Trained here from scratch: {epochs} epoch(s), one-cycle lr {lr} (cached)."
            log(f"{name}: {base_macs / 1e6:.2f}M MACs, val {mres['base']['val']:.2%}, "
                f"test {mres['base']['test']:.2%}")
            if set(TABLE_METHODS) & set(args.methods):
                try:
                    ctx["table"] = mres["sensitivity"] = shared_table(ctx, log)
                except Exception as e:  # noqa: BLE001 -- the methods that need it then report the error
                    log(f"  sensitivity table failed: {type(e).__name__}: {e}")
            if "autoprune-search" in args.methods:
                try:
                    ctx["front"], ctx["search_wall"], ctx["search_cpu"], cfg = run_search_once(ctx, log)
                    mres["search"] = {"wall_s": ctx["search_wall"], "cpu_s": ctx["search_cpu"],
                                      "front": ctx["front"].to_dicts(), "config": cfg}
                except Exception as e:  # noqa: BLE001
                    ctx["front_error"] = f"search failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
                    log(f"  {ctx['front_error']}")
            ctx["rows"] = mres["rows"]
            for budget in args.budgets:
                for method in args.methods:
                    mres["rows"].append(measure(ctx, name, budget, method, log))
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    result["total_s"] = time.perf_counter() - t_start
    result["total_cpu_s"] = time.process_time() - c_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    log("\n" + md)
    log(f"wrote {out} and {out.with_suffix('.json')} ({result['total_s']:.0f} s wall, "
        f"{result['total_cpu_s']:.0f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
