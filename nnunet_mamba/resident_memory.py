"""The process's resident memory on CPU, as our tools read it: now, its peak since it started, and the growth of
its peak over a block of code.

One home for the three readings that ``benchmark network``, ``benchmark scan``, ``compare``'s profiles and the
trainers' per-epoch log take: ``/proc/self/statm`` (now), ``getrusage``'s ``ru_maxrss`` (the lifetime peak, which
cannot be reset) and ``/proc/self/status``'s ``VmHWM`` (a peak that ``/proc/self/clear_refs`` resets, for
:class:`ResidentPeak`). Each reading is None where the platform does not offer it.
"""
from __future__ import annotations

import os
import sys

from nnunet_mamba.cpu_allocator import release_freed_memory


def lifetime_peak_rss_bytes() -> int | None:
    """The process's peak resident set size since it started (``getrusage``); None without ``getrusage``."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def current_rss_bytes() -> int | None:
    """The process's resident memory now (Linux ``/proc``); None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of the process's resident memory (``VmHWM``); None where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ResidentPeak:
    """The growth of the process's peak resident set size over a block, in bytes (CPU memory of a train step).

    On entry, memory freed earlier is handed back to the system (glibc's ``malloc_trim``) and the kernel's peak
    (``VmHWM``) is reset to the current resident size (``/proc/self/clear_refs``, Linux >= 4.0); on exit the
    growth is the peak less that size. Exact, not sampled: every page touched inside counts. ``growth_bytes``
    stays None where the platform offers neither (then a benchmark reports nan).
    """

    def __init__(self):
        self.growth_bytes: int | None = None
        self._start: int | None = None

    def __enter__(self) -> "ResidentPeak":
        release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
        except OSError:
            return self
        self._start = current_rss_bytes()
        return self

    def __exit__(self, *exc_info) -> None:
        peak = _peak_rss_bytes()
        if self._start is not None and peak is not None:
            self.growth_bytes = max(0, peak - self._start)
