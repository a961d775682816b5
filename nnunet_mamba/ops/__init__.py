"""Selective-scan operators: one entry point; CUDA (mamba-ssm), compiled CPU (numba) and pure-PyTorch backends."""
from nnunet_mamba.ops.scan_cuda import cuda_kernel_status
from nnunet_mamba.ops.scan_numba import numba_details, numba_status
from nnunet_mamba.ops.selective_scan import (
    BACKEND_CHOICES,
    ENV_VAR,
    available_backends,
    backend_report,
    requested_backend,
    resolve_backend,
    scan_backend_override,
    selective_scan,
)

__all__ = [
    "BACKEND_CHOICES",
    "ENV_VAR",
    "available_backends",
    "backend_report",
    "cuda_kernel_status",
    "numba_details",
    "numba_status",
    "requested_backend",
    "resolve_backend",
    "scan_backend_override",
    "selective_scan",
]
