"""Triton selective scan: GPU training speed without compiling mamba-ssm.

The core recurrence x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t, y_t = sum_n C_t,n x_t,n runs in two
Triton kernels; delta bias/softplus, the D skip and the z gate are cheap per-channel elementwise work and stay
in ordinary autograd around the core (as in ``scan_torch``), which keeps the kernels small.

Forward: one program per (batch, block of channels inside one B/C group). It keeps its (channels x N)
state in registers and walks L in chunks of BLOCK_L positions: inside a chunk the pairs (a, b) =
(exp(delta A), delta u B) are combined by a parallel associative scan, (a1, b1) then (a2, b2) =
(a1 a2, a2 b1 + b2), and the state carried in from the previous chunk is added as x = b_scan + a_scan * carry.
Decays are products of exp(delta A) <= 1, never exponentials of differences of sums, so a huge step makes
them underflow to 0 (the state is reset), and never overflow or cancel. Only the chunk-start states are
stored (L / BLOCK_L of them per channel, not L): the backward recomputes the states inside a chunk from them
rather than keeping all (batch, dim, L, N) states.

Backward: the same programs walk the chunks in reverse, recompute the chunk's states, and run a reverse
associative scan for the adjoint lambda_t = C_t g_t + a_{t+1} lambda_{t+1} (a_{t+1} read one position ahead,
across the chunk border too) with the adjoint carried in from the following chunk. a_t x_{t-1} is x_t - b_t:
dividing by a_t would underflow. Gradients of B and C sum over the channels of a group; each program reduces
its channel block and adds the (N x chunk) result atomically, so with more than one channel block per group
their last bits depend on the order of the adds. Gradients of A are per-batch partial sums, added in torch.

Triton is imported lazily, once, and why it failed is remembered (``_optional.LazyImport``), so
``import nnunet_mamba`` stays fast and works without it. The kernels are built on first use, not at import
(``@triton.jit`` would fix the mode when it decorates): one set for compiled and one for interpreted mode,
picked by TRITON_INTERPRET at each call, so Triton's interpreter, which runs the same kernels on CPU
tensors, can be switched on at any time, whatever imported triton before (the tests rely on this).
The interpreter runs an associative scan one element at a time in Python (0.1-0.2 ms each), so by default
it uses chunks of one position, where the in-chunk scan is the identity and the carried state does all the
work; tests set larger chunks at tiny shapes to check the scan path itself.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from nnunet_mamba.ops._optional import LazyImport

INTERPRET_ENV_VAR = "TRITON_INTERPRET"
INSTALL_HINT = "install it with `pip install triton` (it ships with the CUDA builds of torch on Linux)"
# what the kernels read; they compute in float32 whatever the input, and float64 would be silently rounded
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Compiled (GPU) launch configuration. A chunk of CUDA_BLOCK_L positions is scanned in parallel; the channel
# block is as wide as keeps a (channels x N x positions) tile within the forward's or the backward's tile
# size. With N = 16 that is 4 channels (forward) and 2 (backward, which holds about twice as many such tiles):
# compiled for sm_90 with 4 warps they take 96 and 140 registers and spill nothing, while twice those tiles
# take 168 and 255 registers (the backward at 64 positions spills). Not yet tuned on a GPU.
CUDA_BLOCK_L = 32
CUDA_MIN_BLOCK_L = 8
CUDA_FORWARD_TILE = 2048
CUDA_BACKWARD_TILE = 1024
CUDA_NUM_WARPS = 4
# Interpreter launch configuration: one position per chunk (no in-chunk scan, see the module docstring), and
# whole groups per program, since every program and every loop step costs Python time.
INTERPRETER_BLOCK_L = 1
INTERPRETER_MAX_BLOCK_D = 64

# Bound by _load_triton(); the kernel bodies below refer to them as globals. The sum is tl.reduce with
# Triton's own _sum_combine, not tl.sum: tl.sum is a @triton.jit function whose kind (compiled or
# interpreted) was fixed when triton.language was imported, and the interpreter cannot call a compiled-kind
# one, so using it would make the interpreter depend on TRITON_INTERPRET being set before anything imported
# triton. The interpreter also recognises _sum_combine and sums with numpy instead of one Python call per
# element.
tl = None  # triton.language
_scan_combine = None  # _combine_steps as a JITFunction
_sum_combine = None

_build_lock = threading.Lock()
_kernels: Dict[bool, "_Kernels"] = {}


def _load_triton():
    global tl, _scan_combine, _sum_combine
    triton = importlib.import_module("triton")
    language = importlib.import_module("triton.language")
    # a JITFunction (not triton.jit, which would give an interpreted one while TRITON_INTERPRET is
    # set): compiled kernels can only call JITFunctions, and the interpreter only calls its .fn
    combine = triton.JITFunction(_combine_steps)
    # compiled or interpreted kind, as triton.language was imported; see _build_kernels
    add = getattr(language.standard, "_sum_combine", None)
    if add is None or not hasattr(add, "fn"):  # not in this triton version: an equivalent one
        add = triton.JITFunction(_add)
    tl, _scan_combine, _sum_combine = language, combine, add
    return triton


# ImportError, but also e.g. a triton built for another torch or CUDA
triton_import = LazyImport(
    _load_triton, lambda error: f"triton could not be imported ({type(error).__name__}: {error}); {INSTALL_HINT}")


def interpreter_enabled() -> bool:
    """Whether Triton's interpreter is on (TRITON_INTERPRET=1), as Triton itself reads it now."""
    triton, _ = triton_import.result()
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    # triton before 3.3 had no knobs and read the variable itself
    return os.environ.get(INTERPRET_ENV_VAR, "0").strip().lower() in ("1", "true", "on", "yes")


def triton_status(device: Union[torch.device, str, torch.Tensor, None] = None) -> Tuple[bool, str]:
    """``(True, "")`` when triton imports and (if ``device`` is given) can run on tensors there, else
    ``(False, reason)``.

    The compiled kernels run on CUDA tensors. CPU tensors run only under Triton's interpreter
    (TRITON_INTERPRET=1), which is meant for tests: it is orders of magnitude slower than any CPU backend.
    """
    available, reason = triton_import.status()
    if not available:
        return False, reason
    if device is None:
        return True, ""
    if isinstance(device, torch.Tensor):
        device = device.device
    device = torch.device(device)
    if device.type == "cuda":
        if interpreter_enabled() or torch.cuda.is_available():
            return True, ""
        return False, "triton imports but no CUDA device is visible"
    if device.type == "cpu":
        if interpreter_enabled():
            return True, ""
        return False, (f"the triton kernels run on CUDA tensors, and the tensors are on device '{device}'; "
                       f"CPU tensors run only under Triton's interpreter ({INTERPRET_ENV_VAR}=1, for tests: "
                       f"it is very slow)")
    return False, f"the triton kernels do not run on tensors on device '{device}' (CUDA tensors only)"


# ----------------------------------------------------------------------------------------------------------
# Kernel bodies. Plain functions here, compiled (or wrapped for the interpreter) by _build_kernels on first use;
# `tl` and `_scan_combine` are module globals bound by _load_triton() first. Shapes: u, delta, y (batch, dim,
# L); A (dim, N); B, C (batch, groups, N, L); states (batch, n_chunks, dim, N); all contiguous float32. A
# program's channels lie in one group: local index `local` within group `group`, padded up to BLOCK_D; N is
# padded up to BLOCK_N and L up to whole chunks. Padding loads delta = u = B = C = g = 0, so a = 1 and b = 0
# there: padded states stay 0 and the real ones pass through padded positions unchanged.


def _combine_steps(a_left, b_left, a_right, b_right):
    # x -> a_left x + b_left, then x -> a_right x + b_right; associative, so it can be scanned in parallel
    return a_left * a_right, a_right * b_left + b_right


def _add(a, b):
    return a + b


def _scan_forward_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, y_ptr, states_ptr,
                         dim, seq_len, d_state, groups, per_group, n_dblocks, n_chunks,
                         BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    group = pid // n_dblocks
    local = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel = group * per_group + local
    d_ok = local < per_group
    n = tl.arange(0, BLOCK_N)
    n_ok = n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    steps = tl.arange(0, BLOCK_L)
    batch = tl.program_id(1).to(tl.int64)  # offsets below are int64: batch * dim * L can pass 2**31

    A = tl.load(A_ptr + channel[:, None] * d_state + n[None, :], mask=dn_ok, other=0.0)
    rows = (batch * dim + channel) * seq_len
    bc_rows = ((batch * groups + group) * d_state + n) * seq_len
    state_offsets = batch * n_chunks * dim * d_state + channel[:, None] * d_state + n[None, :]
    x = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    for k in range(n_chunks):
        t = k * BLOCK_L + steps
        t_ok = t < seq_len
        dl_ok = d_ok[:, None] & t_ok[None, :]
        nl_ok = n_ok[:, None] & t_ok[None, :]
        tl.store(states_ptr + state_offsets, x, mask=dn_ok)  # the chunk-start state, for the backward
        state_offsets += dim * d_state
        delta = tl.load(delta_ptr + rows[:, None] + t[None, :], mask=dl_ok, other=0.0)
        u = tl.load(u_ptr + rows[:, None] + t[None, :], mask=dl_ok, other=0.0)
        B = tl.load(B_ptr + bc_rows[:, None] + t[None, :], mask=nl_ok, other=0.0)
        C = tl.load(C_ptr + bc_rows[:, None] + t[None, :], mask=nl_ok, other=0.0)
        # (BLOCK_D, BLOCK_N, BLOCK_L) tiles, positions last as in memory
        decay = tl.exp(delta[:, None, :] * A[:, :, None])
        drive = (delta * u)[:, None, :] * B[None, :, :]
        if BLOCK_L > 1:
            decay, drive = tl.associative_scan((decay, drive), 2, _scan_combine)
        states = drive + decay * x[:, :, None]
        y = tl.reduce(states * C[None, :, :], 1, _sum_combine)
        tl.store(y_ptr + rows[:, None] + t[None, :], y, mask=dl_ok)
        x = tl.reduce(tl.where(steps[None, None, :] == BLOCK_L - 1, states, 0.0), 2, _sum_combine)


def _scan_backward_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, grad_y_ptr, states_ptr,
                          grad_u_ptr, grad_delta_ptr, grad_A_ptr, grad_B_ptr, grad_C_ptr,
                          dim, seq_len, d_state, groups, per_group, n_dblocks, n_chunks,
                          BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    group = pid // n_dblocks
    local = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel = group * per_group + local
    d_ok = local < per_group
    n = tl.arange(0, BLOCK_N)
    n_ok = n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    steps = tl.arange(0, BLOCK_L)
    batch = tl.program_id(1).to(tl.int64)

    A = tl.load(A_ptr + channel[:, None] * d_state + n[None, :], mask=dn_ok, other=0.0)
    rows = (batch * dim + channel) * seq_len
    bc_rows = ((batch * groups + group) * d_state + n) * seq_len
    state_offsets = (batch * n_chunks + n_chunks - 1) * dim * d_state + channel[:, None] * d_state + n[None, :]
    lam_after = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)  # adjoint at the first position of the next chunk
    grad_A = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    for reversed_k in range(n_chunks):
        k = n_chunks - 1 - reversed_k
        t = k * BLOCK_L + steps
        t_ok = t < seq_len
        dl_ok = d_ok[:, None] & t_ok[None, :]
        nl_ok = n_ok[:, None] & t_ok[None, :]
        next_ok = d_ok[:, None] & (t + 1 < seq_len)[None, :]
        x = tl.load(states_ptr + state_offsets, mask=dn_ok, other=0.0)
        state_offsets -= dim * d_state
        delta = tl.load(delta_ptr + rows[:, None] + t[None, :], mask=dl_ok, other=0.0)
        delta_next = tl.load(delta_ptr + rows[:, None] + t[None, :] + 1, mask=next_ok, other=0.0)
        u = tl.load(u_ptr + rows[:, None] + t[None, :], mask=dl_ok, other=0.0)
        g = tl.load(grad_y_ptr + rows[:, None] + t[None, :], mask=dl_ok, other=0.0)
        B = tl.load(B_ptr + bc_rows[:, None] + t[None, :], mask=nl_ok, other=0.0)
        C = tl.load(C_ptr + bc_rows[:, None] + t[None, :], mask=nl_ok, other=0.0)

        # the chunk's states again, from its stored start state
        decay = tl.exp(delta[:, None, :] * A[:, :, None])
        delta_u = delta * u
        drive = delta_u[:, None, :] * B[None, :, :]
        if BLOCK_L > 1:
            decay_scan, drive_scan = tl.associative_scan((decay, drive), 2, _scan_combine)
        else:
            decay_scan, drive_scan = decay, drive
        states = drive_scan + decay_scan * x[:, :, None]
        grad_C = tl.reduce(g[:, None, :] * states, 0, _sum_combine)
        tl.atomic_add(grad_C_ptr + bc_rows[:, None] + t[None, :], grad_C, mask=nl_ok)

        # lambda_t = C_t g_t + a_{t+1} lambda_{t+1}, backwards from the carried lambda_after
        decay_next = tl.exp(delta_next[:, None, :] * A[:, :, None])
        source = g[:, None, :] * C[None, :, :]
        if BLOCK_L > 1:
            decay_next, source = tl.associative_scan((decay_next, source), 2, _scan_combine, reverse=True)
        lam = source + decay_next * lam_after[:, :, None]
        lam_after = tl.reduce(tl.where(steps[None, None, :] == 0, lam, 0.0), 2, _sum_combine)

        lam_B = tl.reduce(lam * B[None, :, :], 1, _sum_combine)
        grad_log_decay = lam * (states - drive)  # (a_t x_{t-1}) * lambda_t, the gradient of delta_t * A
        tl.store(grad_u_ptr + rows[:, None] + t[None, :], delta * lam_B, mask=dl_ok)
        tl.store(grad_delta_ptr + rows[:, None] + t[None, :],
                 u * lam_B + tl.reduce(grad_log_decay * A[:, :, None], 1, _sum_combine), mask=dl_ok)
        grad_A += tl.reduce(grad_log_decay * delta[:, None, :], 2, _sum_combine)
        grad_B = tl.reduce(lam * delta_u[:, None, :], 0, _sum_combine)
        tl.atomic_add(grad_B_ptr + bc_rows[:, None] + t[None, :], grad_B, mask=nl_ok)
    tl.store(grad_A_ptr + (batch * dim + channel[:, None]) * d_state + n[None, :], grad_A, mask=dn_ok)


@dataclass(frozen=True)
class _Kernels:
    forward: object
    backward: object


def _build_kernels(interpret: bool) -> _Kernels:
    """The kernels for the compiled or the interpreted mode, built once per mode."""
    global _sum_combine
    triton = triton_import.result()[0]
    with _build_lock:
        if interpret not in _kernels:
            if interpret:
                from triton.runtime.interpreter import InterpretedFunction as make
            else:
                make = triton.JITFunction
                if not isinstance(_sum_combine, triton.JITFunction):
                    # triton.language was imported while TRITON_INTERPRET was set, so its _sum_combine is an
                    # interpreted one, which compiled kernels cannot call (the interpreter then sums one
                    # element at a time: correct, only slower)
                    _sum_combine = triton.JITFunction(_sum_combine.fn)
            _kernels[interpret] = _Kernels(forward=make(_scan_forward_kernel), backward=make(_scan_backward_kernel))
        return _kernels[interpret]


@dataclass(frozen=True)
class LaunchConfig:
    """Block sizes: channels per program (forward and backward may differ), padded N, positions per chunk."""

    forward_block_d: int
    backward_block_d: int
    block_n: int
    block_l: int
    n_chunks: int
    num_warps: int


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def launch_config(per_group: int, d_state: int, seq_len: int, interpret: bool) -> LaunchConfig:
    """Block sizes for channels (within one group), states and positions; see the constants above."""
    block_n = _next_power_of_2(d_state)
    group_width = _next_power_of_2(per_group)
    if interpret:
        block_l = INTERPRETER_BLOCK_L
        forward_block_d = backward_block_d = min(group_width, INTERPRETER_MAX_BLOCK_D)
    else:
        # shorter chunks for large N, so that even one channel's tile stays within the backward's size
        block_l = max(CUDA_MIN_BLOCK_L, min(CUDA_BLOCK_L, CUDA_BACKWARD_TILE // block_n))
        forward_block_d = max(1, min(group_width, CUDA_FORWARD_TILE // (block_n * block_l)))
        backward_block_d = max(1, min(group_width, CUDA_BACKWARD_TILE // (block_n * block_l)))
    return LaunchConfig(forward_block_d=forward_block_d, backward_block_d=backward_block_d, block_n=block_n,
                        block_l=block_l, n_chunks=max(1, -(-seq_len // block_l)), num_warps=CUDA_NUM_WARPS)


def _on_device_of(t: torch.Tensor):
    """Triton launches on the current CUDA device, which need not be the tensors' (e.g. cuda:1 data while
    cuda:0 is current): make it theirs for the launch."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class TritonScanCore(torch.autograd.Function):
    """y_t = sum_n C_t,n x_t,n with x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t, in the Triton kernels.

    u, delta: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L); all contiguous float32.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        batch, dim, seq_len = u.shape
        groups, d_state = B.shape[1], B.shape[2]
        if u.numel() == 0 or d_state == 0:  # nothing to scan (and no empty launches)
            ctx.save_for_backward(u, delta, A, B, C, None)
            return torch.zeros_like(u)
        interpret = interpreter_enabled()
        kernels = _build_kernels(interpret)
        config = launch_config(dim // groups, d_state, seq_len, interpret)
        y = torch.empty_like(u)
        states = u.new_empty(batch, config.n_chunks, dim, d_state)
        per_group = dim // groups
        n_dblocks = -(-per_group // config.forward_block_d)
        with _on_device_of(u):
            kernels.forward[(groups * n_dblocks, batch)](
                u, delta, A, B, C, y, states, dim, seq_len, d_state, groups, per_group, n_dblocks,
                config.n_chunks, BLOCK_D=config.forward_block_d, BLOCK_N=config.block_n, BLOCK_L=config.block_l,
                num_warps=config.num_warps)
        ctx.save_for_backward(u, delta, A, B, C, states)
        ctx.config, ctx.interpret = config, interpret
        return y

    @staticmethod
    @once_differentiable  # the backward is a kernel, not a differentiable graph
    def backward(ctx, grad_y):
        u, delta, A, B, C, states = ctx.saved_tensors
        if states is None:
            grads = [torch.zeros_like(t) for t in (u, delta, A, B, C)]
            return tuple(grad if need else None for grad, need in zip(grads, ctx.needs_input_grad))
        batch, dim, seq_len = u.shape
        groups, d_state = B.shape[1], B.shape[2]
        config = ctx.config
        grad_y = grad_y.to(torch.float32).contiguous()
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_A_per_batch = A.new_empty(batch, dim, d_state)
        grad_B, grad_C = torch.zeros_like(B), torch.zeros_like(C)  # accumulated atomically
        per_group = dim // groups
        n_dblocks = -(-per_group // config.backward_block_d)
        with _on_device_of(u):
            _build_kernels(ctx.interpret).backward[(groups * n_dblocks, batch)](
                u, delta, A, B, C, grad_y, states, grad_u, grad_delta, grad_A_per_batch, grad_B, grad_C,
                dim, seq_len, d_state, groups, per_group, n_dblocks, config.n_chunks,
                BLOCK_D=config.backward_block_d, BLOCK_N=config.block_n, BLOCK_L=config.block_l,
                num_warps=config.num_warps)
        grads = (grad_u, grad_delta, grad_A_per_batch.sum(0), grad_B, grad_C)
        return tuple(grad if need else None for grad, need in zip(grads, ctx.needs_input_grad))


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan (mamba-ssm ``selective_scan_fn`` semantics) on already validated inputs, in Triton.

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L) (or (batch, N, L)); D, delta_bias:
    (dim,). Inputs may be float32, float16 or bfloat16: they are upcast, and the state, the accumulation and
    the (float32) result are float32. Raises RuntimeError (with the reason) where the kernels cannot run on
    the tensors' device.
    """
    available, reason = triton_status(u.device)
    if not available:
        raise RuntimeError(f"The Triton selective-scan backend is unavailable: {reason}. Set "
                           f"NNUNET_MAMBA_SCAN=auto or torch to use another backend.")
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"selective_scan_triton: {name} has dtype {t.dtype}; the Triton kernels compute in "
                            f"float32 and take float32, float16 or bfloat16 inputs")

    def f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(torch.float32)

    u, delta, A, B, C, D, z, delta_bias = (f32(t) for t in (u, delta, A, B, C, D, z, delta_bias))
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    y = TritonScanCore.apply(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous())
    if D is not None:
        y = y + D.unsqueeze(-1) * u
    if z is not None:
        y = y * F.silu(z)
    return y
