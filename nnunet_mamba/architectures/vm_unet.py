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
levels. :meth:`VMUNet.deep_supervision_scales` gives their scale per axis for nnU-Net's target
downsampling.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from torch import nn

from nnunet_mamba.blocks import PatchEmbedding, PatchExpanding, PatchMerging, VSSStage

NUM_LEVELS = 4
DEFAULT_STRIDES_PER_LEVEL = (4, 2, 2, 2)


def _stage_drop_paths(depths: Sequence[int], drop_path_rate: float, decreasing: bool = False) -> list[list[float]]:
    """Drop-path rates rising linearly over all blocks (falling in the decoder), split per stage."""
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    if decreasing:
        rates = rates[::-1]
    bounds = np.cumsum([0, *depths])
    return [rates[bounds[i]:bounds[i + 1]] for i in range(len(depths))]


class VMUNetEncoder(nn.Module):
    def __init__(self, dims, depths, merge_strides, spatial_dims, drop_paths, d_state):
        super().__init__()
        self.stages = nn.ModuleList(
            VSSStage(dims[i], depths[i], spatial_dims, drop_paths[i], d_state) for i in range(NUM_LEVELS)
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


class VMUNetDecoder(nn.Module):
    def __init__(self, dims, depths, merge_strides, embed_stride, spatial_dims, drop_paths, d_state, num_classes,
                 conv_op, deep_supervision):
        super().__init__()
        self.deep_supervision = deep_supervision
        reversed_dims = dims[::-1]
        self.stages = nn.ModuleList(
            VSSStage(reversed_dims[i], depths[i], spatial_dims, drop_paths[i], d_state) for i in range(NUM_LEVELS)
        )
        self.upsamples = nn.ModuleList(
            PatchExpanding(reversed_dims[i], reversed_dims[i + 1], merge_strides[::-1][i])
            for i in range(NUM_LEVELS - 1)
        )
        self.final_expand = PatchExpanding(dims[0], dims[0] // 4, embed_stride)
        self.seg_head = conv_op(dims[0] // 4, num_classes, 1)
        # logits of the deeper decoder levels, deepest first; used only with deep supervision
        self.deep_heads = nn.ModuleList(conv_op(reversed_dims[i], num_classes, 1) for i in range(NUM_LEVELS - 1))

    def forward(self, skips: list[torch.Tensor], x: torch.Tensor):
        level_outputs = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.upsamples[i - 1](x + skips[NUM_LEVELS - i])
            x = stage(x)
            level_outputs.append(x)
        logits = self.seg_head(torch.movedim(self.final_expand(x), -1, 1))
        if not self.deep_supervision:
            return logits
        deeper = [head(torch.movedim(level_outputs[i], -1, 1)) for i, head in enumerate(self.deep_heads)]
        return [logits, *deeper[::-1]]


class VMUNet(AbstractDynamicNetworkArchitectures):
    """VM-UNet for 2D (``conv_op=nn.Conv2d``) and 3D (``conv_op=nn.Conv3d``) inputs.

    Args:
        input_channels: image channels (modalities).
        num_classes: output channels (nnU-Net's segmentation heads); logits, no nonlinearity.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``; decides the dimensionality.
        strides: four strides, each an int or one int per axis: patch embedding, then the three
            patch mergings. Default ``(4, 2, 2, 2)``.
        patch_size: training patch size, if known: checked against the total stride.
        embed_dim: C, the width of the first level (96 in the paper).
        encoder_depths / decoder_depths: VSS blocks per stage.
        d_state: SSM state size N.
        drop_path_rate: stochastic depth, increasing linearly over the encoder blocks (and reversed
            over the decoder blocks), as in VM-UNet.
        deep_supervision: return the outputs of all decoder levels, highest resolution first.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        conv_op: type[nn.Module] = nn.Conv2d,
        strides: Sequence[int | Sequence[int]] = DEFAULT_STRIDES_PER_LEVEL,
        patch_size: Sequence[int] | None = None,
        embed_dim: int = 96,
        encoder_depths: Sequence[int] = (2, 2, 2, 2),
        decoder_depths: Sequence[int] = (2, 2, 2, 1),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        deep_supervision: bool = False,
    ):
        super().__init__()
        if conv_op not in (nn.Conv2d, nn.Conv3d):
            raise ValueError(f"VMUNet supports conv_op nn.Conv2d or nn.Conv3d, got {conv_op}")
        self.spatial_dims = 3 if conv_op is nn.Conv3d else 2
        if len(strides) != NUM_LEVELS:
            raise ValueError(f"VMUNet needs {NUM_LEVELS} strides (embedding + 3 mergings), got {len(strides)}")
        if len(encoder_depths) != NUM_LEVELS or len(decoder_depths) != NUM_LEVELS:
            raise ValueError(f"VMUNet needs {NUM_LEVELS} encoder and decoder depths")
        self.strides = [self._per_axis(s) for s in strides]
        self.total_stride = tuple(int(v) for v in np.prod(self.strides, axis=0))
        if patch_size is not None:
            self._check_patch_size(patch_size)

        dims = [embed_dim * 2**i for i in range(NUM_LEVELS)]
        encoder_drop = _stage_drop_paths(encoder_depths, drop_path_rate)
        decoder_drop = _stage_drop_paths(decoder_depths, drop_path_rate, decreasing=True)

        self.stem = PatchEmbedding(input_channels, embed_dim, self.strides[0], conv_op)
        self.encoder = VMUNetEncoder(dims, encoder_depths, self.strides[1:], self.spatial_dims, encoder_drop, d_state)
        self.decoder = VMUNetDecoder(dims, decoder_depths, self.strides[1:], self.strides[0], self.spatial_dims,
                                     decoder_drop, d_state, num_classes, conv_op, deep_supervision)
        self.key_to_encoder = "encoder"
        self.key_to_stem = "stem"
        self.keys_to_in_proj = ("stem.proj",)
        self.dims = dims
        self.depths = (tuple(encoder_depths), tuple(decoder_depths))
        self.initialize(self)

    def _per_axis(self, stride: int | Sequence[int]) -> tuple[int, ...]:
        if isinstance(stride, (int, np.integer)):
            return (int(stride),) * self.spatial_dims
        stride = tuple(int(s) for s in stride)
        if len(stride) != self.spatial_dims:
            raise ValueError(f"stride {list(stride)} does not match {self.spatial_dims} spatial dimensions")
        return stride

    def _check_patch_size(self, patch_size: Sequence[int]) -> None:
        if len(patch_size) != self.spatial_dims:
            raise ValueError(
                f"patch size {list(patch_size)} has {len(patch_size)} axes but this VMUNet is "
                f"{self.spatial_dims}D (conv_op)")
        too_small = [axis for axis, (p, s) in enumerate(zip(patch_size, self.total_stride)) if p < s]
        if too_small:
            raise ValueError(
                f"patch size {list(patch_size)} is too small for the network depth: axes {too_small} are smaller "
                f"than the total downsampling {list(self.total_stride)} (strides per level {self.strides}). "
                f"Use a larger patch size or smaller strides on those axes.")

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """VM-UNet's initialisation: truncated normal (std 0.02) linear weights, zero biases, unit norms."""
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def level_feature_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """The modules whose outputs are the level features f_1..f_4 of the encoder and of the decoder.

        Shallowest (H/4) level first in both lists; outputs are channels-last ``(batch, *spatial, dims[l])``
        on the internally padded grid. Auxiliary losses (self-distillation) hook these modules, so the
        network's forward and its inference cost stay those of VM-UNet.
        """
        return list(self.encoder.stages), list(self.decoder.stages)[::-1]

    def level_strides(self) -> list[tuple[int, ...]]:
        """Per-axis stride from level l to level l + 1 (the three patch mergings)."""
        return list(self.strides[1:])

    def deep_supervision_scales(self) -> list[list[float]]:
        """Scale of every deep-supervision output per axis, relative to the input, highest resolution first."""
        level_strides = np.cumprod(self.strides, axis=0)  # stride of decoder level l = stride of encoder level l
        return [[1.0] * self.spatial_dims] + [[float(1.0 / s) for s in level_strides[level]] for level in range(1, NUM_LEVELS)]

    def forward(self, x: torch.Tensor):
        spatial = x.shape[2:]
        padded = [math.ceil(size / s) * s for size, s in zip(spatial, self.total_stride)]
        if list(padded) != list(spatial):
            pad = []
            for size, target in reversed(list(zip(spatial, padded))):
                pad += [0, target - size]
            x = F.pad(x, pad)
        skips, bottleneck = self.encoder(self.stem(x))
        outputs = self.decoder(skips, bottleneck)
        if list(padded) == list(spatial):
            return outputs
        return self._crop(outputs, spatial)

    def _crop(self, outputs, spatial):
        if not isinstance(outputs, list):
            return outputs[(..., *(slice(0, s) for s in spatial))]
        cropped = []
        for out, scale in zip(outputs, self.deep_supervision_scales()):
            size = [max(1, round(s * f)) for s, f in zip(spatial, scale)]
            cropped.append(out[(..., *(slice(0, s) for s in size))])
        return cropped

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Activation elements of one forward pass, the quantity nnU-Net's planners budget memory with.

        Counted per VSS block: the residual stream (dim), in_proj output (4 * dim), the depthwise
        conv and the K direction sequences with their deltas (2 * K * 2 * dim), and the gated output (2 * dim).
        """
        if len(input_size) != self.spatial_dims:
            raise ValueError(f"input size {list(input_size)} does not match {self.spatial_dims}D")
        activations_per_channel = 1 + 4 + 2 * (2 * self.spatial_dims) * 2 + 2
        tokens = np.array(input_size, dtype=np.int64)
        total = 0
        for level in range(NUM_LEVELS):
            tokens = tokens // np.array(self.strides[level])
            n = int(np.prod(tokens))
            blocks = self.depths[0][level] + self.depths[1][NUM_LEVELS - 1 - level]
            total += n * blocks * self.dims[level] * activations_per_channel
            total += n * self.dims[level] * 2  # merge/expand outputs
        total += int(np.prod(input_size)) * (self.dims[0] // 4)  # final expanding
        return int(total)
