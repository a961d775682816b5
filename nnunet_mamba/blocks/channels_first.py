"""Linear layers applied to channels-first maps, where the blocks around the selective scan need that layout.

``nn.Linear`` works on the last axis: applied to a (batch, channels, L) map it needs the map transposed, and
gives its result channels-last, so that a block which feeds the scan (which takes (batch, channels, L)) or a
convolution pays a transposing copy on the way in and one on the way out, in the forward and again in the
backward. A batched matrix product reads a transposed operand at no cost and writes its result in the layout
asked for.
"""
from __future__ import annotations

import torch


def _compute_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight in autocast's dtype when autocast is on: cast once here rather than once per batch element of
    its expanded view."""
    if torch.is_autocast_enabled(x.device.type):
        return weight.to(torch.get_autocast_dtype(x.device.type))
    return weight


def linear_channels_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.Linear``'s ``weight`` (out, in) and ``bias`` over the channels of ``x`` (batch, in, L): (batch, out, L),
    contiguous. ``x`` may be a transposed view of channels-last tokens."""
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
