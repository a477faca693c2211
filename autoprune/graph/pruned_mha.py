"""The module a pruned ``nn.MultiheadAttention`` becomes.

``nn.MultiheadAttention`` computes ``head_dim = embed_dim // num_heads`` from the query's width (the residual stream),
so it cannot keep fewer heads, or a narrower head, while its inputs and output keep their width. Surgery replaces it
with :class:`PrunedMultiheadAttention`: the same computation (and the same call signature and outputs) with the q/k/v
projections, head count and head width stated separately, and the original scale ``1/sqrt(original head_dim)``.
Written with ``F.linear`` and ``F.scaled_dot_product_attention`` (or the two matmuls when the weights are asked
for), so fvcore counts it and ONNX exports it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .rules import take

__all__ = ["PrunedMultiheadAttention"]


def _as_additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True = not allowed) or an additive float mask, as an additive mask of ``like``'s dtype."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``num_heads`` heads of width ``head_dim`` kept from a larger one (see the module
    docstring). Built by :meth:`from_pruned`; ``forward`` takes and returns what ``nn.MultiheadAttention`` does."""

    def __init__(self, embed_dim: int, kdim: int, vdim: int, num_heads: int, head_dim: int, scale: float,
                 out_dim: int, bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.kdim, self.vdim = embed_dim, kdim, vdim
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, scale
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj_weight = nn.Parameter(torch.empty(inner, embed_dim))
        self.k_proj_weight = nn.Parameter(torch.empty(inner, kdim))
        self.v_proj_weight = nn.Parameter(torch.empty(inner, vdim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, out_dim, bias=bias)

    @classmethod
    def from_pruned(cls, m: nn.MultiheadAttention, heads: np.ndarray, width: np.ndarray, q_in: np.ndarray,
                    k_in: np.ndarray, v_in: np.ndarray, out: np.ndarray) -> "PrunedMultiheadAttention":
        """The part of ``m`` whose heads, head-width positions, input and output channels the masks keep."""
        inner = np.logical_and.outer(heads, width).reshape(-1)
        packed = m.in_proj_weight is not None
        wq, wk, wv = m.in_proj_weight.data.chunk(3) if packed else (
            m.q_proj_weight.data, m.k_proj_weight.data, m.v_proj_weight.data)
        new = cls(int(q_in.sum()), int(k_in.sum()), int(v_in.sum()), int(heads.sum()), int(width.sum()),
                  float(m.head_dim) ** -0.5, int(out.sum()), bias=m.in_proj_bias is not None, dropout=m.dropout,
                  batch_first=m.batch_first)
        new.q_proj_weight.data = take(take(wq, 0, inner), 1, q_in).clone()
        new.k_proj_weight.data = take(take(wk, 0, inner), 1, k_in).clone()
        new.v_proj_weight.data = take(take(wv, 0, inner), 1, v_in).clone()
        if m.in_proj_bias is not None:
            new.in_proj_bias.data = take(m.in_proj_bias.data, 0, np.tile(inner, 3)).clone()
        new.out_proj.weight.data = take(take(m.out_proj.weight.data, 0, out), 1, inner).clone()
        if m.out_proj.bias is not None:
            new.out_proj.bias.data = take(m.out_proj.bias.data, 0, out).clone()
        return new.train(m.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, Any]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        H, d = self.num_heads, self.head_dim
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, self.q_proj_weight, bq).view(B, L, H, d).transpose(1, 2)
        k = F.linear(key, self.k_proj_weight, bk).view(B, S, H, d).transpose(1, 2)
        v = F.linear(value, self.v_proj_weight, bv).view(B, S, H, d).transpose(1, 2)
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, q)
            mask = mask.view(B, H, L, S) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            pad = _as_additive(key_padding_mask, q).view(B, 1, 1, S)
            mask = pad if mask is None else mask + pad
        if is_causal and mask is None:
            mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril().logical_not()
            mask = _as_additive(mask, q)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1) + (0 if mask is None else mask), dim=-1)
            weights = attn.mean(1) if average_attn_weights else attn
            y = F.dropout(attn, p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)
        y = self.out_proj(y.transpose(1, 2).reshape(B, L, H * d))
        return (y if self.batch_first else y.transpose(0, 1)), weights
