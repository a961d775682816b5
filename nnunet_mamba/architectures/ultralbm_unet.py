"""UltraLBM-UNet and its distilled student UltraLBM-UNet-T (Fan et al., 2025), 2D as the official code, 3D ours.

2D, as the official code builds it (LinLinLin-X/UltraLBM-UNet, ``models/UltraLBM_UNet.py`` at 0a99c43; layout in
``../shared/specs/UltraLBM-UNet.md`` section 1):

* widths ``max(4, (int(c * m) // 4) * 4)`` for c in (8, 16, 24, 32, 48, 64), m the channel multiplier
  (1 for the network, 0.5 for the student "-T");
* encoder: enc1-enc3 3x3 convs, enc4 LMBP (k 3), enc5 GLMBP (k 5), enc6 GLMBP (k 7); after enc1-enc5
  GroupNorm -> max-pool -> GELU (their outputs t1..t5 are the skips), after enc6 GELU only;
* decoder: dec1 GLMBP (k 7), dec2 GLMBP (k 5), dec3 LMBP (k 3), dec4/dec5 3x3 convs; after each GroupNorm ->
  bilinear up-sampling (align_corners, none after dec1) -> GELU, then ``+ k * t`` with ONE learnable scalar k
  for all five skips (a plain sum with ``learnable_skip=False``);
* head: 1x1 conv at half resolution, then up-sampling to full resolution. Logits: the official sigmoid is left
  to nnU-Net's loss and inference.

GLMBP: tokens (raster order) -> LayerNorm -> four channel quarters x1..x4. x1 and x2 each go forward and reversed
through ONE shared Mamba (d_model C/4, d_state 16, d_conv 4, expand 2), the results added; x3 through a
depthwise-separable conv (DW k -> norm -> GELU -> PW 1x1 -> norm -> GELU, no biases); x4 is the identity. Every
branch adds ``gamma * x_i`` (one scalar gamma per block); the concatenation goes through the same LayerNorm
again and a Linear. LMBP: three separate depthwise-separable k3 branches and the identity. 34,166 parameters
(3 input channels, one output), 10,956 for the student; the paper's 0.034 M / 0.011 M.

The reversed pass. The paper (Eq. 3, Fig. 3d) flips the token sequence, so every token sees Mamba context from
both directions: ``reverse="token"``, the default. The official code flips dim 2 of the (B, N, C/4) sequences,
the *channels*: its "backward" pass is a second forward raster scan with permuted channels, and no token ever
sees the tokens after it through Mamba. ``reverse="channel"`` reproduces that. The four Mamba passes of a block
(x1, x2 and their reversals) run as one call with the sequences stacked along the batch axis, which gives the
same values as four calls.

Initialisation as the official ``_init_weights``: trunc-normal (std 0.02) on every Linear, Mamba's projections
included, biases zero (so Mamba's ``dt_proj.bias`` is 0, an initial step softplus(0) = 0.69 instead of Mamba's
[0.001, 0.1]); conv weights N(0, sqrt(2 / fan_out)), fan_out = kernel volume x out channels / groups, conv biases
zero except Mamba's Conv1d (N(0, sqrt(2 / (k x out))), bias left at PyTorch's default). ``mamba_dt_init=True``
keeps Mamba's own dt_proj initialisation instead.

3D and nnU-Net plans (our design, not the paper's):

* Conv3d, max-pool 3D and trilinear up-sampling (align_corners); tokens are the voxels in raster order (D, H, W)
  and ``reverse="token"`` flips that sequence;
* the five down-samplings take the plan's first five pooling strides per axis (stride 1 where the plan pools
  fewer times; pooling and up-sampling are then skipped on that axis); up-sampling restores the matching size;
* the plan's conv kernels make anisotropic blocks: an axis whose plan kernel is 1 at a resolution level gets
  1 in that level's convs and depthwise kernels (the (1, k, k) case), every other axis the official kernel;
* the depthwise-separable convs keep BatchNorm (official) or, with ``separable_norm="group"``, use GroupNorm
  (the largest group count <= 4 that divides the channels), safer at nnU-Net's 3D batch of 2;
* sizes not divisible by the total stride are zero-padded and the logits cropped back.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_mamba.architectures.base import NoDeepSupervisionDecoder, SegmentationNetwork
from nnunet_mamba.architectures.plans import conv_kernel_sizes_from_plan
from nnunet_mamba.architectures.registry import register_network, register_variant
from nnunet_mamba.blocks.layer_norm import layer_norm_saved_elements
from nnunet_mamba.blocks.mamba import Mamba
from nnunet_mamba.blocks.pooling import max_pool

#: the official widths at channel multiplier 1
BASE_WIDTHS = (8, 16, 24, 32, 48, 64)
#: down-samplings (after enc1 .. enc5)
NUM_POOLINGS = 5
REVERSE_MODES = ("token", "channel")
SEPARABLE_NORMS = ("batch", "group")
#: channel groups of the network's GroupNorms: min(4, C)
MAX_GROUPS = 4


def widths_for(channel_multiplier: float) -> list[int]:
    """The official widths for a channel multiplier: multiples of 4, at least 4."""
    return [max(4, (int(c * channel_multiplier) // 4) * 4) for c in BASE_WIDTHS]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(MAX_GROUPS, channels), channels)


def _divisor_groups(channels: int) -> int:
    """The largest group count <= 4 that divides ``channels`` (a quarter of 24 channels is 6: 3 groups)."""
    return max(g for g in range(1, MAX_GROUPS + 1) if channels % g == 0)


def _same_padding(kernel: Sequence[int]) -> tuple[int, ...]:
    return tuple(k // 2 for k in kernel)


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient.

    The gradient reaching a branch's map from the token layout is a transposed view. With batch 1 and a spatial
    axis of size 1 its strides are ambiguous, and PyTorch's CPU BatchNorm backward (2D and 3D; seen with torch
    2.14) returns a wrong input gradient for it (tests/test_ultralbm_unet.py shows it); a contiguous copy is right.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class DepthwiseSeparableConv(nn.Module):
    """DW k^d conv -> norm -> GELU -> PW 1^d conv -> norm -> GELU, no biases (the official
    ``DepthwiseSeparableConvBNAct`` with in = out channels)."""

    def __init__(self, channels: int, kernel: Sequence[int], conv_op, norm: str):
        super().__init__()
        spatial_dims = convert_conv_op_to_dim(conv_op)
        batch_norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d

        def make_norm() -> nn.Module:
            return batch_norm(channels) if norm == "batch" else nn.GroupNorm(_divisor_groups(channels), channels)

        self.dw = conv_op(channels, channels, tuple(kernel), padding=_same_padding(kernel), groups=channels,
                          bias=False)
        self.norm_dw = make_norm()
        self.pw = conv_op(channels, channels, 1, bias=False)
        self.norm_pw = make_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ContiguousGradient.apply(F.gelu(self.norm_pw(self.pw(F.gelu(self.norm_dw(self.dw(x)))))))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Five maps of its width: its input, the two norms' inputs and the two GELUs' inputs."""
        return 5 * self.dw.in_channels * math.prod(input_size)


class MultiBranchBlock(nn.Module):
    """The skeleton LMBP and GLMBP share, on a channels-first map ``(B, C_in, *S) -> (B, C_out, *S)``:
    tokens -> LayerNorm -> four channel quarters -> branches (each ``+ gamma * x_i``) -> concatenation -> the same
    LayerNorm -> Linear. Subclasses give :meth:`branch_outputs` (the branch results before ``+ gamma * x_i``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if in_channels % 4:
            raise ValueError(f"{type(self).__name__} splits its input into four channel quarters: in_channels must "
                             f"be a multiple of 4, got {in_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(in_channels, out_channels)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def branch_outputs(self, quarters: tuple[torch.Tensor, ...], spatial: Sequence[int]) -> list[torch.Tensor]:
        raise NotImplementedError

    def branches_saved_elements(self, input_size: Sequence[int]) -> int:
        """What :meth:`branch_outputs` keeps for backward on a map of ``input_size``."""
        raise NotImplementedError

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward on a map of ``input_size`` (one sample), as read off a real forward pass:
        per token, the LayerNorm's contiguous input, its output, the concatenation and its norm (C each) and the
        statistics of both norms; then the branches."""
        tokens = math.prod(input_size)
        norms = 2 * layer_norm_saved_elements(self.in_channels, tokens) + 2 * self.in_channels * tokens
        return norms + self.branches_saved_elements(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:  # as the official blocks: half inputs are promoted
            x = x.float()
        batch, channels, *spatial = x.shape
        tokens = x.reshape(batch, channels, math.prod(spatial)).transpose(1, 2)
        quarters = self.norm(tokens).chunk(4, dim=-1)
        branches = self.branch_outputs(quarters, spatial) + [quarters[3]]  # x4: the identity branch
        mixed = torch.cat([branch + self.skip_scale * quarter for branch, quarter in zip(branches, quarters)], dim=-1)
        return self.proj(self.norm(mixed)).transpose(1, 2).reshape(batch, self.out_channels, *spatial)


def _tokens_to_map(tokens: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *spatial)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class LMBP(MultiBranchBlock):
    """Local multi-branch perception: three separate depthwise-separable conv branches and the identity."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], conv_op, separable_norm: str):
        super().__init__(in_channels, out_channels)
        self.local = nn.ModuleList(DepthwiseSeparableConv(in_channels // 4, kernel, conv_op, separable_norm)
                                   for _ in range(3))

    def branch_outputs(self, quarters, spatial):
        return [_map_to_tokens(conv(_tokens_to_map(q, spatial))) for conv, q in zip(self.local, quarters)]

    def branches_saved_elements(self, input_size: Sequence[int]) -> int:
        return sum(conv.compute_conv_feature_map_size(input_size) for conv in self.local)


class GLMBP(MultiBranchBlock):
    """Global-local multi-branch perception: x1, x2 through one shared Mamba forward and reversed (``reverse``:
    "token" flips the sequence, "channel" the channels as the official code), x3 a depthwise-separable conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], conv_op, separable_norm: str,
                 reverse: str = "token", d_state: int = 16, token_mixer: str = "scan"):
        super().__init__(in_channels, out_channels)
        self.reverse = reverse
        self.mamba = Mamba(in_channels // 4, d_state=d_state, d_conv=4, expand=2, token_mixer=token_mixer)
        self.local = DepthwiseSeparableConv(in_channels // 4, kernel, conv_op, separable_norm)

    def global_branches(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``M(x) + flip(M(flip(x)))`` for x1 and x2: the four passes as one Mamba call stacked on the batch."""
        axis = 1 if self.reverse == "token" else 2  # (B, N, C/4)
        forward1, forward2, backward1, backward2 = self.mamba(
            torch.cat([x1, x2, x1.flip(axis), x2.flip(axis)], dim=0)).chunk(4, dim=0)
        return forward1 + backward1.flip(axis), forward2 + backward2.flip(axis)

    def branch_outputs(self, quarters, spatial):
        global1, global2 = self.global_branches(quarters[0], quarters[1])
        return [global1, global2, _map_to_tokens(self.local(_tokens_to_map(quarters[2], spatial)))]

    def branches_saved_elements(self, input_size: Sequence[int]) -> int:
        """The local branch, and the one Mamba call on four sequences (x1, x2 and their reverses)."""
        return (self.local.compute_conv_feature_map_size(input_size)
                + self.mamba.compute_conv_feature_map_size(math.prod(input_size), sequences=4))


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bi-/trilinear with align_corners to ``size`` (the official x2 where the plan pools by 2; with
    align_corners the result depends on the sizes only)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=True)


class UltraLBMEncoder(nn.Module):
    """enc1..enc6; returns the skips t1..t5 (post-pool, post-GELU) and the bottleneck."""

    def __init__(self, input_channels, widths, strides, level_kernels, conv_op, block_options):
        super().__init__()
        w = widths
        self.strides = strides
        self.stages = nn.ModuleList([
            conv_op(input_channels, w[0], level_kernels[0], padding=_same_padding(level_kernels[0])),
            conv_op(w[0], w[1], level_kernels[1], padding=_same_padding(level_kernels[1])),
            conv_op(w[1], w[2], level_kernels[2], padding=_same_padding(level_kernels[2])),
            LMBP(w[2], w[3], _depthwise_kernel(level_kernels[3], 3), conv_op, block_options["separable_norm"]),
            GLMBP(w[3], w[4], _depthwise_kernel(level_kernels[4], 5), conv_op, **block_options),
            GLMBP(w[4], w[5], _depthwise_kernel(level_kernels[5], 7), conv_op, **block_options),
        ])
        self.norms = nn.ModuleList(_group_norm(c) for c in w[:5])

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for stage, norm, stride in zip(self.stages, self.norms, self.strides):
            x = F.gelu(max_pool(norm(stage(x)), stride))
            skips.append(x)
        return skips, F.gelu(self.stages[5](x))

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """enc1..enc6 on ``grids``, the map of every level: each conv keeps its input; each GroupNorm its input; a
        max-pool its input and indices; each GELU its input; each skip is kept once (by ``k * t`` and the next
        conv); the blocks count themselves."""
        voxels = [math.prod(grid) for grid in grids]
        total = self.stages[0].in_channels * voxels[0]
        for level, (stage, norm) in enumerate(zip(self.stages[:5], self.norms)):
            if isinstance(stage, MultiBranchBlock):
                total += stage.compute_conv_feature_map_size(grids[level])
            pooled = voxels[level + 1] != voxels[level]
            # GroupNorm and max-pool inputs (or the GELU's without pooling), indices, the GELU input, the skip
            total += norm.num_channels * ((2 if pooled else 1) * voxels[level]
                                          + (3 if pooled else 2) * voxels[level + 1])
        return total + self.stages[5].compute_conv_feature_map_size(grids[5]) + self.stages[5].out_channels * voxels[5]


class UltraLBMDecoder(NoDeepSupervisionDecoder):
    """dec1..dec5 with the scalar-weighted skip sums, and the 1x1 head (``seg_layers[0]``)."""

    def __init__(self, widths, num_classes, level_kernels, conv_op, block_options, learnable_skip: bool):
        super().__init__()
        w = widths
        self.stages = nn.ModuleList([
            GLMBP(w[5], w[4], _depthwise_kernel(level_kernels[5], 7), conv_op, **block_options),
            GLMBP(w[4], w[3], _depthwise_kernel(level_kernels[5], 5), conv_op, **block_options),
            LMBP(w[3], w[2], _depthwise_kernel(level_kernels[4], 3), conv_op, block_options["separable_norm"]),
            conv_op(w[2], w[1], level_kernels[3], padding=_same_padding(level_kernels[3])),
            conv_op(w[1], w[0], level_kernels[2], padding=_same_padding(level_kernels[2])),
        ])
        self.norms = nn.ModuleList(_group_norm(c) for c in (w[4], w[3], w[2], w[1], w[0]))
        self.skip_weight = nn.Parameter(torch.ones(())) if learnable_skip else None
        self.seg_layers = nn.ModuleList([conv_op(w[0], num_classes, 1)])

    def forward(self, skips: list[torch.Tensor], bottleneck: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        x = bottleneck
        for stage, norm, skip in zip(self.stages, self.norms, reversed(skips)):
            x = F.gelu(_upsample(norm(stage(x)), skip.shape[2:]))
            x = x + (skip if self.skip_weight is None else self.skip_weight * skip)
        return _upsample(self.seg_layers[0](x), output_size)

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """dec1..dec5 on ``grids`` (the map of every level; dec1 runs at the bottleneck, each later one a level
        up): each stage its input (the blocks count themselves), its GroupNorm and GELU their inputs; the head its
        input."""
        voxels = [math.prod(grid) for grid in grids]
        total = 0
        for stage, level, target in zip(self.stages, (5, 5, 4, 3, 2), (5, 4, 3, 2, 1)):
            if isinstance(stage, MultiBranchBlock):
                total += stage.compute_conv_feature_map_size(grids[level])
            else:
                total += stage.in_channels * voxels[level]
            total += stage.out_channels * (voxels[level] + voxels[target])
        return total + self.seg_layers[0].in_channels * voxels[1]


def _depthwise_kernel(level_kernel: Sequence[int], size: int) -> tuple[int, ...]:
    """The block's kernel on every axis the plan convolves at this level, 1 where the plan's kernel is 1."""
    return tuple(1 if k == 1 else size for k in level_kernel)


@register_network("ultralbm_unet", dims=(2, 3),
                  description="UltraLBM-UNet (Fan et al. 2025): 34k-parameter UNet of conv, LMBP and bidirectional "
                              "Mamba GLMBP blocks")
class UltraLBMUNet(SegmentationNetwork):
    """UltraLBM-UNet for 2D (``conv_op=nn.Conv2d``) and 3D (``conv_op=nn.Conv3d``); one output (logits), no deep
    supervision. The design and what of it is ours are in the module docstring.

    Args:
        input_channels: image channels (modalities).
        num_classes: output channels (logits; the official network has one, followed by a sigmoid).
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        strides: the five down-samplings (after enc1..enc5), each an int or one int per axis; up-sampling undoes
            each by the same factor.
        kernel_sizes: per resolution level 0..5 (level l: after l down-samplings), an int or one per axis; the
            convs use it, the depthwise kernels take 1 on its axes of size 1. None: 3 everywhere (official).
        input_shape: the training patch size, if known: checked against the total stride.
        channel_multiplier: width factor (0.5: the student UltraLBM-UNet-T).
        widths: the six widths instead of ``channel_multiplier`` (multiples of 4).
        reverse: the reversed Mamba pass of GLMBP: "token" (the paper, bidirectional) or "channel" (the official
            code's channel flip, forward-only).
        learnable_skip: one learnable scalar k on the skips (official); False: plain sums.
        separable_norm: norm of the depthwise-separable convs, "batch" (official) or "group".
        mamba_dt_init: keep Mamba's own dt_proj initialisation (the official init zeroes dt_proj.bias).
        d_state: SSM state size (16).
        deep_supervision: must be False; the network has a single output.
        token_mixer: "scan" (the paper), or a No-Mamba ablation of both Mamba passes: "identity" or "dwconv"
            (:mod:`nnunet_mamba.blocks.token_mixer`).
    """

    supports_deep_supervision = False
    pools_per_level = (1,) * NUM_POOLINGS

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        conv_op: type[nn.Module] = nn.Conv2d,
        strides: Sequence[int | Sequence[int]] = (2,) * NUM_POOLINGS,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
        input_shape: Sequence[int] | None = None,
        channel_multiplier: float = 1.0,
        widths: Sequence[int] | None = None,
        reverse: str = "token",
        learnable_skip: bool = True,
        separable_norm: str = "batch",
        mamba_dt_init: bool = False,
        d_state: int = 16,
        deep_supervision: bool = False,
        token_mixer: str = "scan",
    ):
        super().__init__(conv_op)
        self.check_deep_supervision_request(deep_supervision)
        name = type(self).__name__
        if reverse not in REVERSE_MODES:
            raise ValueError(f"{name} reverse must be one of {', '.join(map(repr, REVERSE_MODES))} (\"token\": the "
                             f"paper's bidirectional scan; \"channel\": the official code's channel flip), "
                             f"got {reverse!r}")
        if separable_norm not in SEPARABLE_NORMS:
            raise ValueError(f"{name} separable_norm must be one of {', '.join(map(repr, SEPARABLE_NORMS))}, "
                             f"got {separable_norm!r}")
        if widths is None:
            if not channel_multiplier > 0:
                raise ValueError(f"{name} channel_multiplier must be > 0, got {channel_multiplier}")
            widths = widths_for(channel_multiplier)
        widths = [int(w) for w in widths]
        if len(widths) != len(BASE_WIDTHS) or any(w < 4 or w % 4 for w in widths):
            raise ValueError(f"{name} widths must be {len(BASE_WIDTHS)} positive multiples of 4 (its blocks split "
                             f"channels into quarters), got {widths}")
        if len(strides) != NUM_POOLINGS:
            raise ValueError(f"{name} needs {NUM_POOLINGS} strides (one per down-sampling), got {len(strides)}")
        self.strides = [self.per_axis(1)] + [self.per_axis(s) for s in strides]
        if input_shape is not None:
            self.check_input_shape(input_shape)
        self.level_kernels = self._level_kernels(kernel_sizes)
        self.widths = widths
        self.channel_multiplier = channel_multiplier
        block_options = {"separable_norm": separable_norm, "reverse": reverse, "d_state": d_state,
                         "token_mixer": token_mixer}
        self.encoder = UltraLBMEncoder(input_channels, widths, self.strides[1:], self.level_kernels, conv_op,
                                       block_options)
        self.decoder = UltraLBMDecoder(widths, num_classes, self.level_kernels, conv_op, block_options,
                                       learnable_skip)
        self.apply(_official_init)
        if mamba_dt_init:  # a no-op for the No-Mamba ablation, which has no dt_proj
            for module in self.modules():
                if isinstance(module, Mamba):
                    module.reset_ssm_parameters()
        self.key_to_encoder = "encoder"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0",)

    def _level_kernels(self, kernel_sizes) -> list[tuple[int, ...]]:
        if kernel_sizes is None:
            return [(3,) * self.spatial_dims] * (NUM_POOLINGS + 1)
        if len(kernel_sizes) != NUM_POOLINGS + 1:
            raise ValueError(f"{type(self).__name__} kernel_sizes needs one entry per resolution level "
                             f"({NUM_POOLINGS + 1}), got {len(kernel_sizes)}")
        kernels = [self.per_axis(k) for k in kernel_sizes]  # same shape rules as strides
        if any(k % 2 == 0 for kernel in kernels for k in kernel):
            raise ValueError(f"{type(self).__name__} kernel sizes must be odd ('same' padding), got "
                             f"{[list(k) for k in kernels]}")
        return kernels

    @classmethod
    def plan_arguments(cls, configuration_manager, overrides: dict) -> dict:
        """The plan's first five pooling strides (stride 1 where it pools fewer times) and, per resolution level,
        its conv kernels (the deepest stage's where the plan has fewer stages)."""
        arguments = super().plan_arguments(configuration_manager, overrides)
        plan_kernels = conv_kernel_sizes_from_plan(configuration_manager, len(arguments["input_shape"]))
        arguments["kernel_sizes"] = None if plan_kernels is None else [
            plan_kernels[min(level, len(plan_kernels) - 1)] for level in range(NUM_POOLINGS + 1)]
        return arguments

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(*self.encoder(x), x.shape[2:])

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Activation elements one training forward pass of one sample saves for backward.

        The encoder and the decoder count their stages (:meth:`UltraLBMEncoder.compute_conv_feature_map_size`),
        the LMBP/GLMBP blocks themselves, on the input padded to the total stride.
        """
        grids = self.level_grids(input_size)[1:]  # levels 0..5
        return int(self.encoder.compute_conv_feature_map_size(grids)
                   + self.decoder.compute_conv_feature_map_size(grids))


@register_network("ultralbm_unet_t", dims=(2, 3),
                  description="UltraLBM-UNet-T (Fan et al. 2025): the half-width distillation student, 11k parameters")
class UltraLBMUNetT(UltraLBMUNet):
    """UltraLBM-UNet-T, the student of the paper's distillation: UltraLBM-UNet at channel multiplier 0.5."""

    def __init__(self, *args, channel_multiplier: float = 0.5, **kwargs):
        super().__init__(*args, channel_multiplier=channel_multiplier, **kwargs)


#: the official code's reversed pass, forward-only (see the module docstring)
OFFICIAL_CHANNEL_FLIP = {"reverse": "channel"}
register_variant("ultralbm_unet_channel_flip", of="ultralbm_unet", args=OFFICIAL_CHANNEL_FLIP,
                 description="UltraLBM-UNet with the official code's channel flip in place of the token flip")
register_variant("ultralbm_unet_t_channel_flip", of="ultralbm_unet_t", args=OFFICIAL_CHANNEL_FLIP,
                 description="UltraLBM-UNet-T with the official code's channel flip in place of the token flip")


@torch.no_grad()
def _official_init(module: nn.Module) -> None:
    """The official ``_init_weights`` (spec 1.5), for 2D and 3D convs alike."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Conv1d):
        module.weight.normal_(0, math.sqrt(2.0 / (module.kernel_size[0] * module.out_channels)))
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
        fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
        module.weight.normal_(0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            module.bias.zero_()
