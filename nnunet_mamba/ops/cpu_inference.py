"""Where a block may compute its output by a path for CPU inference only.

Some ops have a faster way on CPU to the same values whose gradient differs (max-pooling by strided views splits
tied windows' gradients) or that has no backward (up-sampling with the skip added in one pass). Such a path is safe
where no gradient is recorded and nothing watches or rewrites the ops: inference, ``nnUNetv2_predict`` and
validation on the CPU, outside CPU autocast (which picks its own dtypes per op), JIT traces and dispatch modes (FLOP
counters, fake tensors).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode


def ops_unobserved() -> bool:
    """Whether an op about to run on CPU tensors is neither autocast, JIT-traced nor dispatched to a mode, so that
    a kernel of ours may stand in for PyTorch's op."""
    return not (torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or is_in_torch_dispatch_mode())


def unobserved_cpu_inference(*tensors: torch.Tensor | None) -> bool:
    """Whether ``tensors`` (``None`` entries skipped) are all on the CPU and the op about to run on them records no
    gradient and is unobserved (:func:`ops_unobserved`)."""
    present = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" for t in present):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return ops_unobserved()
