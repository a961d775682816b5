"""LightM-UNet (Liao et al., 2024) for 2D and 3D, as the official code builds it.

The official network (MrBlankness/LightM-UNet, ``nets/LightMUNet.py`` at d2bed4a) is MONAI's SegResNet with every
encoder convolution replaced by a Residual Vision Mamba (RVM) layer:

* stem: depthwise 3^d conv + pointwise conv to 32 channels (no bias, no norm);
* encoder levels of (1, 2, 2, 4) ResMambaBlocks, ``x + RVM(ReLU(GN(RVM(ReLU(GN(x))))))``; between levels a
  channel-doubling RVM layer at the higher resolution, then a max-pool;
* RVM layer: tokens = the feature map flattened in raster order (one direction, one token per voxel);
  ``LN -> Mamba + s * x -> the same LN -> Linear``, s one learnable scalar;
* decoder: 1^d conv halving the channels, bi-/trilinear x2 interpolation, add the skip, ResUpBlock
  ``ReLU(GN(DWConv(ReLU(GN(x))) + s' * x))``;
* head: GN -> ReLU -> depthwise 1^d conv -> pointwise conv to the classes (logits); no deep supervision.

21 RVM layers, 5,011,765 parameters in 2D (3 input channels, 2 classes) and 5,015,766 in 3D (1 channel, 3 classes),
85 % of them inside the Mamba blocks. ``variant="v0"`` is the first upload (36411aa): a full 3^d conv stem, MONAI
``ResBlock`` decoder blocks (two 3^d convs) and a full 1^d conv head; 5,375,991 / 6,150,168 parameters; registered
as ``light_m_unet_v0``. The paper's 1.09 M / 1.87 M are ``thop`` counts of v0 that miss every Mamba parameter (see
:mod:`nnunet_mamba.benchmarks.flops`, protocol ``thop``).

For nnU-Net, each of the three down-samplings takes one pooling stride of the plan per axis (anisotropic plans
pool some axes fewer times; an axis that stops pooling gets stride 1). An input whose size is not a multiple of
the total stride is padded internally and the logits cropped back.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_mamba.architectures.base import NoDeepSupervisionDecoder, SegmentationNetwork
from nnunet_mamba.architectures.registry import register_network, register_variant
from nnunet_mamba.blocks.channels_first import ChannelsFirstLinear
from nnunet_mamba.blocks.convolutions import depthwise_conv, pointwise_conv
from nnunet_mamba.blocks.layer_norm import ChannelsFirstLayerNorm, layer_norm_saved_elements
from nnunet_mamba.blocks.mamba import Mamba
from nnunet_mamba.blocks.pooling import MaxPool2d, MaxPool3d
from nnunet_mamba.blocks.upsampling import LinearUpsample

VARIANTS = ("official", "v0")
#: ResMambaBlocks per level, bottleneck last (the official trainer's blocks_down)
DEFAULT_BLOCKS_DOWN = (1, 2, 2, 4)
SKIP_SCALES = ("scalar", "channel")
GROUPS = 8


def _pool_op(spatial_dims: int) -> type[nn.Module]:
    return MaxPool2d if spatial_dims == 2 else MaxPool3d


def depthwise_separable_conv(conv_op, in_channels: int, out_channels: int, kernel_size: int,
                             bias: bool) -> nn.Sequential:
    """The official DWConv: depthwise k^d conv, then pointwise conv, nothing in between."""
    return nn.Sequential(depthwise_conv(conv_op, in_channels, kernel_size, bias),
                         pointwise_conv(conv_op, in_channels, out_channels, bias))


class RVMLayer(nn.Module):
    """Residual Vision Mamba layer on a channels-first feature map ``(B, C_in, *S) -> (B, C_out, *S)``.

    ``out = Linear(LN(Mamba(LN(x)) + s * x))`` over the raster-flattened tokens. The official layer applies one
    LayerNorm twice (shared weights); ``separate_post_ln`` gives the second application its own LayerNorm, as the
    paper's equations (1)-(2) read. ``skip_scale`` "scalar" is the official single s; "channel" is the paper's
    s in R^C.
    """

    def __init__(self, in_channels: int, out_channels: int, d_state: int = 16, skip_scale: str = "scalar",
                 separate_post_ln: bool = False, token_mixer: str = "scan"):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = ChannelsFirstLayerNorm(in_channels)  # nn.LayerNorm's parameters
        self.mamba = Mamba(in_channels, d_state=d_state, d_conv=4, expand=2, token_mixer=token_mixer)
        self.proj = ChannelsFirstLinear(in_channels, out_channels)  # nn.Linear's parameters
        self.skip_scale = nn.Parameter(torch.ones(1 if skip_scale == "scalar" else in_channels))
        self.post_norm = ChannelsFirstLayerNorm(in_channels) if separate_post_ln else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:  # as the official layer: half inputs are promoted
            x = x.float()
        batch, _, *spatial = x.shape
        # channels-first throughout, (B, C, L): the norms, the Mamba block and the projection all read and write
        # that layout, so the map is never transposed into a copy
        tokens = x.reshape(batch, self.in_channels, math.prod(spatial))
        # Mamba(LN(x)) + s * x in one pass over the map
        mixed = torch.addcmul(self.mamba.forward_channels_first(self.norm(tokens)), self.skip_scale.view(-1, 1), tokens)
        mixed = (self.post_norm or self.norm)(mixed)
        # through the module, as the official layer: thop counts the projection by its forward hook
        return self.proj(mixed).view(batch, self.out_channels, *spatial)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward on a map of ``input_size``: the two LayerNorm applications (their inputs
        and statistics), the projection's input, and the Mamba block on the raster-flattened tokens."""
        tokens = math.prod(input_size)
        return (2 * layer_norm_saved_elements(self.in_channels, tokens) + self.in_channels * tokens
                + self.mamba.compute_conv_feature_map_size(tokens))


class ResMambaBlock(nn.Module):
    """Pre-activation residual block of two RVM layers: ``x + RVM2(ReLU(GN2(RVM1(ReLU(GN1(x))))))``."""

    def __init__(self, channels: int, **rvm_options):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, channels)
        self.norm2 = nn.GroupNorm(GROUPS, channels)
        self.act = nn.ReLU(inplace=True)
        self.rvm1 = RVMLayer(channels, channels, **rvm_options)
        self.rvm2 = RVMLayer(channels, channels, **rvm_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rvm1(self.act(self.norm1(x)))
        return x + self.rvm2(self.act(self.norm2(y)))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """The GroupNorms keep their inputs and two statistics per group; each in-place ReLU's output is the input
        its RVM layer keeps (counted there)."""
        group_norms = 2 * (self.norm1.num_channels * math.prod(input_size) + 2 * self.norm1.num_groups)
        return (group_norms + self.rvm1.compute_conv_feature_map_size(input_size)
                + self.rvm2.compute_conv_feature_map_size(input_size))


class ResUpBlock(nn.Module):
    """The official decoder block: ``ReLU(GN2(DWConv(ReLU(GN1(x))) + s' * x))``, s' a scalar."""

    def __init__(self, channels: int, conv_op):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, channels)
        self.norm2 = nn.GroupNorm(GROUPS, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = depthwise_separable_conv(conv_op, channels, channels, 3, bias=False)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.act(self.norm1(x))) + self.skip_scale * x
        return self.act(self.norm2(y))


class ConvResBlock(nn.Module):
    """v0's decoder block (MONAI's SegResNet ``ResBlock``): ``x + Conv(ReLU(GN(Conv(ReLU(GN(x))))))``."""

    def __init__(self, channels: int, conv_op):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, channels)
        self.norm2 = nn.GroupNorm(GROUPS, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = conv_op(channels, channels, 3, padding=1, bias=False)
        self.conv2 = conv_op(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        return x + self.conv2(self.act(self.norm2(y)))


class LightMUNetEncoder(nn.Module):
    def __init__(self, input_channels, widths, blocks, strides, conv_op, variant, rvm_options):
        super().__init__()
        spatial_dims = convert_conv_op_to_dim(conv_op)
        self.stem = (conv_op(input_channels, widths[0], 3, padding=1, bias=False) if variant == "v0" else
                     depthwise_separable_conv(conv_op, input_channels, widths[0], 3, bias=False))
        # level i > 0 starts with a channel-doubling RVM layer at the higher resolution, then the max-pool
        self.transitions = nn.ModuleList(
            nn.Sequential(RVMLayer(widths[i - 1], widths[i], **rvm_options),
                          _pool_op(spatial_dims)(kernel_size=strides[i - 1], stride=strides[i - 1]))
            for i in range(1, len(widths)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ResMambaBlock(width, **rvm_options) for _ in range(count)))
            for width, count in zip(widths, blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every level, shallowest first (the last one is the bottleneck)."""
        x = self.stages[0](self.stem(x))
        levels = [x]
        for transition, stage in zip(self.transitions, self.stages[1:]):
            x = stage(transition(x))
            levels.append(x)
        return levels

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """Stages and transitions on ``grids``, the map of every level; a transition runs at the higher resolution
        and its max-pool keeps the RVM layer's output."""
        total = sum(block.compute_conv_feature_map_size(grid)
                    for stage, grid in zip(self.stages, grids) for block in stage)
        for (rvm, _), grid in zip(self.transitions, grids):
            total += rvm.compute_conv_feature_map_size(grid) + rvm.out_channels * math.prod(grid)
        return total


class LightMUNetDecoder(NoDeepSupervisionDecoder):
    def __init__(self, widths, strides, num_classes, conv_op, variant):
        super().__init__()
        spatial_dims = convert_conv_op_to_dim(conv_op)
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        deepest_first = list(widths[::-1])
        # official order: the 1^d conv at the low resolution, then the interpolation
        self.upsamples = nn.ModuleList(
            nn.Sequential(pointwise_conv(conv_op, deepest_first[i], deepest_first[i + 1], bias=False),
                          LinearUpsample(scale_factor=tuple(float(s) for s in strides[::-1][i]), mode=mode,
                                         align_corners=False))
            for i in range(len(widths) - 1))
        block = ConvResBlock if variant == "v0" else ResUpBlock
        self.blocks = nn.ModuleList(block(deepest_first[i + 1], conv_op) for i in range(len(widths) - 1))
        head = ([pointwise_conv(conv_op, widths[0], num_classes, bias=True)] if variant == "v0" else
                list(depthwise_separable_conv(conv_op, widths[0], num_classes, 1, bias=True)))
        self.seg_layers = nn.ModuleList([nn.Sequential(nn.GroupNorm(GROUPS, widths[0]), nn.ReLU(inplace=True), *head)])

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x = levels[-1]
        # the Sequential's two layers called one by one (the up-sampling adds the skip in the same pass); the
        # Sequential keeps the official state-dict keys
        for (project, upsample), block, skip in zip(self.upsamples, self.blocks, levels[-2::-1]):
            x = block(upsample(project(x), skip))  # upsample(project(x)) + skip
        return self.seg_layers[0](x)

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """Per level, the up-convolution's input and five maps of the block's width (the interpolated sum and the
        block's norms and activations); the head three maps at full resolution."""
        deepest_first = grids[::-1]
        total = 0
        for (conv, _), block, deeper, grid in zip(self.upsamples, self.blocks, deepest_first, deepest_first[1:]):
            total += conv.in_channels * math.prod(deeper) + 5 * conv.out_channels * math.prod(grid)
        return total + 3 * self.seg_layers[0][0].num_channels * math.prod(grids[0])


@register_network("light_m_unet", dims=(2, 3),
                  description="LightM-UNet (Liao et al. 2024): Mamba encoder (RVM layers), light conv decoder",
                  small={"init_filters": 16, "blocks_down": (1, 1, 1, 1)})
class LightMUNet(SegmentationNetwork):
    """LightM-UNet for 2D (``conv_op=nn.Conv2d``) and 3D (``conv_op=nn.Conv3d``) inputs; one output, no deep
    supervision.

    Args:
        input_channels: image channels (modalities).
        num_classes: output channels; logits.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        strides: one stride per down-sampling (three for four levels), each an int or one int per axis.
        input_shape: the training patch size, if known: checked against the total stride.
        init_filters: width of the first level (32 in the official trainer); doubled per level. A multiple of 8
            (GroupNorm with 8 groups).
        blocks_down: ResMambaBlocks per level, bottleneck last (official (1, 2, 2, 4)).
        variant: "official" (the code at HEAD, d2bed4a) or "v0" (the first upload, 36411aa, on which the paper's
            complexity figures were counted).
        skip_scale: "scalar" (official s) or "channel" (the paper's per-channel s).
        separate_post_ln: give the RVM layer's second LayerNorm its own weights (the paper; the code shares one).
        d_state: SSM state size (16).
        deep_supervision: must be False; the network has a single output.
        token_mixer: "scan" (the paper), or a No-Mamba ablation: "identity" or "dwconv"
            (:mod:`nnunet_mamba.blocks.token_mixer`).
    """

    supports_deep_supervision = False

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        conv_op: type[nn.Module] = nn.Conv2d,
        strides: Sequence[int | Sequence[int]] = (2, 2, 2),
        input_shape: Sequence[int] | None = None,
        init_filters: int = 32,
        blocks_down: Sequence[int] = DEFAULT_BLOCKS_DOWN,
        variant: str = "official",
        skip_scale: str = "scalar",
        separate_post_ln: bool = False,
        d_state: int = 16,
        deep_supervision: bool = False,
        token_mixer: str = "scan",
    ):
        super().__init__(conv_op)
        self.check_deep_supervision_request(deep_supervision)
        if variant not in VARIANTS:
            raise ValueError(f"LightMUNet variant must be one of {', '.join(map(repr, VARIANTS))} (\"official\": the "
                             f"code at HEAD; \"v0\": the first upload), got {variant!r}")
        if skip_scale not in SKIP_SCALES:
            raise ValueError(f"LightMUNet skip_scale must be one of {', '.join(map(repr, SKIP_SCALES))}, "
                             f"got {skip_scale!r}")
        if init_filters < GROUPS or init_filters % GROUPS:
            raise ValueError(f"LightMUNet init_filters must be a positive multiple of {GROUPS} (GroupNorm with "
                             f"{GROUPS} groups), got {init_filters}")
        if len(blocks_down) < 2 or any(int(b) < 1 for b in blocks_down):
            raise ValueError(f"LightMUNet blocks_down needs at least two levels of >= 1 blocks, "
                             f"got {list(blocks_down)}")
        if len(strides) != len(blocks_down) - 1:
            raise ValueError(f"LightMUNet with {len(blocks_down)} levels needs {len(blocks_down) - 1} strides (one per "
                             f"down-sampling), got {len(strides)}")
        self.variant = variant
        self.strides = [self.per_axis(1)] + [self.per_axis(s) for s in strides]
        if input_shape is not None:
            self.check_input_shape(input_shape)
        self.widths = [init_filters * 2 ** i for i in range(len(blocks_down))]
        self.blocks_down = tuple(int(b) for b in blocks_down)
        rvm_options = {"d_state": d_state, "skip_scale": skip_scale, "separate_post_ln": separate_post_ln,
                       "token_mixer": token_mixer}
        self.encoder = LightMUNetEncoder(input_channels, self.widths, self.blocks_down, self.strides[1:], conv_op,
                                         variant, rvm_options)
        self.decoder = LightMUNetDecoder(self.widths, self.strides[1:], num_classes, conv_op, variant)
        self.key_to_encoder = "encoder"
        self.key_to_stem = "encoder.stem"
        # dynamic-network-architectures wants same-shaped in-projections; the official stem's pointwise conv
        # (encoder.stem.1) also depends on the input channels and differs in shape from the depthwise one
        self.keys_to_in_proj = ("encoder.stem",) if variant == "v0" else ("encoder.stem.0",)

    @classmethod
    def plan_pools_per_level(cls, overrides: dict) -> tuple[int, ...]:
        """One plan pooling per down-sampling (stride 1 where the plan pools fewer times); as many down-samplings
        as ``blocks_down`` has levels after the first."""
        return (1,) * (len(overrides.get("blocks_down", DEFAULT_BLOCKS_DOWN)) - 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Activation elements one training forward pass of one sample saves for backward.

        The encoder's blocks (RVM layers with their Mamba blocks, ResMambaBlocks, the transitions) and the decoder
        each count what they keep, on the input padded to the total stride; ``tests/test_memory_model.py`` holds
        the sum to a real forward pass.
        """
        _, *grids = self.level_grids(input_size)  # the first stride is 1: level 0 is the padded input
        return int(self.encoder.compute_conv_feature_map_size(grids)
                   + self.decoder.compute_conv_feature_map_size(grids))


register_variant("light_m_unet_v0", of="light_m_unet", args={"variant": "v0"},
                 description="LightM-UNet's first upload (36411aa; full-conv stem, ResBlock decoder, 1x1 head), on "
                             "which the paper's complexity figures were counted")
