#!/usr/bin/env python3
"""The GPU claims of autoprune, measured in one short run (docs/gpu.md).

Preparation, here (a machine with ../shared and PyPI), once; it builds the git-ignored bundle ``.gpu/`` (a
CIFAR-10-JPEG subset, the ResNet-56 checkpoint, wheels of what a stock torch + torchvision image lacks) and checks
that it stays well under 64 MB::

    bash benchmarks/gpu_prepare.sh

On the GPU machine, in the checkout with ``.gpu/`` beside it (the device tool: ``carry: [".gpu"]``), one line::

    python3 -m pip install -q --no-index --no-deps --target .gpu/site .gpu/wheels/*.whl && PYTHONPATH=$PWD:$PWD/.gpu/site python3 benchmarks/gpu_suite.py --data .gpu/cifar10-jpeg.npz --weights .gpu/resnet56-cifar10jpeg.pt

(On a machine with PyPI, ``pip install -e .`` then ``python benchmarks/gpu_suite.py --data PATH/cifar10-jpeg.npz``
does the same.) It writes ``docs/gpu.json`` and the results section of ``docs/gpu.md``.

Parts (each in a process of its own, forked from this one before anything touches CUDA, with its own time cap: a
failing or over-time part is recorded as such, with what it measured before the cap, and the others still run; the
caps of parts 1-6 add up to under 8 minutes, part 7's to 5):

1. every registered criterion's ``ap.score`` time on 640 images vs one plain forward pass over them; HRank's per-map
   ``torch.linalg.matrix_rank(map).item()`` reference loop on a sample of maps, extrapolated, vs the batched one;
2. fine-tuning throughput (images/s): ``ap.finetune`` vs a plain ``DataLoader(num_workers=4)`` loop (the one of
   benchmarks/bench_finetune.py), same ResNet-56, batch 128 and 512, same precision (bf16 autocast +
   channels_last on CUDA, as ``finetune`` defaults to; ``torch.compile`` too if ``finetune`` offers it);
3. the sensitivity analysis of ResNet-56 at the default grid (every prunable group x 9 ratios), fresh and cached;
4. trial packing: quickstart-sized and ResNet-56 trials (one ``ap.search`` process per study, as ``autoprune
   search`` runs it), 1, 2, 3 and 4 processes at a time on one GPU, aggregate trials/hour;
5. a 16-trial ResNet-56 search (the shipped search_spaces/resnet56_cifar10_jpeg.yaml, short fine-tune): wall time
   and front;
6. the test suite's CUDA tests (``pytest -m cuda``);
7. (a second call, ``--parts fronts``: issue 13) at about 50% of the MACs (a front member of the CPU search), one
   epoch with the label loss vs with distillation from the unpruned model, then a 30-epoch polish with distillation;
8. (a third call, ``--parts vs_tools``: issue 20) ``benchmarks/bench_vs_tools.py`` on ResNet-56 at 50% of the MACs
   with a longer fine-tuning (8 epochs of the bundle's training images, two seeds, every val and test image):
   autoprune's budget call and search vs Torch-Pruning (its wheel in the bundle) vs uniform L1; ModelOpt FastNAS
   is left out on the device (its wheels, scipy among them, do not fit the 64 MiB bundle) and recorded as skipped;
   on the CPU its search space cannot reach 50% of the MACs on the option-A ResNets (docs/vs_tools.md);
9. (a fourth call, ``--parts vs_tools_vit``: issue 22) the same comparison on a ViT (timm ``vit_tiny``, patch 4, 6
   blocks) trained here for 15 epochs: autoprune's budget call (heads, head widths, MLP widths) vs Torch-Pruning's
   ViT recipe vs uniform L1 at 50% of the MACs, 3 epochs of fine-tuning, two seeds (timm's wheel in the bundle).

The data are decoded once (the pack is written out as an ImageFolder tree, then ``ap.load_data`` builds its uint8
cache); every part and every search process reads that cache. ``--smoke`` runs the same code paths on the CPU with
tiny sizes (a tiny synthetic pack unless ``--data`` is given, ResNet-20 with random weights, tiny trials): the test
suite runs it (tests/test_gpu_suite.py).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import io
import itertools
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models" / "resnet56-cifar10jpeg.pt"
RESULTS_START, RESULTS_END = "<!-- gpu_suite results: start -->", "<!-- gpu_suite results: end -->"

#: (key, title, cap in seconds on a GPU, cap in --smoke). GPU caps + the preparation's cap stay under 8 minutes.
PARTS = [
    ("criteria", "1. criteria: scoring time vs one forward pass; HRank reference loop vs batched", 35, 90),
    ("finetune", "2. fine-tuning throughput: ap.finetune vs a plain DataLoader loop", 60, 90),
    ("sensitivity", "3. sensitivity analysis of ResNet-56, default grid", 80, 90),
    ("packing", "4. trial packing: 1-4 search processes on one GPU", 125, 120),
    ("search", "5. a 16-trial ResNet-56 search, short fine-tune", 85, 90),
    ("cuda_tests", "6. the test suite's CUDA tests (pytest -m cuda)", 40, 90),
    ("fronts", "7. issue 13 at ~50% MACs: 1 epoch with labels vs distillation, a 30-epoch polish", 300, 90),
    ("vs_tools", "8. issue 20: autoprune vs Torch-Pruning (and FastNAS where installed), ResNet-56 at 50%, 8 epochs",
     420, 240),
    ("vs_tools_vit", "9. issue 22: a ViT trained here, autoprune (heads, widths) vs Torch-Pruning's ViT recipe at 50%",
     450, 240),
]
#: What one call runs unless --parts says otherwise: everything but parts 7 and 8, so that a call stays under 8
#: minutes; part 7 is a second call (``--parts fronts``, under 5 minutes), part 8 a third (``--parts vs_tools``, 7).
DEFAULT_PARTS = [k for k, *_ in PARTS if k not in ("fronts", "vs_tools", "vs_tools_vit")]
VS_TOOLS = ROOT / "benchmarks" / "bench_vs_tools.py"
#: Part 7's pruned model: a front member of the CPU early-stopping search (its per-group ratios, criterion l1).
FRONT_MEMBER = ROOT / "benchmarks" / "configs" / "resnet56_front_member.json"
PREPARE_CAP = (45, 60)

#: Sizes of the GPU run and of --smoke (same code paths).
SIZES: dict[str, dict[str, Any]] = {
    "gpu": dict(model="resnet56", images=640, batch=128, forward_repeat=5, score_repeat=2,
                ref_maps=2000, ft_batches={128: 150, 512: 40}, ft_repeat=2, workers=4, sens_ratios=None,
                sens_groups=None,
                pack_levels=(1, 2, 3, 4), pack_trials={"quickstart": 4, "resnet56": 3}, pack_ft_batches=50,
                search_trials=16, search_ft_batches=50, search_population=None, val_fraction=0.5,
                fronts_max_batches=None, polish_epochs=30,
                vs_tools=["--models", "resnet56", "--budgets", "0.5", "--finetune-epochs", "8", "--finetune-batches",
                          "0", "--val-size", "5000", "--test-size", "5000", "--search-batches", "50", "--seeds", "0,1"],
                vs_tools_vit=["--models", "vit", "--budgets", "0.5", "--vit-epochs", "15", "--finetune-epochs", "3",
                              "--finetune-batches", "0", "--val-size", "5000", "--test-size", "5000", "--seeds", "0,1",
                              "--methods", "autoprune,torch-pruning,uniform-l1"]),
    "smoke": dict(model="resnet20", images=64, batch=32, forward_repeat=2, score_repeat=1,
                  ref_maps=20, ft_batches={16: 3, 32: 2}, ft_repeat=1, workers=2, sens_ratios=[0.5],
                  sens_groups=None, pack_levels=(2,), pack_trials={"quickstart": 1, "resnet56": 1}, pack_ft_batches=1,
                  search_trials=2, search_population=4, search_ft_batches=1, val_fraction=0.5,
                  fronts_max_batches=2, polish_epochs=2, vs_tools=["--smoke", "--seeds", "0", "--methods",
                                                                   "autoprune,torch-pruning,uniform-l1"],
                  vs_tools_vit=["--smoke", "--models", "vit", "--seeds", "0", "--methods",
                                "autoprune,torch-pruning,uniform-l1"]),
}


# ------------------------------------------------------------------------------------------------------------
# small helpers


def sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], Any], device: Any, repeat: int) -> float:
    """Minimum wall time of ``repeat`` runs of ``fn`` (device synchronised before and after each)."""
    times = []
    for _ in range(max(1, repeat)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


class Recorder:
    """One part's results, rewritten to its JSON file after every change (a part killed at its cap keeps what it
    measured)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"rows": [], "summary": {}, "notes": []}
        self.flush()

    def row(self, **kw: Any) -> None:
        self.data["rows"].append(kw)
        self.flush()

    def set(self, **kw: Any) -> None:
        self.data["summary"].update(kw)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def machine_info(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "device": device, "gpu": None, "driver": None}
    try:
        import autoprune

        info["autoprune"] = autoprune.__version__
    except Exception as e:  # recorded, not fatal: the parts report their own import errors
        info["autoprune"] = f"import failed: {e}"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return info


# ------------------------------------------------------------------------------------------------------------
# data: the pack format of ../shared/data/cifar10-jpeg.npz (README there), an ImageFolder tree, the decoded cache


def read_pack(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        missing = [k for s in ("train", "test") for k in (f"{s}_jpeg", f"{s}_offsets", f"{s}_labels")
                   if k not in z.files]
        if missing:
            raise ValueError(f"{path} is not a CIFAR-10-JPEG pack: missing {missing} (expected <split>_jpeg, "
                             "<split>_offsets, <split>_labels for train and test; see ../shared/data/README.md)")
        return {k: z[k] for k in z.files}


def write_pack(path: Path, splits: dict[str, tuple[list[bytes], np.ndarray]]) -> None:
    arrays = {}
    for split, (blobs, labels) in splits.items():
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def subset_pack(src: Path, dst: Path, train_per_class: int | None, test_per_class: int | None) -> dict[str, int]:
    """Write the first ``*_per_class`` images of each class of each split of ``src`` to ``dst``."""
    z = read_pack(src)
    splits, counts = {}, {}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        blob, off, lab = z[f"{split}_jpeg"], z[f"{split}_offsets"], z[f"{split}_labels"]
        idx = np.arange(len(lab)) if per is None else np.sort(np.concatenate(
            [np.flatnonzero(lab == c)[:per] for c in np.unique(lab)]))
        splits[split] = ([blob[off[i]:off[i + 1]].tobytes() for i in idx], lab[idx])
        counts[split] = len(idx)
    write_pack(dst, splits)
    return counts


def tiny_pack(dst: Path, train_per_class: int = 16, test_per_class: int = 8, classes: int = 10) -> None:
    """A tiny pack of learnable 32x32 JPEGs (a class-dependent colour and stripe direction, plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    splits = {}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        blobs, labels = [], []
        for c in range(classes):
            for _ in range(per):
                angle = math.pi * c / classes
                stripes = 0.5 + 0.5 * np.sin(0.6 * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6))
                colour = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256]) / 255.0
                img = stripes[..., None] * colour + 0.1 * rng.standard_normal((32, 32, 3))
                buf = io.BytesIO()
                Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
                blobs.append(buf.getvalue())
                labels.append(c)
        splits[split] = (blobs, np.array(labels))
    write_pack(dst, splits)


def extract_pack(pack: Path, root: Path) -> dict[str, int]:
    """The pack as an ImageFolder tree ``root/{train,test}/<class>/<i>.jpg`` (written once; a marker file records
    the pack it came from). Class folders are zero-padded label numbers, so they sort in label order."""
    st = pack.stat()
    stamp = f"{pack.resolve()} {st.st_size} {st.st_mtime_ns}"
    marker = root / ".extracted"
    z = read_pack(pack)
    counts = {s: int(len(z[f"{s}_labels"])) for s in ("train", "test")}
    if marker.exists() and marker.read_text() == stamp:
        return counts
    if root.exists():
        shutil.rmtree(root)
    for split in ("train", "test"):
        blob, off, lab = z[f"{split}_jpeg"], z[f"{split}_offsets"], z[f"{split}_labels"]
        for c in np.unique(lab):
            (root / split / f"{int(c):03d}").mkdir(parents=True, exist_ok=True)
        for i in range(len(lab)):
            (root / split / f"{int(lab[i]):03d}" / f"{i:05d}.jpg").write_bytes(blob[off[i]:off[i + 1]].tobytes())
    marker.write_text(stamp)
    return counts


# ------------------------------------------------------------------------------------------------------------
# what every part shares: settings (a JSON state file), the data bundle, the model


def bundle(state: dict[str, Any], device: str | None = None):
    """The CIFAR-10-JPEG bundle as searches see it: val = a seeded half of the test images, test = the rest."""
    import autoprune as ap

    return ap.load_data("imagefolder", state["root"], device=device or state["device"], val_from="test",
                        val_fraction=state["sizes"]["val_fraction"], cache_dir=state["cache"])


def base_model(state: dict[str, Any]):
    import torch

    import autoprune as ap

    torch.manual_seed(0)  # --smoke: the same random weights in every part
    model = ap.get_model(state["sizes"]["model"])
    if state["weights"]:
        model.load_state_dict(torch.load(state["weights"], map_location="cpu", weights_only=True))
    return model.eval()


# ------------------------------------------------------------------------------------------------------------
# part 1: criteria


def part_criteria(state: dict[str, Any], rec: Recorder) -> None:
    import torch
    import torch.nn as nn

    import autoprune as ap

    sz, dev = state["sizes"], torch.device(state["device"])
    t0 = time.perf_counter()
    data = bundle(state)
    cpu_model = base_model(state)
    model = copy.deepcopy(cpu_model).to(dev).eval()
    rec.set(load_s=time.perf_counter() - t0)
    n_batches = max(1, sz["images"] // sz["batch"])
    # the very batches ap.score(..., num_batches, batch_size) draws (seed 0, training augmentation)
    batches = list(itertools.islice(data.train.batches(sz["batch"], shuffle=True, augment=True, seed=0), n_batches))
    images = sum(len(y) for _, y in batches)
    ex = torch.zeros(1, *data.input_shape)

    def forward() -> None:
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    forward()  # warm-up
    t_fwd = best_time(forward, dev, sz["forward_repeat"])
    t_graph = best_time(lambda: ap.ChannelGraph(cpu_model, ex), "cpu", 2)
    rec.set(images=images, batch=sz["batch"], forward_s=t_fwd, graph_s=t_graph,
            precision="fp32, both (ap.score does not autocast)" + (
                f"; cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'} (torch's default)"
                if dev.type == "cuda" else ""))
    times: dict[str, float] = {}
    for name in ap.available_criteria():
        kind = ap.get_criterion(name).kind

        def run(name: str = name) -> None:
            ap.score(cpu_model, data, name, example_inputs=ex, num_batches=n_batches, batch_size=sz["batch"],
                     device=dev)

        t = best_time(run, dev, sz["score_repeat"])  # the minimum leaves out first-call costs (kernels, allocator)
        times[name] = t
        rec.row(criterion=name, kind=kind, score_s=t, x_forward_end_to_end=t / t_fwd,
                score_minus_graph_s=t - t_graph, x_forward=max(t - t_graph, 0.0) / t_fwd)

    # HRank reference: matrix_rank(map).item() per map (the authors' loop), on a sample of maps of each resolution,
    # extrapolated to every map at the ReLU outputs HRank scores (each ReLU call, every image).
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    maps: dict[int, int] = {}
    sample: dict[int, torch.Tensor] = {}

    def hook(_m, _i, out):
        hw = out.shape[-1]
        maps[hw] = maps.get(hw, 0) + out.shape[0] * out.shape[1]
        sample.setdefault(hw, out.detach().reshape(-1, out.shape[-2], hw)[: sz["ref_maps"]].float().clone())

    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    per_map = {}
    for hw, flat in sample.items():
        torch.linalg.matrix_rank(flat[0]).item()  # warm-up

        def loop(flat: torch.Tensor = flat) -> None:
            for i in range(flat.shape[0]):
                torch.linalg.matrix_rank(flat[i]).item()

        per_map[hw] = best_time(loop, dev, 1) / flat.shape[0]
    t_ref = sum(per_map[hw] * n for hw, n in maps.items())
    t_hrank = times.get("hrank", float("nan")) - t_graph
    rank_s = max(t_hrank - t_fwd, 1e-9)
    rec.set(hrank_reference_us_per_map={f"{hw}x{hw}": round(per_map[hw] * 1e6, 1) for hw in sorted(per_map)},
            hrank_reference_maps=sum(maps.values()), hrank_reference_sampled=sum(len(s) for s in sample.values()),
            hrank_reference_extrapolated_s=t_ref, hrank_batched_s=t_hrank,
            hrank_rank_speedup=t_ref / rank_s, hrank_end_to_end_speedup=(t_ref + t_fwd) / t_hrank)
    rec.note("x_forward = (ap.score time - ChannelGraph build time) / plain forward pass over the same images "
             "(0 where the difference is below the timing noise, as for weight criteria); ap.score builds the graph "
             "on every call (graph_s); x_forward_end_to_end includes it. HRank speed-ups: reference / (batched - forward) "
             "for the rank computation, (reference + forward) / batched end to end.")


# ------------------------------------------------------------------------------------------------------------
# part 2: fine-tuning throughput


def part_finetune(state: dict[str, Any], rec: Recorder) -> None:
    import torch

    import autoprune as ap
    from bench_finetune import HP, plain_loaders, plain_train  # the plain loop of docs/finetune.md

    sz, dev = state["sizes"], torch.device(state["device"])
    data = bundle(state)
    base = base_model(state)
    amp = dev.type == "cuda" and torch.cuda.is_bf16_supported()  # what ap.finetune defaults to
    cl = dev.type == "cuda"
    precision = ("bf16 autocast" if amp else "fp32") + (" + channels_last" if cl else "")
    compile_opts = [False]
    if "compile" in inspect.signature(ap.finetune).parameters:
        compile_opts.append(True)
    else:
        rec.note("ap.finetune offers no torch.compile option: compiled loops not measured")
    root = Path(state["root"])
    for bs, n in sz["ft_batches"].items():
        bs, n = int(bs), min(int(n), len(data.train) // int(bs))
        tl, _ = plain_loaders(root, bs, sz["workers"], dev, eval_n=bs)
        for comp in compile_opts:
            kw = {"compile": True} if comp else {}
            prep = (lambda m: torch.compile(m)) if comp else (lambda m: m)
            # untimed warm-ups: kernel selection, allocator growth, compilation
            ap.finetune(copy.deepcopy(base), data, max_batches=2, batch_size=bs, progress=False, **HP, **kw)
            plain_train(prep(copy.deepcopy(base)), tl, 2, dev, amp, cl)
            res_ap, res_pl = [], []
            for r in range(sz["ft_repeat"]):
                m = copy.deepcopy(base)
                sync(dev)
                t0 = time.perf_counter()
                fr = ap.finetune(m, data, max_batches=n, batch_size=bs, seed=r, progress=False, **HP, **kw)
                sync(dev)
                res_ap.append((time.perf_counter() - t0, fr.images))
                res_pl.append(plain_train(prep(copy.deepcopy(base)), tl, n, dev, amp, cl))
            (s_ap, n_ap), (s_pl, n_pl) = (max(rs, key=lambda r: r[1] / r[0]) for rs in (res_ap, res_pl))
            common = dict(batch=bs, batches=n, precision=precision, compile=comp)
            rec.row(loop="plain DataLoader", workers=sz["workers"], images=n_pl, seconds=s_pl,
                    images_per_s=n_pl / s_pl, speedup=1.0, **common)
            rec.row(loop="ap.finetune", workers=0, images=n_ap, seconds=s_ap, images_per_s=n_ap / s_ap,
                    speedup=(n_ap / s_ap) / (n_pl / s_pl), **common)
    rec.note(f"best of {sz['ft_repeat']} timed run(s) after an untimed warm-up; each timed region starts when the "
             "loop asks for its first batch (the plain loop pays for starting its workers, as every trial would) "
             "and ends after the last optimizer step. Same SGD, batch, precision and augmentation (crop + flip).")


# ------------------------------------------------------------------------------------------------------------
# part 3: sensitivity analysis


def part_sensitivity(state: dict[str, Any], rec: Recorder) -> None:
    import torch

    import autoprune as ap

    sz, dev = state["sizes"], torch.device(state["device"])
    data = bundle(state)
    cpu_model = base_model(state)
    names = [g.name for g in ap.ChannelGraph(cpu_model, torch.zeros(1, *data.input_shape)).prunable_groups]
    model = copy.deepcopy(cpu_model).to(dev)
    # the options of the shipped ResNet-56 search (the default grid), so that part 5 finds this table in the cache
    cfg = search_config(state, "resnet56", "sens", Path(state["work"]))
    kw: dict[str, Any] = dict(cfg["ratios"].get("sensitivity", {}))
    crit = kw.pop("criterion", None) or (cfg["criteria"][0] if isinstance(cfg["criteria"], list) else cfg["criteria"])
    if sz["sens_ratios"] is not None:
        kw["ratios"] = sz["sens_ratios"]
    if sz["sens_groups"]:
        names = names[: sz["sens_groups"]]
        kw["groups"] = names
    groups = len(names)
    sync(dev)
    t0 = time.perf_counter()
    # cache on (state["cache"]/sensitivity, via AUTOPRUNE_CACHE): the search of part 5 reuses this table
    table = ap.sensitivity(model, data, criterion=crit, refresh=True, progress=False, **kw)
    sync(dev)
    fresh = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ap.sensitivity(model, data, criterion=crit, progress=False, **kw)
    cached = time.perf_counter() - t0
    rec.row(model=sz["model"], criterion=crit, groups=groups, ratios=len(table.ratios),
            pruned_models=groups * len(table.ratios), bn_batches=table.bn_batches, eval_images=table.eval_n,
            fresh_s=fresh, cached_s=cached, from_cache=bool(again.from_cache), base_accuracy=table.base_accuracy)


# ------------------------------------------------------------------------------------------------------------
# parts 4 and 5: searches through the CLI (one process per search, as users run them)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def search_config(state: dict[str, Any], kind: str, name: str, run_dir: Path, **over: Any) -> dict[str, Any]:
    """A search config from a shipped YAML: ``quickstart`` (as shipped) or ``resnet56`` (the CIFAR-10-JPEG one on the
    extracted tree and the given checkpoint). In --smoke both are shrunk to seconds on the CPU."""
    import yaml

    smoke = state["mode"] == "smoke"
    if kind == "quickstart":
        d = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
        if smoke:
            d = deep_merge(d, {"model": {"pretrain": {"epochs": 1}}, "data": {"options": {
                "train_per_class": 10, "test_per_class": 5}}, "sampler": {"population_size": 4},
                "ratios": {"guide": "uniform"}})
    else:
        d = yaml.safe_load((ROOT / "search_spaces" / "resnet56_cifar10_jpeg.yaml").read_text())
        d = deep_merge(d, {"model": {"name": state["sizes"]["model"], "weights": state["weights"]},
                           "data": {"root": state["root"], "val_fraction": state["sizes"]["val_fraction"]}})
        if smoke:
            d = deep_merge(d, {"ratios": {"anchors": 1, "level": [0.3, 0.6], "sensitivity": {"ratios": [0.5]}},
                               "scoring": {"num_batches": 1, "batch_size": 32},
                               "finetune": {"batch_size": 32, "recalibrate_bn": 1}})
    d = deep_merge(d, over)
    if d.get("ratios", {}).get("guide", "sensitivity") != "sensitivity":
        d["ratios"].pop("sensitivity", None)  # the config refuses sensitivity options without that guide
    d.update(name=name, run_dir=str(run_dir), device=state["device"])
    if smoke:
        d["threads"] = 1
    return d


def forked(target: Callable[[], Any], log: Path, *, new_session: bool = True) -> Any:
    """Run ``target`` in a forked process writing to ``log``. ``new_session``: in a process group of its own, so that
    :func:`stop_group` ends it with every process it started. Forking is safe for CUDA as long as the forking
    process never initialised it: this process and the packing part never do."""
    def entry() -> None:
        if new_session:
            os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        target()

    p = multiprocessing.get_context("fork").Process(target=entry)
    p.start()
    return p


def stop_group(p: Any) -> None:
    """Kill the process group of ``p`` (started with ``new_session``): ``p`` and whatever it left running."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def search_worker(path: Path) -> None:
    import optuna

    import autoprune as ap

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(ap.search(str(path)).table())


def run_searches(configs: list[dict[str, Any]], logs: Path) -> float:
    """One search process per config (``ap.search`` of its YAML file, as ``autoprune search`` runs it), all at
    once; their wall time. They stay in this part's process group, so its cap ends them too."""
    import yaml

    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    t0 = time.perf_counter()
    for d in configs:
        path = logs / f"{d['name']}.yaml"
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        procs.append((d["name"], forked(lambda path=path: search_worker(path), logs / f"{d['name']}.log",
                                        new_session=False)))
    failed = []
    for name, p in procs:
        p.join()
        if p.exitcode != 0:
            failed.append(f"{name} (exit {p.exitcode}): " + (logs / f"{name}.log").read_text()[-1500:])
    wall = time.perf_counter() - t0
    if failed:
        raise RuntimeError("search process failed: " + "\n".join(failed))
    return wall


def trial_times(journals: list[Path]) -> dict[str, float]:
    """Complete trials in these journals, the span from the first trial's start to the last one's end, mean trial."""
    import autoprune as ap

    starts, ends, secs = [], [], []
    for j in journals:
        front = ap.load_front(storage=str(j))
        for t in front.study.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE":
                starts.append(t.datetime_start.timestamp())
                ends.append(t.datetime_complete.timestamp())
                secs.append(t.datetime_complete.timestamp() - t.datetime_start.timestamp())
    if not starts:
        return {"complete": 0}
    span = max(ends) - min(starts)
    return {"complete": len(starts), "span_s": span, "mean_trial_s": sum(secs) / len(secs),
            "trials_per_hour": 3600 * len(starts) / max(span, 1e-9)}


def part_packing(state: dict[str, Any], rec: Recorder) -> None:
    sz, work = state["sizes"], Path(state["work"]) / "packing"
    shutil.rmtree(work, ignore_errors=True)
    over = {"resnet56": {"criteria": ["l1"], "ratios": {"guide": "uniform", "anchors": 0},
                         "finetune": {"max_batches": sz["pack_ft_batches"]}},
            "quickstart": {}}
    # Untimed preparation: pretraining of the quickstart base model, sensitivity table (both cached and shared).
    for kind in ("quickstart", "resnet56"):
        run_dir = work / kind
        run_searches([search_config(state, kind, f"{kind}_prep", run_dir, n_trials=1,
                                           storage=str(run_dir / "prep.journal"), **over[kind])], work / "logs")
    for k in sz["pack_levels"]:
        for kind in ("quickstart", "resnet56"):
            run_dir = work / kind
            m = sz["pack_trials"][kind]
            journals = [run_dir / f"k{k}_p{i}.journal" for i in range(k)]
            configs = [search_config(state, kind, f"{kind}_k{k}_p{i}", run_dir, n_trials=m, storage=str(j),
                                     **over[kind]) for i, j in enumerate(journals)]
            wall = run_searches(configs, work / "logs")
            tt = trial_times(journals)
            rec.row(trial=kind, processes=k, trials=tt["complete"], wall_s=wall,
                    trials_per_hour_wall=3600 * tt["complete"] / wall, span_s=tt.get("span_s"),
                    trials_per_hour=tt.get("trials_per_hour"), mean_trial_s=tt.get("mean_trial_s"))
    rec.note("k processes, each its own study of the given trials, all at once on one device. trials_per_hour: "
             "complete trials / (last trial end - first trial start) over all k studies (steady state); "
             f"trials_per_hour_wall: over the processes' whole wall time, start-up included. {sz['model']} trials "
             f"(search_spaces/resnet56_cifar10_jpeg.yaml): criterion l1, uniform guide, fine-tune "
             f"{sz['pack_ft_batches']} batches, BN re-estimation, evaluation on the val half of the test images; "
             "quickstart trials as search_spaces/quickstart.yaml ships them"
             + (" (--smoke: smaller data, uniform guide)." if state["mode"] == "smoke" else "."))


def part_search(state: dict[str, Any], rec: Recorder) -> None:
    import autoprune as ap

    sz, work = state["sizes"], Path(state["work"]) / "search"
    shutil.rmtree(work, ignore_errors=True)
    over: dict[str, Any] = {"n_trials": sz["search_trials"], "finetune": {"max_batches": sz["search_ft_batches"]}}
    if sz["search_population"]:
        over["sampler"] = {"population_size": sz["search_population"]}
    d = search_config(state, "resnet56", "resnet56_search", work / "run", **over)
    tables = Path(state["cache"]) / "sensitivity"
    before = set(tables.glob("*.json")) if tables.is_dir() else set()
    wall = run_searches([d], work / "logs")
    reused = bool(before) and set(tables.glob("*.json")) == before
    front = ap.load_front(str(work / "logs" / "resnet56_search.yaml"))
    tt = trial_times([work / "run" / "optuna.journal"])
    rec.set(wall_s=wall, trials=len(front.all), front_size=len(front), mean_trial_s=tt.get("mean_trial_s"),
            trials_per_hour=tt.get("trials_per_hour"), finetune_batches=sz["search_ft_batches"],
            criteria=d["criteria"], max_macs=d["constraints"]["max_macs"], sensitivity_table_from_part_3=reused)
    for r in front:
        rec.row(trial=r.number, accuracy=r.accuracy, macs_fraction=r.macs_fraction,
                params_fraction=r.params_fraction, criterion=r.criterion, seconds=r.seconds)
    rec.note("search_spaces/resnet56_cifar10_jpeg.yaml with n_trials, fine-tune batches (and in --smoke the sizes) "
             "overridden; wall time includes start-up, data loading, the sensitivity table (cached by part 3 when "
             "it ran) and criterion scoring. Accuracy on the val half of the test images.")


# ------------------------------------------------------------------------------------------------------------
# part 6: the suite's CUDA tests


class _Outcomes:
    """A pytest plugin counting outcomes like pytest's summary line (a failing setup or teardown is an error)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call":
            self.counts[report.outcome] += 1
        elif report.failed:
            self.counts["errors"] += 1
        elif report.skipped:
            self.counts["skipped"] += 1

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.counts["errors"] += 1

    def pytest_deselected(self, items: list) -> None:
        self.counts["deselected"] += len(items)


def part_cuda_tests(state: dict[str, Any], rec: Recorder) -> None:
    import pytest

    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text())
    rec.set(files=files)
    if not files:
        raise RuntimeError("no test file marks a test with @pytest.mark.cuda")
    os.chdir(ROOT)
    plugin = _Outcomes()
    t0 = time.perf_counter()
    # one process (not the suite's pytest-xdist addopts): the device image need not have pytest-xdist
    rc = int(pytest.main(["-q", "-o", "addopts=-ra", "-p", "no:xdist", "-m", "cuda", "-p", "no:cacheprovider", *files],
                         plugins=[plugin]))
    c = plugin.counts
    rec.row(passed=c["passed"], failed=c["failed"], skipped=c["skipped"], errors=c["errors"],
            deselected=c["deselected"], seconds=time.perf_counter() - t0, exit_code=rc)
    if rc != 0:
        raise RuntimeError(f"pytest -m cuda exited {rc} (its output is in the part's log)")


# ------------------------------------------------------------------------------------------------------------
# part 7: issue 13 on the GPU (docs/better_fronts.md)


def part_fronts(state: dict[str, Any], rec: Recorder) -> None:
    import torch

    import autoprune as ap

    sz, dev = state["sizes"], torch.device(state["device"])
    data = bundle(state)
    base = base_model(state).to(dev)
    if sz["model"] == "resnet56":
        member = json.loads(FRONT_MEMBER.read_text())
        allocation, criterion, source = member["ratios"], member["criterion"], f"{FRONT_MEMBER.name} (trial " \
            f"{member['trial']} of the CPU search)"
    else:  # --smoke: ResNet-20, whose groups the member's ratios do not name
        allocation, criterion, source = "uniform", "l1", "uniform ratios"
    t0 = time.perf_counter()
    res = ap.prune_to_budget(copy.deepcopy(base), data, macs=0.5, criterion=criterion, allocation=allocation,
                             finetune_epochs=0, progress=False)
    prune_s = time.perf_counter() - t0

    def accuracy(m: Any) -> dict[str, float]:
        return {s: ap.evaluate(m, data, split=s).accuracy for s in ("val", "test")}

    ref = accuracy(base)
    rec.set(allocation=source, criterion=criterion, macs_fraction=res.macs / res.base_macs,
            params_fraction=res.params / res.base_params, train_images=len(data.train), prune_s=prune_s,
            unpruned_val=ref["val"], unpruned_test=ref["test"], pruned_val_before_finetune=res.accuracy)
    kd = {"alpha": 0.5, "temperature": 4.0}
    for name, epochs, distill in (("labels only", 1, None), ("distillation", 1, kd),
                                  ("polish with distillation", sz["polish_epochs"], kd)):
        m = copy.deepcopy(res.model)
        sync(dev)
        t0 = time.perf_counter()
        fr = ap.finetune(m, data, epochs=epochs, max_batches=sz["fronts_max_batches"], progress=False,
                         teacher=base if distill else None, distill=distill)
        sync(dev)
        seconds = time.perf_counter() - t0
        acc = accuracy(m)
        rec.row(fine_tuning=name, epochs=epochs, images=fr.images, seconds=seconds, images_per_s=fr.images / seconds,
                val=acc["val"], test=acc["test"], test_below_unpruned=ref["test"] - acc["test"])
    rec.note("Same pruned model for every row (pruned, BatchNorm re-estimated, then copied); SGD nesterov lr 0.01 "
             "cosine, batch 128, ap.finetune's defaults (bf16 autocast + channels_last on CUDA); distillation alpha "
             "0.5, T 4, teacher = the unpruned model. An epoch is the bundle's training subset (see the data line), "
             "not all 50,000 images. Val = a seeded half of the test images, test = the other half.")


# ------------------------------------------------------------------------------------------------------------
# part 8: issue 20 on the GPU (docs/vs_tools.md)


def vs_tools_command(state: dict[str, Any], part: str = "vs_tools") -> list[str]:
    """The command line of part 8 (or 9, ``part="vs_tools_vit"``): bench_vs_tools.py on the suite's data, weights
    and device (part 8's GPU run: ResNet-56 at 50% of the MACs, 8 epochs of fine-tuning, two seeds; part 9's: the ViT
    trained 15 epochs here, then 3 epochs of fine-tuning; --smoke: the bench's own smoke size)."""
    out = Path(state["work"]) / part / "vs_tools.md"
    cmd = [sys.executable, str(VS_TOOLS), *state["sizes"][part], "--device", state["device"],
           "--cache", str(Path(state["work"]) / part / "cache"), "--out", str(out)]
    if state["mode"] != "smoke":
        cmd += ["--data", state["root"], "--weights-dir", str(Path(state["weights"]).parent)]
    return cmd


def part_vs_tools_vit(state: dict[str, Any], rec: Recorder) -> None:
    part_vs_tools(state, rec, "vs_tools_vit")


def part_vs_tools(state: dict[str, Any], rec: Recorder, part: str = "vs_tools") -> None:
    cmd = vs_tools_command(state, part)
    out = Path(cmd[cmd.index("--out") + 1])
    out.parent.mkdir(parents=True, exist_ok=True)
    rec.set(command=" ".join(cmd[1:]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n", flush=True)  # into the part's log
    if proc.returncode != 0:
        raise RuntimeError(f"bench_vs_tools.py exited {proc.returncode} (its output is in the part's log)")
    result = json.loads(out.with_suffix(".json").read_text())
    rec.set(seconds=time.perf_counter() - t0, skipped_tools=result.get("skipped_tools", {}))
    for model, mres in result["models"].items():
        rec.set(**{f"{model}_unpruned_test": (mres.get("base") or {}).get("test")})
        for r in mres.get("rows", []):
            rec.row(model=model, budget=r.get("budget"), method=r.get("method"), status=r.get("status"),
                    macs_fraction=r.get("macs_fraction"), val_bn=r.get("val_bn"), test_mean=r.get("test_mean"),
                    test=r.get("test"), prune_s=r.get("prune_wall_s"))
    rec.note("Every pruned model gets the same BN re-estimation and the same fine-tuning (ap.finetune, SGD nesterov, "
             "cosine, lr 0.01, batch 128) per seed; test = the test half, touched once per fine-tuned model. Full "
             f"tables: {out.name} beside the part's JSON in the work folder.")


PART_FUNCS: dict[str, Callable[[dict[str, Any], Recorder], None]] = {
    "criteria": part_criteria, "finetune": part_finetune, "sensitivity": part_sensitivity,
    "packing": part_packing, "search": part_search, "cuda_tests": part_cuda_tests, "fronts": part_fronts,
    "vs_tools": part_vs_tools, "vs_tools_vit": part_vs_tools_vit,
}


# ------------------------------------------------------------------------------------------------------------
# the parent: one process per part, each under its cap


def run_capped(target: Callable[[], Any], cap: float, log: Path) -> tuple[str, float, int | None]:
    """Run ``target`` in a forked process group; kill the whole group at ``cap`` seconds.
    Returns (status, seconds, exit code)."""
    t0 = time.perf_counter()
    p = forked(target, log)
    p.join(cap)
    if p.is_alive():
        stop_group(p)
        p.join()
        status, rc = "over time", None
    else:
        rc = p.exitcode
        status = "ok" if rc == 0 else "failed"
    stop_group(p)  # whatever a finished part left running
    return status, time.perf_counter() - t0, rc


NO_CUDA_EXIT = 3


def prepare(state: dict[str, Any]) -> None:
    """Check the device, record the machine, extract the pack into an ImageFolder tree and decode it once into
    autoprune's cache (timed). Runs in a forked process: this one must not initialise CUDA before forking."""
    import torch

    import autoprune as ap

    if state["device"].startswith("cuda") and not torch.cuda.is_available():
        sys.exit(NO_CUDA_EXIT)
    rec = Recorder(Path(state["work"]) / "prepare.json")
    rec.set(machine=machine_info(state["device"]))
    t0 = time.perf_counter()
    counts = extract_pack(Path(state["pack"]), Path(state["root"]))
    t1 = time.perf_counter()
    data = ap.load_data("imagefolder", state["root"], device="cpu", val_from="test",
                        val_fraction=state["sizes"]["val_fraction"], cache_dir=state["cache"])
    rec.set(extract_s=t1 - t0, decode_s=time.perf_counter() - t1, train_images=counts["train"],
            test_images=counts["test"], bundle=repr(data))


def run_part(key: str, state: dict[str, Any]) -> None:
    if state["mode"] == "smoke":
        import torch

        torch.set_num_threads(1)
    PART_FUNCS[key](state, Recorder(Path(state["work"]) / f"part-{key}.json"))


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v).lower()
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        return f"{v:,.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.4f}" \
            if a >= 1e-3 else f"{v:.2e}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    m, lines = report["meta"], []
    lines.append(f"Run of {m['date']} ({m['mode']}): `{m['command']}`")
    lines.append("")
    mi = m["machine"]
    lines.append(f"- machine: {mi['cpu']}, {mi['cores']} CPU cores, {mi.get('memory_gib', '?')} GiB memory")
    lines.append(f"- device: {mi['device']}; GPU: {mi['gpu'] or 'none'}"
                 + (f" ({mi.get('gpu_memory_gib')} GiB), driver {mi['driver']}, CUDA {mi.get('cuda')}"
                    if mi["gpu"] else ""))
    lines.append(f"- torch {mi['torch']}, Python {mi['python']}, autoprune {mi.get('autoprune')}")
    pr = report["prepare"]
    lines.append(f"- data: {pr.get('train_images', '?')} train + {pr.get('test_images', '?')} test images from "
                 f"`{m['data']}`; extracted in {fmt(pr.get('extract_s'))} s, decoded once in "
                 f"{fmt(pr.get('decode_s'))} s ({pr.get('status')})")
    lines.append(f"- total wall time {fmt(m['total_s'])} s")
    for key, title, *_ in PARTS:
        p = report["parts"].get(key)
        if p is None:
            continue
        lines += ["", f"### {title}", ""]
        lines.append(f"status: **{p['status']}** in {fmt(p['seconds'])} s (cap {p['cap_s']} s)"
                     + (f"; {fmt(p['error'])}" if p.get("error") else ""))
        if p.get("summary"):
            lines.append("")
            lines += [f"- {k}: {fmt(v)}" for k, v in p["summary"].items()]
        rows = p.get("rows") or []
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
        for n in p.get("notes") or []:
            lines += ["", n]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> None:
    """Replace the results section of ``path`` (between the markers), or write a new file."""
    block = f"{RESULTS_START}\n{text}{RESULTS_END}\n"
    if path.exists():
        old = path.read_text()
        if RESULTS_START in old and RESULTS_END in old:
            head, rest = old.split(RESULTS_START, 1)
            tail = rest.split(RESULTS_END, 1)[1].lstrip("\n")
            path.write_text(head + block + tail)
            return
    path.write_text("# GPU measurements (benchmarks/gpu_suite.py)\n\n" + block)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                  epilog="See the top of benchmarks/gpu_suite.py and docs/gpu.md.")
    ap_.add_argument("--data", type=Path, help="CIFAR-10-JPEG pack (.npz, the format of ../shared/data); "
                                              "required except with --smoke (then a tiny synthetic pack)")
    ap_.add_argument("--weights", default=None,
                     help=f"ResNet-56 state_dict (default {DEFAULT_WEIGHTS}; --smoke: none, random ResNet-20)")
    ap_.add_argument("--out", type=Path, default=None,
                     help="folder for gpu.json and gpu.md (default docs/; --smoke: WORK/out)")
    ap_.add_argument("--work", type=Path, default=ROOT / ".gpu" / "work",
                     help="scratch folder: extracted images, decoded cache, search runs (default .gpu/work)")
    ap_.add_argument("--smoke", action="store_true", help="the same code paths on the CPU with tiny sizes")
    ap_.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap_.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                     help="comma-separated subset of: " + ", ".join(k for k, *_ in PARTS)
                     + " (default: all but fronts and vs_tools, each a call of its own)")
    ap_.add_argument("--make-pack", type=Path, metavar="SRC",
                     help="write a subset of the pack SRC to --data (with --train-per-class/--test-per-class) "
                          "and exit; used by gpu_prepare.sh")
    ap_.add_argument("--train-per-class", type=int, default=None)
    ap_.add_argument("--test-per-class", type=int, default=None)
    return ap_.parse_args(argv)


def fail(msg: str) -> None:
    print(f"gpu_suite: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_pack:
        if args.data is None:
            fail("--make-pack SRC needs --data DST (the subset pack to write)")
        if not args.make_pack.is_file():
            fail(f"--make-pack: {args.make_pack} does not exist")
        counts = subset_pack(args.make_pack, args.data, args.train_per_class, args.test_per_class)
        print(f"{args.data}: {counts['train']} train + {counts['test']} test images, "
              f"{args.data.stat().st_size / 2**20:.1f} MiB")
        return 0

    mode = "smoke" if args.smoke else "gpu"
    device = args.device or ("cpu" if args.smoke else "cuda")
    keys = [k.strip() for k in args.parts.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PART_FUNCS]
    if unknown:
        fail(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PART_FUNCS)}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        if not args.smoke:
            fail("--data PATH/cifar10-jpeg.npz is required (see the top of benchmarks/gpu_suite.py)")
        pack = work / "tiny-pack.npz"
        tiny_pack(pack)
    else:
        pack = args.data.resolve()
        if not pack.is_file():
            fail(f"--data {args.data}: no such file (copy ../shared/data/cifar10-jpeg.npz, or run "
                 "benchmarks/gpu_prepare.sh)")
    weights = args.weights if args.weights is not None else (None if args.smoke else str(DEFAULT_WEIGHTS))
    if weights in ("", "none"):
        weights = None
    if weights is not None and not Path(weights).is_file():
        fail(f"--weights {weights}: no such file (the ResNet-56 checkpoint ../shared/models/"
             "resnet56-cifar10jpeg.pt, copied to .gpu/ by benchmarks/gpu_prepare.sh)")
    out = args.out if args.out is not None else (work / "out" if args.smoke else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    state = {"mode": mode, "device": device, "sizes": SIZES[mode], "pack": str(pack),
             "weights": str(Path(weights).resolve()) if weights else None, "work": str(work),
             "root": str(work / "cifar10-jpeg"), "cache": str(work / "cache")}
    (work / "state.json").write_text(json.dumps(state, indent=1))
    # inherited by every forked part and search process: the decoded data and sensitivity tables live here
    os.environ["AUTOPRUNE_CACHE"] = state["cache"]
    # Forked processes can use CUDA only if this one never initialised it: should anything imported here ask
    # torch.cuda.is_available(), let it ask NVML (fork-safe) instead of initialising the driver.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    if args.smoke:
        os.environ["OMP_NUM_THREADS"] = "1"
    import autoprune  # noqa: F401  (imported once here, inherited by the forks; nothing here touches CUDA)

    t_start = time.perf_counter()
    command = "python benchmarks/gpu_suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ci = 1 if args.smoke else 0
    (work / "prepare.json").unlink(missing_ok=True)
    status, seconds, rc = run_capped(lambda: prepare(state), PREPARE_CAP[ci], work / "prepare.log")
    if rc == NO_CUDA_EXIT:
        fail("no CUDA device here: run the GPU suite on a GPU machine, or pass --smoke (tiny CPU run) "
             "or --device cpu (full sizes on the CPU, slow)")
    prep = json.loads((work / "prepare.json").read_text())["summary"] if (work / "prepare.json").exists() else {}
    machine = prep.pop("machine", {"device": device, "gpu": None, "cpu": platform.machine(),
                                   "cores": os.cpu_count(), "python": platform.python_version(), "torch": "?"})
    prep.update(status=status, seconds=seconds)
    if status != "ok":
        prep["error"] = " / ".join((work / "prepare.log").read_text().strip().splitlines()[-6:])
    report: dict[str, Any] = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "mode": mode, "command": command.strip(), "data": str(args.data or "tiny synthetic pack"),
        "machine": machine, "sizes": SIZES[mode]}, "prepare": prep, "parts": {}}

    for key, title, *caps in PARTS:
        if key not in keys:
            continue
        cap = caps[ci]
        print(f"[gpu_suite] {title} (cap {cap} s) ...", file=sys.stderr, flush=True)
        result_file = work / f"part-{key}.json"
        result_file.unlink(missing_ok=True)
        log = work / f"part-{key}.log"
        status, seconds, rc = run_capped(lambda key=key: run_part(key, state), cap, log)
        part: dict[str, Any] = {"status": status, "seconds": seconds, "cap_s": cap}
        if result_file.exists():
            part.update(json.loads(result_file.read_text()))
        if status == "failed":
            text = log.read_text().strip().splitlines()
            part["error"] = f"exit {rc}: " + " / ".join(text[-6:])
        elif status == "over time":
            part["error"] = f"stopped at its {cap} s cap; rows measured before the cap are kept"
        report["parts"][key] = part
        print(f"[gpu_suite]   {status} in {seconds:.1f} s", file=sys.stderr, flush=True)
    report["meta"]["total_s"] = time.perf_counter() - t_start

    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown(report)
    write_markdown(out / "gpu.md", text)
    print(text)
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} (logs in {work})", file=sys.stderr)
    return 0 if prep["status"] == "ok" and all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
