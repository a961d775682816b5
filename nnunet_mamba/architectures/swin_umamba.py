"""Swin-UMamba and Swin-UMamba-dagger (Liu et al., MICCAI 2024) for 2D (faithful) and 3D (our design).

Both networks share a VMamba-T-shaped encoder (:class:`VSSEncoder`): a patch embedding, four VSS stages
(depths 2, 2, 9, 2; widths 96, 192, 384, 768; VSS blocks without MLP, as VMamba v0) with patch merging
between them, drop path rising linearly to 0.2 over its 15 blocks, and no final norm. Its stages and
mergings are what the VMamba-T v0 ImageNet checkpoint initialises (:meth:`load_pretrained`) and what the
trainers freeze for the first epochs (:meth:`pretrained_encoder_modules`).

Swin-UMamba (official code at 2c1f72e, ``nets/SwinUMamba.py``; 59.89M parameters for 1 -> 14):

* stem: 7x7 stride-2 convolution to 48 channels and an affine InstanceNorm, no activation (H/2);
* the encoder with a *2x2* patch embedding from the 48 stem channels (H/4, stages at H/4 ... H/32);
* a UNETR-style residual convolution decoder: residual blocks (conv-IN-LReLU-conv-IN plus a 1x1-conv-IN
  projection when the width changes, sum, LReLU; InstanceNorm without affine, convolutions without bias)
  on five skips (the raw input, the stem and the first three stages; each doubles the width), the
  bottleneck taken as it is; five up blocks (2x2 transposed convolution, concatenation with the skip,
  residual block); a last residual block at full resolution; 1x1 heads at H, H/2, H/4 and H/8.

Swin-UMamba-dagger (``nets/SwinUMambaD.py``; 27.50M parameters for 1 -> 14):

* the encoder with VMamba's own 4x4 patch embedding from the input channels;
* a Mamba decoder: per level, patch expanding (linear to 2x the width, scattered to 2x2 positions at half
  the width, LayerNorm), concatenation with the stage output of the encoder, a linear merge back to the
  skip's width, two VSS blocks (drop path falling from 0.2 to 0); a final 4x4 patch expanding at 96
  channels; 1x1 heads at H, H/4, H/8 and H/16 (there is no H/2 feature).

Deep supervision returns those four outputs, highest resolution first (the official trainers'
``deep_supervision_scales``).

3D (our design; the authors define none and their checkpoint is 2D): the same topologies with SS3D blocks
(six scan directions), 3D patch embedding/merging/expanding and 3D convolutions, with per-axis strides
from the plan (Swin-UMamba: one plan pooling per level, the stem included; dagger: two for the embedding,
one per merging, as VM-UNet). The stem kernel is 7 along axes it downsamples and 3 along the others (an
anisotropic plan keeps the thick axis at full resolution there). 3D networks train from scratch. Inputs
whose size is not a multiple of the total stride (32 per axis for the 2D defaults) are zero-padded
internally and the logits cropped back, as VM-UNet does.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp, get_matching_instancenorm
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_mamba.architectures.base import SegmentationNetwork
from nnunet_mamba.architectures.registry import register_network, register_variant
from nnunet_mamba.blocks import (
    PatchEmbedding,
    PatchExpanding,
    PatchMerging,
    VSSStage,
    init_vmamba_weights,
    stage_drop_paths,
)
from nnunet_mamba.pretrained.vmamba import (
    COPY,
    VMAMBA_INPUT_CHANNELS,
    PretrainedReport,
    load_vmamba_v0,
    vmamba_v0_encoder_counterpart,
)

NUM_STAGES = 4
VMAMBA_T_DEPTHS = (2, 2, 9, 2)
# Memory model of the convolution decoder (VSS blocks, mergings and expandings count themselves),
# elements saved for backward per output channel and pixel, measured with saved_tensors_hooks:
#: residual block with a 1x1 projection (the skip blocks), its input excluded
RES_BLOCK_SAVED = 5
#: up block (transposed convolution, concatenation, residual block)
UP_BLOCK_SAVED = 6
#: residual block without projection (the output block)
PLAIN_RES_BLOCK_SAVED = 4


def residual_conv_block(conv_op: type[nn.Module], in_channels: int, out_channels: int) -> BasicBlockD:
    """MONAI's ``UnetResBlock(k3, s1, "instance")`` as Swin-UMamba uses it, from dynamic-network-architectures."""
    return BasicBlockD(conv_op, in_channels, out_channels, kernel_size=3, stride=1, conv_bias=False,
                       norm_op=get_matching_instancenorm(conv_op), norm_op_kwargs={"eps": 1e-5, "affine": False},
                       nonlin=nn.LeakyReLU, nonlin_kwargs={"negative_slope": 0.01, "inplace": True})


class UpBlock(nn.Module):
    """MONAI's ``UnetrUpBlock(res_block=True)``: transposed convolution by ``scale``, concatenation, residual block."""

    def __init__(self, conv_op: type[nn.Module], in_channels: int, out_channels: int, scale: Sequence[int]):
        super().__init__()
        self.upsample = get_matching_convtransp(conv_op)(in_channels, out_channels, kernel_size=scale, stride=scale,
                                                         bias=False)
        self.block = residual_conv_block(conv_op, 2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.upsample(x), skip], dim=1))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward on an input grid of ``input_size``, measured per output channel and pixel,
        without the two maps it shares with its neighbours: its input (the deeper block's output) and its output
        (kept by the next block's transposed convolution and the heads; the decoder counts them there)."""
        pixels_out = math.prod(size * s for size, s in zip(input_size, self.upsample.stride))
        return UP_BLOCK_SAVED * self.upsample.out_channels * pixels_out


class ConvStem(nn.Module):
    """Swin-UMamba's stem: a large-kernel strided convolution and an affine InstanceNorm, no activation."""

    def __init__(self, conv_op: type[nn.Module], in_channels: int, out_channels: int, stride: Sequence[int]):
        super().__init__()
        kernel = [7 if s > 1 else 3 for s in stride]
        self.conv = conv_op(in_channels, out_channels, kernel_size=kernel, stride=stride,
                            padding=[k // 2 for k in kernel])
        self.norm = get_matching_instancenorm(conv_op)(out_channels, eps=1e-5, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """The convolution keeps the image, the InstanceNorm the convolved map (the input is padded to the stride)."""
        pixels_out = math.prod(size // s for size, s in zip(input_size, self.conv.stride))
        return self.conv.in_channels * math.prod(input_size) + self.conv.out_channels * pixels_out


class VSSEncoder(nn.Module):
    """VMamba v0's encoder without its classifier and final norm: patch embedding, VSS stages, patch merging.

    Returns the output of every stage (before the following merging), channels-last.
    """

    def __init__(self, in_channels: int, dims: Sequence[int], depths: Sequence[int],
                 strides: Sequence[Sequence[int]], conv_op: type[nn.Module], spatial_dims: int,
                 drop_path_rate: float, vss_options: dict):
        super().__init__()
        drop_paths = stage_drop_paths(depths, drop_path_rate)
        self.patch_embed = PatchEmbedding(in_channels, dims[0], strides[0], conv_op)
        self.stages = nn.ModuleList(
            VSSStage(dims[i], depths[i], spatial_dims, drop_paths[i], **vss_options) for i in range(NUM_STAGES))
        self.downsamples = nn.ModuleList(
            PatchMerging(dims[i], dims[i + 1], strides[i + 1]) for i in range(NUM_STAGES - 1))
        init_vmamba_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outputs.append(x)
            if i < NUM_STAGES - 1:
                x = self.downsamples[i](x)
        return outputs

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """The embedding, stages and mergings on an input grid of ``input_size``, and the bottleneck (the
        decoder's first layer keeps it)."""
        grid = list(input_size)
        total = self.patch_embed.compute_conv_feature_map_size(grid)
        grid = [g // p for g, p in zip(grid, self.patch_embed.patch_embed_size)]
        for i, stage in enumerate(self.stages):
            total += stage.compute_conv_feature_map_size(grid)
            if i < NUM_STAGES - 1:
                total += self.downsamples[i].compute_conv_feature_map_size(grid)
                grid = [g // s for g, s in zip(grid, self.downsamples[i].scale)]
        return total + self.downsamples[-1].reduction.out_features * math.prod(grid)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return torch.movedim(x, -1, 1)


def _check_widths(name: str, embed_dim: int, depths: Sequence[int], strides: Sequence, expected_strides: int) -> None:
    if embed_dim < 2 or embed_dim % 2:
        raise ValueError(f"{name}'s embed_dim must be a positive even number, got {embed_dim}")
    if len(depths) != NUM_STAGES or any(int(d) < 1 for d in depths):
        raise ValueError(f"{name} needs {NUM_STAGES} encoder depths >= 1, got {list(depths)}")
    if len(strides) != expected_strides:
        raise ValueError(f"{name} needs {expected_strides} strides, got {len(strides)}")


class _SwinUMambaBase(SegmentationNetwork):
    """What both networks share: per-axis strides from the plan, the deep-supervision grid, ImageNet loading."""

    def deep_supervision_scales(self) -> list[list[float]]:
        """Output 0 at full resolution, output i on the grid after the first i strides (the base class's default
        is i + 1): Swin-UMamba 1, 1/2, 1/4, 1/8; dagger 1, 1/4, 1/8, 1/16."""
        grids = np.cumprod(np.array(self.strides), axis=0)
        return [[1.0] * self.spatial_dims] + [[float(1.0 / s) for s in grids[i - 1]]
                                              for i in range(1, len(self.decoder.seg_layers))]

    def pretrained_encoder_modules(self) -> list[nn.Module]:
        """The modules VMamba's ImageNet checkpoint initialises and the trainers freeze: the VSS stages and the
        patch mergings (not the patch embedding, which the official freeze leaves trainable)."""
        return [*self.encoder.stages, *self.encoder.downsamples]

    def load_pretrained(self, path) -> PretrainedReport:
        return load_vmamba_v0(self, path, self.vmamba_v0_counterpart, stem_key="encoder.patch_embed.proj")

    @staticmethod
    def vmamba_v0_counterpart(key: str) -> tuple[str, str] | None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        if x.shape[0] == 0:
            # InstanceNorm refuses an empty batch: shape the outputs on one blank sample instead
            outputs = self.forward(x.new_zeros(1, *x.shape[1:]))
            return [o[:0] for o in outputs] if isinstance(outputs, list) else outputs[:0]
        return super().forward(x)


@register_network("swin_umamba", dims=(2, 3),
                  description="Swin-UMamba (Liu et al. 2024): VMamba-T encoder + conv stem, residual conv decoder",
                  small={"embed_dim": 16, "encoder_depths": (1, 1, 1, 1), "drop_path_rate": 0.0})
class SwinUMamba(_SwinUMambaBase):
    """Swin-UMamba for 2D (``conv_op=nn.Conv2d``, faithful) and 3D (``nn.Conv3d``, our design).

    Args:
        input_channels, num_classes: image channels and output logits.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        strides: five strides (int or one per axis): stem, patch embedding, three mergings. Default all 2.
        input_shape: the training patch, checked against the total stride.
        embed_dim: width after the patch embedding (96); the stem has half of it, stage i ``embed_dim * 2**i``.
        encoder_depths: VSS blocks per stage (VMamba-T: 2, 2, 9, 2).
        d_state: SSM state size.
        drop_path_rate: stochastic depth rising linearly over the encoder blocks (0.2).
        deep_supervision: also return the outputs at 1/2, 1/4 and 1/8.
        token_mixer: "scan" (the paper), or a No-Mamba ablation: "identity" or "dwconv"
            (:mod:`nnunet_mamba.blocks.token_mixer`).
    """

    pools_per_level = (1, 1, 1, 1, 1)

    def __init__(self, input_channels: int, num_classes: int, conv_op: type[nn.Module] = nn.Conv2d,
                 strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2, 2), input_shape: Sequence[int] | None = None,
                 embed_dim: int = 96, encoder_depths: Sequence[int] = VMAMBA_T_DEPTHS, d_state: int = 16,
                 drop_path_rate: float = 0.2, deep_supervision: bool = False, token_mixer: str = "scan"):
        super().__init__(conv_op)
        _check_widths("SwinUMamba", embed_dim, encoder_depths, strides, len(self.pools_per_level))
        self.strides = [self.per_axis(s) for s in strides]
        if input_shape is not None:
            self.check_input_shape(input_shape)
        self.dims = [embed_dim * 2**i for i in range(NUM_STAGES)]
        self.input_channels = input_channels
        self.stem_dim = embed_dim // 2
        self.encoder_depths = tuple(int(d) for d in encoder_depths)

        self.stem = ConvStem(conv_op, input_channels, self.stem_dim, self.strides[0])
        self.encoder = VSSEncoder(self.stem_dim, self.dims, self.encoder_depths, self.strides[1:], conv_op,
                                  self.spatial_dims, drop_path_rate, {"d_state": d_state, "token_mixer": token_mixer})
        self.decoder = SwinUMambaDecoder(input_channels, self.stem_dim, self.dims, self.strides, num_classes, conv_op,
                                         deep_supervision)
        self.key_to_encoder = "encoder"
        self.key_to_stem = "stem"
        self.keys_to_in_proj = ("stem.conv",)

    def forward_padded(self, x: torch.Tensor):
        stem = self.stem(x)
        stages = [_channels_first(s) for s in self.encoder(stem)]
        return self.decoder(x, [stem, *stages])

    @staticmethod
    def vmamba_v0_counterpart(key: str) -> tuple[str, str] | None:
        """VSS stages and mergings from VMamba; of the new 2x2 patch embedding only the norm's bias.

        The official loader skips ``patch_embed.*`` except ``patch_embed.norm.bias``, which its skip list misses
        (it names ``patch_embed.norm.weight`` twice) and which fits the new embedding's norm; we load it too.
        """
        if key == "encoder.patch_embed.norm.bias":
            return "patch_embed.norm.bias", COPY
        if key.startswith("encoder.") and not key.startswith("encoder.patch_embed."):
            return vmamba_v0_encoder_counterpart(key[len("encoder."):])
        return None

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements of the activations one training forward pass of one sample saves for backward.

        The sum of what every block keeps (each block's ``compute_conv_feature_map_size``), on the input padded to
        the total stride (the convolution blocks from the measured constants above);
        ``tests/test_memory_model.py`` holds it to a real forward pass.
        """
        grids = self.level_grids(input_size)  # H, H/2, ..., H/32
        total = self.stem.compute_conv_feature_map_size(grids[0]) + self.encoder.compute_conv_feature_map_size(grids[1])
        total += self.decoder.compute_conv_feature_map_size(grids)
        return int(total)


class SwinUMambaDecoder(nn.Module):
    """Swin-UMamba's residual convolution decoder over five skips and the bottleneck (MONAI's UNETR blocks)."""

    def __init__(self, input_channels: int, stem_dim: int, dims: Sequence[int], strides: Sequence[Sequence[int]],
                 num_classes: int, conv_op: type[nn.Module], deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        widths = [stem_dim, *dims]  # 48, 96, 192, 384, 768: the decoder's width at H, H/2, ..., H/32
        sources = [input_channels, stem_dim, *dims[:-1]]  # input, stem, stages 0-2
        self.skips = nn.ModuleList(residual_conv_block(conv_op, sources[i], widths[i]) for i in range(5))
        # deepest first: H/32 -> H/16 (768 -> 768), ..., H/2 -> H (96 -> 48)
        self.ups = nn.ModuleList(
            UpBlock(conv_op, widths[min(level + 1, 4)], widths[level], strides[level]) for level in reversed(range(5)))
        self.output_block = residual_conv_block(conv_op, widths[0], widths[0])
        self.seg_layers = nn.ModuleList(conv_op(widths[level], num_classes, 1) for level in range(4))

    def forward(self, image: torch.Tensor, features: list[torch.Tensor]):
        """``features``: the stem output and the four stage outputs, channels-first."""
        skips = [block(source) for block, source in zip(self.skips, [image, *features[:4]])]
        x = features[4]
        decoded = [None] * 5
        for up, level in zip(self.ups, reversed(range(5))):
            x = up(x, skips[level])
            decoded[level] = x
        logits = self.seg_layers[0](self.output_block(decoded[0]))
        if not self.deep_supervision:
            return logits
        return [logits, *(self.seg_layers[level](decoded[level]) for level in range(1, 4))]

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """Skip blocks, up blocks, the output block and the heads; ``grids``: the padded input, then every level."""
        total = 0
        for level, up in zip(reversed(range(5)), self.ups):
            width = self.skips[level].conv1.conv.out_channels
            total += RES_BLOCK_SAVED * width * math.prod(grids[level])
            total += up.compute_conv_feature_map_size(grids[level + 1])
        total += PLAIN_RES_BLOCK_SAVED * self.output_block.conv1.conv.out_channels * math.prod(grids[0])
        return total + sum(head.in_channels * math.prod(grids[level]) for level, head in enumerate(self.seg_layers))


@register_network("swin_umamba_d", dims=(2, 3),
                  description="Swin-UMamba-dagger (Liu et al. 2024): VMamba-T encoder, VSS decoder",
                  small={"embed_dim": 16, "encoder_depths": (1, 1, 1, 1), "decoder_depth": 1,
                         "drop_path_rate": 0.0})
class SwinUMambaD(_SwinUMambaBase):
    """Swin-UMamba-dagger for 2D (faithful) and 3D (our design).

    Args:
        strides: four strides (int or one per axis): the patch embedding (4), then three mergings (2).
        decoder_depth: VSS blocks per decoder stage (2).
        adapt_rgb_embedding: ImageNet initialisation of an input that is not RGB (VMamba's 3 channels). False
            (the official loader): the patch embedding keeps its He initialisation; True (our extension): it
            starts from VMamba's RGB kernel averaged over the colours and scaled by 3 / channels (the summed
            kernel for one channel), plus the embedding's bias and norm.
        Others as :class:`SwinUMamba`.
    """

    pools_per_level = (2, 1, 1, 1)

    def __init__(self, input_channels: int, num_classes: int, conv_op: type[nn.Module] = nn.Conv2d,
                 strides: Sequence[int | Sequence[int]] = (4, 2, 2, 2), input_shape: Sequence[int] | None = None,
                 embed_dim: int = 96, encoder_depths: Sequence[int] = VMAMBA_T_DEPTHS, decoder_depth: int = 2,
                 d_state: int = 16, drop_path_rate: float = 0.2, deep_supervision: bool = False,
                 adapt_rgb_embedding: bool = False, token_mixer: str = "scan"):
        super().__init__(conv_op)
        _check_widths("SwinUMambaD", embed_dim, encoder_depths, strides, len(self.pools_per_level))
        self.adapt_rgb_embedding = bool(adapt_rgb_embedding)
        if decoder_depth < 1:
            raise ValueError(f"SwinUMambaD's decoder_depth must be >= 1, got {decoder_depth}")
        self.strides = [self.per_axis(s) for s in strides]
        if input_shape is not None:
            self.check_input_shape(input_shape)
        self.dims = [embed_dim * 2**i for i in range(NUM_STAGES)]
        self.input_channels = input_channels
        self.encoder_depths = tuple(int(d) for d in encoder_depths)
        self.decoder_depth = int(decoder_depth)

        vss_options = {"d_state": d_state, "token_mixer": token_mixer}
        self.encoder = VSSEncoder(input_channels, self.dims, self.encoder_depths, self.strides, conv_op,
                                  self.spatial_dims, drop_path_rate, vss_options)
        self.decoder = MambaDecoder(self.dims, self.strides, self.decoder_depth, self.spatial_dims, vss_options,
                                    drop_path_rate, num_classes, conv_op, deep_supervision)
        # nnU-Net's InitWeights_He on every convolution, as the official builder applies after construction
        self.apply(InitWeights_He(1e-2))
        self.key_to_encoder = "encoder"
        self.key_to_stem = "encoder.patch_embed"
        self.keys_to_in_proj = ("encoder.patch_embed.proj",)

    def forward_padded(self, x: torch.Tensor):
        return self.decoder(self.encoder(x))

    def load_pretrained(self, path) -> PretrainedReport:
        report = super().load_pretrained(path)
        if self._embedding_left_random:
            report.notes.append(f"patch embedding not loaded (input of {self.input_channels} channel(s), VMamba's "
                                f"is RGB), as the official loader does; adapt_rgb_embedding=True adapts the RGB "
                                f"kernel instead")
        return report

    @property
    def _embedding_left_random(self) -> bool:
        return self.input_channels != VMAMBA_INPUT_CHANNELS and not self.adapt_rgb_embedding

    def vmamba_v0_counterpart(self, key: str) -> tuple[str, str] | None:
        """The whole encoder from VMamba; the patch embedding only for RGB input or with ``adapt_rgb_embedding``."""
        if not key.startswith("encoder.") or (key.startswith("encoder.patch_embed.") and self._embedding_left_random):
            return None
        return vmamba_v0_encoder_counterpart(key[len("encoder."):])

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements of the activations one training forward pass of one sample saves for backward (see SwinUMamba)."""
        image, *grids = self.level_grids(input_size)
        total = self.encoder.compute_conv_feature_map_size(image) + self.decoder.compute_conv_feature_map_size(grids)
        return int(total)


class MambaDecoder(nn.Module):
    """Swin-UMamba-dagger's decoder: patch expanding, linear merge of the skip, VSS blocks; a final expanding."""

    def __init__(self, dims: Sequence[int], strides: Sequence[Sequence[int]], depth: int, spatial_dims: int,
                 vss_options: dict, drop_path_rate: float, num_classes: int, conv_op: type[nn.Module],
                 deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        levels = list(reversed(range(NUM_STAGES - 1)))  # 2, 1, 0: from the deepest skip up
        rates = stage_drop_paths([depth] * len(levels), drop_path_rate, decreasing=True)  # 0.2 ... 0, deepest first
        self.upsamples = nn.ModuleList(PatchExpanding(dims[level + 1], dims[level + 1] // 2, strides[level + 1])
                                       for level in levels)
        self.merges = nn.ModuleList(nn.Linear(2 * dims[level], dims[level]) for level in levels)
        self.stages = nn.ModuleList(VSSStage(dims[level], depth, spatial_dims, rates[i], **vss_options)
                                    for i, level in enumerate(levels))
        self.final_expand = PatchExpanding(dims[0], dims[0], strides[0])
        # the full-resolution head after the final expanding, then heads on the decoder stages at levels 0, 1, 2
        self.seg_layers = nn.ModuleList(conv_op(width, num_classes, 1) for width in [dims[0], *dims[:NUM_STAGES - 1]])

    def forward(self, features: list[torch.Tensor]):
        """``features``: the four encoder stage outputs, channels-last."""
        x = features[-1]
        decoded = [None] * (NUM_STAGES - 1)
        for i, level in enumerate(reversed(range(NUM_STAGES - 1))):
            x = self.upsamples[i](x)
            x = self.stages[i](self.merges[i](torch.cat([x, features[level]], dim=-1)))
            decoded[level] = x
        logits = self.seg_layers[0](_channels_first(self.final_expand(x)))
        if not self.deep_supervision:
            return logits
        return [logits, *(head(_channels_first(features)) for head, features in zip(self.seg_layers[1:], decoded))]

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """Expandings, skip merges, VSS stages and the heads' inputs; ``grids``: the token grid of every level."""
        total = 0
        for i, level in enumerate(reversed(range(NUM_STAGES - 1))):
            tokens, dim = math.prod(grids[level]), self.merges[i].out_features
            total += self.upsamples[i].compute_conv_feature_map_size(grids[level + 1])
            total += tokens * 2 * dim  # the concatenation, kept by the linear merge
            total += self.stages[i].compute_conv_feature_map_size(grids[level])
            total += tokens * dim  # the stage output, kept by its head
        total += self.final_expand.compute_conv_feature_map_size(grids[0])
        image = math.prod(g * s for g, s in zip(grids[0], self.final_expand.scale))
        return total + self.final_expand.out_dim * image  # the full-resolution head's input


register_variant("swin_umamba_d_adapted_embedding", of="swin_umamba_d", args={"adapt_rgb_embedding": True},
                 description="Swin-UMamba-dagger whose non-RGB input starts from VMamba's RGB embedding kernel, "
                             "adapted (ours)")
