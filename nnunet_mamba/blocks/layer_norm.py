"""What ``nn.LayerNorm`` keeps for backward, the one layer every block's memory count shares.

Blocks count, in ``compute_conv_feature_map_size``, the elements a training forward pass of one sample saves for
backward: distinct storages, parameters excluded, as :func:`nnunet_mamba.benchmarks.memory.saved_activation_elements`
measures them.
"""
from __future__ import annotations

#: mean and reciprocal standard deviation per token
LAYER_NORM_STATS_PER_TOKEN = 2


def layer_norm_saved_elements(channels: int, tokens: int) -> int:
    """A LayerNorm over ``channels`` keeps its input and two statistics per token."""
    return tokens * (channels + LAYER_NORM_STATS_PER_TOKEN)
