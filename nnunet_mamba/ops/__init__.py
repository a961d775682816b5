"""Selective-scan operators: one entry point, a CUDA (mamba-ssm) and a pure-PyTorch backend."""
from nnunet_mamba.ops.scan_cuda import cuda_kernel_status
from nnunet_mamba.ops.selective_scan import (
    BACKEND_CHOICES,
    ENV_VAR,
    available_backends,
    backend_report,
    requested_backend,
    resolve_backend,
    selective_scan,
)

__all__ = [
    "BACKEND_CHOICES",
    "ENV_VAR",
    "available_backends",
    "backend_report",
    "cuda_kernel_status",
    "requested_backend",
    "resolve_backend",
    "selective_scan",
]
