"""Guarded access to the mamba-ssm CUDA selective-scan kernel.

``mamba_ssm`` loads its compiled extension (``selective_scan_cuda``) when the module is imported, and that
fails in many ways on machines without a matching CUDA toolkit (ImportError, OSError for a missing
``libcudart``, undefined symbols after a torch upgrade, RuntimeError from triton or CUDA initialisation);
it is loaded once, on first use, by :class:`~nnunet_mamba.ops._optional.LazyImport`.
Releases up to 2.3.2.post1 compile the extension at install unless ``MAMBA_SKIP_CUDA_BUILD=TRUE`` and import
it unguarded, so a package installed without it fails to import (``No module named 'selective_scan_cuda'``).
mamba-ssm's main branch (no release yet) builds it only with ``MAMBA_KEEP_CUDA_BUILD=TRUE`` and guards the
import, leaving ``selective_scan_cuda = None``: "it imports" does not mean "the kernel is there", so the
kernel is checked for itself.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional, Tuple

from nnunet_mamba.ops._optional import LazyImport, Unavailable

INTERFACE_MODULE = "mamba_ssm.ops.selective_scan_interface"
KERNEL_MODULE = "selective_scan_cuda"
REBUILD_HINT = ("reinstall it with the kernel compiled against this torch (nvcc on the PATH; a release compiles "
                "it unless MAMBA_SKIP_CUDA_BUILD=TRUE is set): `pip install --no-build-isolation --no-cache-dir "
                "--force-reinstall --no-deps 'mamba-ssm>=2.2,<2.4'`; a build of mamba-ssm's main branch also "
                "needs MAMBA_KEEP_CUDA_BUILD=TRUE")


def _compiled_kernel(interface) -> Optional[object]:
    """The compiled extension the interface module calls, or None when it is missing."""
    if hasattr(interface, KERNEL_MODULE):
        return getattr(interface, KERNEL_MODULE)
    try:
        return importlib.import_module(KERNEL_MODULE)
    except Exception:
        return None


def _load_kernel() -> Callable:
    interface = importlib.import_module(INTERFACE_MODULE)
    selective_scan_fn, compiled = interface.selective_scan_fn, _compiled_kernel(interface)
    if compiled is None:
        raise Unavailable(f"mamba_ssm imports but its compiled kernel {KERNEL_MODULE} is missing; {REBUILD_HINT}")
    return selective_scan_fn


def _describe_import_failure(error: Exception) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name == "mamba_ssm":
        return "mamba-ssm is not installed (pip install -e \".[cuda]\" on a CUDA machine)"
    reason = f"mamba_ssm selective_scan_fn could not be imported ({type(error).__name__}: {error})"
    if isinstance(error, ModuleNotFoundError) and error.name == KERNEL_MODULE:
        reason += (f": mamba-ssm is installed without its compiled kernel (e.g. with MAMBA_SKIP_CUDA_BUILD=TRUE); "
                   f"{REBUILD_HINT}")
    return reason


kernel_import = LazyImport(_load_kernel, _describe_import_failure)


def cuda_kernel_status() -> Tuple[bool, str]:
    """``(True, "")`` when the compiled mamba-ssm kernel is present, else ``(False, reason)``."""
    return kernel_import.status()


def get_selective_scan_fn() -> Callable:
    """The mamba-ssm ``selective_scan_fn``; raises RuntimeError (with the reason) when unavailable."""
    available, reason = cuda_kernel_status()
    if not available:
        raise RuntimeError(
            f"The CUDA selective-scan backend is unavailable: {reason}. "
            "Install it with `pip install .[cuda]` (needs a CUDA toolkit matching your torch build), "
            "or set NNUNET_MAMBA_SCAN=torch to use the pure-PyTorch scan."
        )
    return kernel_import.result()[0]


def selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    return get_selective_scan_fn()(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
