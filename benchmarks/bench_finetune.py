#!/usr/bin/env python3
"""Throughput of autoprune's fine-tune/eval loop versus a plain PyTorch loop (CIFAR ResNet-56, CIFAR-10-JPEG).

    python benchmarks/bench_finetune.py [--data DIR] [--device cpu|cuda] [--max-batches N] [--batch-size 128]
                                        [--workers 4] [--eval-batches N] [--repeat R] [--threads T] [--memory]
                                        [--out FILE.md]

Both loops train the same ResNet-56 (the shared CIFAR-10-JPEG checkpoint when present) with the same SGD
(nesterov 0.9, wd 5e-4, per-step cosine), batch size and precision (bf16 autocast + channels_last on CUDA,
fp32 on the CPU), for ``--max-batches`` batches (default: one epoch) of random crop 32 pad 4 + flip.

- autoprune: ``load_data("imagefolder")`` (uint8 cache, data on the device, augmentation on the device) +
  ``finetune`` / ``evaluate``;
- plain: ``torchvision.datasets.ImageFolder`` + ``DataLoader(num_workers=4, pin_memory)`` with the usual
  torchvision transforms, and a hand-written training step.

The timed region of each loop starts when it is asked for its first batch (so the plain loop pays for starting
its workers, as every trial of a search would) and ends after the last optimizer step (CUDA synchronised);
a short untimed warm-up run comes first. With ``--repeat R`` the best of R runs is reported. ``--memory``
adds the per-trial memory estimate used in docs/finetune.md. Prints a markdown table (and writes it to
``--out``). Not a test.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune.data import DEFAULT_MEAN, DEFAULT_STD, load_data  # noqa: E402
from autoprune.train import evaluate, finetune  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "models" / "resnet56-cifar10jpeg.pt"
EXTRACT = SHARED / "data" / "cifar10_jpeg.py"
HP = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def build_model(weights: Path | None) -> nn.Module:
    from autoprune.models import resnet56

    model = resnet56()
    if weights is not None and weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model


def ensure_data(root: Path) -> None:
    if (root / "train").is_dir():
        return
    if not EXTRACT.exists():
        sys.exit(f"{root} has no train/ and the shared extractor {EXTRACT} is missing; pass --data DIR")
    print(f"extracting CIFAR-10-JPEG into {root} ...", file=sys.stderr)
    subprocess.run([sys.executable, str(EXTRACT), "--out", str(root)], check=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---------------------------------------------------------------------------------------------- plain loop


def plain_loaders(root: Path, batch_size: int, workers: int, dev: torch.device, eval_n: int | None):
    from torchvision import datasets, transforms as T

    norm = [T.ToTensor(), T.Normalize(DEFAULT_MEAN, DEFAULT_STD)]
    train = datasets.ImageFolder(str(root / "train"),
                                 T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *norm]))
    test = datasets.ImageFolder(str(root / "test"), T.Compose(norm))
    if eval_n is not None:
        test = torch.utils.data.Subset(test, range(min(eval_n, len(test))))
    pin = dev.type == "cuda"
    tl = torch.utils.data.DataLoader(train, batch_size, shuffle=True, drop_last=True, num_workers=workers,
                                     pin_memory=pin)
    el = torch.utils.data.DataLoader(test, 512, shuffle=False, num_workers=workers, pin_memory=pin)
    return tl, el


def plain_train(model: nn.Module, loader, batches: int, dev: torch.device, amp: bool, cl: bool) -> tuple[float, int]:
    """The loop most PyTorch code writes; returns (seconds, images)."""
    model.to(dev).train()
    if cl:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), **HP)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / batches)))
    sync(dev)
    t0 = time.perf_counter()
    n = 0
    for i, (x, y) in enumerate(loader):
        if i >= batches:
            break
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        n += len(y)
    sync(dev)
    return time.perf_counter() - t0, n


@torch.no_grad()
def plain_eval(model: nn.Module, loader, dev: torch.device, amp: bool) -> tuple[float, int, float]:
    model.to(dev).eval()
    sync(dev)
    t0 = time.perf_counter()
    n = correct = 0
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    sync(dev)
    return time.perf_counter() - t0, n, correct / n


def time_batches(it, batches: int, dev: torch.device) -> tuple[float, int]:
    """Seconds and images to pull ``batches`` augmented batches onto ``dev`` (no model)."""
    sync(dev)
    t0 = time.perf_counter()
    n = 0
    for i, (x, y) in enumerate(it):
        if i >= batches:
            break
        x = x.to(dev, non_blocking=True)
        n += len(y)
    sync(dev)
    return time.perf_counter() - t0, n


# ---------------------------------------------------------------------------------------------- memory


def memory_estimate(model: nn.Module, batch_size: int, amp: bool) -> dict[str, float]:
    """Bytes of parameters/grads/momentum and of activations saved for backward at ``batch_size``.

    Activations are counted with saved_tensors_hooks (unique storages, so views and tensors saved twice
    count once), which is what stays alive between forward and backward: the device-independent part
    of a training step's peak memory.
    """
    model = copy.deepcopy(model).cpu().train()
    p_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    b_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    x = torch.randn(batch_size, 3, 32, 32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), torch.zeros(batch_size, dtype=torch.long))
    act = sum(seen.values())
    loss.backward()
    return {"params": p_bytes, "buffers": b_bytes, "activations": act, "input": x.numel() * 4}


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("~/.cache/cifar10-jpeg").expanduser(),
                    help="CIFAR-10-JPEG ImageFolder root (extracted from the shared pack if missing)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-batches", type=int, default=None, help="train batches per loop (default: one epoch)")
    ap.add_argument("--eval-batches", type=int, default=None, help="eval batches of 512 (default: whole test split)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers of the plain loop")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per loop; the best is reported")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (1 is steadier on a shared or small CPU host)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--memory", action="store_true", help="also print the per-trial memory estimate")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")

    dev = torch.device(a.device)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    amp = cl = dev.type == "cuda"  # the defaults of finetune(); the plain loop copies them
    ensure_data(a.data)
    base = build_model(a.weights)
    lines = []

    def out(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    # Data: a cold cache build (one-off per data set and machine), then a cached load (every trial/process).
    with tempfile.TemporaryDirectory() as cold:
        t = time.perf_counter()
        load_data("imagefolder", a.data, cache_dir=cold, device="cpu")
        t_cold = time.perf_counter() - t
    t = time.perf_counter()
    bundle = load_data("imagefolder", a.data, device=dev, val_fraction=0.0)
    t_warm = time.perf_counter() - t
    per_epoch = len(bundle.train) // a.batch_size
    batches = min(a.max_batches or per_epoch, per_epoch)
    eval_n = None if a.eval_batches is None else a.eval_batches * 512
    test_split = bundle.test if eval_n is None else bundle.test.subset(torch.arange(min(eval_n, len(bundle.test))))

    tl, el = plain_loaders(a.data, a.batch_size, a.workers, dev, eval_n)

    # Untimed warm-ups: first-call costs (kernel selection, allocator growth) are not what we compare.
    finetune(copy.deepcopy(base), bundle, max_batches=2, batch_size=a.batch_size, progress=False, **HP)
    plain_train(copy.deepcopy(base), tl, 2, dev, amp, cl)

    res_ap, res_pl, ev_ap, ev_pl, dat_ap, dat_pl = [], [], [], [], [], []
    for r in range(a.repeat):
        # Data pipelines alone (same batches, augmentation on, no model): the ceiling each loop can feed.
        dat_ap.append(time_batches(bundle.train.batches(a.batch_size, shuffle=True, augment=True, seed=r,
                                                        drop_last=True), batches, dev))
        dat_pl.append(time_batches(iter(tl), batches, dev))

        m = copy.deepcopy(base)
        t = time.perf_counter()
        fr = finetune(m, bundle, max_batches=batches, batch_size=a.batch_size, seed=r, progress=False, **HP)
        res_ap.append((time.perf_counter() - t, fr.images))
        t = time.perf_counter()
        er = evaluate(m, test_split)
        ev_ap.append((time.perf_counter() - t, er.n, er.accuracy))

        m = copy.deepcopy(base)
        res_pl.append(plain_train(m, tl, batches, dev, amp, cl))
        ev_pl.append(plain_eval(m, el, dev, amp))

    best = lambda rs: max(rs, key=lambda r: r[1] / r[0])  # noqa: E731
    (s_ap, n_ap), (s_pl, n_pl) = best(res_ap), best(res_pl)
    e_ap, e_pl = best(ev_ap), best(ev_pl)
    d_ap, d_pl = best(dat_ap), best(dat_pl)

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none"
    out(f"## bench_finetune: ResNet-56, CIFAR-10-JPEG, {datetime.date.today().isoformat()}")
    out()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    out(f"- device: {dev} ({gpu}); host: {os.cpu_count()} CPU cores ({cpu}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; load average at the end {load} (other jobs share the host)")
    out(f"- batch {a.batch_size}, {batches} train batches per run, {e_ap[1]} eval images, precision "
        f"{'bf16 autocast + channels_last' if amp else 'fp32'}, best of {a.repeat}")
    out(f"- autoprune data: cache build {t_cold:.1f} s (one-off), load from cache {t_warm:.2f} s")
    out()
    out("| loop | data pipeline | data only images/s | train images/s | train s | eval images/s | eval s "
        "| speed-up (data / train / eval) |")
    out("|---|---|---:|---:|---:|---:|---:|---:|")
    out(f"| plain PyTorch | ImageFolder + DataLoader({a.workers} workers) | {d_pl[1] / d_pl[0]:,.0f} | "
        f"{n_pl / s_pl:,.0f} | {s_pl:.2f} | {e_pl[1] / e_pl[0]:,.0f} | {e_pl[0]:.2f} | 1.00 / 1.00 / 1.00 |")
    out(f"| autoprune | uint8 tensor on {dev.type}, device-side augmentation | {d_ap[1] / d_ap[0]:,.0f} | "
        f"{n_ap / s_ap:,.0f} | {s_ap:.2f} | {e_ap[1] / e_ap[0]:,.0f} | {e_ap[0]:.2f} | "
        f"{(d_ap[1] / d_ap[0]) / (d_pl[1] / d_pl[0]):.2f} / {(n_ap / s_ap) / (n_pl / s_pl):.2f} / "
        f"{(e_ap[1] / e_ap[0]) / (e_pl[1] / e_pl[0]):.2f} |")
    out()
    out(f"eval accuracy on those images after the run: autoprune {e_ap[2]:.4f}, plain {e_pl[2]:.4f}")

    if a.memory:
        mib = 2.0**20
        out()
        out(f"### memory per trial, ResNet-56, batch {a.batch_size}")
        out()
        out("| precision | params | params+grads+momentum | activations saved for backward | per image |")
        out("|---|---:|---:|---:|---:|")
        for use_amp in (False, True):
            est = memory_estimate(base, a.batch_size, use_amp)
            state = 3 * est["params"] + est["buffers"]
            out(f"| {'bf16 autocast' if use_amp else 'fp32'} | {est['params'] / mib:.2f} MiB | {state / mib:.2f} MiB | "
                f"{est['activations'] / mib:.1f} MiB | {est['activations'] / a.batch_size / 1024:.0f} KiB |")
        if dev.type == "cuda":
            m = copy.deepcopy(base)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            finetune(m, bundle, max_batches=3, batch_size=a.batch_size, progress=False, **HP)
            peak = torch.cuda.max_memory_allocated(dev) - before
            out()
            out(f"CUDA peak allocated during finetune (bf16, channels_last, excluding the data set already on the "
                f"device): {peak / mib:.1f} MiB; data set on device: "
                f"{(bundle.train.images.nbytes + bundle.test.images.nbytes) / mib:.1f} MiB")

    if a.out is not None:
        a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
