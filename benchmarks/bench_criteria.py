#!/usr/bin/env python3
"""Cost of the activation criteria relative to one plain forward pass (CIFAR ResNet-56, 640 images).

    python benchmarks/bench_criteria.py [--device cpu|cuda] [--images 640] [--batch 128] [--data real|random]

Every criterion is fed from forward hooks on all 55 ReLU modules of ResNet-56 (stem, relu1 and post-add relu2
of each block), batch by batch; its time (forward + hooks + finalize) is reported as a ratio to the plain
forward pass over the same images. The HRank reference loop (``matrix_rank(map).item()`` per map, as in the
authors' code) is timed on a subset of maps of each resolution and extrapolated to all maps. Prints a markdown
table. Not a test.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune.criteria import ActivationRecorder, get_criterion  # noqa: E402
from autoprune.models import resnet56  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
WEIGHTS = os.path.join(SHARED, "models", "resnet56-cifar10jpeg.pt")
PACK = os.path.join(SHARED, "data", "cifar10-jpeg.npz")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_images(n: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalized CIFAR-10-JPEG training images or random tensors (with random labels).

    The pack is sorted by class, so the first ``ceil(n / 10)`` images of each class are taken (as
    ``cifar10_jpeg.py --limit-per-class`` would) and shuffled with a fixed seed.
    """
    if kind == "random" or not os.path.exists(PACK):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    from PIL import Image

    data = np.load(PACK)
    blob, offsets, labels = data["train_jpeg"], data["train_offsets"], data["train_labels"]
    per_class = -(-n // 10)
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    idx = idx[np.random.default_rng(seed).permutation(len(idx))][:n]
    imgs = [np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
            for i in idx]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x.contiguous(), torch.from_numpy(labels[idx].astype(np.int64))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def once(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall time, process CPU time) of one run of ``fn`` (device synchronised).

    On a shared CPU machine the process CPU time (all threads) is far less sensitive to other processes than the
    wall time; on CUDA only the wall time is meaningful.
    """
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--data", choices=["real", "random"], default="real")
    ap.add_argument("--weights", default=WEIGHTS)
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats per row (minimum reported)")
    ap.add_argument("--ref-maps", type=int, default=0,
                    help="maps per resolution for the HRank reference loop (default 300 on CPU, 2000 on CUDA)")
    ap.add_argument("--criteria", default="hrank,ezcrop,tt,snr,fdr,sd,di")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = resnet56()
    if os.path.exists(args.weights):
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    else:
        print(f"warning: {args.weights} not found, random weights", file=sys.stderr)
    model = model.to(device).eval()
    x, y = load_images(args.images, args.data)
    batches = [(x[i:i + args.batch].to(device), y[i:i + args.batch].to(device))
               for i in range(0, args.images, args.batch)]
    relus = {n: m for n, m in model.named_modules() if isinstance(m, nn.ReLU)}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def forward() -> None:
        with torch.no_grad():
            for xb, _ in batches:
                model(xb)

    def with_criteria(criteria, modules) -> Callable[[], object]:
        def run() -> object:
            with ActivationRecorder(modules, criteria) as rec, torch.no_grad():
                for xb, yb in batches:
                    rec.set_labels(yb)
                    model(xb)
                return rec.finalize()
        return run

    # Warm-up (kernels, allocator, caches) on one batch, then each row: `repeat` interleaved runs of
    # (plain forward, forward with the criterion); the minimum of each is reported, which is robust to other
    # processes on a shared machine. The forward time is the minimum over all interleaved forward runs.
    names = [c for c in args.criteria.split(",") if c]
    with ActivationRecorder(relus, names) as rec, torch.no_grad():
        rec.set_labels(batches[0][1])
        model(batches[0][0])
        rec.finalize()
    forward()
    configs: list[tuple[str, str, Callable[[], object]]] = [
        (name, f"{len(relus)} ReLU", with_criteria([name], relus)) for name in names]
    if "ezcrop" in names:
        configs.append(("ezcrop", f"{len(convs)} conv (EZCrop's ResNet default)", with_criteria(["ezcrop"], convs)))
    disc = [n for n in ("tt", "snr", "fdr", "sd") if n in names]
    if len(disc) > 1:
        configs.append(("+".join(disc) + " (shared stats)", f"{len(relus)} ReLU", with_criteria(disc, relus)))
    if len(names) > 1:
        configs.append(("all of " + ",".join(names), f"{len(relus)} ReLU", with_criteria(names, relus)))
    fwd_times: list[tuple[float, float]] = []
    rows: list[tuple[str, str, float, float]] = []
    for label, where, fn in configs:
        times = []
        for _ in range(args.repeat):
            fwd_times.append(once(forward, device))
            times.append(once(fn, device))
        rows.append((label, where, min(t[0] for t in times), min(t[1] for t in times)))
    t_fwd = min(t[0] for t in fwd_times)
    c_fwd = min(t[1] for t in fwd_times)

    # HRank reference loop: matrix_rank + .item() per map, on a subset of maps of each resolution, extrapolated.
    ref_per_map: dict[int, float] = {}
    maps_per_res: dict[int, int] = {}
    captured: dict[int, torch.Tensor] = {}

    def capture(_m, _i, out):
        captured.setdefault(out.shape[-1], out.detach().clone())

    handles = [m.register_forward_hook(capture) for m in relus.values()]
    with torch.no_grad():
        model(batches[0][0])
    for h in handles:
        h.remove()
    shapes: dict[str, tuple[int, int]] = {}
    hs = [m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, (o.shape[1], o.shape[-1])))
          for n, m in relus.items()]
    with torch.no_grad():
        model(batches[0][0][:1])
    for h in hs:
        h.remove()
    for c, hw in shapes.values():
        maps_per_res[hw] = maps_per_res.get(hw, 0) + c * args.images
    k = args.ref_maps or (2000 if device.type == "cuda" else 300)
    metric = 1 if device.type == "cpu" else 0  # which time the speed-up uses: CPU time on CPU, wall on CUDA
    for hw, fm in captured.items():
        flat = fm.reshape(-1, hw, hw)[:k]
        torch.linalg.matrix_rank(flat[0]).item()  # warm-up

        def loop() -> None:
            for i in range(flat.shape[0]):
                torch.linalg.matrix_rank(flat[i]).item()

        ref_per_map[hw] = min(once(loop, device)[metric] for _ in range(2)) / flat.shape[0]
    t_ref = sum(ref_per_map[hw] * n for hw, n in maps_per_res.items())
    base = c_fwd if metric else t_fwd
    t_hrank = next((r[2 + metric] for r in rows if r[0] == "hrank"), None)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads"
    print(f"## Criteria cost, CIFAR ResNet-56, {args.images} images ({args.data}), batch {args.batch}, "
          f"device {device} ({dev_name}), torch {torch.__version__}\n")
    print(f"Plain forward pass over {args.images} images: wall {t_fwd:.3f} s (min of {len(fwd_times)} runs, "
          f"max {max(t[0] for t in fwd_times):.3f} s), process CPU time {c_fwd:.3f} s; each row: min of "
          f"{args.repeat} runs. Ratios to the forward pass's time; 'overhead' = (time − forward) / forward.\n")
    print("| criterion | hook points | wall (s) | wall × fwd | CPU time (s) | CPU × fwd | CPU overhead × fwd |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| (plain forward) | – | {t_fwd:.3f} | 1.00 | {c_fwd:.3f} | 1.00 | 0.00 |")
    for name, where, t, c in rows:
        print(f"| {name} | {where} | {t:.3f} | {t / t_fwd:.2f} | {c:.3f} | {c / c_fwd:.2f} | "
              f"{(c - c_fwd) / c_fwd:.2f} |")
    total_maps = sum(maps_per_res.values())
    kind = "CPU time" if metric else "wall time"
    print(f"\nHRank reference loop (matrix_rank + .item() per map, {kind}): "
          + ", ".join(f"{hw}×{hw}: {ref_per_map[hw] * 1e6:.0f} µs/map" for hw in sorted(ref_per_map, reverse=True))
          + f"; {total_maps} maps → {t_ref:.1f} s extrapolated.")
    if t_hrank is not None:
        print(f"Batched hrank ({kind}): {t_hrank:.3f} s end to end (forward included), {t_hrank - base:.3f} s of "
              f"rank computation → {t_ref / max(t_hrank - base, 1e-9):.1f}× faster rank computation, "
              f"{(t_ref + base) / t_hrank:.1f}× faster end to end.")


if __name__ == "__main__":
    main()
