"""DSVM-UNet's dual self-distillation (Shao et al.): projection and progressive feature alignment.

The paper is the specification (the authors' code is not available). Level features are the outputs of
the VSS stages, shallowest first: encoder f_1^e .. f_4^e and decoder f_1^d .. f_4^d, where f_l has
``dims[l]`` channels on the grid of level l (f_1 at H/4, the first VSS level) and the decoder's last
stage produces f_1^d.

Projection self-distillation (global, Eq. 2)::

    f^_l = Conv1x1(Lin(f_l))                      Lin: to the f_1 grid, Conv1x1: to C = dims[0] channels
    L_proj = sum_{l=1..M} MSE(f^_l^e, f_1^e) + sum_{l=2..M} MSE(f^_l^d, f_1^d)

Progressive self-distillation (local, Eq. 3), between adjacent levels l-1 and l::

    f~_l = Interp(Conv1x1(f_l))                   Conv1x1: to dims[l-1] channels, Interp: bi/trilinear to the
                                                  grid of level l-1
    L_prog = sum_{l=2..M} MSE(f_{l-1}^e, f~_l^e) + MSE(f~_l^d, f_{l-1}^d)

Choices where the paper is ambiguous, and why:

* ``Lin`` must be learned and linear and must change the grid (the paper keeps the channel count,
  ``2^{l-1}C x H/4 x W/4``). A dense linear map over all positions would need (H/4 W/4)^2 weights per level
  (16.7M at 256x256, far more in 3D) and would tie the heads to one patch size, so each channel of each
  token is mapped linearly onto its block of the f_1 grid: a depthwise transposed convolution with kernel =
  stride = the level's scale per axis (anisotropic plans included). It starts as nearest-neighbour
  upsampling (all weights 1) and learns from there; for f_1 itself the scale is 1 and ``Lin`` is the
  identity.
* Teachers. The encoder's projection teacher is f_1^e and the decoder's is the last decoder level f_1^d, as
  in Eq. 2. Eq. 2's encoder sum starts at l = 1, so f_1^e is also aligned (through its own 1x1 head) to
  itself; its decoder sum has M - 1 terms, read here as every decoder level but the teacher. In the
  progressive loss the deeper level teaches the shallower one in the encoder and the later (shallower)
  level teaches the earlier one in the decoder; in both, the deeper feature is the one that is convolved
  and upsampled (the paper's "lower dimensionality is aligned to the higher").
* Teacher features are detached by default (``detach_teachers``): the loss moves the students towards the
  teacher, never the teacher's backbone features towards a shallower level, which is the point of
  distilling high-level semantics downwards and keeps the teacher from collapsing onto its students.
  Learned heads on the teacher side (the encoder's progressive 1x1 convolutions) still learn: only the
  backbone activation is detached.
* Distances are mean squared errors over all elements, computed in float32 (also under AMP), summed over
  the pairs as in Eqs. 2-3.

The heads are training-time only. They read features that the network computes anyway (see
:class:`~nnunet_mamba.distillation.features.LevelFeatureTap`), so inference is plain VM-UNet.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.architectures import CONV_OPS

PROJECTION = "projection"
PROGRESSIVE = "progressive"

_TRANSPOSED_CONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_INTERPOLATION = {2: "bilinear", 3: "trilinear"}


def channels_first(feature: torch.Tensor) -> torch.Tensor:
    return torch.movedim(feature, -1, 1)


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.shape != teacher.shape:
        raise ValueError(f"distillation pair shapes differ: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)}")
    return F.mse_loss(student.float(), teacher.float())


class SpatialProjection(nn.Module):
    """Learned per-channel linear map of every token onto its ``scale`` block of a finer grid."""

    def __init__(self, channels: int, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        self.lift = _TRANSPOSED_CONV[len(self.scale)](channels, channels, kernel_size=self.scale,
                                                      stride=self.scale, groups=channels, bias=False)
        nn.init.ones_(self.lift.weight)  # nearest-neighbour upsampling to begin with

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lift(x)


class ProjectionHead(nn.Module):
    """Lin then 1x1 convolution: a level's features on the f_1 grid with C channels (Eq. 2)."""

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int]):
        super().__init__()
        spatial_dims = len(scale)
        self.spatial = SpatialProjection(in_channels, scale) if math.prod(scale) > 1 else nn.Identity()
        self.channel = CONV_OPS[spatial_dims](in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(self.spatial(x))


class ProgressiveHead(nn.Module):
    """1x1 convolution to the shallower level's channels, then bi/trilinear upsampling to its grid (Eq. 3)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int):
        super().__init__()
        self.channel = CONV_OPS[spatial_dims](in_channels, out_channels, kernel_size=1)
        self.mode = _INTERPOLATION[spatial_dims]

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(self.channel(x), size=tuple(size), mode=self.mode, align_corners=False)


class DualSelfDistillation(nn.Module):
    """The distillation heads of DSVM-UNet and the two losses they define.

    Args:
        dims: channels of levels 1..M (VM-UNet: C, 2C, 4C, 8C).
        level_strides: M - 1 per-axis strides from level l to level l + 1 (VM-UNet's patch mergings).
        projection / progressive: which loss to build heads for (the ablations of Table 3).
        detach_teachers: stop gradients at the teachers' backbone features (see the module docstring).
    """

    def __init__(self, dims: Sequence[int], level_strides: Sequence[Sequence[int]], projection: bool = True,
                 progressive: bool = True, detach_teachers: bool = True):
        super().__init__()
        if len(level_strides) != len(dims) - 1:
            raise ValueError(f"{len(dims)} levels need {len(dims) - 1} level strides, got {len(level_strides)}")
        if not (projection or progressive):
            raise ValueError("DualSelfDistillation needs the projection loss, the progressive loss or both")
        self.dims = [int(d) for d in dims]
        self.spatial_dims = len(level_strides[0])
        self.detach_teachers = detach_teachers
        # scale of level l relative to level 1, per axis
        scales = [(1,) * self.spatial_dims] + [tuple(int(v) for v in s)
                                               for s in np.cumprod(np.array(level_strides), axis=0)]
        self.levels = len(dims)
        self.encoder_projection = self.decoder_projection = None
        self.encoder_progressive = self.decoder_progressive = None
        if projection:
            self.encoder_projection = nn.ModuleList(
                ProjectionHead(self.dims[l], self.dims[0], scales[l]) for l in range(self.levels))
            # the decoder's teacher, f_1^d, is not a student of itself
            self.decoder_projection = nn.ModuleList(
                ProjectionHead(self.dims[l], self.dims[0], scales[l]) for l in range(1, self.levels))
        if progressive:
            self.encoder_progressive = nn.ModuleList(
                ProgressiveHead(self.dims[l], self.dims[l - 1], self.spatial_dims) for l in range(1, self.levels))
            self.decoder_progressive = nn.ModuleList(
                ProgressiveHead(self.dims[l], self.dims[l - 1], self.spatial_dims) for l in range(1, self.levels))

    @classmethod
    def for_network(cls, network, **kwargs) -> "DualSelfDistillation":
        """Heads sized for a network that offers ``dims`` and ``level_strides()`` (e.g. VMUNet)."""
        return cls(network.dims, network.level_strides(), **kwargs)

    @property
    def terms(self) -> list[str]:
        return [name for name, heads in ((PROJECTION, self.encoder_projection), (PROGRESSIVE, self.encoder_progressive))
                if heads is not None]

    def _teacher(self, feature: torch.Tensor) -> torch.Tensor:
        return feature.detach() if self.detach_teachers else feature

    def forward(self, encoder_levels: Sequence[torch.Tensor], decoder_levels: Sequence[torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        """Both lists channels-last, shallowest level first; returns the unweighted loss of every built term."""
        for name, levels in (("encoder", encoder_levels), ("decoder", decoder_levels)):
            if len(levels) != self.levels:
                raise ValueError(f"expected {self.levels} {name} level features, got {len(levels)}")
            for l, feature in enumerate(levels):
                if feature.shape[-1] != self.dims[l]:
                    raise ValueError(f"{name} level {l + 1} has {feature.shape[-1]} channels (last axis), "
                                     f"expected {self.dims[l]}")
        encoder = [channels_first(f) for f in encoder_levels]
        decoder = [channels_first(f) for f in decoder_levels]
        losses = {}
        if self.encoder_projection is not None:
            losses[PROJECTION] = self.projection_loss(encoder, decoder)
        if self.encoder_progressive is not None:
            losses[PROGRESSIVE] = self.progressive_loss(encoder, decoder)
        return losses

    def projection_loss(self, encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
        encoder_teacher, decoder_teacher = self._teacher(encoder[0]), self._teacher(decoder[0])
        loss = sum(feature_mse(head(f), encoder_teacher) for head, f in zip(self.encoder_projection, encoder))
        return loss + sum(feature_mse(head(f), decoder_teacher) for head, f in zip(self.decoder_projection, decoder[1:]))

    def progressive_loss(self, encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
        loss = 0
        for l in range(1, self.levels):
            finer = encoder[l - 1].shape[2:]
            # encoder: the deeper level teaches the shallower one
            loss = loss + feature_mse(encoder[l - 1], self.encoder_progressive[l - 1](self._teacher(encoder[l]), finer))
            # decoder: the later (shallower) level teaches the earlier, deeper one
            loss = loss + feature_mse(self.decoder_progressive[l - 1](decoder[l], finer), self._teacher(decoder[l - 1]))
        return loss
