"""The one selective-scan entry point; runs the backend the table in :mod:`nnunet_mamba.ops.backends` picks
(see ``BACKENDS`` there for the backends and their order).

Semantics and shapes follow mamba-ssm's ``selective_scan_fn`` (:func:`~nnunet_mamba.ops.scan_reference.
selective_scan_ref` is its definition, one position at a time):

    delta = softplus(delta + delta_bias)           (bias and softplus optional)
    x_t   = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t,   x_{-1} = 0
    y_t   = sum_n C_{t,n} x_{t,n};  out = (y + D * u) * silu(z)   (D and z optional)

The backend is the ``backend`` argument, else the one a tool set with :func:`scan_backend_override`, else
the ``NNUNET_MAMBA_SCAN`` environment variable, else 'auto'.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Tuple

import torch

from nnunet_mamba.ops.backends import (
    AUTO,
    BACKEND_CHOICES,
    BACKENDS,
    SCAN_ENV_VAR,
    auto_backend,
    check_forced,
    get_backend,
)

# set by scan_backend_override: a tool's choice for the calls inside its block (this thread and task only)
SCOPED_ORIGIN = "scan_backend_override block"
_scoped_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("scan_backend", default=None)


def _normalized(choice: str, origin: str) -> str:
    normalized = choice.strip().lower()
    if normalized not in BACKEND_CHOICES:
        raise ValueError(
            f"Invalid selective-scan backend {choice!r} from the {origin}; "
            f"{SCAN_ENV_VAR} / backend must be one of {', '.join(BACKEND_CHOICES)}.")
    return normalized


def _requested(backend: Optional[str]) -> Tuple[str, str]:
    """(choice, where it came from)."""
    if backend is not None:
        if not isinstance(backend, str):
            raise ValueError(f"Invalid selective-scan backend {backend!r} ({type(backend).__name__}) from the "
                             f"backend argument; it must be a string, one of {', '.join(BACKEND_CHOICES)}, or None.")
        return _normalized(backend, "backend argument"), "backend argument"
    scoped = _scoped_backend.get()
    if scoped is not None:
        return scoped, SCOPED_ORIGIN
    origin = f"environment variable {SCAN_ENV_VAR}"
    return _normalized(os.environ.get(SCAN_ENV_VAR, AUTO), origin), origin


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend asked for by argument, else by :func:`scan_backend_override`, else by NNUNET_MAMBA_SCAN, else
    'auto'."""
    return _requested(backend)[0]


def resolve_backend(device: torch.device, backend: Optional[str] = None, *,
                    dtype: Optional[torch.dtype] = None) -> str:
    """The name of the backend (one of ``backends.BACKEND_NAMES``) for tensors on ``device`` computed in
    ``dtype`` (if given).

    'auto' picks the first backend of the table that may run there (on CUDA tensors the mamba-ssm kernel, then
    Triton; on CPU tensors numba; else the pure-PyTorch scan). Raises RuntimeError, with the row's install hint,
    if a forced backend cannot run.
    """
    choice, origin = _requested(backend)
    device = torch.device(device)
    if choice == AUTO:
        return auto_backend(device, dtype).name
    forced = get_backend(choice)
    check_forced(forced, device, dtype, origin)
    return forced.name


def available_backends() -> Dict[str, str]:
    """Backend name -> '' when usable on this machine, else the reason it is not."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    visible = {"cpu", device.type}
    report = {}
    for backend in BACKENDS:
        available, reason = backend.status(device)
        if available and backend.device_types and not visible.intersection(backend.device_types):
            reason = f"{backend.kernel} is there, but no {backend.devices} device is visible"
        report[backend.name] = reason
    return report


def backend_report() -> str:
    lines = [f"{SCAN_ENV_VAR}={os.environ.get(SCAN_ENV_VAR, AUTO)} (choices: {', '.join(BACKEND_CHOICES)})"]
    for name, reason in available_backends().items():
        lines.append(f"  {name}: {'available' if not reason else 'unavailable - ' + reason}")
    return "\n".join(lines)


def _check_dtypes(tensors: Dict[str, Optional[torch.Tensor]]) -> None:
    """Refuse non-tensors, and integer, bool and complex inputs: casting them to float would silently change the
    problem."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            optional = " or None" if name in ("D", "z", "delta_bias") else ""
            raise TypeError(f"selective_scan: {name} is a {type(t).__name__}; it must be a torch.Tensor{optional} "
                            f"(convert it with torch.as_tensor)")
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
    """Within the block, calls of :func:`selective_scan` without a ``backend`` argument use ``backend``: how
    tools (benchmarks, FLOP counters) pick a backend for networks whose blocks call the entry point themselves.

    A scoped setting, not the environment: it holds for this thread (and asyncio task) only, and neither
    changes ``NNUNET_MAMBA_SCAN`` nor reaches subprocesses.
    """
    token = _scoped_backend.set(_normalized(str(backend), SCOPED_ORIGIN))
    try:
        yield
    finally:
        _scoped_backend.reset(token)


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
    keeps that precision for callers that go on summing the result. ``backend`` ('auto' or a name of
    ``backends.BACKENDS``) overrides :func:`scan_backend_override` and the NNUNET_MAMBA_SCAN environment
    variable. Assumes A <= 0 and delta >= 0 (after bias and softplus), so that the state decays; otherwise it
    can grow until it overflows.
    """
    _check_dtypes({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if out_dtype is None:
        out_dtype = u.dtype
    elif not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise ValueError(f"selective_scan: out_dtype must be a floating-point torch.dtype, got {out_dtype!r}")
    # half precision loses the long-range decay products, so the scan never runs below float32
    compute_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    chosen = get_backend(resolve_backend(u.device, backend, dtype=compute_dtype))
    if u.numel() == 0:
        chosen = get_backend("torch")  # nothing to scan, and the kernels are not meant for empty launches

    def cast(t):
        return None if t is None else t.to(compute_dtype)

    with _notify_observers(u, A, D, z), torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C, D, z, delta_bias = (cast(t) for t in (u, delta, A, B, C, D, z, delta_bias))
        if chosen.grouped_bc_only:
            B = B.unsqueeze(1) if B.dim() == 3 else B
            C = C.unsqueeze(1) if C.dim() == 3 else C
        out = chosen.run(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out.to(out_dtype)
