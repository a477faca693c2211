"""Channel-importance criteria vs slow, obviously-correct references (per-map Python loops in float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from autoprune.criteria import (ActivationRecorder, ActivationStats, PooledClassStats, available_criteria,
                                batched_rank, collect_activation_scores, ezcrop_ratio, ezcrop_zone, get_criterion,
                                register_criterion, run_accumulators, unregister_criterion)
from autoprune.criteria.base import Criterion, WeightCriterion

EPS32 = float(np.finfo(np.float32).eps)
CUDA = torch.cuda.is_available()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------------------------

def ref_rank(m: np.ndarray) -> int:
    """numpy matrix_rank in float64 with torch's float32 default tolerance σ_max·max(H, W)·eps_float32."""
    m = np.asarray(m, dtype=np.float64)
    if m.size == 1:
        return int(m.item() != 0)
    s = np.linalg.svd(m, compute_uv=False)
    return int(np.linalg.matrix_rank(m, tol=s.max() * max(m.shape) * EPS32)) if s.max() > 0 else 0


def ref_zone(h: int, w: int, alpha: float = 0.25) -> tuple[int, int, int]:
    """methods.md §2, steps 3-4, written out independently of the library."""
    if h % 2 == 0 and w % 2 == 0:
        cx, cy = h // 2, w // 2
    else:
        cx, cy = (h - 1) // 2, (w - 1) // 2
    s = 0 if (cx == 1 or cy == 1) else min(math.ceil(alpha * (h - cx - 1)), math.ceil(alpha * (w - cy - 1)))
    return cx, cy, s


def ref_ezcrop(m: np.ndarray, alpha: float = 0.25) -> float:
    m = np.asarray(m, dtype=np.float64)
    h, w = m.shape
    mag = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(m))))
    total = mag.sum()
    if total == 0:
        return 0.0
    cx, cy, s = ref_zone(h, w, alpha)
    zone = 0.0
    for i in range(cx - s, cx + s + 1):
        for j in range(cy - s, cy + s + 1):
            if 0 <= i < h and 0 <= j < w:
                zone += mag[i, j]
    return 1.0 - zone / total


def ref_pool(x: np.ndarray, pool: str) -> np.ndarray:
    if x.ndim == 2:
        return x.astype(np.float64)
    x = x.astype(np.float64)
    return x.mean((2, 3)) if pool == "avg" else x.max((2, 3))


def ref_discrimination(x: np.ndarray, y: np.ndarray, metric: str, pool: str = "avg", aggregate: str = "mean",
                       eps: float = 1e-8) -> np.ndarray:
    f = ref_pool(x, pool)
    out = np.zeros(f.shape[1])
    for ch in range(f.shape[1]):
        per_class = []
        for c in np.unique(y):
            pos, neg = f[y == c, ch], f[y != c, ch]
            if len(pos) == 0 or len(neg) == 0:
                continue
            mp, mn = pos.mean(), neg.mean()
            vp = pos.var(ddof=1) if len(pos) > 1 else 0.0
            vn = neg.var(ddof=1) if len(neg) > 1 else 0.0
            d = mp - mn
            if metric == "tt":
                v = abs(d) / math.sqrt(vp / len(pos) + vn / len(neg) + eps)
            elif metric == "snr":
                v = abs(d) / (math.sqrt(vp) + math.sqrt(vn) + eps)
            elif metric == "fdr":
                v = d * d / (vp + vn + eps)
            elif metric == "sd":
                a, b = vp + eps, vn + eps
                v = 0.5 * (a / b + b / a) + 0.5 * d * d * (1 / a + 1 / b) - 1
            else:
                raise AssertionError(metric)
            per_class.append(v)
        out[ch] = np.mean(per_class) if aggregate == "mean" else np.max(per_class)
    return out


def ref_di(x: np.ndarray, y: np.ndarray, p: int = 2, rho: float = 1e-3, scatter: str = "total") -> np.ndarray:
    n, c, h, w = x.shape
    assert h % p == 0 and w % p == 0
    feats = x.astype(np.float64).reshape(n, c, p, h // p, p, w // p).mean((3, 5)).reshape(n, c, p * p)
    out = np.zeros(c)
    for ch in range(c):
        z = feats[:, ch, :]
        mu = z.mean(0)
        s_t = (z - mu).T @ (z - mu) / n
        s_b = np.zeros_like(s_t)
        for k in np.unique(y):
            zk = z[y == k]
            dk = zk.mean(0) - mu
            s_b += len(zk) / n * np.outer(dk, dk)
        s_bar = s_t if scatter == "total" else s_t - s_b
        out[ch] = np.trace(np.linalg.inv(s_bar + rho * np.eye(p * p)) @ s_b)
    return out


def low_rank_maps(n: int, c: int, h: int, w: int, g: torch.Generator, relu: bool = False) -> torch.Tensor:
    """Maps of exactly known low rank: products of small-integer factors (exact in float32)."""
    maps = torch.zeros(n, c, h, w)
    for i in range(n):
        for j in range(c):
            r = int(torch.randint(0, min(h, w) + 1, (1,), generator=g))
            u = torch.randint(-3, 4, (h, r), generator=g).float()
            v = torch.randint(-3, 4, (r, w), generator=g).float()
            maps[i, j] = u @ v
    return torch.relu(maps) if relu else maps


# ---------------------------------------------------------------------------------------------------------------
# HRank
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 16, 8, 3])
def test_hrank_matches_per_map_reference(size: int) -> None:
    g = gen(size)
    x = torch.cat([
        torch.randn(3, 4, size, size, generator=g),                        # full rank
        torch.relu(torch.randn(3, 4, size, size, generator=g)),            # after ReLU
        torch.relu(torch.randn(3, 4, size, size, generator=g) - 1.5),      # sparse after ReLU (zero rows/cols)
        low_rank_maps(3, 4, size, size, g),                                # exact low rank 0..size
        low_rank_maps(3, 4, size, size, g, relu=True),                     # low rank, then ReLU
    ])
    crit = get_criterion("hrank")
    state = crit.init(channels=4)
    crit.update(state, x)
    got = crit.finalize(state)
    ranks = np.array([[ref_rank(x[i, j].numpy()) for j in range(4)] for i in range(x.shape[0])])
    assert got.dtype == torch.float64 and got.shape == (4,)
    np.testing.assert_array_equal(got.numpy(), ranks.mean(0))
    # the literal HRank reference loop (matrix_rank + .item() per map) agrees map by map
    loop = [[torch.linalg.matrix_rank(x[i, j]).item() for j in range(4)] for i in range(x.shape[0])]
    np.testing.assert_array_equal(batched_rank(x).numpy(), np.array(loop))
    assert (ranks[9:12] < size).any()  # the low-rank maps really are rank-deficient


def test_hrank_one_by_one_and_linear() -> None:
    x = torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(run_accumulators("hrank", x)["hrank"].numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(run_accumulators("hrank", x[:, :, None, None])["hrank"].numpy(), [0.0, 0.5, 1.0])
    assert batched_rank(torch.zeros(2, 3, 4, 4)).sum() == 0


# ---------------------------------------------------------------------------------------------------------------
# EZCrop
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,zone", [(32, 9), (16, 5), (8, 3), (2, 1)])
def test_ezcrop_zone_sizes(size: int, zone: int) -> None:
    assert ezcrop_zone(size, size, 0.25) == ref_zone(size, size, 0.25)
    cx, cy, s = ezcrop_zone(size, size)
    assert 2 * s + 1 == zone
    assert (cx, cy) == (size // 2, size // 2)


@pytest.mark.parametrize("shape", [(32, 32), (16, 16), (8, 8), (2, 2), (7, 7), (6, 8), (5, 6), (1, 1), (4, 4)])
def test_ezcrop_matches_per_map_reference(shape: tuple[int, int]) -> None:
    g = gen(sum(shape))
    h, w = shape
    x = torch.cat([torch.randn(4, 3, h, w, generator=g), torch.relu(torch.randn(4, 3, h, w, generator=g)),
                   torch.zeros(1, 3, h, w), torch.full((1, 3, h, w), 2.0)])
    for alpha in (0.25, 0.5):
        got = run_accumulators(get_criterion("ezcrop", alpha=alpha), x)["ezcrop"]
        ref = np.array([[ref_ezcrop(x[i, j].numpy(), alpha) for j in range(3)] for i in range(x.shape[0])])
        np.testing.assert_allclose(got.numpy(), ref.mean(0), rtol=1e-5, atol=5e-6)
        np.testing.assert_allclose(ezcrop_ratio(x).numpy() if alpha == 0.25 else ezcrop_ratio(x, alpha).numpy(),
                                   ref, rtol=1e-5, atol=5e-6)
    assert ezcrop_ratio(torch.zeros(2, 2, h, w)).abs().sum() == 0


def test_ezcrop_float64_input_is_exact() -> None:
    x = torch.randn(2, 2, 16, 16, generator=gen(3), dtype=torch.float64)
    ref = np.array([[ref_ezcrop(x[i, j].numpy()) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(ezcrop_ratio(x).numpy(), ref, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Class discrimination
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["tt", "snr", "fdr", "sd"])
@pytest.mark.parametrize("pool,aggregate", [("avg", "mean"), ("max", "max"), ("avg", "max")])
def test_discrimination_matches_one_vs_rest_loops(metric: str, pool: str, aggregate: str) -> None:
    g = gen(11)
    n, c, k = 60, 5, 4
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.relu(torch.randn(n, c, 6, 6, generator=g) + 0.3 * y[:, None, None, None] * torch.arange(c)[:, None, None])
    x[:, 0] = 0.0  # a dead channel: every metric gives 0
    crit = get_criterion(metric, pool=pool, aggregate=aggregate)
    got = run_accumulators(crit, x, y)[metric]
    ref = ref_discrimination(x.numpy(), y.numpy(), metric, pool, aggregate)
    # pooling runs in float32 (the maps' dtype), the statistics in float64: agreement to float32 rounding
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5, atol=1e-10)
    assert got[0] == 0
    got64 = run_accumulators(crit, x.double(), y)[metric]  # float64 maps: float64 throughout
    np.testing.assert_allclose(got64.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_discrimination_on_linear_outputs_and_absent_classes() -> None:
    g = gen(5)
    x = torch.randn(30, 3, generator=g)
    y = torch.randint(0, 3, (30,), generator=g) * 2  # classes 0, 2, 4 of num_classes=6: 1, 3, 5 absent
    got = run_accumulators(["tt", "fdr"], x, y, num_classes=6)
    for m in ("tt", "fdr"):
        np.testing.assert_allclose(got[m].numpy(), ref_discrimination(x.numpy(), y.numpy(), m), rtol=1e-7)


def test_discrimination_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="two classes"):
        run_accumulators("tt", torch.randn(5, 2, 3, 3), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("scatter", ["total", "within"])
def test_di_matches_reference(scatter: str) -> None:
    g = gen(21)
    n, c = 80, 4
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.relu(torch.randn(n, c, 8, 8, generator=g) + y[:, None, None, None] * torch.rand(c, 1, 1, generator=g))
    got = run_accumulators(get_criterion("di", scatter=scatter, rho=1e-2), x, y)["di"]
    got64 = run_accumulators(get_criterion("di", scatter=scatter, rho=1e-2), x.double(), y)["di"]
    np.testing.assert_allclose(got64.numpy(), ref_di(x.numpy(), y.numpy(), 2, 1e-2, scatter), rtol=1e-9)
    np.testing.assert_allclose(got.numpy(), ref_di(x.numpy(), y.numpy(), 2, 1e-2, scatter), rtol=2e-5)
    got3 = run_accumulators(get_criterion("di", p=4, rho=1e-1), x, y)["di"]
    np.testing.assert_allclose(got3.numpy(), ref_di(x.numpy(), y.numpy(), 4, 1e-1), rtol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# Streaming, sharing, determinism
# ---------------------------------------------------------------------------------------------------------------

ALL_ACT = ["hrank", "ezcrop", "tt", "snr", "fdr", "sd", "di"]


def test_streaming_equals_one_big_batch() -> None:
    g = gen(7)
    x = torch.relu(torch.randn(50, 6, 8, 8, generator=g) + 3.0)  # large mean: exercises the shifted sums
    x[:, 2] = low_rank_maps(50, 1, 8, 8, g, relu=True)[:, 0]
    y = torch.randint(0, 5, (50,), generator=g)
    one = run_accumulators(ALL_ACT, x, y)
    stats = ActivationStats(ALL_ACT)  # num_classes inferred (and grown) from the labels
    for a, b in [(0, 7), (7, 8), (8, 30), (30, 50)]:
        stats.update(x[a:b], y[a:b])
    streamed = stats.finalize()
    assert stats.num_images == 50
    for name in ALL_ACT:
        np.testing.assert_allclose(streamed[name].numpy(), one[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(streamed["hrank"].numpy(), one["hrank"].numpy())


def test_per_criterion_api_and_bounded_state() -> None:
    crit = get_criterion("fdr")
    assert crit.kind == "activation" and crit.needs_labels
    state = crit.init(channels=3, num_classes=4, device="cpu")
    g = gen(1)
    for _ in range(5):
        crit.update(state, torch.randn(16, 3, 4, 4, generator=g), torch.randint(0, 4, (16,), generator=g))
        assert state.sum.shape == (4, 3) and state.count.shape == (4,)
    assert state.num_images == 80
    # num_classes=0 (or None) means "infer from the labels"
    st0 = get_criterion("tt").init(channels=3, num_classes=0)
    st0.update(torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert st0.num_classes == 3
    assert get_criterion("ezcrop").default_hook == "conv" and get_criterion("hrank").default_hook == "act"
    scores = crit.finalize(state)
    assert scores.dtype == torch.float64 and scores.shape == (3,)
    torch.testing.assert_close(crit.finalize(state), scores)  # finalize is non-destructive


def test_class_stats_are_shared_and_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    orig = PooledClassStats.update

    def counting(self, fmap, labels=None):
        calls.append(self.pool)
        return orig(self, fmap, labels)

    monkeypatch.setattr(PooledClassStats, "update", counting)
    stats = ActivationStats(["tt", "snr", "fdr", "sd", "hrank"])
    assert len(stats.accumulators) == 2
    g = gen(2)
    x, y = torch.randn(20, 3, 4, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    stats.update(x, y)
    assert calls == ["avg"]
    shared = stats.finalize()
    for m in ("tt", "snr", "fdr", "sd"):
        torch.testing.assert_close(shared[m], run_accumulators(m, x, y)[m])
    # different pooling -> a separate set of statistics
    both = ActivationStats({"tt_avg": get_criterion("tt"), "tt_max": get_criterion("tt", pool="max"),
                            "snr_max": get_criterion("snr", pool="max")})
    assert len(both.accumulators) == 2


def test_activation_criteria_are_deterministic() -> None:
    g = gen(9)
    x, y = torch.relu(torch.randn(20, 4, 8, 8, generator=g)), torch.randint(0, 3, (20,), generator=g)
    a, b = run_accumulators(ALL_ACT, x, y), run_accumulators(ALL_ACT, x.clone(), y.clone())
    for name in ALL_ACT:
        assert torch.equal(a[name], b[name]), name


def test_half_precision_input() -> None:
    x = torch.relu(torch.randn(8, 2, 8, 8, generator=gen(4)))
    y = torch.arange(8) % 2
    a = run_accumulators(["hrank", "ezcrop", "tt"], x.half().float(), y)
    b = run_accumulators(["hrank", "ezcrop", "tt"], x.half(), y)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    g = gen(12)
    x, y = torch.relu(torch.randn(40, 5, 16, 16, generator=g)), torch.randint(0, 4, (40,), generator=g)
    cpu = run_accumulators(ALL_ACT, x, y)
    gpu = run_accumulators(ALL_ACT, x.cuda(), y.cuda())
    for name in ALL_ACT:
        assert gpu[name].device.type == "cuda"
        np.testing.assert_allclose(gpu[name].cpu().numpy(), cpu[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Errors of the activation API
# ---------------------------------------------------------------------------------------------------------------

def test_activation_errors() -> None:
    x = torch.randn(4, 3, 4, 4)
    with pytest.raises(ValueError, match="labels"):
        run_accumulators("tt", x)
    st = ActivationStats("hrank", channels=3)
    with pytest.raises(ValueError, match="channels"):
        st.update(torch.randn(4, 5, 4, 4))
    with pytest.raises(ValueError, match="out of range"):
        run_accumulators("snr", x, torch.tensor([0, 1, 2, 3]), num_classes=3)
    labels = torch.tensor([0, 1, 2, 0])
    st = ActivationStats("snr", num_classes=3)
    st.update(x, labels)
    labels[0] = 7  # in-place change of the same tensor is re-validated
    with pytest.raises(ValueError, match="out of range"):
        st.update(x, labels)
    with pytest.raises(ValueError, match="not an activation criterion"):
        ActivationStats(["l1"])
    with pytest.raises(ValueError, match="twice"):
        ActivationStats(["ezcrop", get_criterion("ezcrop", alpha=0.5)])
    with pytest.raises(ValueError):
        run_accumulators("hrank", torch.randn(4, 3, 4))
    with pytest.raises(ValueError, match="alpha"):
        get_criterion("ezcrop", alpha=1.5)
    with pytest.raises(ValueError, match="pool"):
        get_criterion("tt", pool="median")
    # a mapping allows several parameter sets of one criterion
    out = run_accumulators({"ez25": "ezcrop", "ez50": get_criterion("ezcrop", alpha=0.5)}, x)
    assert set(out) == {"ez25", "ez50"}


# ---------------------------------------------------------------------------------------------------------------
# Weight criteria
# ---------------------------------------------------------------------------------------------------------------

def test_weight_criteria_match_reference() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    w = conv.weight.detach().double().numpy()
    np.testing.assert_allclose(get_criterion("l1").score_weight(conv).numpy(), np.abs(w).sum((1, 2, 3)))
    np.testing.assert_allclose(get_criterion("l2").score_weight(conv).numpy(), np.sqrt((w ** 2).sum((1, 2, 3))))
    spectral = [sum(np.linalg.svd(w[o, i], compute_uv=False).max() for i in range(4)) for o in range(6)]
    eig = [sum(np.abs(np.linalg.eigvals(w[o, i])).max() for i in range(4)) for o in range(6)]
    mean_abs = [sum(np.abs(w[o, i]).mean() for i in range(4)) for o in range(6)]
    np.testing.assert_allclose(get_criterion("eigen").score_weight(conv).numpy(), spectral, rtol=1e-12)
    np.testing.assert_allclose(get_criterion("eigen", variant="eigen").score_weight(conv).numpy(), eig, rtol=1e-12)
    np.testing.assert_allclose(get_criterion("eigen", variant="mean_abs").score_weight(conv).numpy(), mean_abs,
                               rtol=1e-12)
    for crit in ("l1", "l2", "eigen", "random"):
        s = get_criterion(crit).score_weight(conv)
        assert s.dtype == torch.float64 and s.shape == (6,)


def test_eigen_variants_collapse_for_1x1_and_linear() -> None:
    torch.manual_seed(1)
    for mod in (nn.Conv2d(5, 7, 1), nn.Linear(5, 7)):
        l1 = get_criterion("l1").score_weight(mod)
        for v in ("spectral", "eigen", "mean_abs"):
            torch.testing.assert_close(get_criterion("eigen", variant=v).score_weight(mod), l1)


def test_weight_layouts() -> None:
    torch.manual_seed(2)
    tconv = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight [in=4, out/groups=3, 3, 3]
    w = tconv.weight.detach().double()
    ref = torch.stack([w[(o // 3) * 2:(o // 3) * 2 + 2, o % 3].abs().sum() for o in range(6)])
    torch.testing.assert_close(get_criterion("l1").score_weight(tconv), ref)
    grouped = nn.Conv2d(4, 8, 3, groups=4)
    assert get_criterion("eigen").score_weight(grouped).shape == (8,)
    conv1d = nn.Conv1d(3, 5, 3)
    spec = get_criterion("eigen").score_weight(conv1d)  # 1×k slices: σ_max = L2 norm of the kernel
    torch.testing.assert_close(spec, conv1d.weight.detach().double().norm(dim=2).sum(1))
    with pytest.raises(ValueError, match="square"):
        get_criterion("eigen", variant="eigen").score_weight(conv1d)
    bn = nn.BatchNorm2d(4)
    bn.weight.data = torch.tensor([0.5, -2.0, 1.0, 0.0])
    np.testing.assert_allclose(get_criterion("l1").score_weight(bn).numpy(), [0.5, 2.0, 1.0, 0.0])
    with pytest.raises(TypeError):
        get_criterion("l1").score_weight(nn.ReLU())


def test_random_is_seeded_and_deterministic() -> None:
    conv = nn.Conv2d(3, 16, 3)
    r = get_criterion("random", seed=3)
    a = r.score_weight(conv, name="layer1.0.conv1")
    torch.testing.assert_close(a, get_criterion("random", seed=3).score_weight(nn.Conv2d(8, 16, 1),
                                                                               name="layer1.0.conv1"))
    expected = torch.rand(16, generator=torch.Generator().manual_seed(r.layer_seed("layer1.0.conv1")),
                          dtype=torch.float64)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(r.score_weight(conv), torch.rand(16, generator=gen(3), dtype=torch.float64))
    assert not torch.equal(a, get_criterion("random", seed=4).score_weight(conv, name="layer1.0.conv1"))
    assert not torch.equal(a, r.score_weight(conv, name="layer1.1.conv1"))
    torch.manual_seed(0)
    b = r.score_weight(conv, name="layer1.0.conv1")
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(b, r.score_weight(conv, name="layer1.0.conv1"))


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

def test_registry_lookup_and_errors() -> None:
    names = available_criteria()
    for n in ["l1", "l2", "eigen", "random", "hrank", "ezcrop", "tt", "snr", "fdr", "sd", "di"]:
        assert n in names
    crit = get_criterion("EZCrop", alpha=0.3)
    assert crit.kind == "activation" and crit.params()["alpha"] == 0.3
    assert get_criterion("l1").kind == "weight"
    assert get_criterion(crit) is crit
    with pytest.raises(ValueError) as e:
        get_criterion("hrnak")
    assert "Did you mean 'hrank'" in str(e.value) and "ezcrop" in str(e.value)
    with pytest.raises(ValueError, match="Available"):
        get_criterion("zzzzzz")
    with pytest.raises(ValueError, match="bad parameters"):
        get_criterion("hrank", alpha=0.2)


def test_register_custom_criterion() -> None:
    class BiasCriterion(WeightCriterion):
        name = "bias_abs"

        def score_weight(self, module, name=None):
            return module.bias.detach().double().abs()

    register_criterion("bias_abs", BiasCriterion)
    try:
        assert "bias_abs" in available_criteria()
        conv = nn.Conv2d(2, 3, 1)
        torch.testing.assert_close(get_criterion("bias_abs").score_weight(conv), conv.bias.detach().double().abs())
        with pytest.raises(ValueError, match="already registered"):
            register_criterion("bias_abs", BiasCriterion)
        with pytest.raises(ValueError, match="already registered"):
            register_criterion("L1", BiasCriterion)
        register_criterion("bias_abs", lambda: BiasCriterion(), overwrite=True)
        assert isinstance(get_criterion("bias_abs"), Criterion)
        register_criterion("broken", lambda: object(), overwrite=True)
        with pytest.raises(TypeError):
            get_criterion("broken")
    finally:
        unregister_criterion("bias_abs")
        unregister_criterion("broken")
    assert "bias_abs" not in available_criteria()
    with pytest.raises(TypeError):
        register_criterion("x", 42)


# ---------------------------------------------------------------------------------------------------------------
# Forward hooks
# ---------------------------------------------------------------------------------------------------------------

class _Tiny(nn.Module):
    def __init__(self, reuse: bool = False) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = self.relu1 if reuse else nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_recorder_equals_manual_accumulation() -> None:
    torch.manual_seed(0)
    model = _Tiny().eval()
    g = gen(8)
    batches = [(torch.randn(10, 3, 8, 8, generator=g), torch.randint(0, 3, (10,), generator=g)) for _ in range(3)]
    relus = {"relu1": model.relu1, "relu2": model.relu2}
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        a1 = torch.relu(model.conv1(x))
        a2 = torch.relu(model.conv2(a1))
    got = collect_activation_scores(model, relus, ["hrank", "ezcrop", "tt", "di"], batches)
    for name, fmap in (("relu1", a1), ("relu2", a2)):
        ref = run_accumulators(["hrank", "ezcrop", "tt", "di"], fmap, y)
        for k in ref:
            torch.testing.assert_close(got[name][k], ref[k], rtol=1e-6, atol=1e-9)
    model.train()
    via_input = collect_activation_scores(model, {"conv2": model.conv2}, ["hrank", "tt"], batches, point="input")
    assert model.training  # mode restored
    torch.testing.assert_close(via_input["conv2"]["tt"], got["relu1"]["tt"])
    torch.testing.assert_close(via_input["conv2"]["hrank"], got["relu1"]["hrank"])


def test_recorder_detects_reused_module() -> None:
    model = _Tiny(reuse=True).eval()
    with ActivationRecorder({"relu": model.relu1}, "hrank") as rec, torch.no_grad():
        rec.set_labels(None)
        with pytest.raises(RuntimeError, match="twice"):
            model(torch.randn(2, 3, 8, 8))
