"""What ``nn.LayerNorm`` keeps for backward, the one layer every block's memory count shares; and
:class:`ChannelsFirstLayerNorm`, the same layer over the channels of a channels-first map.

Blocks count, in ``compute_conv_feature_map_size``, the elements a training forward pass of one sample saves for
backward: distinct storages, parameters excluded, as :func:`nnunet_mamba.benchmarks.memory.saved_activation_elements`
measures them.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_mamba.ops import layer_norm_channels_first

#: mean and reciprocal standard deviation per token
LAYER_NORM_STATS_PER_TOKEN = 2


def layer_norm_saved_elements(channels: int, tokens: int) -> int:
    """A LayerNorm over ``channels`` keeps its input and two statistics per token."""
    return tokens * (channels + LAYER_NORM_STATS_PER_TOKEN)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm(channels)`` (same parameters, same state-dict keys) over dim 1 of a (batch, channels, L) map;
    it keeps what ``nn.LayerNorm`` keeps (:func:`layer_norm_saved_elements`). Its output is contiguous where the numba
    kernel runs, a transposed view where PyTorch's LayerNorm does (see
    :func:`nnunet_mamba.ops.layer_norm_channels_first`).

    For a block whose maps are channels-first on both sides: ``nn.LayerNorm`` would need them transposed into a
    copy first. A module, so that thop counts it by its forward hook as the ``nn.LayerNorm`` it is (``count_thop``
    tells it to)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_channels_first(x, self.weight, self.bias, self.eps)
