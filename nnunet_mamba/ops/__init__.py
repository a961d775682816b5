"""Selective-scan operators: one entry point (``selective_scan``), its backends declared once in ``BACKENDS``
(mamba-ssm's CUDA kernel, Triton, compiled CPU (numba), pure PyTorch), and the float64 reference beside them; the
blocks' other ops with CPU kernels of their own: the Mamba block's causal convolution with its SiLU
(``causal_conv1d_silu``), a LayerNorm over the channels of a channels-first map (``layer_norm_channels_first``) and
LightM-UNet's size-keeping depthwise convolution (``depthwise_conv_same``) and its decoder's up-sampling with the skip
added (``linear_upsample_add``)."""
from nnunet_mamba.ops.backends import BACKENDS, ScanBackend
from nnunet_mamba.ops.block_ops import (
    causal_conv1d_silu,
    depthwise_conv_same,
    layer_norm_channels_first,
    linear_upsample_add,
)
from nnunet_mamba.ops.scan_cuda import cuda_kernel_status
from nnunet_mamba.ops.scan_numba import numba_details, numba_status, saved_state_positions
from nnunet_mamba.ops.scan_reference import selective_scan_ref
from nnunet_mamba.ops.selective_scan import (
    BACKEND_CHOICES,
    SCAN_ENV_VAR,
    available_backends,
    backend_report,
    requested_backend,
    resolve_backend,
    scan_backend_override,
    selective_scan,
)

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "SCAN_ENV_VAR",
    "ScanBackend",
    "available_backends",
    "causal_conv1d_silu",
    "depthwise_conv_same",
    "layer_norm_channels_first",
    "linear_upsample_add",
    "backend_report",
    "cuda_kernel_status",
    "numba_details",
    "numba_status",
    "requested_backend",
    "resolve_backend",
    "saved_state_positions",
    "scan_backend_override",
    "selective_scan",
    "selective_scan_ref",
]
