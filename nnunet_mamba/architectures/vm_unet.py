"""VM-UNet (Ruan et al., 2024) for 2D and 3D, living in nnU-Net.

Layout as published: a 4x4 patch embedding to C = 96 channels; an encoder of four VSS stages
(depths 2, 2, 2, 2; widths C, 2C, 4C, 8C) with patch merging between them; a decoder of four VSS
stages (depths 2, 2, 2, 1) that starts at the bottleneck and goes up by patch expanding; additive skips
that carry the *input* of encoder stages 4, 3 and 2 (the published model adds no skip from the
embedding); a final patch expanding by the embedding stride to C/4 channels and a 1x1 convolution to
logits. The canonical 2D model (3 input channels, 1 class) has 27.43M parameters.

For nnU-Net, the downsampling per axis comes from the plan (``strides``: the embedding stride, then
one stride per patch merging), so anisotropic 3D plans (e.g. [1, 2, 2]) work, and inputs whose size is
not a multiple of the total stride are padded internally and the logits cropped back.

Deep supervision returns one output per decoder level, highest resolution first: the full-resolution
logits (from the last level, through the final expanding) and 1x1-conv logits of the three deeper
levels; all heads live in ``decoder.seg_layers`` (the network contract, nnunet_mamba.architectures.base).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
from torch import nn

from nnunet_mamba.architectures.base import LevelFeatureNetwork, SegmentationNetwork
from nnunet_mamba.architectures.registry import register_network
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
    MERGE_2X2,
    STEM_KERNEL,
    PretrainedReport,
    load_vmamba_v0,
    vmamba_v0_block_key,
)

NUM_LEVELS = 4
DEFAULT_STRIDES_PER_LEVEL = (4, 2, 2, 2)
#: plan poolings per level: the 4x4 embedding takes two stride-2 poolings, each merging one
POOLS_PER_LEVEL = (2, 1, 1, 1)


class VMUNetEncoder(nn.Module):
    def __init__(self, dims, depths, merge_strides, spatial_dims, drop_paths, vss_options):
        super().__init__()
        self.stages = nn.ModuleList(
            VSSStage(dims[i], depths[i], spatial_dims, drop_paths[i], **vss_options) for i in range(NUM_LEVELS)
        )
        self.downsamples = nn.ModuleList(
            PatchMerging(dims[i], dims[i + 1], merge_strides[i]) for i in range(NUM_LEVELS - 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Returns the input of every stage (the skips) and the bottleneck output."""
        stage_inputs = []
        for i, stage in enumerate(self.stages):
            stage_inputs.append(x)
            x = stage(x)
            if i < NUM_LEVELS - 1:
                x = self.downsamples[i](x)
        return stage_inputs, x

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """The stages and mergings on ``grids``, the token grid of every level."""
        total = sum(stage.compute_conv_feature_map_size(grid) for stage, grid in zip(self.stages, grids))
        return total + sum(merge.compute_conv_feature_map_size(grid) for merge, grid in zip(self.downsamples, grids))


class VMUNetDecoder(nn.Module):
    def __init__(self, dims, depths, merge_strides, embed_stride, spatial_dims, drop_paths, vss_options, num_classes,
                 conv_op, deep_supervision):
        super().__init__()
        self.deep_supervision = deep_supervision
        reversed_dims = dims[::-1]
        self.stages = nn.ModuleList(
            VSSStage(reversed_dims[i], depths[i], spatial_dims, drop_paths[i], **vss_options)
            for i in range(NUM_LEVELS)
        )
        self.upsamples = nn.ModuleList(
            PatchExpanding(reversed_dims[i], reversed_dims[i + 1], merge_strides[::-1][i])
            for i in range(NUM_LEVELS - 1)
        )
        self.final_expand = PatchExpanding(dims[0], dims[0] // 4, embed_stride)
        # deepest first, as in dynamic-network-architectures' UNetDecoder: 1x1 convs on the three deeper
        # decoder levels (used only with deep supervision), then the full-resolution head after final_expand
        self.seg_layers = nn.ModuleList(
            [conv_op(reversed_dims[i], num_classes, 1) for i in range(NUM_LEVELS - 1)]
            + [conv_op(dims[0] // 4, num_classes, 1)])

    def forward(self, skips: list[torch.Tensor], x: torch.Tensor):
        level_outputs = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.upsamples[i - 1](x + skips[NUM_LEVELS - i])
            x = stage(x)
            level_outputs.append(x)
        logits = self.seg_layers[-1](torch.movedim(self.final_expand(x), -1, 1))
        if not self.deep_supervision:
            return logits
        deeper = [head(torch.movedim(level_outputs[i], -1, 1)) for i, head in enumerate(self.seg_layers[:-1])]
        return [logits, *deeper[::-1]]

    def compute_conv_feature_map_size(self, grids: Sequence[Sequence[int]]) -> int:
        """The stages, expandings and heads on ``grids``, the token grid of every level, shallowest first."""
        total = 0
        for index, stage in enumerate(self.stages):
            level = NUM_LEVELS - 1 - index
            if index > 0:  # the expanding takes the sum of the deeper output and the skip
                total += self.upsamples[index - 1].compute_conv_feature_map_size(grids[level + 1])
            total += stage.compute_conv_feature_map_size(grids[level])
        image = [g * s for g, s in zip(grids[0], self.final_expand.scale)]
        total += self.final_expand.compute_conv_feature_map_size(grids[0])
        total += self.final_expand.out_dim * math.prod(image)  # the full-resolution head's input
        if self.deep_supervision:  # the 1x1 heads keep the outputs of the three deeper decoder levels
            total += sum(stage[0].norm.normalized_shape[0] * math.prod(grids[NUM_LEVELS - 1 - index])
                         for index, stage in enumerate(self.stages[:-1]))
        return total


@register_network("vm_unet", dims=(2, 3), description="VM-UNet (Ruan et al. 2024): VSS encoder-decoder, SS2D / SS3D",
                  small={"embed_dim": 32, "drop_path_rate": 0.0})
class VMUNet(SegmentationNetwork, LevelFeatureNetwork):
    """VM-UNet for 2D (``conv_op=nn.Conv2d``) and 3D (``conv_op=nn.Conv3d``) inputs.

    Args:
        input_channels: image channels (modalities).
        num_classes: output channels (nnU-Net's segmentation heads); logits, no nonlinearity.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``; decides the dimensionality.
        strides: four strides, each an int or one int per axis: patch embedding, then the three
            patch mergings. Default ``(4, 2, 2, 2)``.
        input_shape: the training patch size, if known: checked against the total stride.
        embed_dim: C, the width of the first level (96 in the paper); a multiple of 4.
        encoder_depths / decoder_depths: VSS blocks per stage.
        d_state: SSM state size N.
        drop_path_rate: stochastic depth, increasing linearly over the encoder blocks (and reversed
            over the decoder blocks), as in VM-UNet.
        deep_supervision: return the outputs of all decoder levels, highest resolution first.
        token_mixer: "scan" (the paper), or a No-Mamba ablation: "identity" or "dwconv"
            (:mod:`nnunet_mamba.blocks.token_mixer`).
    """

    # before the heads moved into decoder.seg_layers (nnU-Net's -pretrained_weights skips exactly those)
    legacy_key_prefixes = {"decoder.seg_head.": f"decoder.seg_layers.{NUM_LEVELS - 1}.",
                           "decoder.deep_heads.": "decoder.seg_layers."}
    pools_per_level = POOLS_PER_LEVEL

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        conv_op: type[nn.Module] = nn.Conv2d,
        strides: Sequence[int | Sequence[int]] = DEFAULT_STRIDES_PER_LEVEL,
        input_shape: Sequence[int] | None = None,
        embed_dim: int = 96,
        encoder_depths: Sequence[int] = (2, 2, 2, 2),
        decoder_depths: Sequence[int] = (2, 2, 2, 1),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        deep_supervision: bool = False,
        token_mixer: str = "scan",
    ):
        super().__init__(conv_op)
        if len(strides) != NUM_LEVELS:
            raise ValueError(f"VMUNet needs {NUM_LEVELS} strides (embedding + 3 mergings), got {len(strides)}")
        if len(encoder_depths) != NUM_LEVELS or len(decoder_depths) != NUM_LEVELS:
            raise ValueError(f"VMUNet needs {NUM_LEVELS} encoder and decoder depths")
        if embed_dim < 4 or embed_dim % 4:
            raise ValueError(f"VMUNet's embed_dim must be a positive multiple of 4 (the final expanding keeps "
                             f"embed_dim / 4 channels), got {embed_dim}")
        self.strides = [self.per_axis(s) for s in strides]
        if input_shape is not None:
            self.check_input_shape(input_shape)

        dims = [embed_dim * 2**i for i in range(NUM_LEVELS)]
        encoder_drop = stage_drop_paths(encoder_depths, drop_path_rate)
        decoder_drop = stage_drop_paths(decoder_depths, drop_path_rate, decreasing=True)

        self.stem = PatchEmbedding(input_channels, embed_dim, self.strides[0], conv_op)
        vss_options = {"d_state": d_state, "token_mixer": token_mixer}
        self.encoder = VMUNetEncoder(dims, encoder_depths, self.strides[1:], self.spatial_dims, encoder_drop,
                                     vss_options)
        self.decoder = VMUNetDecoder(dims, decoder_depths, self.strides[1:], self.strides[0], self.spatial_dims,
                                     decoder_drop, vss_options, num_classes, conv_op, deep_supervision)
        self.key_to_encoder = "encoder"
        self.key_to_stem = "stem"
        self.keys_to_in_proj = ("stem.proj",)
        self.level_dims = dims
        self.depths = (tuple(encoder_depths), tuple(decoder_depths))
        init_vmamba_weights(self)
        # ours: the official code draws the final expanding's sub-positions independently; alike, the network
        # starts seeing its input (see PatchExpanding.init_sub_positions_alike; issue 23 measured it in 3D)
        self.decoder.final_expand.init_sub_positions_alike()

    def level_feature_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """The encoder and decoder VSS stages, shallowest (H/4) level first; outputs on the padded grid."""
        return list(self.encoder.stages), list(self.decoder.stages)[::-1]

    def level_strides(self) -> list[tuple[int, ...]]:
        """Per-axis stride from level l to level l + 1 (the three patch mergings)."""
        return list(self.strides[1:])

    def forward_padded(self, x: torch.Tensor):
        skips, bottleneck = self.encoder(self.stem(x))
        return self.decoder(skips, bottleneck)

    def load_pretrained(self, path) -> PretrainedReport:
        """Encoder and decoder from a VMamba v0 ImageNet checkpoint (2D only), as VM-UNet does.

        The stem and the encoder stages and mergings take VMamba's; decoder stage k takes VMamba stage 3 - k
        (the deepest first), only the first ``depth`` blocks of each VMamba stage. The upsampling, the final
        expanding and the heads keep their initialisation.
        """
        return load_vmamba_v0(self, path, self.vmamba_v0_counterpart, stem_key="stem.proj")

    @staticmethod
    def vmamba_v0_counterpart(key: str) -> tuple[str, str] | None:
        """The VMamba v0 key (and how to transform it) that network tensor ``key`` starts from."""
        if match := re.fullmatch(r"stem\.(proj|norm)\.(weight|bias)", key):
            return f"patch_embed.{match[1]}.{match[2]}", STEM_KERNEL if key == "stem.proj.weight" else COPY
        if match := re.fullmatch(r"(encoder|decoder)\.stages\.(\d+)\.(\d+)\.(.+)", key):
            stage = int(match[2])
            level = stage if match[1] == "encoder" else NUM_LEVELS - 1 - stage
            source = vmamba_v0_block_key(level, match[3], match[4])
            return None if source is None else (source, COPY)
        if match := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(norm|reduction)\.(weight|bias)", key):
            return f"layers.{match[1]}.downsample.{match[2]}.{match[3]}", MERGE_2X2
        return None

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements of the activations one training forward pass of one sample saves for backward.

        The sum of what each block keeps (each block's own ``compute_conv_feature_map_size``), on the input padded
        to the total stride: embedding, encoder and decoder VSS blocks, mergings, expandings, the final expanding
        with the full-resolution head, and the deep heads when deep supervision is on. The scan keeps its inputs and
        its state at every chunk start, as the numba kernel (the CPU default) does; mamba-ssm's CUDA kernel keeps
        the same inputs and fewer states. Parameters are not included (planners count them apart).
        """
        image, *grids = self.level_grids(input_size)
        total = self.stem.compute_conv_feature_map_size(image) + self.encoder.compute_conv_feature_map_size(grids)
        total += self.decoder.compute_conv_feature_map_size(grids)
        return int(total)
