#!/usr/bin/env python3
"""Peer comparison: Torch-Pruning vs autoprune on the model zoo, uniform 30% channel pruning with L1.

    python benchmarks/bench_peers.py [--suite zoo|timm] [--models resnet18,resnet56,...] [--size 224|64]
                                     [--ratio 0.3] [--threads 2] [--out docs/peers_benchmark.md | --no-write]

``--suite timm`` runs the timm architectures of ``tests/test_timm_zoo.py`` (``timm.create_model(name,
pretrained=False)``, 1x3xSxS inputs with S = --size, default 64 for this suite) and writes its own section.
``--suite transformers`` runs the vision transformers and hybrids of ``tests/test_transformer_zoo.py`` (the same
small configurations and inputs, Swin with one block per stage) and writes its own section; there Torch-Pruning gets what its ViT example
(``examples/transformers/prune_timm_vit.py``) gives it: ``num_heads={attn.qkv: attn.num_heads}`` for every timm
``Attention`` (head dims pruned, ``prune_head_dims=True``), and ``num_heads``/``head_dim`` set back on each attention
after ``step()``.

For every model (randomly initialised, eval mode, seed 0) both tools prune 30% of the channels of every group
they consider prunable, ranked by L1 norm:

* Torch-Pruning (``pip install "torch-pruning==1.6.*" --no-deps``; NOT a dependency of autoprune) the way its
  README does it: ``tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
  pruning_ratio=0.3, ignored_layers=[final classifier Linear])`` then ``pruner.step()``, on a deepcopy (it prunes
  in place). "Final classifier" = every ``nn.Linear`` whose ``out_features`` equals the model's output width, which
  is what a typical user writes (``out_features == 1000``); a model whose classifier is a convolution (SqueezeNet)
  therefore gets no ignored layer, and nothing special is done for the option-A zero-padding shortcut of the CIFAR
  ResNets.
* autoprune: ``ChannelGraph(model, x).prune(0.3, criterion="l1")`` (returns a new module).

Reported per model and tool: does the pruned model run, is the output shape preserved, MACs before/after with
``autoprune.count_macs`` (conv + linear MACs, fvcore) for BOTH tools, % MACs removed, and the wall time to analyse
and prune (Torch-Pruning: MetaPruner construction + step, excluding the user's deepcopy; autoprune: ChannelGraph
construction, which deep-copies and traces internally, + prune). Every exception is caught and recorded per
model. Inputs: 1x3xSxS for torchvision models (S = --size, default 224; inception_v3 uses 299, or 75 when
--size < 224), 1x3x32x32 for the CIFAR models. Prints a markdown table and, unless --no-write, rewrites the
generated section of --out (between the ``<!-- bench_peers:begin/end -->`` markers; text outside is kept).
Not a test.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import os
import platform
import shlex
import signal
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import autoprune as ap  # noqa: E402

CIFAR = ["resnet20", "resnet56", "vgg16_bn_cifar"]
TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "mnasnet1_0",
    "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "densenet121", "googlenet", "inception_v3",
    "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11_bn", "convnext_tiny",
]
ZOO = TORCHVISION + CIFAR
# the timm set of tests/test_timm_zoo.py (smallest variant of each family)
TIMM = [
    "resnet10t", "resnet18d", "resnext26ts", "legacy_seresnet18", "ecaresnet26t", "regnetx_002", "regnety_002",
    "tf_efficientnet_lite0", "mobilenetv3_small_050", "mixnet_s", "tinynet_e", "lcnet_050", "mnasnet_small",
    "mobilenetv4_conv_small_035", "ghostnet_050", "repghostnet_050", "rexnet_100", "dpn48b", "densenet121",
    "dla46_c", "hrnet_w18_small", "cs3darknet_s", "darknet17", "ese_vovnet19b_slim_dw", "repvgg_a0", "gernet_s",
    "skresnet18", "resnest14d", "convnext_atto", "edgenext_xx_small",
]
_SMALL = dict(img_size=32, patch_size=4, depth=2)
# the set of tests/test_transformer_zoo.py: name -> (create_model kwargs, input side)
TRANSFORMERS = {
    "vit_tiny_patch16_224": (_SMALL, 32), "deit_tiny_patch16_224": (_SMALL, 32),
    "deit3_small_patch16_224": (_SMALL, 32), "cait_xxs24_224": (_SMALL, 32), "pit_ti_224": (dict(img_size=32), 32),
    "xcit_nano_12_p16_224": (dict(img_size=32, depth=2), 32),
    "swin_tiny_patch4_window7_224": (dict(img_size=56, depths=(1, 1, 1, 1)), 56),
    "maxvit_pico_rw_256": (dict(img_size=64), 64), "fastvit_sa12": ({}, 64),
    "hiera_tiny_224": (dict(stages=(1, 1, 1, 1)), 224), "caformer_s18": ({}, 64),
    "eva02_tiny_patch14_224": (_SMALL, 32), "convit_tiny": (_SMALL, 32), "mobilevitv2_050": ({}, 64),
    "coatnet_nano_rw_224": (dict(img_size=64), 64), "levit_128s": (dict(img_size=64), 64), "mobilevit_xxs": ({}, 64),
}
MARKERS = {"zoo": ("<!-- bench_peers:begin -->", "<!-- bench_peers:end -->"),
           "timm": ("<!-- bench_peers:timm:begin -->", "<!-- bench_peers:timm:end -->"),
           "transformers": ("<!-- bench_peers:transformers:begin -->", "<!-- bench_peers:transformers:end -->")}
BEGIN, END = MARKERS["zoo"]


def input_size(name: str, size: int) -> int:
    if name in CIFAR:
        return 32
    if name == "inception_v3":
        return 299 if size >= 224 else max(75, size)
    return size


def short(exc: BaseException, limit: int = 110) -> str:
    msg = " ".join(str(exc).split()) or "(no message)"
    msg = f"{type(exc).__name__}: {msg}"
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def where(exc: BaseException) -> str:
    """File:line of the innermost frame, to tell a library bug from a model-code error."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    parts = f.filename.replace("\\", "/").split("/")
    for root in ("torch_pruning", "autoprune", "torchvision", "torch"):
        if root in parts:
            return "/".join(parts[parts.index(root):]) + f":{f.lineno}"
    return f"{parts[-1]}:{f.lineno}"


def classifier_linears(model: nn.Module, out_width: int) -> list[nn.Module]:
    """The README's ignored_layers: the final classifier Linear(s), i.e. out_features == the output width."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == out_width]


def prune_torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float, out_width: int) -> tuple[nn.Module, dict]:
    import torch_pruning as tp

    m = copy.deepcopy(model)
    ignored = classifier_linears(m, out_width)
    attns = [a for a in m.modules() if type(a).__name__ == "Attention" and hasattr(a, "qkv")
             and hasattr(a, "num_heads")]  # timm's: its ViT example's num_heads mapping
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                  ignored_layers=ignored, num_heads={a.qkv: a.num_heads for a in attns})
    pruner.step()
    for a in attns:
        a.num_heads = pruner.num_heads.get(a.qkv, a.num_heads)
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
        if hasattr(a, "attn_dim"):
            a.attn_dim = a.num_heads * a.head_dim
    dt = time.perf_counter() - t0
    note = f"ignored {len(ignored)} Linear" if ignored else "no layer ignored"
    return m, {"time": dt, "note": note + (f", num_heads of {len(attns)} attentions" if attns else "")}


def prune_autoprune(model: nn.Module, x: torch.Tensor, ratio: float, out_width: int) -> tuple[nn.Module, dict]:
    t0 = time.perf_counter()
    g = ap.ChannelGraph(model, x)
    pruned = g.prune(ratio, criterion="l1")
    dt = time.perf_counter() - t0
    return pruned, {"time": dt, "note": f"{len(g.prunable_groups)}/{len(g.groups)} groups prunable"}


TOOLS = {"torch-pruning": prune_torch_pruning, "autoprune": prune_autoprune}


class ToolTimeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise ToolTimeout(f"no result within {TIMEOUT[0]} s (hung)")


TIMEOUT = [300]


def run_tool(fn, model: nn.Module, x: torch.Tensor, ratio: float, ref_shape: tuple, macs0: int | None) -> dict:
    r = {"runs": False, "shape": None, "macs": None, "removed": None, "time": None, "error": "", "note": ""}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, info = fn(model, x, ratio, ref_shape[-1])
        r.update(time=info["time"], note=info["note"])
    except Exception as e:  # noqa: BLE001 -- recorded, not raised
        r["error"] = f"prune: {short(e)} [{where(e)}]"
        return r
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    try:
        pruned.eval()
        with torch.no_grad():
            out = pruned(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        r["runs"] = True
        r["shape"] = tuple(out.shape) == tuple(ref_shape)
        if not r["shape"]:
            r["error"] = f"output shape {tuple(out.shape)} != {tuple(ref_shape)}"
        elif not torch.isfinite(out).all():
            r["error"] = "non-finite outputs"
    except Exception as e:  # noqa: BLE001
        r["error"] = f"forward: {short(e)} [{where(e)}]"
        return r
    try:
        r["macs"] = ap.count_macs(pruned, x)
        if macs0:
            r["removed"] = 100.0 * (1 - r["macs"] / macs0)
    except Exception as e:  # noqa: BLE001
        r["error"] = (r["error"] + "; " if r["error"] else "") + f"MACs: {short(e)}"
    return r


def load_model(name: str, suite: str) -> nn.Module:
    if suite in ("timm", "transformers"):
        import timm

        kwargs = TRANSFORMERS[name][0] if suite == "transformers" else {}
        return timm.create_model(name, pretrained=False, **kwargs)
    return ap.models.get_model(name)


def bench_model(name: str, size: int, ratio: float, tools: list[str], suite: str = "zoo") -> dict:
    s = input_size(name, size) if suite == "zoo" else TRANSFORMERS[name][1] if suite == "transformers" else size
    row = {"model": name, "input": f"{s}x{s}", "macs0": None, "error": "", "tools": {}}
    try:
        torch.manual_seed(0)
        model = load_model(name, suite).eval()
        x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = model(x)
        ref_shape = tuple(ref.shape)
        row["macs0"] = ap.count_macs(model, x)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"baseline: {short(e)}"
        return row
    for tool in tools:
        row["tools"][tool] = run_tool(TOOLS[tool], model, x, ratio, ref_shape, row["macs0"])
    return row


def fmt_macs(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e6:,.1f}M"


def yn(v) -> str:
    return "-" if v is None else ("yes" if v else "**no**")


def table(rows: list[dict], tools: list[str]) -> str:
    head = ["model", "input", "MACs before"]
    for t in tools:
        head += [f"{t}: runs", "shape kept", "MACs after", "removed", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---", "---", "---:", "---:", "---:"]
                                                            * len(tools)) + "|"]
    for row in rows:
        cells = [row["model"], row["input"], fmt_macs(row["macs0"])]
        for t in tools:
            r = row["tools"].get(t)
            if r is None:
                cells += ["-"] * 5
                continue
            prune_failed = r["error"].startswith("prune:")
            cells += ["**no** (prune)" if prune_failed else yn(r["runs"]),
                      "-" if r["shape"] is None else yn(r["shape"]),
                      fmt_macs(r["macs"]),
                      "-" if r["removed"] is None else f"{r['removed']:.1f}%",
                      "-" if r["time"] is None else f"{r['time']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[dict], tools: list[str]) -> str:
    out = []
    for row in rows:
        if row["error"]:
            out.append(f"- `{row['model']}`: {row['error']}")
        for t in tools:
            r = row["tools"].get(t)
            if r and r["error"]:
                out.append(f"- `{row['model']}` / {t}: {r['error'].replace('|', '/')}")
    return "\n".join(out) if out else "- none"


def versions() -> dict[str, str]:
    import torchvision

    v = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
         "autoprune": ap.__version__}
    try:
        v["torch-pruning"] = importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        v["torch-pruning"] = "not installed"
    try:
        v["fvcore"] = importlib.metadata.version("fvcore")
    except importlib.metadata.PackageNotFoundError:
        pass
    return v


def summary(rows: list[dict], tools: list[str]) -> str:
    """Per tool: models pruned correctly-shaped with >= 15% MACs removed, failures; the ratio of analysis times."""
    out = []
    for t in tools:
        rs = [row["tools"].get(t) for row in rows]
        ok = sum(1 for r in rs if r and r["runs"] and r["shape"] and (r["removed"] or 0) >= 15)
        bad = sum(1 for r in rs if not r or not r["runs"] or not r["shape"])
        out.append(f"- {t}: {ok}/{len(rows)} models run, keep their output shape and lose >= 15% of MACs; "
                   f"{bad} fail (raise, do not run, or change the output shape)")
    if {"torch-pruning", "autoprune"} <= set(tools):
        ratios = sorted(row["tools"]["autoprune"]["time"] / row["tools"]["torch-pruning"]["time"] for row in rows
                        if row["tools"]["autoprune"]["time"] and row["tools"]["torch-pruning"]["time"])
        if ratios:
            med = ratios[len(ratios) // 2]
            out.append(f"- analysis + prune time, autoprune / Torch-Pruning (models both prune): median {med:.2f}x, "
                       f"range {ratios[0]:.2f}x-{ratios[-1]:.2f}x over {len(ratios)} models")
    return "\n".join(out)


def report(rows: list[dict], tools: list[str], args, cmd: str, total: float) -> str:
    v = versions()
    cuda = torch.cuda.is_available()
    machine = (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
               f"torch threads {torch.get_num_threads()}, {'GPU: ' + torch.cuda.get_device_name(0) if cuda else 'no GPU'}"
               " (runs on CPU)")
    sizes = (f"1x3x{args.size}x{args.size} for torchvision models (inception_v3: "
             f"{input_size('inception_v3', args.size)}), 1x3x32x32 for CIFAR models") if args.suite == "zoo" else (
        f"1x3x{args.size}x{args.size}, timm.create_model(name, pretrained=False)") if args.suite == "timm" else (
        "1x3xSxS with S and the create_model keywords of tests/test_transformer_zoo.py (small depths)")
    return "\n".join([
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- command: `{cmd}` (total {total:.0f} s)",
        f"- pruning: uniform ratio {args.ratio} on every prunable group, L1 magnitude; inputs {sizes}; "
        "random init (seed 0), eval mode",
        "- MACs: `autoprune.count_macs(model, x)` (conv + linear MACs for one sample, fvcore) for both tools",
        "",
        summary(rows, tools),
        "",
        table(rows, tools),
        "",
        "Errors and notes (recorded, not raised):",
        "",
        notes(rows, tools),
    ])


def write_doc(path: str, body: str, suite: str = "zoo") -> None:
    BEGIN, END = MARKERS[suite]
    block = f"{BEGIN}\n{body}\n{END}"
    if os.path.exists(path):
        text = open(path, encoding="utf-8").read()
        if BEGIN in text and END in text:
            pre, rest = text.split(BEGIN, 1)
            post = rest.split(END, 1)[1]
            text = pre + block + post
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = ("# Peer benchmark: Torch-Pruning vs autoprune\n\n"
                "Generated by `benchmarks/bench_peers.py`; the section between the markers is rewritten on each run.\n\n"
                + block + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=sorted(MARKERS), default="zoo",
                   help="zoo: torchvision + CIFAR models; timm: the timm set of tests/test_timm_zoo.py; "
                        "transformers: the set of tests/test_transformer_zoo.py")
    p.add_argument("--models", default=None, help="comma-separated names (default: the whole suite)")
    p.add_argument("--size", type=int, default=None,
                   help="input side (zoo: torchvision models, default 224, CIFAR always 32; timm: default 64)")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: torch-pruning,autoprune")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                                  "peers_benchmark.md"))
    p.add_argument("--no-write", action="store_true", help="only print the table")
    p.add_argument("--timeout", type=int, default=300, help="seconds per tool and model before it counts as hung")
    args = p.parse_args(argv)
    TIMEOUT[0] = args.timeout
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size is None:
        args.size = 224 if args.suite == "zoo" else 64
    default = {"zoo": ZOO, "timm": TIMM, "transformers": list(TRANSFORMERS)}[args.suite]
    models = [m.strip() for m in (args.models or ",".join(default)).split(",") if m.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in tools:
        if t not in TOOLS:
            p.error(f"unknown tool {t!r}; choose from {', '.join(TOOLS)}")

    import logging
    logging.getLogger("torch_pruning").setLevel(logging.ERROR)
    # one-time costs (imports, fx's first stack-trace filter) are not charged to the first model of either tool
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10)).eval()
    xt = torch.randn(1, 3, 8, 8)
    for t in tools:
        run_tool(TOOLS[t], tiny, xt, args.ratio, (1, 10), None)
    rows, t_start = [], time.perf_counter()
    for name in models:
        t0 = time.perf_counter()
        row = bench_model(name, args.size, args.ratio, tools, args.suite)
        rows.append(row)
        status = ", ".join(f"{t}: {'ok' if not r['error'] else r['error'][:60]}" for t, r in row["tools"].items())
        print(f"[{time.perf_counter() - t0:6.1f}s] {name}: {row['error'] or status}", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_start
    cmd = "python benchmarks/bench_peers.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                 " " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    body = report(rows, tools, args, cmd, total)
    print(body)
    if not args.no_write:
        write_doc(args.out, body, args.suite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
