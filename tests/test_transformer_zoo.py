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
    ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(2, 1, 1, 1)), 56, 0.15, True),  # shifted windows
    ("maxvit_pico_rw_256", dict(img_size=64), 64, 0.15, True),       # MaxViT: MBConv + block and grid attention
    ("coatnet_nano_rw_224", dict(img_size=64), 64, 0.15, True),      # CoAtNet: Attention2d (1x1 conv qkv)
    ("levit_128s", dict(img_size=64), 64, 0.25, True),               # LeViT: LinearNorm q/k/v, attention biases
    ("mobilevit_xxs", {}, 64, 0.25, True),                           # MobileViT: unfold/fold (a traced forward)
    ("fastvit_sa12", {}, 64, 0.15, True),                            # FastViT: RepMixer + attention stage
    ("hiera_tiny_224", dict(stages=(1, 1, 1, 1)), 224, 0.15, True),  # Hiera: mask units (forward(mask=None))
    ("caformer_s18", {}, 64, 0.15, True),                            # CAFormer: conv + attention MetaFormer
    # attention locked (the reason names the op), MLP widths prunable
    ("eva02_tiny_patch14_224", _SMALL, 32, 0.15, False),             # EVA-02: F.linear qkv and RoPE; SwiGLU MLP
    ("convit_tiny", _SMALL, 32, 0.15, False),                        # ConViT: gated positional attention
    ("mobilevitv2_050", {}, 64, 0.25, False),                        # MobileViT-v2: separable attention (traced)
]


def _check(model: torch.nn.Module, size: int, min_drop: float):
    randomise_norms(model)
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, torch.nn.Linear) and classifier.weight.abs().max() < 1e-2:  # Hiera starts it near 0
        torch.nn.init.normal_(classifier.weight, std=0.1)
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


def test_torchvision_vit_prunes_heads_head_widths_and_mlp_widths():
    """torchvision's ViT (nn.MultiheadAttention in EncoderBlock, need_weights=False): heads, head width and MLP width
    prune exactly, and fvcore counts the attention's inference fast path the same as the cost model."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                              mlp_dim=256, num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts the head at zero
    graph, drop = _check(model, 32, 0.25)
    layer = "encoder.layers.encoder_layer_{}."
    assert {g.name for g in graph.prunable_groups} == {layer.format(i) + g for i in (0, 1)
                                                       for g in ("mlp.0", "self_attention:heads",
                                                                 "self_attention:head_width")}
    assert graph.macs_exact
    # 4 projections of 64 x 64 and two 17 x 17 x 64 matmuls per layer, counted by fvcore through our handle
    x = torch.randn(1, 3, 32, 32)
    mlp = 2 * 2 * 17 * 64 * 256
    attn = 2 * (4 * 17 * 64 * 64 + 2 * 17 * 17 * 64)
    patch = 16 * 3 * 8 * 8 * 64
    assert ap.count_macs(model, x) == graph.macs() == patch + mlp + attn + 64 * 10


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
    """Blocks that keep different heads and head widths: the pruned ViT saves, loads onto a fresh instance and
    exports to ONNX, checked against ONNX Runtime at two batch sizes."""
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


class _CrossAndSelf(torch.nn.Module):
    """Tokens of a patch conv attend to a context of another width (kdim/vdim, a 2-D mask, the weights asked for and
    dropped), then to themselves; the token width is a residual stream without LayerNorm, so it prunes too."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.embed, self.ctx = torch.nn.Conv2d(3, 32, 4, 4), torch.nn.Conv2d(3, 24, 4, 4)
        self.cross = torch.nn.MultiheadAttention(32, 4, kdim=24, vdim=24, batch_first=batch_first)
        self.self_attn = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.head = torch.nn.Linear(32, 10)
        # [L, S] (True: not allowed), 4 tokens and 4 context tokens; each token sees at least one
        self.register_buffer("mask", (torch.rand(4, 4) > 0.5).fill_diagonal_(False))

    def forward(self, x):
        t, c = (m(x).flatten(2).transpose(1, 2) for m in (self.embed, self.ctx))
        if not self.batch_first:
            t, c = t.transpose(0, 1), c.transpose(0, 1)
        y, _ = self.cross(t, c, c, need_weights=True, attn_mask=self.mask)
        t = t + y
        z, _ = self.self_attn(t, t, t, need_weights=False)
        t = t + z
        return self.head(t.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_widths_and_inputs(batch_first, tmp_path):
    """nn.MultiheadAttention: heads, head width, its input widths (query, and key/value of another width) prune
    exactly, batch_first either way, with a mask and need_weights; pruned it becomes a PrunedMultiheadAttention
    (uneven heads per layer), which saves, loads and exports to ONNX."""
    from autoprune.graph.pruned_mha import PrunedMultiheadAttention

    torch.manual_seed(0)
    model = _CrossAndSelf(batch_first).eval()
    x = torch.randn(2, 3, 8, 8)
    graph, _ = check_model(model, x)
    names = {g.name for g in graph.prunable_groups}
    assert {"cross:heads", "cross:head_width", "self_attn:heads", "self_attn:head_width", "embed", "ctx"} <= names
    remove = {"cross:heads": [0, 2], "self_attn:heads": [3], "self_attn:head_width": [1, 4], "ctx": [0, 5, 6]}
    pruned = graph.prune_channels(remove).eval()
    cross, self_attn = pruned.get_submodule("cross"), pruned.get_submodule("self_attn")
    assert isinstance(cross, PrunedMultiheadAttention) and (cross.num_heads, cross.head_dim, cross.kdim) == (2, 8, 21)
    assert (self_attn.num_heads, self_attn.head_dim) == (3, 6)
    assert graph.macs(remove) == ap.count_macs(pruned, x)
    with torch.no_grad():
        q, kv = torch.randn(3, 4, 32), torch.randn(3, 5, 21)
        if not batch_first:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        out, weights = cross(q, kv, kv)
    assert weights.shape == (3, 4, 5) and out.shape == q.shape
    ap.save(pruned, tmp_path / "m.pt")
    loaded = ap.load(tmp_path / "m.pt", model=_CrossAndSelf(batch_first)).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-5)
    result = ap.export_model(loaded, x, tmp_path / "m.onnx")
    assert result.max_abs_diff < 1e-4


def test_multihead_attention_locks_heads_whose_average_weights_are_used():
    class UsesWeights(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn = torch.nn.Conv2d(3, 16, 4, 4), torch.nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = torch.nn.Linear(16 + 4, 10)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            y, w = self.attn(t, t, t)
            return self.head(torch.cat([(t + y).mean(1), w.mean(1)], 1))

    graph = ap.ChannelGraph(UsesWeights().eval(), torch.randn(2, 3, 8, 8))
    heads = graph.group("attn:heads")
    assert not heads.prunable and "attention weights (an average over the heads) are used" in heads.reason
    assert graph.group("attn:head_width").prunable


def test_multihead_attention_heads_are_scored_by_weight_criteria():
    """Weight criteria score nn.MultiheadAttention's heads and head width from its q, k, v rows (a head: the mean of
    its rows); activation criteria cannot read those rows and refuse, naming the group."""
    from autoprune.criteria.scoring import score_groups

    torch.manual_seed(0)
    model = _CrossAndSelf(batch_first=True).eval()
    graph = ap.ChannelGraph(model, torch.randn(2, 3, 8, 8))
    scores = score_groups(graph, "l1", groups=["cross:heads", "self_attn:head_width"])
    assert scores["cross:heads"].shape == (4,) and scores["self_attn:head_width"].shape == (8,)
    rows = model.cross.q_proj_weight.detach().abs().sum(1).view(4, 8)  # q rows of each head, then k's and v's
    k = torch.nn.functional.pad(model.cross.k_proj_weight.detach(), (0, 8)).abs().sum(1).view(4, 8)
    v = torch.nn.functional.pad(model.cross.v_proj_weight.detach(), (0, 8)).abs().sum(1).view(4, 8)
    expected = torch.cat([rows, k, v], 1).mean(1).double()
    torch.testing.assert_close(scores["cross:heads"], expected)
    with pytest.raises(ValueError, match="criterion 'tt': group 'cross:heads' has no activation it can read"):
        score_groups(graph, "tt", data=[(torch.randn(8, 3, 8, 8), torch.arange(8) % 2)], groups=["cross:heads"])


def _maxxvit_attention(kind: str, head_first: bool, rel_pos: str | None):
    """A token model around one of timm maxxvit's attention modules (4 heads of width 8, 4x4 tokens)."""
    from functools import partial

    import timm.layers.pos_embed_rel as rp
    from timm.models import maxxvit

    rel_cls = None if rel_pos is None else partial(getattr(rp, rel_pos), window_size=(4, 4))
    attn_cls = maxxvit.AttentionCl if kind == "cl" else maxxvit.Attention2d

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Conv2d(3, 32, 2, 2)
            self.attn = attn_cls(32, dim_head=8, head_first=head_first, rel_pos_cls=rel_cls)
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x):
            y = self.embed(x)
            if kind == "cl":
                y = y.permute(0, 2, 3, 1)
                return self.head(self.attn(y).mean((1, 2)))
            return self.head(self.attn(y).mean((2, 3)))

    return Net().eval()


@pytest.mark.parametrize("kind,head_first,rel_pos,fused", [
    ("cl", True, "RelPosBias", True), ("cl", False, "RelPosBiasTf", False), ("cl", True, "RelPosMlp", False),
    ("cl", False, None, True), ("2d", True, "RelPosBias", False), ("2d", False, None, True)])
def test_maxvit_coatnet_attention_prunes_whole_heads(kind, head_first, rel_pos, fused):
    """timm maxxvit's AttentionCl (MaxViT's block/grid attention, channels last) and Attention2d (CoAtNet, 1x1
    convs): heads and head width prune in any mix with either qkv packing, the relative-position module's per-head
    table (or its MLP's output rows), ``num_heads`` and ``bias_shape`` follow the heads; exact, fused or not."""
    torch.manual_seed(0)
    model = _maxxvit_attention(kind, head_first, rel_pos)
    model.attn.fused_attn = fused
    if model.attn.rel_pos is not None:  # timm zero-initialises some tables: make the bias matter
        for prm in model.attn.rel_pos.parameters():
            prm.data.normal_(0, 0.5)
    x = torch.randn(2, 3, 8, 8)
    graph, _ = check_model(model, x, ratio=0.5)
    assert graph.group("attn:heads").channels == 4 and graph.group("attn:head_width").channels == 8
    pruned = graph.prune_channels({"attn:heads": [0, 3], "attn:head_width": [1, 2, 5]})
    a = pruned.attn
    assert (a.num_heads, a.dim_head) == (2, 5)
    if rel_pos is not None:  # the bias holds 2 heads where it held 4
        before, after = model.attn.rel_pos.get_bias().shape, a.rel_pos.get_bias().shape
        assert [b for b, c in zip(before, after) if b != c] == [4] and 2 in after
    assert pruned(torch.randn(3, 3, 8, 8)).shape == (3, 10)
    remove = {"attn:heads": [0, 3], "attn:head_width": [1, 2, 5]}
    assert (ap.count_params(model) - ap.count_params(pruned)
            == graph.macs(None, params=True) - graph.macs(remove, params=True))



def test_levit_attention_prunes_heads_and_key_and_value_widths():
    """LeViT's Attention and AttentionDownsample: heads (with their attention biases) and the head width, whose
    units are key positions (q and k) and value positions (v and the projection's columns), through LinearNorm
    (Linear then BatchNorm1d) layers; every attribute its forward reads follows, and the cost model and parameter
    count equal the pruned model's."""
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, num_classes=10, img_size=64).eval()
    randomise_norms(model)
    for mod in model.modules():
        if hasattr(mod, "attention_biases"):  # timm zero-initialises them: make them matter
            mod.attention_biases.data.normal_(0, 1.0)
    x = torch.randn(2, 3, 64, 64)
    graph = ap.ChannelGraph(model, x)
    blk, down = "stages.0.blocks.0.attn", "stages.1.downsample.attn_downsample"
    assert graph.group(f"{blk}:heads").channels == 4 and graph.group(f"{blk}:head_width").channels == 16 + 32
    remove = {f"{blk}:heads": [1, 2], f"{blk}:head_width": [0, 5, 16, 40], f"{down}:heads": [0],
              f"{down}:head_width": [3, 20]}
    pruned = graph.prune_channels(remove)
    a, d = pruned.get_submodule(blk), pruned.get_submodule(down)
    assert (a.num_heads, a.key_dim, a.val_dim, a.attention_biases.shape[0]) == (2, 14, 30, 2)
    assert (d.num_heads, d.key_dim, d.val_dim) == (d.attention_biases.shape[0], 15, 63)
    assert a.qkv.bn.num_features == a.qkv.linear.out_features == 2 * (2 * 14 + 30)
    with torch.no_grad():
        assert not torch.allclose(pruned(x), graph.gm(x), atol=1e-3)
        assert pruned(torch.randn(3, 3, 64, 64)).shape == (3, 10)
    assert graph.macs_exact and graph.macs(remove) == ap.count_macs(pruned, x)
    assert (ap.count_params(model) - ap.count_params(pruned)
            == graph.macs(None, params=True) - graph.macs(remove, params=True))


def test_mobilevit_block_is_traced_only_where_its_forward_is_reproduced():
    """MobileViT's block is one timm keeps out of fx; autoprune traces it through its own forward where the maps are
    multiples of the patch (then its inner widths, heads and MLPs prune). On a map that is not (timm then
    interpolates), the traced forward does not reproduce the block, so the block stays whole and locks, with the
    reason, and the rest of the model still prunes exactly."""
    from autoprune.graph.trace import trace

    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10).eval()
    traced = trace(model, 1, (torch.randn(1, 3, 64, 64),))
    assert not any(n.op == "call_module" and n.target == "stages.2.1" for n in traced.graph.nodes)
    assert any(n.op == "call_module" and n.target == "stages.2.1.transformer.0.attn" for n in traced.graph.nodes)
    graph, _ = _check(model, 80, min_drop=0.0)  # 80 px: maps of 10 (stage 2), 5 and 3 (stages 3 and 4)
    locked = [g.reason for g in graph.groups if not g.prunable]
    assert any("'stages.3.1' of type MobileVitBlock has no channel rule" in r for r in locked), locked
    assert "stages.2.1.transformer.0.attn:heads" in {g.name for g in graph.prunable_groups}
