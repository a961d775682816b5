"""Elements each building block saves for backward: the parts networks add up in ``compute_conv_feature_map_size``.

Counted as :func:`nnunet_mamba.benchmarks.memory.saved_activation_elements` measures: distinct storages, one
sample, parameters excluded, and every tensor a layer keeps for its backward (inputs of linear layers,
convolutions and norms, outputs of activations, the statistics of norms). What a layer saves was read off a
real forward pass of each block; ``tests/test_memory_model.py`` holds every registered network to it.

The selective scan is assumed to keep its inputs and its state at every chunk start, recomputing the rest in
backward, as the numba kernel (the CPU default) does; mamba-ssm's CUDA kernel keeps the same inputs and fewer
states. The pure-PyTorch scan (the fallback) keeps more: a VSS block with it saves about 1.3x this estimate.
"""
from __future__ import annotations

import math

from torch import nn

#: mean and reciprocal standard deviation per token of a LayerNorm
LAYER_NORM_STATS_PER_TOKEN = 2
#: the numba scan keeps its state every 2^19 / (2 x 64 x N) positions (nnunet_mamba.ops.scan_numba.backward_chunk)
NUMBA_STATE_POSITIONS = 4096


def layer_norm_saved_elements(channels: int, tokens: int) -> int:
    """A LayerNorm keeps its input and two statistics per token."""
    return tokens * (channels + LAYER_NORM_STATS_PER_TOKEN)


def vss_block_saved_elements(block: nn.Module, tokens: int) -> int:
    """One :class:`~nnunet_mamba.blocks.vss.VSSBlock` (pre-norm SS2D/SS3D with its residual) on ``tokens`` tokens.

    With C channels, E inner channels, K scan directions, rank R and N states, per token: the block input and
    the normalised input (C each, the input through its norm), the input projection (2E: x and the gate z), the
    depthwise convolution's output (E, for its SiLU), the K direction sequences and their deltas (K E each),
    the x projection (K (R + 2N), which B and C are views of), and on the way out the merged directions, their
    norm, the gate's SiLU and their product (E each). Besides: A = -exp(A_log) on its way into the scan (twice
    K E N) and the scan's saved states (K E N per chunk of the sequence), which dominate at the deepest levels
    of small patches.
    """
    ssm = block.ssm
    channels = block.norm.normalized_shape[0]
    k, e, r, n = ssm.num_directions, ssm.d_inner, ssm.dt_rank, ssm.d_state
    per_token = (layer_norm_saved_elements(channels, 1) + channels  # block input + stats, in_proj input
                 + 2 * e + e                                       # in_proj output, conv output
                 + 2 * k * e + k * (r + 2 * n)                     # sequences, deltas, x projection
                 + layer_norm_saved_elements(e, 1) + 3 * e)        # out_norm input, its output, SiLU(z), product
    # the scan's state at every backward-chunk start (numba: chunks of 4096 / N positions; mamba-ssm keeps
    # fewer, one per 2048 positions)
    chunk_starts = math.ceil(tokens / max(1, NUMBA_STATE_POSITIONS // n))
    return tokens * per_token + 2 * k * e * n + chunk_starts * n * k * e


def patch_embedding_saved_elements(input_channels: int, embed_dim: int, input_voxels: int, tokens: int) -> int:
    """The strided convolution keeps the image, its LayerNorm the embedded tokens."""
    return input_channels * input_voxels + layer_norm_saved_elements(embed_dim, tokens)


def patch_merging_saved_elements(dim: int, tokens_in: int, tokens_out: int) -> int:
    """The gathered neighbours go through a LayerNorm and a linear reduction: both keep ``dim * tokens_in``."""
    gathered = dim * tokens_in
    return gathered + tokens_out * LAYER_NORM_STATS_PER_TOKEN + gathered


def patch_expanding_saved_elements(dim: int, out_dim: int, tokens_in: int, tokens_out: int) -> int:
    """The linear expansion keeps its input, the LayerNorm the scattered output."""
    return dim * tokens_in + layer_norm_saved_elements(out_dim, tokens_out)


def tokens_after(input_size, strides) -> list[int]:
    """Tokens on the grid after each cumulative stride (input padded up to a multiple of the total stride)."""
    total = [math.prod(s[axis] for s in strides) for axis in range(len(input_size))]
    padded = [math.ceil(size / t) * t for size, t in zip(input_size, total)]
    grid, counts = list(padded), []
    for stride in strides:
        grid = [g // s for g, s in zip(grid, stride)]
        counts.append(math.prod(grid))
    return counts
