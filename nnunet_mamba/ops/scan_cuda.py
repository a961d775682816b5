"""Guarded access to the mamba-ssm CUDA selective-scan kernel.

``mamba_ssm`` loads its compiled extension (``selective_scan_cuda``) when the module is imported, and that
fails in many ways on machines without a matching CUDA toolkit (ImportError, OSError for a missing
``libcudart``, undefined symbols after a torch upgrade, RuntimeError from triton or CUDA initialisation).
Newer mamba-ssm releases guard that import themselves and leave ``selective_scan_cuda = None`` when the
extension was not built, so "it imports" does not mean "the kernel is there": the kernel is checked for
itself. Importing lazily, once, and remembering why it failed keeps ``import nnunet_mamba`` working
everywhere and lets error messages say what went wrong.
"""
from __future__ import annotations

import importlib
import threading
from typing import Callable, Optional, Tuple

INTERFACE_MODULE = "mamba_ssm.ops.selective_scan_interface"
KERNEL_MODULE = "selective_scan_cuda"
REBUILD_HINT = ("reinstall it with the kernel built: `MAMBA_KEEP_CUDA_BUILD=TRUE pip install "
                "--no-build-isolation --force-reinstall --no-deps 'mamba-ssm>=2.2,<2.4'`")

_lock = threading.Lock()
_attempted = False
_kernel: Optional[Callable] = None
_unavailable_reason = ""


def _compiled_kernel(interface) -> Optional[object]:
    """The compiled extension the interface module calls, or None when it is missing."""
    if hasattr(interface, KERNEL_MODULE):
        return getattr(interface, KERNEL_MODULE)
    try:
        return importlib.import_module(KERNEL_MODULE)
    except Exception:
        return None


def _load() -> None:
    global _attempted, _kernel, _unavailable_reason
    with _lock:
        if _attempted:
            return
        _kernel, _unavailable_reason = None, ""
        try:
            interface = importlib.import_module(INTERFACE_MODULE)
            selective_scan_fn, compiled = interface.selective_scan_fn, _compiled_kernel(interface)
        except Exception as error:
            _unavailable_reason = (f"mamba_ssm selective_scan_fn could not be imported "
                                   f"({type(error).__name__}: {error})")
        else:
            if compiled is None:
                _unavailable_reason = (f"mamba_ssm imports but its compiled kernel {KERNEL_MODULE} is "
                                       f"missing; {REBUILD_HINT}")
            else:
                _kernel = selective_scan_fn
        _attempted = True


def cuda_kernel_status() -> Tuple[bool, str]:
    """``(True, "")`` when the compiled mamba-ssm kernel is present, else ``(False, reason)``."""
    _load()
    if _kernel is None:
        return False, _unavailable_reason
    return True, ""


def get_selective_scan_fn() -> Callable:
    """The mamba-ssm ``selective_scan_fn``; raises RuntimeError (with the reason) when unavailable."""
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
