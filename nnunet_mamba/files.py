"""Files that are never seen half-written, and whether the process that owns one still runs.

Checkpoints, ``dataset.json`` and ``splits_final.json`` are written next to their place under a name that
says which process writes them (``.<name>.partial-<pid>``), flushed to disk and renamed into place, so a
reader (``--c``, nnU-Net's planner, a second run) sees the old file or the new one. A process killed
outright (SIGKILL, power loss) leaves its partial file behind: the next write to the same place removes it
once its process is gone.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
from pathlib import Path
from typing import BinaryIO, Callable

PARTIAL_MARK = ".partial-"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    try:  # a killed process that nobody has reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a partial file next to ``path``, flushed to disk, then renamed into place.

    Partial files for ``path`` left by processes that died are removed first; this process's own is removed
    if ``write`` fails or is interrupted.
    """
    folder, name = os.path.split(os.path.abspath(path))
    prefix = os.path.join(folder, f".{name}{PARTIAL_MARK}")
    for stale in glob.glob(glob.escape(prefix) + "*"):
        pid = stale[len(prefix):]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # another writer swept it first
                os.remove(stale)
    partial = f"{prefix}{os.getpid()}"
    try:
        with open(partial, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


def write_json_atomically(path: str | os.PathLike, content) -> None:
    """``content`` as indented JSON (nnU-Net's layout), written with :func:`write_atomically`."""
    text = json.dumps(content, indent=2) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def json_safe(value):
    """``value`` with every non-finite float (NaN, infinity) replaced by None, which JSON writes as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
