"""The engine on vision transformers and attention hybrids from timm and torchvision (pretrained=False, the smallest
input and depth each accepts): every model prunes >= 15% of its MACs at ratio 0.3 without ``approximate=True``
(plain ViTs >= 25%: the q/k/v head width as well as the MLP width), each pruned model equals the original with the
removed channels zeroed, at batch 1 and 2, and the cost model equals fvcore's count (attention's matmuls and the
fused ``scaled_dot_product_attention`` included) wherever the model holds no op outside it."""
import copy
import warnings

import pytest
import torch

import autoprune as ap
from engine_checks import check_model, randomise_norms

timm = pytest.importorskip("timm")

_SMALL = dict(img_size=32, patch_size=4, depth=2)
# (name, create_model kwargs, input size, least MAC fraction removed at ratio 0.3, attention widths prunable?)
TIMM = [
    ("vit_tiny_patch16_224", _SMALL, 32, 0.25, True),                # ViT, fused attention (sdpa)
    ("deit_tiny_patch16_224", _SMALL, 32, 0.25, True),               # DeiT
    ("deit3_small_patch16_224", _SMALL, 32, 0.25, True),             # DeiT-3 (layer scale)
    ("cait_xxs24_224", _SMALL, 32, 0.25, True),                      # CaiT: talking heads, class attention
    ("pit_ti_224", dict(img_size=32), 32, 0.25, True),               # PiT: pooling ViT
    ("xcit_nano_12_p16_224", dict(img_size=32, depth=2), 32, 0.15, True),  # XCiT: cross-covariance attention
    ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(1, 1, 1, 1)), 56, 0.15, True),  # windows, rel-pos
    ("maxvit_pico_rw_256", dict(img_size=64), 64, 0.15, True),       # MaxViT: MBConv + block and grid attention
    ("fastvit_sa12", {}, 64, 0.15, True),                            # FastViT: RepMixer + attention stage
    ("caformer_s18", {}, 64, 0.15, True),                            # CAFormer: conv + attention MetaFormer
    # attention locked (the reason names the op), MLP widths prunable
    ("eva02_tiny_patch14_224", _SMALL, 32, 0.15, False),             # EVA-02: F.linear qkv and RoPE; SwiGLU MLP
    ("convit_tiny", _SMALL, 32, 0.15, False),                        # ConViT: gated positional attention
    ("mobilevitv2_050", {}, 64, 0.15, False),                        # MobileViT-v2: separable attention
]


def _check(model: torch.nn.Module, size: int, min_drop: float):
    randomise_norms(model)
    for batch in (1, 2):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph, drop = check_model(model, x, min_drop=min_drop, count_original=False)
    return graph, drop


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size,min_drop,attention", TIMM, ids=[n for n, *_ in TIMM])
def test_timm_transformer(name, kwargs, size, min_drop, attention):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    graph, drop = _check(model, size, min_drop)
    # an attention whose head width is prunable: a group that q and k are contracted over
    contracted = graph.contracted_slices({g.name: [0] for g in graph.prunable_groups})
    assert bool(contracted) == attention, contracted
    locked = {g.reason for g in graph.groups if not g.prunable} - {"model output"}
    print(f"{name}: {len(graph.prunable_groups)}/{len(graph.groups)} groups, {drop:.1%} of MACs removed; locks: "
          + "; ".join(sorted(locked)[:3]))


def test_timm_attention_prunes_whole_heads_and_the_head_width():
    """timm's Attention (ViT, DeiT...): two groups per block, its heads and its head width (a head-width unit is one
    position in q, k and v of every kept head); any mix of the two is exact, with the fused or the manual attention,
    and with qk_norm (a norm over the head width) the heads stay prunable while the width locks."""
    for fused, qk_norm in ((True, False), (False, False), (True, True)):
        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, qk_norm=qk_norm,
                                  **_SMALL).eval()
        for block in model.blocks:
            block.attn.fused_attn = fused
        randomise_norms(model)
        x = torch.randn(2, 3, 32, 32)
        graph = ap.ChannelGraph(model, x)
        assert graph.group("blocks.0.attn:heads").channels == 6 and graph.group("blocks.0.attn:heads").prunable
        width = graph.group("blocks.0.attn:head_width")
        assert width.channels == 64 and width.prunable == (not qk_norm)
        remove = {"blocks.0.attn:heads": [1, 4], "blocks.1.attn:heads": [0]}
        if not qk_norm:
            remove["blocks.0.attn:head_width"] = list(range(0, 64, 3))
        dead = copy.deepcopy(graph.gm)
        mods = dict(dead.named_modules())
        with torch.no_grad():
            for module, dim, idx in graph.contracted_slices(remove):
                mods[module].weight.data.index_fill_(dim, torch.tensor(idx), 0.0)
                mods[module].bias.data.index_fill_(0, torch.tensor(idx), 0.0)
            pruned = graph.prune_channels(remove)
            assert torch.allclose(pruned(x), dead(x), atol=1e-5)
            assert not torch.allclose(pruned(x), graph.gm(x), atol=1e-3)
            assert pruned(torch.randn(5, 3, 32, 32)).shape == (5, 10)
        attn = [pruned.get_submodule(f"blocks.{i}.attn") for i in (0, 1)]
        assert [a.num_heads for a in attn] == [4, 5]
        assert [a.head_dim for a in attn] == ([64, 64] if qk_norm else [42, 64])
        assert attn[0].qkv.out_features == 3 * attn[0].num_heads * attn[0].head_dim == 3 * attn[0].proj.in_features
        assert graph.macs_exact and graph.macs(remove) == ap.count_macs(pruned, x)
        assert (ap.count_params(model) - ap.count_params(pruned)
                == graph.macs(None, params=True) - graph.macs(remove, params=True))


def test_attention_written_out_prunes_its_head_width_and_keeps_the_scale():
    """Attention of one's own, traced op by op (qkv Linear, reshape into heads written with constants, unbind,
    F.scaled_dot_product_attention): the head width prunes, surgery rewrites the reshape and writes the original
    scale into the fused call."""
    class SelfAttention(torch.nn.Module):
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return x + self.proj(y.transpose(1, 2).reshape(B, N, C))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = torch.nn.Conv2d(3, 32, 4, 4), SelfAttention(), torch.nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.attn(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 12)
    graph = ap.ChannelGraph(model, x)
    assert graph.group("attn.qkv").channels == 8 and graph.group("attn.qkv").prunable
    check_model(model, x)
    pruned = graph.prune_channels({"attn.qkv": [0, 3, 5]})
    assert pruned.get_submodule("attn.qkv").out_features == 3 * 4 * 5
    assert ", 3, 4, 5)" in pruned.code and f"scale = {8 ** -0.5}" in pruned.code
    assert graph.macs({"attn.qkv": [0, 3, 5]}) == ap.count_macs(pruned, x)


def test_torchvision_vit_prunes_its_mlp_widths_around_multihead_attention():
    """nn.MultiheadAttention has no rule yet: it stays locked (and counted on the pruned model), the MLP widths
    around it prune exactly, and fvcore now counts its inference fast path and the fused attention it calls."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                              mlp_dim=256, num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts the head at zero
    graph, drop = _check(model, 32, 0.15)
    assert {g.name for g in graph.prunable_groups} == {f"encoder.layers.encoder_layer_{i}.mlp.0" for i in (0, 1)}
    assert not graph.macs_exact
    # the attention's MACs are counted: 4 projections of 64 x 64 and two 17 x 17 x 64 matmuls per layer
    x = torch.randn(1, 3, 32, 32)
    mlp = 2 * 2 * 17 * 64 * 256
    attn = 2 * (4 * 17 * 64 * 64 + 2 * 17 * 17 * 64)
    patch = 16 * 3 * 8 * 8 * 64
    assert ap.count_macs(model, x) == patch + mlp + attn + 64 * 10


def test_criteria_on_token_widths_and_heads():
    """Weight criteria and the pooled class-discrimination criteria score token widths ([B, N, C]: each channel's
    tokens are its map) and whole heads (read from the packed qkv Linear inside the attention); HRank and EZCrop,
    which need a 2-D map per channel, refuse and name the group."""
    from autoprune.criteria.scoring import score_groups

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, **_SMALL).eval()
    x, y = torch.randn(20, 3, 32, 32), torch.arange(20) % 10
    graph = ap.ChannelGraph(model, x[:2])
    names = {f"blocks.{i}.{g}" for i in (0, 1) for g in ("attn:heads", "attn:head_width", "mlp.fc1")}
    for c in ("l1", "tt", "snr", "di"):
        scores = score_groups(graph, c, data=[(x, y)])
        assert set(scores) == names
        assert scores["blocks.0.attn:heads"].shape == (6,)
        assert all(s.std() > 0 and bool(torch.isfinite(s).all()) for s in scores.values()), c
    for c in ("hrank", "ezcrop"):
        with pytest.raises(ValueError, match=f"criterion '{c}' needs a 2-D feature map.*'blocks.0.attn:heads'"):
            score_groups(graph, c, data=[(x, y)])


def test_pruned_vit_with_uneven_blocks_saves_loads_and_exports(tmp_path):
    """Blocks that keep different heads and head widths: the pruned ViT saves, loads onto a fresh instance and exports to
    ONNX, checked against ONNX Runtime at two batch sizes."""
    pytest.importorskip("onnxruntime")

    def make():
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **_SMALL).eval()

    torch.manual_seed(0)
    model = make()
    x = torch.randn(2, 3, 32, 32)
    graph = ap.ChannelGraph(model, x)
    pruned = graph.prune_channels({"blocks.0.attn:head_width": list(range(40)), "blocks.1.attn:heads": [1],
                                   "blocks.0.mlp.fc1": list(range(300))}).eval()
    widths = [pruned.get_submodule(f"blocks.{i}.attn.proj").in_features for i in (0, 1)]
    assert widths == [3 * 24, 2 * 64]
    ap.save(pruned, tmp_path / "vit.pt")
    loaded = ap.load(tmp_path / "vit.pt", model=make()).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-5)
    result = ap.export_model(loaded, x, tmp_path / "vit.onnx")
    assert (tmp_path / "vit.onnx").exists() and result.max_abs_diff < 1e-4


def test_timm_models_by_name_rebuild_on_load(tmp_path):
    """``get_model("timm:NAME", **kwargs)`` (and ``model.name: timm:NAME`` in a config) records how to rebuild the
    model, so a pruned one loads without ``model=``; a misspelt name gets close matches."""
    model = ap.get_model("timm:vit_tiny_patch16_224", num_classes=10, **_SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned = ap.ChannelGraph(model, x).prune(0.3).eval()
    ap.save(pruned, tmp_path / "vit.pt")
    loaded = ap.load(tmp_path / "vit.pt").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-5)
    with pytest.raises(ValueError, match="unknown timm model 'vit_tiny_patch16'.*vit_tiny_patch16_224"):
        ap.get_model("timm:vit_tiny_patch16")
