"""The compiled CPU selective scan: numba kernels for forward and backward.

Importing this module imports numba; :mod:`nnunet_mamba.ops.scan_numba` imports it lazily, so that
``import nnunet_mamba`` neither needs numba nor pays for loading it.

Each (batch, channel) sequence is scanned position by position with its N states in a small local array,
so an input is read once and no (L, N) tensor is ever built: the recurrence is sequential in L, but the
N states of one step are independent and LLVM vectorises the loop over them (8 float32 lanes with AVX2).
That needs an ``exp`` LLVM can vectorise, and libm's is an opaque call, so float32 uses :func:`_exp32`
below (range reduction to [-ln2/2, ln2/2] and a degree-7 Taylor polynomial: a few float32 ulp). float64,
used for gradcheck and the float64 path of the entry point, keeps libm's ``exp``/``log1p``.

The scalar work of a position (bias, softplus, the D skip, the z gate) is done in separate passes over
L, vectorised across positions, so that the sequential loop does only what must be sequential.

The backward recomputes the states: a first pass stores the state at every chunk start (``chunk``
positions apart; none when the sequence is one chunk), then each chunk, last to first, is re-scanned into
a (chunk + 1, N) buffer and walked backwards with the adjoint. Decays are recomputed as ``exp(delta A)``,
never obtained by dividing a state by its decay (which underflows to 0 after a huge step).

Work is split over ``prange`` in units whose writes never overlap, so results do not depend on thread
scheduling: the forward by (batch, channel), the backward by (batch, group, block of channels), each unit
summing the B/C gradients of its channels into its own slice, which the caller sums over blocks.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.np.numpy_support import as_dtype
from numba.extending import intrinsic, overload

def _probe():
    pass


def _caching() -> tuple:
    """Whether numba can cache compiled code for this module, and a note that says where (or why not)."""
    try:
        dispatcher = njit(cache=True)(_probe)
    except RuntimeError as error:  # no writable __pycache__, user-wide cache or NUMBA_CACHE_DIR
        return False, f"kernels compiled in memory in every process (no cache location: {error})"
    return True, f"kernels cached in {dispatcher._cache._cache_path}"


CACHE, CACHE_NOTE = _caching()

# reassoc lets LLVM vectorise the sums over the N states; contract allows FMAs. nnan/ninf stay off: inf and
# nan must propagate as in the torch backend.
KERNEL_FASTMATH = {"reassoc", "contract"}
JIT_OPTIONS = {"parallel": True, "fastmath": KERNEL_FASTMATH, "nogil": True, "error_model": "numpy"}
# the helpers are inlined into the kernels; without reassoc, so that _exp32's rounding trick survives
HELPER_OPTIONS = {"fastmath": {"contract"}, "error_model": "numpy"}

# float32 constants; numba types Python floats as float64, which would promote the float32 arithmetic
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # few mantissa bits: k * _LN2_HI is exact for the k that occur
_LN2_LO = np.float32(-2.12194440e-4)
_ROUNDING = np.float32(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds to the nearest integer
_EXP_MIN = np.float32(-87.0)  # below this exp() is < 1.7e-38: returned as 0 (2**k would leave the normal range)
_EXP_MAX = np.float32(88.0)
_F32_ZERO = np.float32(0.0)
_F32_INF = np.float32(np.inf)
_TAYLOR = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))
_ATANH_SERIES = tuple(np.float32(1.0 / (2 * k + 1)) for k in range(8))
_F32_TWO = np.float32(2.0)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of an integer (LLVM trunc + bitcast; vectorises)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@njit(**HELPER_OPTIONS)
def _exp32(x):
    """exp of a float32, relative error a few ulp, branch free so that loops over it vectorise."""
    clamped = min(max(x, _EXP_MIN), _EXP_MAX)
    k = (clamped * _LOG2E + _ROUNDING) - _ROUNDING  # no reassoc here: the rounding must not be folded away
    r = (clamped - k * _LN2_HI) - k * _LN2_LO
    p = _TAYLOR[7]
    p = p * r + _TAYLOR[6]
    p = p * r + _TAYLOR[5]
    p = p * r + _TAYLOR[4]
    p = p * r + _TAYLOR[3]
    p = p * r + _TAYLOR[2]
    p = p * r + _TAYLOR[1]
    p = p * r + _TAYLOR[0]
    scale = _float32_from_bits((np.int32(k) + 127) << 23)  # 2**k
    value = p * scale
    value = _F32_ZERO if x < _EXP_MIN else value
    value = _F32_INF if x > _EXP_MAX else value
    return value if x == x else x  # nan stays nan


@njit(**HELPER_OPTIONS)
def _log1p_unit32(w):
    """log(1 + w) for float32 w in [0, 1]: 2 atanh(s) with s = w / (2 + w) in [0, 1/3], no cancellation."""
    s = w / (_F32_TWO + w)
    s2 = s * s
    p = _ATANH_SERIES[7]
    p = p * s2 + _ATANH_SERIES[6]
    p = p * s2 + _ATANH_SERIES[5]
    p = p * s2 + _ATANH_SERIES[4]
    p = p * s2 + _ATANH_SERIES[3]
    p = p * s2 + _ATANH_SERIES[2]
    p = p * s2 + _ATANH_SERIES[1]
    p = p * s2 + _ATANH_SERIES[0]
    return _F32_TWO * s * p


def exp_(x):
    """exp in the precision of ``x``: the vectorisable float32 one, or libm's for float64 (jitted code only)."""
    raise NotImplementedError("exp_ is only callable from numba-compiled code")


def softplus_(v):
    """log(1 + exp(v)) in the precision of ``v`` (jitted code only)."""
    raise NotImplementedError("softplus_ is only callable from numba-compiled code")


def sigmoid_(v):
    """1 / (1 + exp(-v)) in the precision of ``v`` (jitted code only)."""
    raise NotImplementedError("sigmoid_ is only callable from numba-compiled code")


@overload(exp_, jit_options=HELPER_OPTIONS)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)
    return None


@overload(softplus_, jit_options=HELPER_OPTIONS)
def _softplus_overload(v):
    # max(v, 0) + log1p(exp(-|v|)): never overflows, and keeps full precision where v is very negative
    if v == types.float32:
        return lambda v: max(v, _F32_ZERO) + _log1p_unit32(_exp32(-abs(v)))
    if isinstance(v, types.Float):
        zero = as_dtype(v).type(0)
        return lambda v: max(v, zero) + math.log1p(math.exp(-abs(v)))
    return None


@overload(sigmoid_, jit_options=HELPER_OPTIONS)
def _sigmoid_overload(v):
    if not isinstance(v, types.Float):
        return None
    one = as_dtype(v).type(1)

    def sigmoid(v):
        e = exp_(-abs(v))  # never overflows, unlike exp(-v)
        return one / (one + e) if v >= 0 else e / (one + e)

    return sigmoid


@njit(**HELPER_OPTIONS)
def _load_steps(u, delta, delta_bias, has_bias, apply_softplus, b, first, width, begin, stop, dt, du):
    """dt[i, j] = softplus(delta + bias) (or delta + bias) and du = dt * u at position begin + i of channel
    first + j: one channel's positions at a time (contiguous reads), into the (position, channel) layout."""
    for j in range(width):
        d = first + j
        bias = delta_bias[d] if has_bias else u.dtype.type(0)
        for t in range(begin, stop):
            v = delta[b, d, t] + bias
            step = softplus_(v) if apply_softplus else v
            dt[t - begin, j] = step
            du[t - begin, j] = step * u[b, d, t]


@njit(**HELPER_OPTIONS)
def _advance(a_t, B_seq, begin, stop, dt, du, x):
    """x <- the state after positions begin..stop-1, from the state before them; x and a_t: (N, W)."""
    d_state, width = x.shape
    for t in range(begin, stop):
        i = t - begin
        for n in range(d_state):
            drive = B_seq[t, n]
            for j in range(width):
                x[n, j] = exp_(dt[i, j] * a_t[n, j]) * x[n, j] + du[i, j] * drive


@njit(**JIT_OPTIONS, cache=CACHE)
def scan_forward(u, delta, A, Bt, Ct, D, z, delta_bias, has_D, has_z, has_bias, apply_softplus, width, blocks,
                 chunk, out):
    """out = (y + D u) * silu(z), y_t = C_t . x_t, x_t = exp(dt_t A) x_{t-1} + dt_t B_t u_t.

    u, delta, z, out: (batch, dim, L); A: (dim, N); Bt, Ct: (batch, groups, L, N) (note: L before N);
    D, delta_bias: (dim,). Absent optional inputs are passed as empty arrays with their flag False.
    Work units: ``blocks`` blocks of ``width`` channels per (batch, group), ``chunk`` positions at a time.
    """
    batch, dim, seq_len = u.shape
    d_state = A.shape[1]
    groups = Bt.shape[1]
    per_group = dim // groups
    for item in prange(batch * groups * blocks):
        b = item // (groups * blocks)
        g = (item // blocks) % groups
        first = g * per_group + (item % blocks) * width
        count = min(width, (g + 1) * per_group - first)
        if count <= 0:
            continue
        zero = u.dtype.type(0)
        B_seq = Bt[b, g]
        C_seq = Ct[b, g]
        a_t = np.ascontiguousarray(A[first:first + count].T)  # (N, W)
        x = np.zeros((d_state, count), u.dtype)
        dt = np.empty((chunk, count), u.dtype)
        du = np.empty((chunk, count), u.dtype)
        y = np.empty((chunk, count), u.dtype)
        for begin in range(0, seq_len, chunk):
            stop = min(begin + chunk, seq_len)
            _load_steps(u, delta, delta_bias, has_bias, apply_softplus, b, first, count, begin, stop, dt, du)
            for t in range(begin, stop):
                i = t - begin
                for j in range(count):
                    y[i, j] = zero
                for n in range(d_state):
                    drive = B_seq[t, n]
                    read = C_seq[t, n]
                    for j in range(count):
                        state = exp_(dt[i, j] * a_t[n, j]) * x[n, j] + du[i, j] * drive
                        x[n, j] = state
                        y[i, j] += read * state
            for j in range(count):
                d = first + j
                skip = D[d] if has_D else zero
                for t in range(begin, stop):
                    value = y[t - begin, j] + skip * u[b, d, t]
                    if has_z:
                        gate = z[b, d, t]
                        value *= gate * sigmoid_(gate)
                    out[b, d, t] = value


@njit(**JIT_OPTIONS, cache=CACHE)
def scan_backward(u, delta, A, Bt, Ct, D, z, delta_bias, grad_out, has_D, has_z, has_bias, apply_softplus,
                  need_u, need_delta, need_A, need_B, need_C, need_D, need_z, width, blocks, chunk,
                  grad_u, grad_delta, grad_z, grad_A, grad_D_part, grad_bias_part, grad_B_acc, grad_C_acc):
    """Gradients of :func:`scan_forward`'s output w.r.t. every input asked for.

    ``need_delta`` covers delta and delta_bias (the bias gradient is the sum of delta's). Outputs:
    grad_u, grad_delta (w.r.t. delta before bias and softplus), grad_z: (batch, dim, L);
    grad_A: (batch, dim, N), grad_D_part, grad_bias_part: (batch, dim), to be summed over batch;
    grad_B_acc, grad_C_acc: (blocks, batch, groups, L, N), to be summed over blocks. Every element of an
    output asked for is written (no zeroing needed); outputs not asked for may be empty arrays.
    """
    batch, dim, seq_len = u.shape
    d_state = A.shape[1]
    groups = Bt.shape[1]
    per_group = dim // groups
    n_chunks = (seq_len + chunk - 1) // chunk
    need_adjoint = need_u or need_delta or need_A or need_B
    for item in prange(batch * groups * blocks):
        block = item % blocks
        b = item // (groups * blocks)
        g = (item // blocks) % groups
        first = g * per_group + block * width
        count = min(width, (g + 1) * per_group - first)
        zero = u.dtype.type(0)
        one = u.dtype.type(1)
        if count <= 0:  # an empty block still owns its slice of the B/C gradients
            for t in range(seq_len):
                for n in range(d_state):
                    if need_B:
                        grad_B_acc[block, b, g, t, n] = zero
                    if need_C:
                        grad_C_acc[block, b, g, t, n] = zero
            continue
        B_seq = Bt[b, g]
        C_seq = Ct[b, g]
        a_t = np.ascontiguousarray(A[first:first + count].T)  # (N, W)
        dt = np.empty((chunk, count), u.dtype)
        du = np.empty((chunk, count), u.dtype)
        gy = np.empty((chunk, count), u.dtype)  # gradient w.r.t. y, the scan before the D skip and z gate
        y = np.empty((chunk, count), u.dtype)
        lam_B_t = np.empty((chunk, count), u.dtype)  # sum_n lam_n B_n: dy/d(dt u)
        grad_step_t = np.empty((chunk, count), u.dtype)  # dy/d(dt) through the decays
        states = np.empty((chunk + 1, d_state, count), u.dtype)  # [0]: the state before the chunk
        decays = np.empty((chunk, d_state, count), u.dtype)
        starts = np.empty((n_chunks, d_state, count), u.dtype)
        lam = np.zeros((d_state, count), u.dtype)  # adjoint of the state
        grad_A_t = np.zeros((d_state, count), u.dtype)
        lam_B = np.empty(count, u.dtype)
        grad_step = np.empty(count, u.dtype)
        grad_D_sum = np.zeros(count, u.dtype)
        grad_bias_sum = np.zeros(count, u.dtype)
        # the state at every chunk start
        starts[0] = zero
        for c in range(1, n_chunks):
            begin = (c - 1) * chunk
            _load_steps(u, delta, delta_bias, has_bias, apply_softplus, b, first, count, begin, begin + chunk,
                        dt, du)
            starts[c] = starts[c - 1]
            _advance(a_t, B_seq, begin, begin + chunk, dt, du, starts[c])
        for c in range(n_chunks - 1, -1, -1):
            begin = c * chunk
            stop = min(begin + chunk, seq_len)
            _load_steps(u, delta, delta_bias, has_bias, apply_softplus, b, first, count, begin, stop, dt, du)
            for j in range(count):
                d = first + j
                for t in range(begin, stop):
                    g_t = grad_out[b, d, t]
                    if has_z:
                        gate = z[b, d, t]
                        g_t *= gate * sigmoid_(gate)
                    gy[t - begin, j] = g_t
                    grad_D_sum[j] += g_t * u[b, d, t]
            # re-scan the chunk, keeping states, decays and y
            states[0] = starts[c]
            for t in range(begin, stop):
                i = t - begin
                for j in range(count):
                    y[i, j] = zero
                for n in range(d_state):
                    drive = B_seq[t, n]
                    read = C_seq[t, n]
                    for j in range(count):
                        decay = exp_(dt[i, j] * a_t[n, j])
                        state = decay * states[i, n, j] + du[i, j] * drive
                        decays[i, n, j] = decay
                        states[i + 1, n, j] = state
                        y[i, j] += read * state
            for t in range(stop - 1, begin - 1, -1):
                i = t - begin
                if not need_adjoint:
                    if need_C:
                        for n in range(d_state):
                            total = zero
                            for j in range(count):
                                total += gy[i, j] * states[i + 1, n, j]
                            grad_C_acc[block, b, g, t, n] = total
                    continue
                for j in range(count):
                    lam_B[j] = zero
                    grad_step[j] = zero
                for n in range(d_state):
                    write = B_seq[t, n]
                    read = C_seq[t, n]
                    sum_C = zero
                    sum_B = zero
                    for j in range(count):
                        # on entry lam holds exp(dt_{t+1} A) lam_{t+1}; adding dy/dx_t makes it lam_t
                        adjoint = lam[n, j] + gy[i, j] * read
                        sum_C += gy[i, j] * states[i + 1, n, j]
                        sum_B += adjoint * du[i, j]
                        lam_B[j] += adjoint * write
                        # gradient of the log-decay dt_t A_n: lam_n exp(dt_t A_n) x_{t-1,n}
                        decay = decays[i, n, j]
                        grad_log_decay = adjoint * decay * states[i, n, j]
                        grad_step[j] += a_t[n, j] * grad_log_decay
                        grad_A_t[n, j] += dt[i, j] * grad_log_decay
                        lam[n, j] = adjoint * decay
                    if need_C:
                        grad_C_acc[block, b, g, t, n] = sum_C
                    if need_B:
                        grad_B_acc[block, b, g, t, n] = sum_B
                for j in range(count):
                    lam_B_t[i, j] = lam_B[j]
                    grad_step_t[i, j] = grad_step[j]
            # per channel: back to (batch, dim, L), through softplus, the bias, the D skip and the z gate
            for j in range(count):
                d = first + j
                skip = D[d] if has_D else zero
                bias = delta_bias[d] if has_bias else zero
                for t in range(begin, stop):
                    i = t - begin
                    if need_u:
                        grad_u[b, d, t] = dt[i, j] * lam_B_t[i, j] + gy[i, j] * skip
                    if need_delta:
                        value = grad_step_t[i, j] + u[b, d, t] * lam_B_t[i, j]
                        if apply_softplus:
                            value *= sigmoid_(delta[b, d, t] + bias)
                        grad_delta[b, d, t] = value
                        grad_bias_sum[j] += value
                    if need_z:
                        gate = z[b, d, t]
                        sig = sigmoid_(gate)
                        # d silu / dz = sig (1 + z (1 - sig))
                        grad_z[b, d, t] = grad_out[b, d, t] * (y[i, j] + skip * u[b, d, t]) * sig * (
                            one + gate * (one - sig))
        for j in range(count):
            d = first + j
            if need_A:
                for n in range(d_state):
                    grad_A[b, d, n] = grad_A_t[n, j]
            if need_D:
                grad_D_part[b, d] = grad_D_sum[j]
            if need_delta:
                grad_bias_part[b, d] = grad_bias_sum[j]
