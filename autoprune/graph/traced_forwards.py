"""Traceable forwards for modules their library marks not traceable by fx.

timm keeps some blocks out of fx (``register_notrace_module``) because their ``forward`` branches on the input's
size; kept whole, a block without a channel rule locks every channel through it. Where the block is plain tensor
code once its size is fixed, a *traced forward* here stands in for its ``forward`` while tracing: the same
operations, on the sizes the analysis sees. :func:`autoprune.graph.trace.trace` uses one for a module only where,
run on what the module receives from the example input (every call of it), it gives the module's own output, to float
tolerance; otherwise the module stays whole (and locks, with the reason) -- so a library version whose ``forward``
changed is never silently misread.

Built in: timm's ``MobileVitBlock`` and ``MobileVitV2Block`` (MobileViT v1 and v2). We write these forwards
deliberately instead of asking the library: timm has no traceable variant of these blocks.
``register_traced_forward`` adds your own for a block of your code or another library's.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["register_traced_forward", "lookup_traced_forward"]

_FORWARDS: dict[Any, Callable[..., Any]] = {}


def register_traced_forward(target: type | str, fn: Callable[..., Any]) -> None:
    """Trace ``target`` (an ``nn.Module`` subclass or its qualified class name ``"package.module.Name"``) through
    ``fn(module, *args, **kwargs)`` instead of its ``forward``; ``fn`` must compute the same result with operations
    fx can record (no Python branch on tensor sizes). A module class with a channel rule stays whole regardless."""
    if not (isinstance(target, str) and "." in target) and not (isinstance(target, type)
                                                               and issubclass(target, nn.Module)):
        raise TypeError("register_traced_forward needs an nn.Module subclass or a qualified class name, "
                        f"got {target!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _FORWARDS[target] = fn


def lookup_traced_forward(m: nn.Module) -> Callable[..., Any] | None:
    """The traced forward registered for ``type(m)`` (exactly: a subclass may have changed ``forward``), or None."""
    cls = type(m)
    return _FORWARDS.get(cls) or _FORWARDS.get(f"{cls.__module__}.{cls.__qualname__}")


def _mobilevit_block(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``MobileVitBlock.forward`` (MobileViT v1) for maps whose sides are multiples of the patch (timm then
    skips its interpolation): local convs, unfold into ``[B * P, N, C]`` patches, the transformer, fold back, the
    projection and the fusion with the shortcut. Channels ride through the unfold/fold reshapes as a slab."""
    shortcut = x
    x = m.conv_1x1(m.conv_kxk(x))
    ph, pw = m.patch_size
    B, C, H, W = x.shape
    nh, nw = H // ph, W // pw
    x = x.reshape(B * C * nh, ph, nw, pw).transpose(1, 2)
    x = x.reshape(B, C, nh * nw, m.patch_area).transpose(1, 3).reshape(B * m.patch_area, nh * nw, -1)
    x = m.norm(m.transformer(x))
    x = x.contiguous().view(B, m.patch_area, nh * nw, -1)
    x = x.transpose(1, 3).reshape(B * C * nh, nw, ph, pw)
    x = x.transpose(1, 2).reshape(B, C, nh * ph, nw * pw)
    x = m.conv_proj(x)
    if m.conv_fusion is not None:
        x = m.conv_fusion(torch.cat((shortcut, x), dim=1))
    return x


def _mobilevit_v2_block(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``MobileVitV2Block.forward`` (MobileViT-v2, separable attention) for maps whose sides are multiples of
    the patch: local convs, unfold into ``[B, C, P, N]``, the transformer, fold back, the projection."""
    if m.coreml_exportable:
        raise NotImplementedError("the F.unfold / pixel_shuffle path has no traced forward")
    ph, pw = m.patch_size
    B, _, H, W = x.shape
    nh, nw = H // ph, W // pw
    x = m.conv_1x1(m.conv_kxk(x))
    C = x.shape[1]
    x = x.reshape(B, C, nh, ph, nw, pw).permute(0, 1, 3, 5, 2, 4).reshape(B, C, -1, nh * nw)
    x = m.norm(m.transformer(x))
    x = x.reshape(B, C, ph, pw, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(B, C, nh * ph, nw * pw)
    return m.conv_proj(x)


register_traced_forward("timm.models.mobilevit.MobileVitBlock", _mobilevit_block)
register_traced_forward("timm.models.mobilevit.MobileVitV2Block", _mobilevit_v2_block)
