"""MAC counting with fvcore.

The pruning literature's "FLOPs" are multiply-accumulates (MACs) of convolution and fully-connected layers only:
ResNet-56 (option A) = 125,485,056 conv + 640 linear = 125,485,696. fvcore counts one fused multiply-add as one
flop, so its per-operator counts *are* MACs; :func:`count_macs` keeps the operators below and drops the rest
(BatchNorm, pooling, upsampling...), reproducing that convention. ``full=True`` returns fvcore's whole total.

Attention: fvcore counts ``matmul``/``bmm`` (``q @ k.transpose(-2, -1)``, ``attn @ v``) but has no handle for the fused
``scaled_dot_product_attention``, for ``nn.MultiheadAttention``'s inference fast path
(``_native_multi_head_attention``) nor for the ``baddbmm`` of its masked scores, which it would count as 0: we add them
through its op-handle table (``set_op_handle``), counting the same matmuls (and, for the fast path, its four
projections).
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore.nn scripts its focal loss at import; torch 2.14 deprecates jit.script
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ["count_macs", "count_params", "MAC_OPERATORS"]

#: fvcore operator names counted in the paper convention: convolutions and fully-connected layers
#: (``linear`` or its ``addmm``/``matmul`` lowerings; ``bmm``/``einsum`` appear only in attention-like code).
MAC_OPERATORS = frozenset({"conv", "linear", "addmm", "matmul", "bmm", "einsum", "baddbmm",
                           "scaled_dot_product_attention", "_native_multi_head_attention"})


def _sdpa_macs(inputs: list, outputs: list) -> int:
    """``softmax(q @ k^T) @ v``: rows x S x (E + Ev) for q ``[..., L, E]``, k ``[..., S, E]``, v ``[..., S, Ev]``."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    rows = math.prod(q[:-1])
    return rows * k[-2] * (q[-1] + v[-1])


def _native_mha_macs(inputs: list, outputs: list) -> int:
    """``nn.MultiheadAttention``'s fast path on query ``[B, L, E]``, key/value ``[B, S, E]``: the q, k, v and output
    projections plus the two attention matmuls."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    b, L, E = q[0], q[-2], q[-1]
    S = k[-2]
    return b * ((2 * L + 2 * S) * E * E + 2 * L * S * E)


def _baddbmm_macs(inputs: list, outputs: list) -> int:
    """``baddbmm(input, b1, b2)``: ``b1 @ b2`` added to ``input`` (nn.MultiheadAttention's masked scores)."""
    b1, b2 = get_shape(inputs[1]), get_shape(inputs[2])
    return math.prod(b1) * b2[-1]


_HANDLES = {"aten::baddbmm": _baddbmm_macs,
            "aten::scaled_dot_product_attention": _sdpa_macs,
            "aten::_native_multi_head_attention": _native_mha_macs}


def _first_sample(inputs: Any) -> tuple:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    return tuple(x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in inputs)


def count_macs(model: nn.Module, example_inputs: Any, *, full: bool = False) -> int:
    """Multiply-accumulates for ONE sample (the first of ``example_inputs``).

    By default only conv and linear layers (the papers' convention); ``full=True`` adds everything fvcore counts
    (BatchNorm, adaptive pooling, ...). The model is traced in eval mode and restored to its previous mode.
    """
    inputs = _first_sample(example_inputs)
    was_training = model.training
    model.eval()
    # fvcore warns for every unsupported op (adds, relu...); they count 0 by design here.
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            fca = FlopCountAnalysis(model, inputs)
            fca.set_op_handle(**_HANDLES)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            if full:
                return int(fca.total())
            return int(sum(v for k, v in fca.by_operator().items() if k in MAC_OPERATORS))
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
