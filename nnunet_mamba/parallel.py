"""Case-parallel work for the converters and the evaluation: one progress bar step per finished case,
workers that die with their parent, and no waiting for the other cases once one has failed."""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from typing import Callable, Sequence

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT_POLL_SECONDS = 1.0
_TERMINATE_WAIT_SECONDS = 30.0


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process as soon as ``parent_pid`` is gone, even if it was SIGKILLed."""
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass

    def watch() -> None:  # also covers systems without prctl
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _call_indexed(task: tuple[Callable, int, tuple]):
    function, index, arguments = task
    return index, function(*arguments)


def parallel_map(function: Callable, argument_tuples: Sequence[tuple], num_processes: int, desc: str) -> list:
    """``[function(*a) for a in argument_tuples]`` over ``num_processes`` worker processes, in input order.

    The progress bar advances as each case finishes. The first error is raised at once and the other
    workers are terminated (their partial output is the caller's to clean up).
    """
    from tqdm import tqdm

    results: list = [None] * len(argument_tuples)
    with tqdm(total=len(argument_tuples), desc=desc, unit="case", file=sys.stderr) as progress:
        if num_processes <= 1 or len(argument_tuples) <= 1:
            for index, arguments in enumerate(argument_tuples):
                results[index] = function(*arguments)
                progress.update()
            return results
        # spawn: the parent may hold torch/OpenMP threads, which fork does not copy safely.
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(
            min(num_processes, len(argument_tuples)), initializer=_exit_with_parent, initargs=(os.getpid(),)
        )
        try:
            tasks = [(function, index, arguments) for index, arguments in enumerate(argument_tuples)]
            for index, result in pool.imap_unordered(_call_indexed, tasks):
                results[index] = result
                progress.update()
            pool.close()
        except BaseException:
            _terminate(pool)
            raise
        pool.join()
    return results


def _terminate(pool) -> None:
    """``pool.terminate()``, waiting for it at most _TERMINATE_WAIT_SECONDS.

    CPython's terminate stops the workers and then joins the thread that feeds them tasks; that thread can
    stay blocked on the task queue's lock for ever (seen in a CI run, after a converter's first case failed),
    and the error would never reach the user. The workers are stopped before that join, so after the wait
    nothing of ours is left running: the stuck thread is a daemon and dies with the process."""
    stopper = threading.Thread(target=pool.terminate, name="pool-terminate", daemon=True)
    stopper.start()
    stopper.join(_TERMINATE_WAIT_SECONDS)
