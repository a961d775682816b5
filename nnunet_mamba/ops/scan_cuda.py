"""Guarded access to the mamba-ssm CUDA selective-scan kernel.

``mamba_ssm`` loads its compiled extension (``selective_scan_cuda``) when the module is imported, and that
fails in many ways on machines without a matching CUDA toolkit (ImportError, OSError for a missing
``libcudart``, undefined symbols after a torch upgrade). Importing it lazily, once, and remembering why it
failed keeps ``import nnunet_mamba`` working everywhere and lets error messages say what went wrong.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Tuple

_lock = threading.Lock()
_attempted = False
_kernel: Optional[Callable] = None
_error_text = ""


def _load() -> None:
    global _attempted, _kernel, _error_text
    with _lock:
        if _attempted:
            return
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except (ImportError, OSError) as error:
            _kernel = None
            _error_text = f"{type(error).__name__}: {error}"
        else:
            _kernel = selective_scan_fn
            _error_text = ""
        _attempted = True


def cuda_kernel_status() -> Tuple[bool, str]:
    """``(True, "")`` when the mamba-ssm kernel imports, else ``(False, reason)``."""
    _load()
    if _kernel is None:
        return False, f"mamba_ssm selective_scan_fn could not be imported ({_error_text})"
    return True, ""


def get_selective_scan_fn() -> Callable:
    """The mamba-ssm ``selective_scan_fn``; raises RuntimeError (with the import error) when unavailable."""
    available, reason = cuda_kernel_status()
    if not available:
        raise RuntimeError(
            f"The CUDA selective-scan backend is unavailable: {reason}. "
            "Install it with `pip install .[cuda]` (needs a CUDA toolkit matching your torch build), "
            "or set NNUNET_MAMBA_SCAN=torch to use the pure-PyTorch scan."
        )
    return _kernel


def selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    return get_selective_scan_fn()(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
