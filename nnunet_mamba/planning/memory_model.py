"""GPU memory of one training step of a registered network: what the planner fits patch and batch size to.

nnU-Net's planners compare ``compute_conv_feature_map_size`` of their UNet with a reference value measured for
that UNet on an 8 GB card. Our networks keep very different amounts per voxel (the scan's direction sequences
and deltas), so the planner converts the network's own count into bytes and adds the rest of a training step:

* activations saved for backward: ``network.compute_conv_feature_map_size(patch)`` elements per sample, at
  :attr:`TrainingMemoryModel.bytes_per_saved_element` bytes. Four, also under nnU-Net's AMP: the selective scan
  computes in float32 and keeps float32 copies of its inputs, LayerNorms run and return float32, and the
  half-precision copies the projections keep come on top, so autocast saves little for these networks (a VSS
  block keeps about 3.8 bytes per counted element under AMP, by its layer-by-layer inventory);
* per sample, the loss and the batch: the logits, their softmax, log-softmax and one-hot target in float32
  (deep supervision adds a third for the lower resolutions), the image and the target;
* parameters: float32 weights, their gradients and AdamW's two moments (16 bytes per parameter);
* headroom: a share of the budget kept free for gradients in flight during backward, cuDNN workspaces and the
  caching allocator's fragmentation. The CUDA context (about 0.5 GB) is outside what PyTorch allocates and is
  taken off the budget first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step, split into what grows with the batch and what does not."""

    activation_elements_per_sample: int
    per_sample_bytes: int
    fixed_bytes: int
    batch_size: int

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.batch_size * self.per_sample_bytes

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB


@dataclass(frozen=True)
class TrainingMemoryModel:
    """Bytes of a training step from the network's saved-activation count (see the module docstring)."""

    bytes_per_saved_element: float = 4.0
    #: float32 weight + gradient + AdamW's exp_avg and exp_avg_sq
    bytes_per_parameter: int = 16
    #: logits, softmax, log-softmax and one-hot target, float32, per class and voxel
    loss_bytes_per_class_voxel: int = 16
    #: deep supervision's lower-resolution outputs add about a third of the full-resolution ones (2D 1/3, 3D 1/7)
    deep_supervision_loss_factor: float = 4 / 3
    #: the CUDA context and kernels, outside PyTorch's allocator
    cuda_context_bytes: int = GIB // 2
    #: share of the rest kept free for backward's in-flight gradients, workspaces and fragmentation
    headroom_fraction: float = 0.1

    def usable_bytes(self, gpu_memory_gb: float) -> int:
        """What the planner may fill on a card of ``gpu_memory_gb`` GiB."""
        if not math.isfinite(gpu_memory_gb) or gpu_memory_gb <= 0:
            raise ValueError(f"GPU memory budget must be positive and finite, got {gpu_memory_gb} GB")
        return int((gpu_memory_gb * GIB - self.cuda_context_bytes) * (1 - self.headroom_fraction))

    def estimate(self, network, patch_size: Sequence[int], batch_size: int, input_channels: int, num_classes: int,
                 deep_supervision: bool) -> MemoryEstimate:
        """Bytes of one training step of ``network`` (built for ``patch_size``) at ``batch_size``."""
        voxels = math.prod(int(p) for p in patch_size)
        elements = int(network.compute_conv_feature_map_size([int(p) for p in patch_size]))
        loss_factor = self.deep_supervision_loss_factor if deep_supervision else 1.0
        per_sample = (elements * self.bytes_per_saved_element
                      + voxels * num_classes * self.loss_bytes_per_class_voxel * loss_factor
                      + voxels * (input_channels + 1) * 4)  # the float32 image and target of the batch
        parameters = sum(p.numel() for p in network.parameters())
        return MemoryEstimate(elements, int(math.ceil(per_sample)), parameters * self.bytes_per_parameter,
                              int(batch_size))
