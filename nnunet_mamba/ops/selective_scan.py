"""The one selective-scan entry point; picks the mamba-ssm CUDA kernel, the compiled CPU kernel (numba) or
the pure-PyTorch scan.

Semantics and shapes follow mamba-ssm's ``selective_scan_fn``:

    delta = softplus(delta + delta_bias)           (bias and softplus optional)
    x_t   = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t,   x_{-1} = 0
    y_t   = sum_n C_{t,n} x_{t,n};  out = (y + D * u) * silu(z)   (D and z optional)
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Iterator, List, Optional

import torch

from nnunet_mamba.ops.scan_cuda import cuda_kernel_status, selective_scan_cuda
from nnunet_mamba.ops.scan_numba import numba_status, selective_scan_numba
from nnunet_mamba.ops.scan_torch import selective_scan_torch
from nnunet_mamba.ops.scan_triton import selective_scan_triton, triton_status

ENV_VAR = "NNUNET_MAMBA_SCAN"
BACKEND_CHOICES = ("auto", "cuda", "triton", "numba", "torch")
# what mamba-ssm's kernel is compiled for; float64 is not among them
CUDA_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the scan computes in one of these; the numba kernels compile for both
NUMBA_KERNEL_DTYPES = (torch.float32, torch.float64)


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend asked for by argument, else by NNUNET_MAMBA_SCAN, else 'auto'."""
    if backend is not None:
        if not isinstance(backend, str):
            raise ValueError(f"Invalid selective-scan backend {backend!r} ({type(backend).__name__}) from the "
                             f"backend argument; it must be a string, one of {', '.join(BACKEND_CHOICES)}, or None.")
        choice, origin = backend, "backend argument"
    else:
        choice, origin = os.environ.get(ENV_VAR, "auto"), f"environment variable {ENV_VAR}"
    normalized = choice.strip().lower()
    if normalized not in BACKEND_CHOICES:
        raise ValueError(
            f"Invalid selective-scan backend {choice!r} from the {origin}; "
            f"{ENV_VAR} / backend must be one of {', '.join(BACKEND_CHOICES)}.")
    return normalized


def resolve_backend(device: torch.device, backend: Optional[str] = None, *,
                    dtype: Optional[torch.dtype] = None) -> str:
    """'cuda', 'numba' or 'torch' for tensors on ``device`` computed in ``dtype`` (if given).

    'auto' picks the mamba-ssm kernel for CUDA tensors where it imports (and supports the dtype), numba for
    CPU tensors where it imports, and the pure-PyTorch scan otherwise. Raises RuntimeError if 'cuda' or
    'numba' is forced but cannot run.
    """
    choice = requested_backend(backend)
    device_type = torch.device(device).type
    if choice == "torch":
        return "torch"
    if choice == "auto":
        if device_type == "cuda":
            if dtype is not None and dtype not in CUDA_KERNEL_DTYPES:
                return "torch"
            if cuda_kernel_status()[0]:
                return "cuda"
            return "triton" if triton_status(device)[0] else "torch"
        if device_type == "cpu" and (dtype is None or dtype in NUMBA_KERNEL_DTYPES):
            return "numba" if numba_status()[0] else "torch"
        return "torch"
    if choice == "numba":
        return _check_forced_numba(device, device_type, dtype)
    if choice == "triton":
        return _check_forced_triton(device, dtype)
    return _check_forced_cuda(device, device_type, dtype)


def _check_forced_cuda(device, device_type: str, dtype: Optional[torch.dtype]) -> str:
    if device_type != "cuda":
        raise RuntimeError(
            f"Selective-scan backend 'cuda' was forced ({ENV_VAR} or backend argument) but the tensors are "
            f"on device '{device}', and the mamba-ssm kernel only runs on CUDA tensors. Move the model to a "
            f"GPU, or set {ENV_VAR}=torch (or auto) to use the pure-PyTorch scan.")
    if dtype is not None and dtype not in CUDA_KERNEL_DTYPES:
        raise RuntimeError(
            f"Selective-scan backend 'cuda' was forced ({ENV_VAR} or backend argument) but the scan computes "
            f"in {dtype}, and the mamba-ssm kernel supports only float32, float16 and bfloat16. Use float32 "
            f"inputs, or set {ENV_VAR}=torch (or auto) to use the pure-PyTorch scan.")
    available, reason = cuda_kernel_status()
    if not available:
        raise RuntimeError(
            f"Selective-scan backend 'cuda' was forced but {reason}. Install the kernel with "
            f"`pip install .[cuda]` (mamba-ssm, built against your torch and CUDA toolkit), or set "
            f"{ENV_VAR}=torch (or auto) to use the pure-PyTorch scan.")
    return "cuda"


def _check_forced_numba(device, device_type: str, dtype: Optional[torch.dtype]) -> str:
    if device_type != "cpu":
        raise RuntimeError(
            f"Selective-scan backend 'numba' was forced ({ENV_VAR} or backend argument) but the tensors are "
            f"on device '{device}', and the numba kernel only runs on CPU tensors. Set {ENV_VAR}=auto to use "
            f"the mamba-ssm kernel on a GPU (or {ENV_VAR}=torch for the pure-PyTorch scan).")
    if dtype is not None and dtype not in NUMBA_KERNEL_DTYPES:
        raise RuntimeError(
            f"Selective-scan backend 'numba' was forced ({ENV_VAR} or backend argument) but the scan computes "
            f"in {dtype}, and the numba kernel supports only float32 and float64. Use float32 inputs, or set "
            f"{ENV_VAR}=torch (or auto) to use the pure-PyTorch scan.")
    available, reason = numba_status()
    if not available:
        raise RuntimeError(
            f"Selective-scan backend 'numba' was forced but {reason}. Install it with `pip install numba` "
            f"(the tested version is pinned in requirements-cpu.txt), or set {ENV_VAR}=torch (or auto) to "
            f"use the pure-PyTorch scan.")
    return "numba"


def _check_forced_triton(device, dtype: Optional[torch.dtype]) -> str:
    if dtype is not None and dtype not in CUDA_KERNEL_DTYPES:
        raise RuntimeError(
            f"Selective-scan backend 'triton' was forced ({ENV_VAR} or backend argument) but the scan computes "
            f"in {dtype}; the Triton kernels take float32, float16 and bfloat16. Use float32 inputs, or set "
            f"{ENV_VAR}=torch (or auto).")
    available, reason = triton_status(device)
    if not available:
        raise RuntimeError(f"Selective-scan backend 'triton' was forced but {reason}. Set {ENV_VAR}=auto (or torch).")
    return "triton"


def available_backends() -> Dict[str, str]:
    """Backend name -> '' when usable on this machine, else the reason it is not."""
    cuda_ok, reason = cuda_kernel_status()
    if cuda_ok and not torch.cuda.is_available():
        cuda_ok, reason = False, "mamba_ssm imports but no CUDA device is visible"
    numba_ok, numba_reason = numba_status()
    triton_ok, triton_reason = triton_status("cuda" if torch.cuda.is_available() else "cpu")
    return {"torch": "", "numba": "" if numba_ok else numba_reason, "cuda": "" if cuda_ok else reason,
            "triton": "" if triton_ok else triton_reason}


def backend_report() -> str:
    lines = [f"{ENV_VAR}={os.environ.get(ENV_VAR, 'auto')} (choices: {', '.join(BACKEND_CHOICES)})"]
    for name, reason in available_backends().items():
        lines.append(f"  {name}: {'available' if not reason else 'unavailable - ' + reason}")
    return "\n".join(lines)


def _check_dtypes(tensors: Dict[str, Optional[torch.Tensor]]) -> None:
    """Refuse integer, bool and complex inputs: casting them to float would silently change the problem."""
    for name, t in tensors.items():
        if t is None:
            continue
        if t.is_complex():
            raise ValueError(f"selective_scan: complex {name} is not supported; {name} must be real")
        if not t.is_floating_point():
            raise TypeError(f"selective_scan: {name} has dtype {t.dtype}; the scan needs floating-point inputs")


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> int:
    """Validate shapes; returns the number of B/C groups."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, seq_len = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, d_state), got shape {tuple(A.shape)}")
    d_state = A.shape[1]
    groups = None
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            expected, got_groups = (batch, d_state, seq_len), 1
        elif t.dim() == 4:
            expected, got_groups = (batch, t.shape[1], d_state, seq_len), t.shape[1]
        else:
            raise ValueError(f"selective_scan: {name} must be (batch, N, L) or (batch, groups, N, L), "
                             f"got shape {tuple(t.shape)}")
        if tuple(t.shape) != expected:
            raise ValueError(f"selective_scan: {name} has shape {tuple(t.shape)}, expected {expected} "
                             f"(batch={batch}, d_state={d_state}, L={seq_len})")
        if got_groups < 1 or dim % got_groups:
            raise ValueError(f"selective_scan: {name} has {got_groups} groups, which must divide dim={dim}")
        if groups is not None and got_groups != groups:
            raise ValueError(f"selective_scan: B has {groups} groups but C has {got_groups}; they must match")
        groups = got_groups
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must have shape ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z shape {tuple(z.shape)} must equal u shape {tuple(u.shape)}")
    return groups


@dataclass(frozen=True)
class ScanCall:
    """The shapes of one :func:`selective_scan` call: u is (batch, dim, length), A is (dim, d_state)."""

    batch: int
    dim: int
    length: int
    d_state: int
    has_D: bool
    has_z: bool


@contextlib.contextmanager
def scan_backend_override(backend: str) -> Iterator[None]:
    """Within the block, :data:`ENV_VAR` is ``backend`` (the user's value is restored after it): how tools
    (benchmarks, FLOP counters) pick a backend for networks whose blocks call the entry point themselves."""
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


ScanObserver = Callable[[ScanCall], Optional[ContextManager]]
# Modules import ``selective_scan`` by name, so wrapping the function cannot see their calls; tools that
# need every call (the FLOP counter) register here instead.
_scan_observers: List[ScanObserver] = []


@contextlib.contextmanager
def observe_scan_calls(observer: ScanObserver) -> Iterator[None]:
    """Within the block, call ``observer(ScanCall)`` at every selective_scan call.

    If the observer returns a context manager, the scan's computation runs inside it (e.g. to keep an op
    counter from also counting the scan's internal matmuls).
    """
    _scan_observers.append(observer)
    try:
        yield
    finally:
        _scan_observers.remove(observer)


def _notify_observers(u, A, D, z) -> ContextManager:
    if not _scan_observers:
        return contextlib.nullcontext()
    call = ScanCall(batch=u.shape[0], dim=u.shape[1], length=u.shape[2], d_state=A.shape[1],
                    has_D=D is not None, has_z=z is not None)
    with contextlib.ExitStack() as contexts:
        for observer in list(_scan_observers):
            context = observer(call)
            if context is not None:
                contexts.enter_context(context)
        # entered contexts are exited here only if a later observer raised
        return contexts.pop_all()


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend=None,
                   out_dtype=None):
    """mamba-ssm ``selective_scan_fn`` semantics; returns (batch, dim, L) in ``out_dtype`` (default u's dtype).

    Computed in float32 (float64 inputs stay float64) even under autocast; ``out_dtype=torch.float32``
    keeps that precision for callers that go on summing the result. ``backend`` ('auto', 'cuda', 'numba',
    'torch') overrides the NNUNET_MAMBA_SCAN environment variable. Assumes A <= 0 and delta >= 0 (after bias and
    softplus), so that the state decays; otherwise it can grow until it overflows.
    """
    _check_dtypes({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if out_dtype is None:
        out_dtype = u.dtype
    elif not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise ValueError(f"selective_scan: out_dtype must be a floating-point torch.dtype, got {out_dtype!r}")
    # half precision loses the long-range decay products, so the scan never runs below float32
    compute_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    chosen = resolve_backend(u.device, backend, dtype=compute_dtype)
    if u.numel() == 0:
        chosen = "torch"  # nothing to scan, and the kernel is not meant for empty launches

    def cast(t):
        return None if t is None else t.to(compute_dtype)

    with _notify_observers(u, A, D, z), torch.autocast(device_type=u.device.type, enabled=False):
        args = [cast(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
        if chosen == "cuda":
            out = selective_scan_cuda(*args, delta_softplus=delta_softplus)
        else:
            u_, delta_, A_, B_, C_, D_, z_, bias_ = args
            if B_.dim() == 3:
                B_ = B_.unsqueeze(1)
            if C_.dim() == 3:
                C_ = C_.unsqueeze(1)
            scan = {"numba": selective_scan_numba, "triton": selective_scan_triton}.get(chosen, selective_scan_torch)
            out = scan(u_, delta_, A_, B_, C_, D_, z_, bias_, delta_softplus)
    return out.to(out_dtype)
