"""DSVM-UNet's dual self-distillation (Shao et al.): projection and progressive feature alignment.

The paper is the specification (the authors' code is not available). Level features are the outputs of
the VSS stages, shallowest first: encoder f_1^e .. f_4^e and decoder f_1^d .. f_4^d, where f_l has
``dims[l]`` channels on the grid of level l (f_1 at H/4, the first VSS level) and the decoder's last
stage produces f_1^d.

Projection self-distillation (global, Eq. 2)::

    f^_l = Conv1x1(Lin(f_l))                      Lin: to the f_1 grid, Conv1x1: to C = dims[0] channels
    paper: L_proj = sum_{l=1..M} Distill(f^_l^e, f_1^e) + sum_{l=1..M-1} Distill(f^_l^d, f_1^d)
    ours:  L_proj = sum_{l=1..M} MSE(f^_l^e, f_1^e)     + sum_{l=2..M}   MSE(f^_l^d, f_1^d)

Progressive self-distillation (local, Eq. 3), between adjacent levels l-1 and l::

    encoder (the deeper f_l teaches the shallower f_{l-1}):  MSE(f_{l-1}^e, Interp(Conv1x1(f_l^e)))
    decoder (the later f_{l-1} teaches the earlier f_l):     MSE(Interp(Conv1x1(f_l^d)), f_{l-1}^d)
    L_prog = sum_{l=2..M} of both                 Interp: bi/trilinear to the grid of level l-1

In both, as the paper's text says ("we apply 1x1 2D convolution to f_2^e to achieve consistent channels with
f_1^e"), the deeper level is convolved down to the shallower level's channels and upsampled.
``encoder_progressive="student_side"`` (our earlier reading, an option) convolves the shallower encoder
student up to the teacher's channels instead, MSE(Conv1x1(f_{l-1}^e), Interp(f_l^e)).

Choices where the paper is ambiguous, and why:

* ``Lin`` must be learned and linear and must change the grid (the paper keeps the channel count,
  ``2^{l-1}C x H/4 x W/4``). A dense linear map over all positions would need H_l W_l x (H/4 W/4) weights
  per level (4.2M, 1.0M and 0.26M for levels 2-4 at 256x256, far more in 3D) and, above all, would tie
  the heads to one patch size, so each channel of each token is mapped linearly onto its block of the f_1
  grid: a depthwise transposed convolution with kernel = stride = the level's scale per axis (anisotropic
  plans included). It starts as nearest-neighbour upsampling (all weights 1) and learns from there; for
  f_1 itself the scale is 1 and ``Lin`` is the identity.
* Projection teachers and sums. The encoder's teacher is f_1^e and the decoder's is the last decoder level
  f_1^d, as in Eq. 2. Eq. 2's decoder sum runs over l = 1..M-1, which includes the trivial pair
  (f^_1^d, f_1^d) and leaves out the bottleneck level f_M^d; we read its M - 1 terms as "every decoder
  level but the teacher" (l = 2..M), so every decoder level is distilled, as every encoder level is.
* No head learns to imitate its student. In the encoder's progressive term the paper puts its 1x1
  convolution on the teacher: trained by this loss, it would learn to predict the student from the teacher
  and move the target towards the student. Here that convolution is a **fixed** projection (orthonormal
  rows, so each output channel keeps the teacher's scale; no bias; never trained), so the target is the
  teacher's own features, only reduced. Every learned head (projection, decoder progressive, and the
  ``student_side`` option's encoder heads) sits on a student. All keep the paper's "lower dimensionality
  aligned to the higher" on the grid of level l-1.
* Teacher features are detached by default (``detach_teachers``): the loss moves the students towards the
  teacher, never the teacher's backbone features towards a shallower level, which is the point of
  distilling high-level semantics downwards and keeps the teacher from collapsing onto its students.
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

from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op, get_matching_convtransp

PROJECTION = "projection"
PROGRESSIVE = "progressive"
#: the encoder's progressive term: the paper's direction (the deeper teacher convolved down, by a fixed
#: projection) or ours before (the shallower student convolved up by a learned head)
ENCODER_PROGRESSIVE_PAPER, ENCODER_PROGRESSIVE_STUDENT_SIDE = "paper", "student_side"
ENCODER_PROGRESSIVE_MODES = (ENCODER_PROGRESSIVE_PAPER, ENCODER_PROGRESSIVE_STUDENT_SIDE)

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
        self.lift = get_matching_convtransp(dimension=len(self.scale))(channels, channels, kernel_size=self.scale,
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
        self.channel = convert_dim_to_conv_op(spatial_dims)(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(self.spatial(x))


def interpolate_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (2D) or trilinear (3D) resampling of channels-first ``x`` to ``size``; identity if already there."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=_INTERPOLATION[x.dim() - 2], align_corners=False)


class ProgressiveHead(nn.Module):
    """1x1 convolution to the other level's channels, then bi/trilinear resampling to ``size`` (Eq. 3).

    ``fixed``: an untrained projection with orthonormal rows and no bias (for a head on a teacher)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, fixed: bool = False):
        super().__init__()
        self.channel = convert_dim_to_conv_op(spatial_dims)(in_channels, out_channels, kernel_size=1, bias=not fixed)
        if fixed:
            if out_channels > in_channels:
                raise ValueError(f"a fixed projection reduces channels; got {in_channels} -> {out_channels}")
            with torch.no_grad():
                nn.init.orthogonal_(self.channel.weight.view(out_channels, in_channels))
            self.channel.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return interpolate_to(self.channel(x), size)


class DualSelfDistillation(nn.Module):
    """The distillation heads of DSVM-UNet and the two losses they define.

    Args:
        dims: channels of levels 1..M (VM-UNet: C, 2C, 4C, 8C).
        level_strides: M - 1 per-axis strides from level l to level l + 1 (VM-UNet's patch mergings).
        projection / progressive: which loss to build heads for (the ablations of Table 3).
        detach_teachers: stop gradients at the teachers' backbone features (see the module docstring).
        encoder_progressive: "paper" (the deeper teacher convolved down by a fixed projection and upsampled) or
            "student_side" (the shallower student convolved up by a learned head); see the module docstring.
    """

    def __init__(self, dims: Sequence[int], level_strides: Sequence[Sequence[int]], projection: bool = True,
                 progressive: bool = True, detach_teachers: bool = True,
                 encoder_progressive: str = ENCODER_PROGRESSIVE_PAPER):
        super().__init__()
        if len(level_strides) != len(dims) - 1:
            raise ValueError(f"{len(dims)} levels need {len(dims) - 1} level strides, got {len(level_strides)}")
        if not (projection or progressive):
            raise ValueError("DualSelfDistillation needs the projection loss, the progressive loss or both")
        if encoder_progressive not in ENCODER_PROGRESSIVE_MODES:
            raise ValueError(f"encoder_progressive must be one of {', '.join(map(repr, ENCODER_PROGRESSIVE_MODES))}, "
                             f"got {encoder_progressive!r}")
        self.encoder_progressive_mode = encoder_progressive
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
        if progressive and encoder_progressive == ENCODER_PROGRESSIVE_PAPER:
            # teacher side, fixed: the deeper level down to the shallower (student) level's channels
            self.encoder_progressive = nn.ModuleList(
                ProgressiveHead(self.dims[l], self.dims[l - 1], self.spatial_dims, fixed=True)
                for l in range(1, self.levels))
        elif progressive:
            # student side: the shallower level up to the deeper (teacher) level's channels
            self.encoder_progressive = nn.ModuleList(
                ProgressiveHead(self.dims[l - 1], self.dims[l], self.spatial_dims) for l in range(1, self.levels))
        if progressive:
            self.decoder_progressive = nn.ModuleList(
                ProgressiveHead(self.dims[l], self.dims[l - 1], self.spatial_dims) for l in range(1, self.levels))

    @classmethod
    def for_network(cls, network, **kwargs) -> "DualSelfDistillation":
        """Heads sized for a :class:`~nnunet_mamba.architectures.LevelFeatureNetwork` (e.g. VMUNet)."""
        return cls(network.level_dims, network.level_strides(), **kwargs)

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
            head = self.encoder_progressive[l - 1]
            if self.encoder_progressive_mode == ENCODER_PROGRESSIVE_PAPER:
                loss = loss + feature_mse(encoder[l - 1], head(self._teacher(encoder[l]), finer))
            else:
                loss = loss + feature_mse(head(encoder[l - 1], finer), interpolate_to(self._teacher(encoder[l]), finer))
            # decoder: the later (shallower) level teaches the earlier, deeper one
            loss = loss + feature_mse(self.decoder_progressive[l - 1](decoder[l], finer), self._teacher(decoder[l - 1]))
        return loss
