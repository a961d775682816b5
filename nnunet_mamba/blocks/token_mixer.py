"""What mixes the tokens inside a Mamba block: the selective scan, or one of its No-Mamba ablations.

nnU-Net Revisited (Isensee et al., MICCAI 2024) asked of U-Mamba whether the Mamba layer is what helps, by
training the same network without it. Every network here answers the same question through one constructor
argument, ``token_mixer``, which each network hands to its Mamba blocks (:class:`~nnunet_mamba.blocks.vss.
CrossScanSSM` and :class:`~nnunet_mamba.blocks.mamba.Mamba`; UltraLBM's bidirectional Mamba is two calls of the
latter). Only the selective scan and its own parameters (x_proj, dt_proj, A_log, D) change; the projections in
and out, the depthwise convolution before the scan, the gate, the norms, residuals, widths and heads stay:

* ``"scan"``: the selective scan (the papers' networks);
* ``"identity"``: no token mixing beyond the block's own depthwise convolution; the scan's output becomes its
  input, which is what the scan gives with its states removed and its skip ``D`` at its initial 1;
* ``"dwconv"``: a depthwise convolution over the tokens in place of the scan (kernel 7 over a 1-D sequence or a
  2D grid, 5 over a 3D grid), a local mixer of the same place and width.
"""
from __future__ import annotations

from torch import nn

TOKEN_MIXERS = ("scan", "identity", "dwconv")
#: the "dwconv" ablation's kernel per number of token axes
ABLATION_KERNELS = {1: 7, 2: 7, 3: 5}


def check_token_mixer(token_mixer: str) -> str:
    if token_mixer not in TOKEN_MIXERS:
        raise ValueError(f"token_mixer must be one of {', '.join(map(repr, TOKEN_MIXERS))}, got {token_mixer!r}")
    return token_mixer


def ablation_mixer(token_mixer: str, channels: int, token_axes: int) -> nn.Module:
    """What a No-Mamba ablation runs in place of the scan, on ``(B, channels, *tokens)`` with ``token_axes`` token
    axes: nothing (``"identity"``) or a depthwise convolution over the tokens (``"dwconv"``)."""
    if token_mixer == "identity":
        return nn.Identity()
    kernel = ABLATION_KERNELS[token_axes]
    conv_op = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[token_axes - 1]
    return conv_op(channels, channels, kernel, padding=kernel // 2, groups=channels)
