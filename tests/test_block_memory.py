"""Every block's own memory count against what a training forward pass of that block saves.

A network's ``compute_conv_feature_map_size`` is the sum of its blocks' (tests/test_memory_model.py holds the sums
to a real forward pass within 15%); here each block is held to ``saved_tensors_hooks``
(:func:`nnunet_mamba.benchmarks.memory.saved_activation_elements`) on its own, so that a network total that drifts
points at the block that changed. The scan is the numba kernel (the CPU default), whose saved chunk states the
counts include.

Blocks around the Mamba block are measured on a batch of two and compared per sample: on a batch of one, one
transposed E-wide map inside the Mamba block is a view that needs no copy, so a single sample saves one map less
than each sample of a batch does (the count is per sample of a training batch).
"""
import math

import pytest
import torch
from torch import nn

from nnunet_mamba.architectures.light_m_unet import ResMambaBlock, RVMLayer
from nnunet_mamba.architectures.swin_umamba import ConvStem, UpBlock
from nnunet_mamba.architectures.ultralbm_unet import GLMBP, LMBP
from nnunet_mamba.benchmarks.memory import saved_activation_elements
from nnunet_mamba.blocks import PatchEmbedding, PatchExpanding, PatchMerging, VSSBlock
from nnunet_mamba.blocks.mamba import Mamba
from nnunet_mamba.ops import saved_state_positions
from nnunet_mamba.ops.scan_numba import BACKWARD_BUFFER_ELEMENTS, MAX_BLOCK_WIDTH

TOLERANCE = 0.02


class _ChannelsLast(nn.Module):
    """The measurement feeds channels-first images; these blocks take channels-last tokens."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.movedim(x, 1, -1))


class _Sequences(nn.Module):
    """(B, D, L) images to the Mamba block's (B, L, D) sequences."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.transpose(1, 2))


class _WithSkip(nn.Module):
    """An up block fed a zero skip of its output's shape (the skip is the caller's, saved by the block's conv)."""

    def __init__(self, block: UpBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = [size * s for size, s in zip(x.shape[2:], self.block.upsample.stride)]
        return self.block(x, x.new_zeros(x.shape[0], self.block.upsample.out_channels, *spatial))


def _up_block_ends(block: UpBlock, input_size) -> int:
    """The input and the output map an up block shares with its neighbours, which its own count leaves out."""
    pixels_in = math.prod(input_size)
    pixels_out = pixels_in * math.prod(block.upsample.stride)
    return block.upsample.in_channels * pixels_in + block.upsample.out_channels * pixels_out


def _case(name, make, wrap, input_channels, input_size, batch=1, count=None):
    return pytest.param(make, wrap, input_channels, input_size, batch, count, id=name)


CASES = [
    _case("patch_embedding-2d", lambda: PatchEmbedding(3, 32, (4, 2), nn.Conv2d), None, 3, (32, 24)),
    _case("patch_embedding-3d", lambda: PatchEmbedding(2, 16, (1, 2, 2), nn.Conv3d), None, 2, (4, 16, 8)),
    _case("patch_merging-2d", lambda: PatchMerging(16, 32, (2, 2)), _ChannelsLast, 16, (16, 24)),
    _case("patch_merging-3d", lambda: PatchMerging(16, 32, (1, 2, 2)), _ChannelsLast, 16, (4, 8, 12)),
    _case("patch_expanding-2d", lambda: PatchExpanding(32, 16, (2, 2)), _ChannelsLast, 32, (8, 12)),
    _case("patch_expanding-3d", lambda: PatchExpanding(32, 8, (1, 2, 4)), _ChannelsLast, 32, (4, 4, 6)),
    _case("vss_block-2d-d_state8", lambda: VSSBlock(16, 2, d_state=8), _ChannelsLast, 16, (24, 32)),
    _case("vss_block-3d", lambda: VSSBlock(16, 3), _ChannelsLast, 16, (6, 8, 12)),
    _case("mamba", lambda: Mamba(16), _Sequences, 16, (600,), batch=2,
          count=lambda block, size: block.compute_conv_feature_map_size(size, sequences=2) / 2),
    _case("mamba-d_state32", lambda: Mamba(8, d_state=32), _Sequences, 8, (700,), batch=2,
          count=lambda block, size: block.compute_conv_feature_map_size(size, sequences=2) / 2),
    _case("vss_block-2d-no_mamba", lambda: VSSBlock(16, 2, token_mixer="identity"), _ChannelsLast, 16, (24, 32)),
    _case("vss_block-3d-dwconv", lambda: VSSBlock(16, 3, token_mixer="dwconv"), _ChannelsLast, 16, (6, 8, 12)),
    _case("mamba-no_mamba", lambda: Mamba(16, token_mixer="identity"), _Sequences, 16, (600,), batch=2,
          count=lambda block, size: block.compute_conv_feature_map_size(size, sequences=2) / 2),
    _case("mamba-dwconv", lambda: Mamba(16, token_mixer="dwconv"), _Sequences, 16, (600,), batch=2,
          count=lambda block, size: block.compute_conv_feature_map_size(size, sequences=2) / 2),
    _case("rvm_layer", lambda: RVMLayer(16, 32), None, 16, (16, 24), batch=2),
    _case("rvm_layer-d_state32", lambda: RVMLayer(16, 16, d_state=32), None, 16, (8, 8, 12), batch=2),
    _case("res_mamba_block", lambda: ResMambaBlock(16), None, 16, (12, 16), batch=2),
    _case("lmbp", lambda: LMBP(16, 24, (3, 3), nn.Conv2d, "group"), None, 16, (16, 20)),
    _case("glmbp-2d", lambda: GLMBP(16, 24, (5, 5), nn.Conv2d, "group"), None, 16, (16, 20)),
    _case("glmbp-3d-d_state8", lambda: GLMBP(16, 8, (1, 5, 5), nn.Conv3d, "group", d_state=8), None, 16, (4, 8, 10)),
    _case("swin_conv_stem", lambda: ConvStem(nn.Conv2d, 2, 8, (2, 2)), None, 2, (32, 24)),
    _case("swin_up_block", lambda: UpBlock(nn.Conv2d, 16, 8, (2, 2)), _WithSkip, 16, (8, 12),
          count=lambda block, size: block.compute_conv_feature_map_size(size) + _up_block_ends(block, size)),
]


@pytest.mark.parametrize("make, wrap, input_channels, input_size, batch, count", CASES)
def test_block_counts_what_its_forward_saves(monkeypatch, make, wrap, input_channels, input_size, batch, count):
    monkeypatch.setenv("NNUNET_MAMBA_SCAN", "numba")
    torch.manual_seed(0)
    block = make()
    measured = saved_activation_elements(wrap(block) if wrap else block, input_size, input_channels, batch) / batch
    estimated = (count or type(block).compute_conv_feature_map_size)(block, input_size)
    assert abs(estimated - measured) <= TOLERANCE * measured, (estimated, measured)


@pytest.mark.parametrize("d_state", [1, 16, 64])
def test_scan_state_positions_follow_the_numba_backward_chunk(d_state):
    """One state per chunk start, chunks filling the backward's buffer: 2^18 / (64 x N) positions each."""
    chunk = BACKWARD_BUFFER_ELEMENTS // (MAX_BLOCK_WIDTH * d_state)
    assert (chunk, BACKWARD_BUFFER_ELEMENTS) == (2 ** 18 // (64 * d_state), 2 ** 18)
    assert saved_state_positions(chunk, d_state) == 1
    assert saved_state_positions(chunk + 1, d_state) == 2
    assert saved_state_positions(10 * chunk, d_state) == 10
