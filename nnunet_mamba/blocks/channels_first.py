"""Linear layers applied to channels-first maps, where the blocks around the selective scan need that layout.

``nn.Linear`` works on the last axis: applied to a (batch, channels, L) map it needs the map transposed, and
gives its result channels-last, so that a block which feeds the scan (which takes (batch, channels, L)) or a
convolution pays a transposing copy on the way in and one on the way out, in the forward and again in the
backward. A batched matrix product reads a transposed operand at no cost and writes its result in the layout
asked for.

On CPU the numba kernel :func:`nnunet_mamba.ops.block_ops.channels_linear` stands in where it beats PyTorch's
products: from at most four input channels (the Mamba block's dt projection) and on contiguous maps with long
sequences, in inference and in training (its input gradient is the same kernel's product) (``docs/benchmarks.md``,
"CPU efficiency, seventh part"). Autocast, JIT traces and FLOP counters see the product, as everywhere else.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_mamba.ops.block_ops import channels_linear, channels_linear_applies


def _compute_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight in autocast's dtype when autocast is on: cast once here rather than once per batch element of
    its expanded view."""
    if torch.is_autocast_enabled(x.device.type):
        return weight.to(torch.get_autocast_dtype(x.device.type))
    return weight


def linear_channels_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.Linear``'s ``weight`` (out, in) and ``bias`` over the channels of ``x`` (batch, in, L): (batch, out, L),
    contiguous. ``x`` may be a transposed view of channels-last tokens."""
    if channels_linear_applies(x, weight, bias):
        return channels_linear(x, weight, bias)
    # bmm, not matmul: matmul folds the batch into the rows, computes the product channels-last and copies it
    weight = _compute_weight(weight, x).expand(x.shape[0], *weight.shape)
    if bias is None:
        return torch.bmm(weight, x)
    return torch.baddbmm(bias.unsqueeze(-1), weight, x)  # under autocast in its dtype, as F.linear's


def linear_to_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same layer taking a channels-first map (batch, in, L) and giving channels-last tokens (batch, L, out)."""
    weight = _compute_weight(weight, x).t().expand(x.shape[0], -1, -1)
    if bias is None:
        return torch.bmm(x.transpose(1, 2), weight)
    return torch.baddbmm(bias, x.transpose(1, 2), weight)


def grouped_linear_channels_first(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A linear layer per group, ``weight`` (groups, out, in), over the channels of ``x`` (batch, groups, in, L):
    (batch, groups, out, L), contiguous. One batched product over batch x groups: ``x`` is read in place where its
    groups can be merged with the batch (any contiguous map, or a slice of one along ``in``), and only the small
    weight is copied, once per batch element (an einsum over the same operands copied ``x`` into its own layout)."""
    batch, groups, _, length = x.shape
    weight = _compute_weight(weight, x)
    stacked = weight.expand(batch, *weight.shape).reshape(batch * groups, *weight.shape[1:])
    product = torch.bmm(stacked, x.reshape(batch * groups, x.shape[2], length))
    return product.view(batch, groups, weight.shape[1], length)


class ChannelsFirstLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) applied to the channels of a channels-first map:
    (batch, in, L) -> (batch, out, L), contiguous.

    For a layer that must stay a module call (thop counts linear layers by their forward hook; ``count_thop``
    counts this one as an ``nn.Linear``) and whose output goes on channels-first: ``nn.Linear``'s channels-last
    output, transposed, leaves a strided map on which the convolutions, poolings and norms that follow run
    several times slower, or copy it first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_channels_first(x, self.weight, self.bias)
