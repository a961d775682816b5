"""The selective-scan backends, each declared once: what the dispatcher, ``doctor``, ``benchmark`` and the docs
read.

Adding a backend is one row here (and its ``scan_*.py`` module): the dispatcher walks :data:`BACKENDS` in
order, so the order is also the preference of ``NNUNET_MAMBA_SCAN=auto`` on each device type. This module
does not import torch or any kernel, so the CLI can list the names before it parses its arguments.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

SCAN_ENV_VAR = "NNUNET_MAMBA_SCAN"
AUTO = "auto"


def _late(module: str, function: str, *, with_device: bool = True) -> Callable:
    """``nnunet_mamba.ops.<module>.<function>``, looked up at each call: importing the backends here would
    import torch and the kernels with the table (and tests replace these functions to pretend one is missing).
    ``with_device=False`` drops the device argument of a status that does not depend on it."""
    def call(*args, **kwargs):
        found = getattr(importlib.import_module(f"nnunet_mamba.ops.{module}"), function)
        return found(*(args if with_device else args[1:]), **kwargs)

    call.__name__ = f"{module}.{function}"
    return call


def device_type(device) -> str:
    """'cuda' for torch.device('cuda:1') and for the string 'cuda:1' alike."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def _always_available(device) -> Tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class ScanBackend:
    """One way to compute the selective scan.

    ``run(u, delta, A, B, C, D, z, delta_bias, delta_softplus)`` takes validated tensors of one compute dtype
    (one of ``dtypes``), with B and C as (batch, groups, N, L) when ``grouped_bc_only``. ``status(device)`` is
    ``(True, "")`` when it can run on tensors there, else ``(False, reason)``, the reason naming the import
    error where the dependency failed to import. Only CUDA and CPU tensors are told apart by ``device_types``;
    an empty tuple means any device.
    """

    name: str
    kernel: str  # what runs, in words, as error messages name it
    device_types: Tuple[str, ...]
    devices: str  # device_types in words, as in "runs on CPU tensors"
    auto_device_types: Optional[Tuple[str, ...]]  # where 'auto' picks it when it can run; None: everywhere
    dtypes: Tuple[str, ...]  # torch dtype names it computes in
    fuses_epilogue: bool  # delta bias and softplus, the D skip and the z gate inside the kernel
    grouped_bc_only: bool
    install_hint: str  # the fix when it is missing, as a sentence start
    status: Callable[[object], Tuple[bool, str]]
    run: Callable
    details: Optional[Callable[[], str]] = None  # more for ``doctor`` when it is available (version, cache)

    def accepts_dtype(self, dtype) -> bool:
        return dtype is None or str(dtype).replace("torch.", "") in self.dtypes

    def runs_on(self, device_type: str) -> bool:
        return not self.device_types or device_type in self.device_types

    def unavailable_reason(self, device) -> str:
        """"" when it can run on tensors on ``device`` here, else why not (for tools that skip it)."""
        if not self.runs_on(device_type(device)):
            return f"runs on {self.devices} tensors only"
        return self.status(device)[1]


BACKENDS: Tuple[ScanBackend, ...] = (
    ScanBackend(
        name="cuda", kernel="the mamba-ssm kernel", device_types=("cuda",), devices="CUDA",
        auto_device_types=("cuda",),
        dtypes=("float32", "float16", "bfloat16"), fuses_epilogue=True, grouped_bc_only=False,
        install_hint="Install the kernel with `pip install .[cuda]` (mamba-ssm, built against your torch and CUDA "
                     "toolkit)",
        status=_late("scan_cuda", "cuda_kernel_status", with_device=False),
        run=_late("scan_cuda", "selective_scan_cuda")),
    # CPU tensors run only under Triton's interpreter (TRITON_INTERPRET=1, for tests); its status says so
    ScanBackend(
        name="triton", kernel="the Triton kernels", device_types=("cuda", "cpu"),
        devices="CUDA (and, under Triton's interpreter, CPU)", auto_device_types=("cuda",),
        dtypes=("float32", "float16", "bfloat16"), fuses_epilogue=False, grouped_bc_only=True,
        install_hint="Install it with `pip install triton` (it ships with the CUDA builds of torch on Linux)",
        status=_late("scan_triton", "triton_status"), run=_late("scan_triton", "selective_scan_triton")),
    ScanBackend(
        name="numba", kernel="the numba kernel", device_types=("cpu",), devices="CPU", auto_device_types=("cpu",),
        dtypes=("float32", "float64"), fuses_epilogue=True, grouped_bc_only=True,
        install_hint="Install it with `pip install numba` (the tested version is pinned in requirements-cpu.txt)",
        status=_late("scan_numba", "numba_status", with_device=False),
        run=_late("scan_numba", "selective_scan_numba"), details=_late("scan_numba", "numba_details")),
    ScanBackend(
        name="torch", kernel="the pure-PyTorch scan", device_types=(), devices="any", auto_device_types=None,
        dtypes=("float32", "float64", "float16", "bfloat16"), fuses_epilogue=False, grouped_bc_only=True,
        install_hint="", status=_always_available, run=_late("scan_torch", "selective_scan_torch")),
)
BACKEND_NAMES: Tuple[str, ...] = tuple(backend.name for backend in BACKENDS)
BACKEND_CHOICES: Tuple[str, ...] = (AUTO,) + BACKEND_NAMES


def get_backend(name: str) -> ScanBackend:
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise KeyError(f"no selective-scan backend {name!r}; the backends are {', '.join(BACKEND_NAMES)}")


def _spoken_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_forced(backend: ScanBackend, device, dtype, origin: str) -> None:
    """Raise RuntimeError, saying how to fix it, when ``backend`` was forced but cannot run on tensors on
    ``device`` computed in ``dtype``."""
    if not backend.runs_on(device_type(device)):
        raise RuntimeError(
            f"Selective-scan backend '{backend.name}' was forced (by the {origin}) but the tensors are on device "
            f"'{device}', and {backend.kernel} only runs on {backend.devices} tensors. Set {SCAN_ENV_VAR}=auto to "
            f"use the backend picked for these tensors (or {SCAN_ENV_VAR}=torch for the pure-PyTorch scan).")
    if not backend.accepts_dtype(dtype):
        raise RuntimeError(
            f"Selective-scan backend '{backend.name}' was forced (by the {origin}) but the scan computes in {dtype}, "
            f"and {backend.kernel} supports only {_spoken_list(backend.dtypes)}. Use float32 inputs, or set "
            f"{SCAN_ENV_VAR}=torch (or auto) to use the pure-PyTorch scan.")
    available, reason = backend.status(device)
    if not available:
        hint = f"{backend.install_hint}, or set" if backend.install_hint else "Set"
        raise RuntimeError(f"Selective-scan backend '{backend.name}' was forced but {reason}. {hint} "
                           f"{SCAN_ENV_VAR}=torch (or auto) to use the pure-PyTorch scan.")


def auto_backend(device, dtype) -> ScanBackend:
    """The first backend of the table that 'auto' may pick for tensors on ``device`` in ``dtype`` and that
    can run there (the pure-PyTorch scan always can)."""
    kind = device_type(device)
    for backend in BACKENDS:
        if backend.auto_device_types is not None and kind not in backend.auto_device_types:
            continue
        if backend.accepts_dtype(dtype) and backend.status(device)[0]:
            return backend
    raise AssertionError("the table ends with a backend that runs everywhere")
