"""Example inputs of a deployable model: one tuple of tensors, batch first, and inputs of another batch size."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["as_input_tuple", "inputs_at_batch"]


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and \
            all(isinstance(x, torch.Tensor) for x in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a tuple of tensors with the batch as the first dimension, "
                    f"e.g. torch.zeros(1, 3, 32, 32); got {type(example_inputs).__name__}")


def inputs_at_batch(inputs: tuple[torch.Tensor, ...], batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like ``inputs`` with batch size ``batch``: random normal for floating tensors (seeded), the
    first sample repeated otherwise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        if x.dim() == 0:
            raise ValueError("example inputs need a batch dimension (dimension 0)")
        shape = (batch, *x.shape[1:])
        if x.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=x.dtype))
        else:
            out.append(x[:1].cpu().expand(shape).clone())
    return tuple(out)
