"""One lazy, remembered import for the optional scan kernels (mamba-ssm, numba, triton).

Importing them can fail in many ways (ImportError, OSError for a missing shared library, a build for another
torch or numpy), and some are slow to import. Each backend module loads its dependency on first use, once,
and keeps why it failed, so ``import nnunet_mamba`` works everywhere and stays fast, and error messages can
say what went wrong.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Tuple


class Unavailable(Exception):
    """Raised by a loader whose dependency imports but cannot run; its text is the reason, as given."""


class LazyImport:
    """Runs ``load`` on the first :meth:`result`, once, and remembers what it returned or why it failed.

    ``describe_failure(error)`` turns an exception from ``load`` into the reason shown to users (an
    :class:`Unavailable`'s text is used as it is). ``outcome`` is None until the load was tried, then
    ``(value, "")`` or ``(None, reason)``; tests set it to pretend a dependency is missing, or to None to
    load afresh.
    """

    def __init__(self, load: Callable[[], Any], describe_failure: Callable[[Exception], str]):
        self._load = load
        self._describe_failure = describe_failure
        self._lock = threading.Lock()
        self.outcome: Optional[Tuple[Any, str]] = None

    def result(self) -> Tuple[Any, str]:
        """``(value, "")`` when the dependency loaded, else ``(None, reason)``."""
        with self._lock:
            if self.outcome is None:
                try:
                    self.outcome = (self._load(), "")
                except Unavailable as reason:
                    self.outcome = (None, str(reason))
                except Exception as error:
                    self.outcome = (None, self._describe_failure(error))
            return self.outcome

    def status(self) -> Tuple[bool, str]:
        """``(True, "")`` when the dependency loaded, else ``(False, reason)``."""
        value, reason = self.result()
        return (True, "") if reason == "" and value is not None else (False, reason)
