"""measure_latency: the protocol (warm-up + timed repeats, quartiles), thread settings, both runtimes, the cache.

No timing is asserted (the machine is shared); the tests check what is measured and how it is reported.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from autoprune.deploy.latency import Latency, LatencyCache, measure_latency

EX = torch.zeros(1, 3, 16, 16)


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.net(x)


def test_protocol_warmup_repeats_and_quartiles():
    m = Counting().train()
    lat = measure_latency(m, EX, batch_size=4, warmup=3, repeats=7, threads=1)
    assert isinstance(lat, Latency)
    assert m.calls == [(4, 3, 16, 16)] * 10  # 3 untimed + 7 timed calls at the configured batch size
    assert m.training  # the model's mode is restored
    assert 0 < lat.min_ms <= lat.p25_ms <= lat.median_ms <= lat.p75_ms <= lat.max_ms
    assert lat.iqr_ms == pytest.approx(lat.p75_ms - lat.p25_ms) and lat.spread >= 0
    assert (lat.repeats, lat.warmup, lat.batch_size, lat.threads, lat.runtime, lat.device) == (7, 3, 4, 1, "torch",
                                                                                               "cpu")
    assert "batch 4" in str(lat) and "1 thread" in str(lat)
    assert Latency.from_dict(json.loads(json.dumps(lat.to_dict()))) == lat


def test_threads_are_set_for_the_measurement_and_restored():
    before = torch.get_num_threads()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x * 2

    measure_latency(Probe(), EX, threads=1, warmup=0, repeats=2)
    assert seen == [1, 1] and torch.get_num_threads() == before


def test_onnxruntime_runtime():
    lat = measure_latency(Counting().net, EX, runtime="onnxruntime", batch_size=2, threads=1, warmup=2, repeats=5)
    assert lat.runtime == "onnxruntime" and lat.threads == 1 and lat.median_ms > 0 and lat.repeats == 5


def test_cache_by_key_settings_and_file(tmp_path):
    path = tmp_path / "latency.json"
    m = Counting()
    cache = LatencyCache(path)
    a = measure_latency(m, EX, cache=cache, key="cut-1", warmup=1, repeats=3)
    assert not a.cached and len(m.calls) == 4
    b = measure_latency(m, EX, cache=LatencyCache(path), key="cut-1", warmup=1, repeats=3)  # another process
    assert b.cached and b.median_ms == a.median_ms and len(m.calls) == 4  # not measured again
    measure_latency(m, EX, cache=cache, key="cut-1", batch_size=2, warmup=1, repeats=3)  # other settings
    measure_latency(m, EX, cache=cache, key="cut-2", warmup=1, repeats=3)  # another model
    assert len(m.calls) == 12 and len(LatencyCache(path)) == 3
    path.write_text("{not json")  # a broken cache is only a cache
    c = measure_latency(m, EX, cache=LatencyCache(path), key="cut-1", warmup=1, repeats=3)
    assert not c.cached and len(m.calls) == 16
    with pytest.raises(ValueError, match="key"):
        measure_latency(m, EX, cache=cache)


@pytest.mark.parametrize("kwargs, match", [
    ({"device": "tpu"}, "device"), ({"runtime": "tensorrt"}, "runtime"), ({"batch_size": 0}, "batch_size"),
    ({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"), ({"threads": 0}, "threads"),
])
def test_bad_settings_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_latency(Counting(), EX, **kwargs)


def test_cuda_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        measure_latency(Counting(), EX, device="cuda")
