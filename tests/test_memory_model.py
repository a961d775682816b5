"""Every registered network's memory model against a real forward pass.

``compute_conv_feature_map_size`` (elements saved for backward, one sample) is what ``nnunet-mamba plan`` fits
patch and batch to; here it must agree within 15% with what a training-mode forward pass saves, measured with
``saved_tensors_hooks`` (:func:`nnunet_mamba.benchmarks.memory.saved_activation_elements`), for every
registered network in 2D and 3D over several patch sizes (poolings as nnU-Net's planner gives them). The
figures are in docs/benchmarks.md (``nnunet-mamba benchmark memory-model``).
"""

import pytest
import torch

from nnunet_mamba.architectures import registered_networks
from nnunet_mamba.benchmarks.memory import saved_activation_elements
from nnunet_mamba.benchmarks.planner import MEMORY_MODEL_INPUT_CHANNELS, MEMORY_MODEL_PATCHES, build_for_memory_check

TOLERANCE = 0.15


def _relative_error(network, patch) -> float:
    measured = saved_activation_elements(network, patch, MEMORY_MODEL_INPUT_CHANNELS)
    estimated = network.compute_conv_feature_map_size(list(patch))
    return abs(estimated - measured) / measured


@pytest.mark.parametrize("name, dims", [pytest.param(name, dims, id=f"{name}-{dims}d")
                                        for name, entry in registered_networks().items() for dims in entry.dims])
def test_estimate_matches_saved_tensors_of_a_forward_pass(name, dims):
    """The registered small instance (that the estimate reads the instance's own widths is checked below)."""
    torch.manual_seed(0)
    errors = {patch: _relative_error(build_for_memory_check(name, patch, small=True), patch)
              for patch in MEMORY_MODEL_PATCHES[dims]}
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("name", list(registered_networks()))
def test_estimate_matches_at_the_published_widths(name):
    """Once per network at its published widths, where the estimate must come out larger than the small one's
    (for networks whose small instance differs from the published one)."""
    torch.manual_seed(0)
    patch = MEMORY_MODEL_PATCHES[2][0]
    published = build_for_memory_check(name, patch, small=False)
    if registered_networks()[name].small_instance != name:
        small = build_for_memory_check(name, patch, small=True)
        assert published.compute_conv_feature_map_size(list(patch)) > small.compute_conv_feature_map_size(list(patch))
    assert _relative_error(published, patch) <= TOLERANCE


class _ChannelsFirst(torch.nn.Module):
    """The measurement feeds channels-first images; blocks take channels-last tokens."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.movedim(x, 1, -1))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (32, 48)), (3, (8, 16, 24))])
def test_vss_block_inventory_counts_what_the_block_saves(monkeypatch, spatial_dims, shape):
    """The per-layer inventory VM-UNet's estimate is built from, for one VSS block and the numba scan (the CPU
    default, whose saved chunk states it counts): exact when written; 2% leaves room for small changes."""
    from nnunet_mamba.blocks.vss import VSSBlock

    monkeypatch.setenv("NNUNET_MAMBA_SCAN", "numba")
    torch.manual_seed(0)
    block = VSSBlock(32, spatial_dims)
    measured = saved_activation_elements(_ChannelsFirst(block), shape, 32)
    estimated = block.compute_conv_feature_map_size(shape)
    assert abs(estimated - measured) <= 0.02 * measured, (estimated, measured)


def test_estimate_counts_the_input_padded_to_the_total_stride(monkeypatch):
    """A patch that is not a multiple of the total stride is padded before the stem, and every full-resolution
    layer works on the padded grid (here 36 x 40 -> 64 x 64): the estimate counts that grid."""
    from nnunet_mamba.architectures.vm_unet import VMUNet

    monkeypatch.setenv("NNUNET_MAMBA_SCAN", "numba")
    torch.manual_seed(0)
    network = VMUNet(MEMORY_MODEL_INPUT_CHANNELS, 3, torch.nn.Conv2d, embed_dim=16, encoder_depths=(1, 1, 1, 1),
                     decoder_depths=(1, 1, 1, 1), drop_path_rate=0.0)
    measured = saved_activation_elements(network, (36, 40), MEMORY_MODEL_INPUT_CHANNELS)
    estimated = network.compute_conv_feature_map_size([36, 40])
    assert abs(estimated - measured) <= 0.02 * measured, (estimated, measured)
