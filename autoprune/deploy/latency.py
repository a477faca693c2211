"""Measured inference latency of a model: fewer MACs is not always faster, so measure on the device you deploy to.

>>> lat = measure_latency(pruned, torch.zeros(1, 3, 32, 32), batch_size=1, threads=1, runtime="onnxruntime")
>>> lat.median_ms, lat.iqr_ms, lat.spread      # median, inter-quartile range, IQR / median

Protocol: inputs of the configured batch size (random normal; CNN latency does not depend on the values), ``warmup``
untimed calls (allocators, caches, ONNX Runtime's first-run optimisations), then ``repeats`` timed calls, each timed
on its own with :func:`time.perf_counter` (CUDA: synchronised before and after). The result is the median with the
quartiles, the minimum and the maximum, so a noisy, shared machine shows up as a wide spread rather than a wrong
number. ``runtime="torch"`` runs the model in ``torch.inference_mode``; ``"onnxruntime"`` exports it with
:func:`autoprune.deploy.export.export_model` (checked) and runs the file in an ONNX Runtime session.

One hand-written loop serves both runtimes, deliberately: ``torch.utils.benchmark.Timer`` times PyTorch only, and
comparing the runtimes needs the same protocol on both.

:class:`LatencyCache` keeps measurements by a caller's key (a search uses the removal digest of the trial's cut)
together with the settings and the machine, in a JSON file, so a model measured once is not measured again.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from .._files import atomic_write
from .export import DEPLOY_HINT, export_model, require_deploy
from .inputs import as_input_tuple, inputs_at_batch

__all__ = ["measure_latency", "Latency", "LatencyCache", "LatencyRunner", "DEVICES", "RUNTIMES",
           "check_latency_settings", "machine_label"]

DEVICES = ("cpu", "cuda")
RUNTIMES = ("torch", "onnxruntime")


@dataclass
class Latency:
    """One latency measurement (milliseconds per call of a batch)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int
    batch_size: int
    device: str
    runtime: str
    threads: int
    machine: str = ""
    key: str | None = None
    cached: bool = False

    @property
    def iqr_ms(self) -> float:
        """Inter-quartile range (p75 - p25)."""
        return self.p75_ms - self.p25_ms

    @property
    def spread(self) -> float:
        """IQR relative to the median (0.05 = the middle half of the calls lie within 5% of the median's size)."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(iqr_ms=self.iqr_ms, spread=self.spread)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Latency":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

    def __str__(self) -> str:
        return (f"{self.median_ms:.3f} ms (IQR {self.p25_ms:.3f}-{self.p75_ms:.3f}, min {self.min_ms:.3f}, "
                f"{self.repeats} repeats; {self.device}, {self.runtime}, batch {self.batch_size}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''})")


def check_latency_settings(device: str = "cpu", batch_size: int = 1, threads: int | None = None,
                           runtime: str = "torch", warmup: int = 5, repeats: int = 20) -> None:
    """ValueError naming the bad setting and its accepted values."""
    if device not in DEVICES:
        raise ValueError(f"latency device {device!r}: choose one of {', '.join(DEVICES)}")
    if runtime not in RUNTIMES:
        raise ValueError(f"latency runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    for name, v, lo in (("batch_size", batch_size, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"latency {name}={v!r}: give an integer >= {lo}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"latency threads={threads!r}: give an integer >= 1 (or leave it unset for the runtime's "
                         "default)")


def machine_label(device: str = "cpu") -> str:
    """Where a measurement was taken: host name, CPU count and, for CUDA, the GPU name."""
    label = f"{platform.node()}/{platform.machine()}/{os.cpu_count()}cpu"
    if device == "cuda" and torch.cuda.is_available():
        label += "/" + torch.cuda.get_device_name()
    return label


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[int]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _inputs(example_inputs: Any, batch_size: int, device: str) -> tuple[torch.Tensor, ...]:
    return tuple(x.to(device) for x in inputs_at_batch(as_input_tuple(example_inputs), batch_size, seed=0))


def _time_calls(call: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _quantile(sorted_ms: list[float], q: float) -> float:
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    return statistics.quantiles(sorted_ms, n=4, method="inclusive")[{0.25: 0, 0.75: 2}[q]]


def measure_latency(model: nn.Module, example_inputs: Any, *, batch_size: int = 1, device: str = "cpu",
                    threads: int | None = None, runtime: str = "torch", warmup: int = 5, repeats: int = 20,
                    cache: "LatencyCache | None" = None, key: str | None = None,
                    onnx_exporter: str = "auto") -> Latency:
    """Median latency (ms per call of ``batch_size`` samples) of ``model`` on ``device`` with ``runtime``.

    ``example_inputs``: a tensor or tuple of tensors (batch first; only the shape past the batch and the dtype are
    used). ``threads``: intra-op threads (torch: ``torch.set_num_threads`` for the measurement, restored after;
    ONNX Runtime: ``intra_op_num_threads``); None keeps the runtime's default. ``warmup`` untimed calls, then
    ``repeats`` timed ones. ``cache`` + ``key``: reuse a measurement of the same key and settings on this machine
    (a search passes the removal digest). ``onnx_exporter``: passed to :func:`autoprune.deploy.export.export_model` for
    ``runtime="onnxruntime"`` (``"torchscript"`` exports large models several times faster than the dynamo
    exporter; ONNX Runtime optimises either graph on loading). The model is not modified (a copy is moved when
    ``device`` differs). To measure one model several times (interleaved with others), use :class:`LatencyRunner`.
    """
    check_latency_settings(device, batch_size, threads, runtime, warmup, repeats)
    if cache is not None and key is None:
        raise ValueError("a latency cache needs a key that identifies the model (e.g. its removal digest)")
    settings = dict(batch_size=batch_size, device=device, threads=threads, runtime=runtime, warmup=warmup,
                    repeats=repeats)
    if cache is not None:
        hit = cache.get(key, **settings)  # type: ignore[arg-type]
        if hit is not None:
            return hit
    runner = LatencyRunner(model, example_inputs, batch_size=batch_size, device=device, threads=threads,
                           runtime=runtime, onnx_exporter=onnx_exporter)
    lat = runner.measure(warmup=warmup, repeats=repeats, key=key)
    if cache is not None:
        cache.put(key, lat, **settings)  # type: ignore[arg-type]
    return lat


class LatencyRunner:
    """A model made ready to be timed (inputs built, ONNX file exported and loaded into a session) once;
    :meth:`measure` then times it as often as needed (e.g. interleaved with other models, so that a noisy period on
    a shared machine hits them all). Arguments as for :func:`measure_latency`."""

    def __init__(self, model: nn.Module, example_inputs: Any, *, batch_size: int = 1, device: str = "cpu",
                 threads: int | None = None, runtime: str = "torch", onnx_exporter: str = "auto") -> None:
        check_latency_settings(device, batch_size, threads, runtime)
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("latency device cuda: no CUDA device is available here; measure on cpu, or run on a "
                             "machine with a GPU")
        self.batch_size, self.device, self.threads, self.runtime = batch_size, device, threads, runtime
        if runtime == "torch":
            self._prepare_torch(model, example_inputs)
        else:
            self._prepare_onnxruntime(model, example_inputs, onnx_exporter)

    def _prepare_torch(self, model: nn.Module, example_inputs: Any) -> None:
        tensors = list(model.parameters()) + list(model.buffers())
        here = all(t.device.type == self.device for t in tensors)
        net = model if here else copy.deepcopy(model).to(self.device)
        xs = _inputs(example_inputs, self.batch_size, self.device)
        self._call = lambda: net(*xs)
        self._sync: Callable[[], None] = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        self._net = net

    def _prepare_onnxruntime(self, model: nn.Module, example_inputs: Any, onnx_exporter: str) -> None:
        require_deploy("onnx", "onnxruntime", what="latency with runtime onnxruntime")
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise ValueError(f"latency on {self.device} with onnxruntime needs the {provider}, which this "
                             f"onnxruntime lacks (available: {ort.get_available_providers()}); for CUDA install "
                             f"onnxruntime-gpu instead of onnxruntime ({DEPLOY_HINT} installs the CPU build)")
        with tempfile.TemporaryDirectory(prefix="autoprune-latency-") as d:
            path = os.path.join(d, "model.onnx")
            export_model(model, example_inputs, path, format="onnx", onnx_exporter=onnx_exporter)
            so = ort.SessionOptions()
            if self.threads is not None:
                so.intra_op_num_threads = self.threads
                so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=[provider])
        names = [i.name for i in sess.get_inputs()]
        feed = {n: x.numpy() for n, x in zip(names, _inputs(example_inputs, self.batch_size, "cpu"))}
        if self.device == "cuda":
            # inputs on the GPU once (io binding), so the timing is the model's, not the host-to-device copy
            binding = sess.io_binding()
            for n, x in feed.items():
                binding.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for o in sess.get_outputs():
                binding.bind_output(o.name, "cuda")
            self._call = lambda: sess.run_with_iobinding(binding)
            self._sync = binding.synchronize_outputs
        else:
            self._call = lambda: sess.run(None, feed)
            self._sync = lambda: None
        self._net = None
        self._session = sess

    def measure(self, *, warmup: int = 5, repeats: int = 20, key: str | None = None) -> Latency:
        """``warmup`` untimed calls, then ``repeats`` timed ones."""
        check_latency_settings(self.device, self.batch_size, self.threads, self.runtime, warmup, repeats)
        if self._net is not None:
            was_training = self._net.training
            self._net.eval()
            try:
                with _torch_threads(self.threads) as used, torch.inference_mode():
                    times = _time_calls(self._call, warmup, repeats, self._sync)
            finally:
                self._net.train(was_training)
        else:
            times = _time_calls(self._call, warmup, repeats, self._sync)
            # ONNX Runtime's default (0) is one intra-op thread per physical core
            used = self.threads if self.threads is not None else int(os.cpu_count() or 1)
        times.sort()
        return Latency(median_ms=statistics.median(times), p25_ms=_quantile(times, 0.25),
                       p75_ms=_quantile(times, 0.75), min_ms=times[0], max_ms=times[-1], repeats=repeats,
                       warmup=warmup, batch_size=self.batch_size, device=self.device, runtime=self.runtime,
                       threads=used, machine=machine_label(self.device), key=key)


class LatencyCache:
    """Latency measurements by (key, settings, machine), in memory and, with ``path``, in a JSON file.

    The file is re-read before each write and written atomically, so processes sharing it at worst measure a model
    twice. Entries of another machine are kept but never returned here.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            payload = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # an unreadable cache is only a cache: measure again
        if isinstance(payload, dict) and payload.get("version") == self.VERSION:
            self._entries.update(payload.get("entries", {}))

    @staticmethod
    def _key(key: str, *, batch_size: int, device: str, threads: int | None, runtime: str, warmup: int,
             repeats: int) -> str:
        return (f"{key}|{device}|{runtime}|b{batch_size}|t{threads if threads is not None else 'default'}"
                f"|w{warmup}|r{repeats}|{machine_label(device)}")

    def get(self, key: str, **settings: Any) -> Latency | None:
        e = self._entries.get(self._key(key, **settings))
        if e is None:
            return None
        lat = Latency.from_dict(e)
        lat.cached = True
        return lat

    def put(self, key: str, lat: Latency, **settings: Any) -> None:
        k = self._key(key, **settings)
        d = lat.to_dict()
        d["cached"] = False
        self._entries[k] = d
        if self.path is not None:
            self._load()  # merge what other processes wrote meanwhile
            self._entries[k] = d
            text = json.dumps({"version": self.VERSION, "entries": self._entries}, indent=1, sort_keys=True)
            atomic_write(self.path, lambda f: f.write(text), binary=False)

    def __len__(self) -> int:
        return len(self._entries)
