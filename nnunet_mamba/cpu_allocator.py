"""Keeping freed memory in a process that trains on CPU, so that every train step does not fault its pages in
afresh.

glibc serves blocks of 32 MiB and more with ``mmap`` and unmaps them when they are freed; it also hands the top of
its heap back to the system when more than the trim threshold is free there. A CPU train step frees its activations
and allocates them again at the next step, and every 4 KiB page of a newly mapped block faults on its first write
and is zeroed by the kernel. LightM-UNet's 3D first level keeps maps of 64 MiB (64 channels of 64^3 voxels): on
the 2-core VM of ``docs/benchmarks.md`` its 64^3 train step faulted 4.3 GB in this way and spent 4.6 s of system
CPU time (both threads) in a 10.2 s step; nnU-Net's UNet, whose largest maps are half as large, 1.5 GB and 1.7 s in
a 6.5 s step (``examples/page_faults.py``).

Two glibc settings stop it: large blocks come from the heap like small ones (``M_MMAP_MAX`` 0) and the heap is
never trimmed (``M_TRIM_THRESHOLD`` -1). The process then keeps the memory it has freed and reuses it, as PyTorch's
caching allocator does with GPU memory: its resident set stays near its peak instead of shrinking between steps,
and that peak is 12 to 18 % higher (freed blocks reused out of order leave gaps). Data-loader workers forked after
it keep theirs too.

:func:`keep_freed_memory` applies them to the running process: our trainers do when they train on CPU, and
``benchmark network`` for every model it times, nnU-Net's UNet included. :data:`GLIBC_ENVIRONMENT` gives a process
the same from its start (``compare`` profiles every trainer, nnU-Net's too, with it; ``nnUNetv2_train`` with
nnU-Net's own trainers gets it from the shell). ``nnUNetv2_predict`` with our trainers on a machine without a GPU
applies it when it builds the network (the trainers' ``build_network_architecture``): a LightM-UNet forward pass
of a 64 x 128 x 128 patch took 15 to 17 s with glibc's defaults and 6 s with freed memory kept; the process then
holds its largest case's memory between cases, as PyTorch's caching allocator does on a GPU.
``NNUNET_MAMBA_KEEP_FREED_MEMORY=0`` leaves glibc's defaults everywhere. Elsewhere than Linux with glibc nothing
changes.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

KEEP_FREED_MEMORY_ENV = "NNUNET_MAMBA_KEEP_FREED_MEMORY"

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"

#: the same two settings as environment variables, read by glibc when a process starts. The trim threshold is
#: 1 TiB, never reached: glibc 2.39 and later reject 2**64 - 1 as overflowing and fall back to 128 KiB
GLIBC_ENVIRONMENT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}

_applied = False


def opted_out() -> bool:
    """True when ``NNUNET_MAMBA_KEEP_FREED_MEMORY`` asks for glibc's defaults ("0", "false", "no" or "off")."""
    return os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip().lower() in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # musl and others have no such function


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process from now on (see the module's docstring). Returns True when
    the settings are in force: applied now or earlier in this process. False where the user opted out or the C
    library is not glibc; then nothing changes. Process-wide, and not undone: call it only in a process that
    trains or predicts on CPU."""
    global _applied
    if _applied:
        return True
    if opted_out():
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mmap first: a block mapped before stays mapped until freed, and is then unmapped as before
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return _applied


def freed_memory_kept() -> bool:
    """Whether this process keeps its freed memory: :func:`keep_freed_memory` applied it, or the process started
    with :data:`GLIBC_ENVIRONMENT` (a large block allocated afresh costs a fault per page otherwise)."""
    return _applied or (_glibc() is not None and all(os.environ.get(key) == value
                                                     for key, value in GLIBC_ENVIRONMENT.items()))


def release_freed_memory() -> None:
    """Hand the memory this process has freed back to the system now (glibc's ``malloc_trim(0)``), kept or not:
    for measurements of the resident memory a block of work adds, which would otherwise reuse it unseen."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def subprocess_environment() -> dict[str, str]:
    """The variables that give a process started with them the same settings (empty where the user opted out)."""
    return {} if opted_out() else dict(GLIBC_ENVIRONMENT)


def describe() -> str:
    """What our CPU processes do with freed memory on this machine (for ``nnunet-mamba doctor``)."""
    if _glibc() is None:
        return "the C library is not glibc: its own defaults"
    if opted_out():
        return (f"glibc's defaults ({KEEP_FREED_MEMORY_ENV}={os.environ[KEEP_FREED_MEMORY_ENV]}): freed blocks of "
                f"32 MiB and more go back to the system and fault in again")
    return (f"our trainers training on CPU, and nnUNetv2_predict with them on a machine without a GPU, keep freed "
            f"memory in their process (glibc: no mmap, no trim); "
            f"{KEEP_FREED_MEMORY_ENV}=0 keeps glibc's defaults")
