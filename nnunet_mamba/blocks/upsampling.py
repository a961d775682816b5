"""Linear up-sampling that can add the skip map it is summed with, for decoders whose step is
``upsample(x) + skip`` (LightM-UNet's)."""
from __future__ import annotations

import torch
from torch import nn

from nnunet_mamba.ops import linear_upsample_add


class LinearUpsample(nn.Upsample):
    """``nn.Upsample(scale_factor=..., mode="bilinear" or "trilinear", align_corners=False)``; ``module(x, skip)``
    is ``module(x) + skip``, in CPU inference one pass of a compiled kernel
    (:func:`nnunet_mamba.ops.linear_upsample_add`).
    A subclass, so that checkpoints (it has no state) and thop (told by ``count_thop``) see the layer it is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (self.mode not in ("bilinear", "trilinear") or self.align_corners or self.scale_factor is None
                or self.recompute_scale_factor):
            raise ValueError(f"LinearUpsample is bilinear or trilinear with align_corners False and a scale factor "
                             f"used as given, got mode {self.mode!r}, align_corners {self.align_corners}, "
                             f"scale_factor {self.scale_factor}, recompute_scale_factor {self.recompute_scale_factor}")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is None:
            return super().forward(x)
        if x.dim() != {"bilinear": 4, "trilinear": 5}[self.mode]:
            raise ValueError(f"{self.mode} LinearUpsample takes {'2D' if self.mode == 'bilinear' else '3D'} maps "
                             f"(batch, channels, *spatial), got shape {tuple(x.shape)}")
        factors = self.scale_factor if isinstance(self.scale_factor, tuple) else (self.scale_factor,) * (x.dim() - 2)
        return linear_upsample_add(x, skip, factors)
