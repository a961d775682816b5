"""The compiled CPU selective scan (numba): guarded loading, thread settings, and its autograd Function.

The kernels themselves are in :mod:`nnunet_mamba.ops.numba_kernels`. numba is imported lazily, once, and
why it failed is remembered (:class:`~nnunet_mamba.ops._optional.LazyImport`), so ``import nnunet_mamba``
stays fast and works without numba, and error messages can say what went wrong.

Compiled kernels are cached on disk (numba's ``cache=True``): next to the module in ``__pycache__`` when
that is writable, else in numba's user-wide cache (``~/.cache/numba``), or wherever ``NUMBA_CACHE_DIR``
points. A process pays the compile (about 15 s for the forward, 40 s with the backward, per dtype) once per
machine and source version; where no cache location is writable, the kernels are compiled in memory in
every process instead.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
from typing import Iterator, Optional, Tuple

import torch

from nnunet_mamba.ops._optional import LazyImport

KERNEL_MODULE = "nnunet_mamba.ops.numba_kernels"
# Channels scanned together by one work unit: the SIMD lanes of the kernels' inner loops (a multiple of 8
# float32 lanes where the group is wide enough). Wider blocks mean fewer, longer inner loops but larger
# per-thread buffers and fewer units to share among threads.
MAX_BLOCK_WIDTH = 64
# Positions per pass of the forward (its (positions, width) buffers stay in the L2 cache); 64 to 1024
# measured alike.
FORWARD_CHUNK = 256
# The backward re-scans the sequence a chunk at a time, last chunk first, keeping the chunk's states per thread:
# chunk x N x width values, here 256Ki (1 MiB in float32, 256 positions for N = 16). On 2 cores of an EPYC,
# chunks of 256 to 512 positions were fastest (32: 1.25x, 64: 1.1x slower), the loop overheads of short chunks
# costing more than the cache misses of long ones. The decays are recomputed in the walk back rather than kept
# beside the states: as fast, at half the buffer. The training forward saves the state at every chunk start
# for it, N / chunk times the size of u (1/16 here); without them the backward would first have to scan the
# whole sequence once more to find them.
BACKWARD_BUFFER_ELEMENTS = 1 << 18

# numba's fallback threading layer (workqueue) must not run two parallel kernels at once, and the kernels
# release the GIL, so launches are serialised here
_launch_lock = threading.Lock()


def _load_kernels():
    return importlib.import_module(KERNEL_MODULE)


# ImportError, but also e.g. a numba built for another numpy
kernels_import = LazyImport(
    _load_kernels, lambda error: f"numba could not be imported ({type(error).__name__}: {error})")


def numba_status() -> Tuple[bool, str]:
    """``(True, "")`` when numba imports and the kernels are defined, else ``(False, reason)``."""
    return kernels_import.status()


def numba_details() -> str:
    """numba's version and where compiled kernels are cached, or why numba is unavailable (for ``doctor``)."""
    available, reason = numba_status()
    if not available:
        return reason
    import numba

    return f"numba {numba.__version__}, {kernels_import.result()[0].CACHE_NOTE}"


def _get_kernels():
    available, reason = numba_status()
    if not available:
        raise RuntimeError(
            f"The numba selective-scan backend is unavailable: {reason}. Install it with `pip install numba` "
            f"(pinned in requirements-cpu.txt), or set NNUNET_MAMBA_SCAN=torch to use the pure-PyTorch scan.")
    return kernels_import.result()[0]


def _use_torch_threads() -> int:
    """Run numba's parallel loops on as many threads as torch's intra-op pool: both never run at once, and
    more threads than that would oversubscribe the cores the user gave torch."""
    import numba

    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    if torch.get_num_threads() != torch_threads:
        # numba's OpenMP layer starting up resets OpenMP's thread count, which torch shares: without this, a
        # process limited to one torch thread runs on all cores after its first scan
        torch.set_num_threads(torch_threads)
    return threads


@contextlib.contextmanager
def numba_launch() -> Iterator[int]:
    """Around every launch of a parallel numba kernel (the scan's and those of ``block_ops``): one at a time, on
    torch's thread count, which it yields."""
    with _launch_lock:
        yield _use_torch_threads()


def channel_blocks(batch: int, groups: int, per_group: int, threads: int,
                   max_width: Optional[int] = None) -> Tuple[int, int]:
    """(width, blocks): every group's channels in ``blocks`` blocks of at most ``max_width`` (default
    MAX_BLOCK_WIDTH) channels (the last one may be narrower), with enough work units, (batch, group, block),
    for every thread and evenly spread.

    Each unit of the backward writes its own (L, N) slices of the B/C gradients, summed over blocks
    afterwards: more blocks cost that memory and sum, so there are no more than the threads need.
    """
    max_width = MAX_BLOCK_WIDTH if max_width is None else max_width
    if per_group <= 0:
        return 1, 1
    blocks = -(-per_group // max_width)
    while blocks < per_group:
        units = batch * groups * blocks
        if units >= threads and (units % threads == 0 or units >= 4 * threads):
            break
        blocks += 1
    width = -(-per_group // blocks)
    if width > 8 and max_width >= 8:
        width = min(-(-width // 8) * 8, max_width // 8 * 8)  # whole 8-lane vectors
    return width, -(-per_group // width)


def block_width_limit(d_state: int, kernels) -> int:
    """The widest block whose states fit the kernels' stack buffers."""
    if d_state > kernels.STACK_STATE_VALUES:
        raise ValueError(
            f"The numba selective scan supports state sizes up to {kernels.STACK_STATE_VALUES}, got "
            f"N = {d_state} (the last dimension of A). Use NNUNET_MAMBA_SCAN=torch for this model.")
    return max(1, min(MAX_BLOCK_WIDTH, kernels.STACK_CHANNELS, kernels.STACK_STATE_VALUES // max(1, d_state)))


def backward_chunk(seq_len: int, d_state: int) -> int:
    """Positions per backward chunk: the states of the widest block fill BACKWARD_BUFFER_ELEMENTS
    (independent of the thread count, which may change between forward and backward)."""
    per_position = max(1, d_state) * MAX_BLOCK_WIDTH
    return max(1, min(seq_len, BACKWARD_BUFFER_ELEMENTS // per_position))


def saved_state_positions(seq_len: int, d_state: int) -> int:
    """Positions whose state a training forward keeps per channel for the backward: every backward-chunk start.

    With the u of the scan, N of these states per channel is what the scan adds to a block's memory; networks
    count it in ``compute_conv_feature_map_size``."""
    return -(-seq_len // backward_chunk(seq_len, d_state))


def kernel_array(t: torch.Tensor):
    """A C-contiguous numpy view of ``t`` (a copy where it is not contiguous), as every numba kernel takes it."""
    t = t.detach()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous().numpy()


def _array(t: Optional[torch.Tensor], empty_shape, like: torch.Tensor):
    """:func:`kernel_array` of ``t``, or an empty array standing in for None."""
    if t is None:
        return like.new_empty(empty_shape).numpy()
    return kernel_array(t)


def _run_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_every: int = 0):
    """(out, starts): the scan's output and, when ``save_every`` > 0, the state before every
    ``save_every``-th position, (batch, chunks, N, dim), for the backward."""
    kernels = _get_kernels()
    batch, dim, seq_len = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    if save_every:
        starts = u.new_empty((batch, -(-seq_len // save_every), d_state, dim))
    else:
        starts = u.new_empty((0, 0, 0, 0))
    args = (_array(u, None, u), _array(delta, None, u), _array(A, None, u),
            _array(B, None, u), _array(C, None, u),
            _array(D, (0,), u), _array(z, (0, 0, 0), u), _array(delta_bias, (0,), u),
            D is not None, z is not None, delta_bias is not None, bool(delta_softplus))
    with numba_launch() as threads:
        width, blocks = channel_blocks(batch, groups, dim // groups, threads, block_width_limit(d_state, kernels))
        kernels.scan_forward(*args, width, blocks, max(1, min(seq_len, FORWARD_CHUNK)), max(1, save_every),
                             out.numpy(), starts.numpy())
    return out, starts


class NumbaSelectiveScan(torch.autograd.Function):
    """out = (y + D u) * silu(z), the full selective scan in one kernel each way.

    Saves its inputs and the state at every backward-chunk start; the backward recomputes the states in
    between (see :mod:`nnunet_mamba.ops.numba_kernels`) and computes only the gradients autograd asks for.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.delta_softplus = delta_softplus
        ctx.chunk = backward_chunk(u.shape[2], A.shape[1])
        out, starts = _run_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ctx.chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        need_u, need_delta, need_A, need_B, need_C, need_D, need_z, need_bias = ctx.needs_input_grad[:8]
        kernels = _get_kernels()
        batch, dim, seq_len = u.shape
        groups, d_state = B.shape[1], B.shape[2]

        def output(needed, shape):
            return u.new_empty(shape if needed else (0,) * len(shape))

        need_delta_any = need_delta or need_bias
        grad_u = output(need_u, (batch, dim, seq_len))
        grad_delta = output(need_delta_any, (batch, dim, seq_len))
        grad_z = output(need_z, (batch, dim, seq_len))
        grad_A = output(need_A, (batch, dim, d_state))
        grad_D = output(need_D, (batch, dim))
        grad_bias = output(need_delta_any, (batch, dim))
        grad_out = grad_out.to(u.dtype)
        # a gradient that arrives transposed, (batch, L, dim) in memory, is read so by the kernel
        grad_channels_last = not grad_out.is_contiguous() and grad_out.transpose(1, 2).is_contiguous()
        grad_array = _array(grad_out.transpose(1, 2) if grad_channels_last else grad_out, None, u)
        with numba_launch() as threads:
            width, blocks = channel_blocks(batch, groups, dim // groups, threads, block_width_limit(d_state, kernels))
            grad_B_acc = output(need_B, (blocks, batch, groups, d_state, seq_len))
            grad_C_acc = output(need_C, (blocks, batch, groups, d_state, seq_len))
            kernels.scan_backward(
                _array(u, None, u), _array(delta, None, u), _array(A, None, u),
                _array(B, None, u), _array(C, None, u),
                _array(D, (0,), u), _array(z, (0, 0, 0), u), _array(delta_bias, (0,), u),
                grad_array, grad_channels_last, starts.numpy(),
                D is not None, z is not None, delta_bias is not None, bool(ctx.delta_softplus),
                need_u, need_delta_any, need_A, need_B, need_C, need_D, need_z,
                width, blocks, ctx.chunk,
                grad_u.numpy(), grad_delta.numpy(), grad_z.numpy(), grad_A.numpy(), grad_D.numpy(),
                grad_bias.numpy(), grad_B_acc.numpy(), grad_C_acc.numpy())

        def per_group(acc):  # (blocks, batch, groups, N, L) -> (batch, groups, N, L)
            return acc[0] if blocks == 1 else acc.sum(0)

        return (grad_u if need_u else None,
                grad_delta if need_delta else None,
                grad_A.sum(0) if need_A else None,
                per_group(grad_B_acc) if need_B else None,
                per_group(grad_C_acc) if need_C else None,
                grad_D.sum(0) if need_D else None,
                grad_z if need_z else None,
                grad_bias.sum(0) if need_bias else None,
                None)


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan on validated CPU tensors of one dtype (float32 or float64), B and C as
    (batch, groups, N, L).

    When autograd will not need a backward (``torch.no_grad``, or no input requires grad) the kernel runs
    directly and nothing is saved.
    """
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return NumbaSelectiveScan.apply(*inputs, delta_softplus)
    return _run_forward(*inputs, delta_softplus)[0]
