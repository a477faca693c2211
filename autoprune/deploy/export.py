"""Deployable files from a (pruned) model: ONNX, TorchScript, ``torch.export`` programs and autoprune's own format.

>>> result = export_model(pruned, torch.zeros(1, 3, 32, 32), "pruned.onnx", format="onnx")
>>> print(result)   # which exporter wrote it, and how closely the file reproduces the model

Every file is checked right after it is written: it is loaded back with the runtime a user would deploy it with
(ONNX Runtime for ONNX, ``torch.export.load`` for ``"exported"``, ``torch.jit.load`` for ``"torchscript"``,
:func:`autoprune.load` for ``"autoprune"``) and run on random inputs at the example batch size and at another batch
size (the batch dimension is dynamic in every format), and its outputs are compared with the PyTorch model's. A
file that does not reproduce the model within ``atol`` is not left behind: the error names the difference.

Formats
-------
``"onnx"``: :func:`torch.onnx.export` with the dynamo (``torch.export``-based) exporter; where it fails, the
    TorchScript-based exporter (deprecated in PyTorch, still the most widely compatible), and the result says which
    one wrote the file and why the first was not used. Needs ``pip install "autoprune[deploy]"`` (onnx, onnxscript,
    onnxruntime).
``"exported"``: :func:`torch.export.export` + :func:`torch.export.save` (a ``.pt2`` archive; ``torch.export.load(path)
    .module()`` runs it; ``torch.compile`` and AOTInductor take it from there).
``"torchscript"``: :func:`torch.jit.trace` + :func:`torch.jit.save` (deprecated in PyTorch in favour of
    ``torch.export``, still read by LibTorch and older runtimes).
``"autoprune"``: :func:`autoprune.save` (no pickled code; needs a model built from :func:`autoprune.get_model`).

Models are exported on the CPU in eval mode (a copy is moved when the model is elsewhere; the model's own mode is
restored afterwards).
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .._lineage import lineage_of
from ..graph.trace import output_tensors
from . import files as apio
from .inputs import as_input_tuple, inputs_at_batch

__all__ = ["export_model", "ExportResult", "ExportCheckError", "FORMATS", "require_deploy", "DEPLOY_HINT"]

FORMATS = ("autoprune", "onnx", "torchscript", "exported")
DEPLOY_HINT = 'pip install "autoprune[deploy]"'


class ExportCheckError(RuntimeError):
    """The written file does not reproduce the model (the file is removed)."""


def require_deploy(*modules: str, what: str = "ONNX export") -> None:
    """Import ``modules`` or raise an ImportError naming the ``deploy`` extra."""
    missing = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    if missing:
        raise ImportError(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                          f"installed: {DEPLOY_HINT} (onnx, onnxscript, onnxruntime)")


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how it was checked."""

    path: str
    format: str
    exporter: str                       # "dynamo"/"torchscript" (ONNX), "torch.export", "torch.jit.trace", "autoprune"
    checked_with: str                   # the runtime that ran the file
    checked_batches: tuple[int, ...]    # batch sizes the file was run at
    max_abs_diff: float                 # largest |file output - model output| over the checks (nan when unchecked)
    fallback_reason: str | None = None  # ONNX: why the dynamo exporter was not used
    opset: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def __str__(self) -> str:
        how = (f"{self.format} ({self.exporter} exporter)" if self.format == "onnx"
               else f"{self.format} ({self.exporter})")
        if self.fallback_reason:
            how += f" [the dynamo exporter failed: {self.fallback_reason}]"
        if self.checked_batches:
            check = (f"checked with {self.checked_with} at batch {', '.join(map(str, self.checked_batches))}: "
                     f"max abs diff {self.max_abs_diff:.2e}")
        else:
            check = "not checked"
        return f"{how} -> {self.path}; {check}"


# ------------------------------------------------------------------------------------------------------ inputs


def _max_diff(ref: Sequence[torch.Tensor], got: Sequence[Any]) -> tuple[float, float]:
    """(max |got - ref|, max |ref|) over all outputs."""
    if len(ref) != len(got):
        raise ExportCheckError(f"the file returns {len(got)} outputs, the model {len(ref)}")
    worst, scale = 0.0, 0.0
    for r, g in zip(ref, got):
        g = torch.as_tensor(g).to(torch.float64).cpu()
        r = r.detach().to(torch.float64).cpu()
        if g.shape != r.shape:
            raise ExportCheckError(f"the file returns an output of shape {tuple(g.shape)}, the model "
                                   f"{tuple(r.shape)}")
        if r.numel():
            worst = max(worst, float((g - r).abs().max()))
            scale = max(scale, float(r.abs().max()))
    return worst, scale


# ------------------------------------------------------------------------------------------------------ writers


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress to stdout and warn about their own deprecation; we report what matters."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        yield


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _onnx_dynamo(model: nn.Module, inputs: tuple, path: str, n_out: int, opset: int | None) -> None:
    batch = torch.export.Dim("batch")
    kwargs: dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    # one self-contained file unless the weights approach protobuf's 2 GB limit
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > 1_500_000_000
    with _quiet():
        torch.onnx.export(model, inputs, path, dynamo=True, verbose=False, external_data=big,
                          input_names=_names("input", len(inputs)), output_names=_names("output", n_out),
                          dynamic_shapes=tuple({0: batch} for _ in inputs), **kwargs)


def _onnx_torchscript(model: nn.Module, inputs: tuple, path: str, n_out: int, opset: int | None) -> None:
    ins, outs = _names("input", len(inputs)), _names("output", n_out)
    axes = {n: {0: "batch"} for n in ins + outs}
    kwargs: dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    with _quiet():
        torch.onnx.export(model, inputs, path, dynamo=False, input_names=ins, output_names=outs,
                          dynamic_axes=axes, **kwargs)


def _onnx_opset(path: str) -> int | None:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return next((int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


def _run_onnx(path: str) -> Callable[[tuple], list]:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(inputs: tuple) -> list:
        return sess.run(None, {n: x.numpy() for n, x in zip(names, inputs)})

    return run


# ------------------------------------------------------------------------------------------------------ public


def export_model(model: nn.Module, example_inputs: Any, path: str | os.PathLike, format: str = "onnx", *,
                 check: bool = True, atol: float = 1e-4, rtol: float = 1e-5, check_batch: int | None = None,
                 onnx_exporter: str = "auto", opset: int | None = None) -> ExportResult:
    """Write ``model`` to ``path`` in ``format`` (one of :data:`FORMATS`) and check the file by running it.

    ``example_inputs``: a tensor or tuple of tensors (batch first; any batch size, the batch dimension is exported as
    dynamic). ``check``: load the file back with its runtime and compare with the model on random inputs at the
    example batch size and at ``check_batch`` (default: the example batch + 2); a max abs difference above
    ``atol + rtol * max|model output|`` (float32 rounding grows with the outputs' size) raises
    :class:`ExportCheckError` and writes nothing. ``onnx_exporter``: ``"auto"`` (dynamo, falling back to
    TorchScript), ``"dynamo"`` or ``"torchscript"`` (no fallback). ``opset``: the ONNX opset (exporter default when
    None). Raises ImportError naming ``autoprune[deploy]`` when ONNX packages are missing.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if onnx_exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"onnx_exporter={onnx_exporter!r}: choose auto, dynamo or torchscript")
    if format == "onnx":
        require_deploy("onnx", "onnxruntime")
        if onnx_exporter == "dynamo":
            require_deploy("onnxscript", what="the dynamo ONNX exporter")
    inputs = as_input_tuple(example_inputs)
    b0 = int(inputs[0].shape[0])
    if any(int(x.shape[0]) != b0 for x in inputs):
        raise ValueError("all example inputs must share the batch size (dimension 0)")
    b1 = check_batch if check_batch is not None else b0 + 2
    if b1 == b0 or b1 < 1:
        raise ValueError(f"check_batch={b1} must be a positive batch size other than the example's ({b0})")
    if format == "exported" and Path(path).suffix != ".pt2":
        raise ValueError(f"{path}: torch.export.load reads archives named *.pt2; name the file e.g. "
                         f"{Path(path).with_suffix('.pt2').name}")
    if format == "autoprune" and not lineage_of(model).arch:
        raise ValueError("the autoprune format rebuilds the base architecture by name, and this model was not built "
                         "by autoprune.get_model: export it as onnx, exported or torchscript, or save it with "
                         "autoprune.save and load it with autoprune.load(path, model=<an unpruned instance>)")

    t0 = time.perf_counter()
    params = list(model.parameters()) + list(model.buffers())
    on_cpu = all(p.device.type == "cpu" for p in params)
    net = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = net.training
    net.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write into a private folder beside the target and move the file(s) (ONNX may add external data) only after
    # the check, so a failed export leaves nothing behind
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp = str(tmpdir / path.name)
        # export at batch >= 2: torch.export specialises a dimension of size 1, which would fix the batch
        ex = inputs_at_batch(inputs, max(b0, 2), seed=0) if b0 == 1 else tuple(x.cpu() for x in inputs)
        with torch.no_grad():
            n_out = len(output_tensors(net(*ex)))
        exporter, checked_with, fallback, run = "", "", None, None
        if format == "onnx":
            checked_with = "ONNX Runtime"
            if onnx_exporter in ("auto", "dynamo"):
                try:
                    require_deploy("onnxscript", what="the dynamo ONNX exporter")
                    _onnx_dynamo(net, ex, tmp, n_out, opset)
                    exporter = "dynamo"
                except Exception as e:  # noqa: BLE001 -- any exporter failure falls back (and is reported)
                    if onnx_exporter == "dynamo":
                        raise
                    fallback = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                    for f in tmpdir.iterdir():
                        f.unlink()
            if not exporter:
                _onnx_torchscript(net, ex, tmp, n_out, opset)
                exporter = "torchscript"
            opset_used = _onnx_opset(tmp)
            if check:
                run = _run_onnx(tmp)
        elif format == "exported":
            opset_used = None
            exporter, checked_with = "torch.export", "torch.export.load"
            batch = torch.export.Dim("batch")
            with _quiet():
                prog = torch.export.export(net, ex, dynamic_shapes=tuple({0: batch} for _ in ex))
            torch.export.save(prog, tmp)
            if check:
                loaded = torch.export.load(tmp).module()
                run = lambda xs: output_tensors(loaded(*xs))  # noqa: E731
        elif format == "torchscript":
            opset_used = None
            exporter, checked_with = "torch.jit.trace", "torch.jit.load"
            with _quiet(), torch.no_grad():
                traced = torch.jit.trace(net, ex)
                torch.jit.save(traced, tmp)
            if check:
                with _quiet():
                    loaded_ts = torch.jit.load(tmp, map_location="cpu")
                run = lambda xs: output_tensors(loaded_ts(*xs))  # noqa: E731
        else:
            opset_used = None
            exporter, checked_with = "autoprune", "autoprune.load"
            apio.save(net, tmp)
            if check:
                loaded_ap = apio.load(tmp)
                run = lambda xs: output_tensors(loaded_ap(*xs))  # noqa: E731

        diff, scale, batches = float("nan"), 0.0, ()
        if check:
            diff = 0.0
            batches = (b0, b1)
            for i, b in enumerate(batches):
                xs = inputs_at_batch(inputs, b, seed=1 + i)
                with torch.no_grad():
                    ref = output_tensors(net(*xs))
                    got = run(xs)  # type: ignore[misc]
                d, sc = _max_diff(ref, got)
                diff, scale = max(diff, d), max(scale, sc)
            if not diff <= atol + rtol * scale:
                raise ExportCheckError(f"the {format} file does not reproduce the model: max abs diff {diff:.3g} > "
                                       f"atol + rtol * max|output| = {atol:g} + {rtol:g} * {scale:.3g} (checked with "
                                       f"{checked_with} at batch {batches}); nothing was written")
        for f in tmpdir.iterdir():
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        net.train(was_training)
    return ExportResult(str(path), format, exporter, checked_with if check else "", tuple(batches), diff,
                        fallback_reason=fallback, opset=opset_used, seconds=time.perf_counter() - t0)
