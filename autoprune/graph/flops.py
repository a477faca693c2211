"""MAC counting with fvcore.

The pruning literature's "FLOPs" are multiply-accumulates (MACs) of convolution and fully-connected layers only:
ResNet-56 (option A) = 125,485,056 conv + 640 linear = 125,485,696. fvcore counts one fused multiply-add as one
flop, so its per-operator counts *are* MACs; :func:`count_macs` keeps the operators below and drops the rest
(BatchNorm, pooling, upsampling...), reproducing that convention. ``full=True`` returns fvcore's whole total.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore.nn scripts its focal loss at import; torch 2.14 deprecates jit.script
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis

__all__ = ["count_macs", "count_params", "MAC_OPERATORS"]

#: fvcore operator names counted in the paper convention: convolutions and fully-connected layers
#: (``linear`` or its ``addmm``/``matmul`` lowerings; ``bmm``/``einsum`` appear only in attention-like code).
MAC_OPERATORS = frozenset({"conv", "linear", "addmm", "matmul", "bmm", "einsum"})


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
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            if full:
                return int(fca.total())
            return int(sum(v for k, v in fca.by_operator().items() if k in MAC_OPERATORS))
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
