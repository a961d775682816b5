"""The compiled CPU selective scan: numba kernels for forward and backward.

Importing this module imports numba; :mod:`nnunet_mamba.ops.scan_numba` imports it lazily, so that
``import nnunet_mamba`` neither needs numba nor pays for loading it.

Layout. A work unit is one batch element and a block of up to 64 channels of one B/C group. It walks the
positions in order and keeps the (N, channels) state in a small buffer; at each position, for each state
n, the innermost loop runs over the block's channels, which LLVM vectorises (8 float32 lanes with AVX2):
the decay exp(delta A), the update x = decay x + delta u B and the read-out y += C x are elementwise over
channels, with the position's B_n and C_n, shared by the whole group, broadcast. Nothing of size (L, N)
per channel is built: each input is read once, in chunks of positions transposed to (position, channel)
(B and C to (position, N)) in the unit's own buffers, 8 x 8 values at a time in AVX registers
(:func:`_transpose`). The state, the decay rates and the rows the loop over channels reads and writes are
stack buffers (:func:`_stack_buffer`), so that LLVM knows they never overlap and vectorises that loop
without runtime overlap checks; the recurrence step itself is one function, :func:`_advance_one_position`,
inlined into both kernels. The elementwise ``exp`` must vectorise too, and
libm's is an opaque call, so float32 uses :func:`_exp32` below (range reduction to [-ln2/2, ln2/2] and a
degree-6 Taylor polynomial, exact to a few float32 ulp and best near 0, where most decays are); the
decays themselves, 16 per channel and position and the bulk of the work, are 2**(delta A log2(e)) with
A log2(e) computed once per work unit (:func:`_exp2_32`, the same polynomial, two instructions fewer).
float64, for gradcheck and the float64 path of the entry point, keeps libm's ``exp`` and ``log1p``.
Accumulation is in the input's dtype, sequential over positions, as the recurrence defines it.

Backward. The training forward saves the state every ``chunk`` positions (see ``scan_numba`` for the
sizes). The backward takes the chunks last to first: it re-scans a chunk from its saved state into
a (chunk + 1, N, channels) per-thread buffer of states, then walks it backwards with the adjoint
lambda_t = C_t dy_t + exp(delta_{t+1} A) lambda_{t+1}. Decays are always exp(delta A) itself, recomputed
in the walk by the forward's function on the same operands, never obtained by dividing a state by its
decay (which underflows to 0 after a huge step). Only the gradients asked for are written.

Loops over positions index one-dimensional views from 0 (see :func:`_load_steps`).

Threads. ``prange`` runs the units, whose writes never overlap, so results do not depend on scheduling:
each unit writes its own (L, N) slices of the B/C gradients (summed over a group's blocks by the caller)
and per-batch-element gradients of A, D and delta_bias (summed over the batch by the caller).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype


def _probe():
    pass


def _caching() -> tuple:
    """Whether numba can cache compiled code for this module, and a note that says where (or why not)."""
    try:
        dispatcher = njit(cache=True)(_probe)
    except RuntimeError as error:  # no writable __pycache__, user-wide cache or NUMBA_CACHE_DIR
        return False, f"kernels compiled in memory in every process (no cache location: {error})"
    where = getattr(getattr(dispatcher, "_cache", None), "_cache_path", "numba's cache")  # private, for the note
    return True, f"kernels cached in {where}"


CACHE, CACHE_NOTE = _caching()

# reassoc lets LLVM vectorise sums (over a block's channels for the B/C gradients, over positions for D's
# and delta_bias'); contract allows FMAs. nnan/ninf stay off: inf and nan must propagate as in the torch
# backend.
KERNEL_FASTMATH = {"reassoc", "contract"}
UNIT_OPTIONS = {"fastmath": KERNEL_FASTMATH, "error_model": "numpy"}
# The parallel kernels are thin prange loops over work units, ordinary jitted functions: inside a prange
# body numba's parfor passes would turn the units' array statements into nested parallel loops.
JIT_OPTIONS = {"parallel": True, "fastmath": KERNEL_FASTMATH, "nogil": True, "error_model": "numpy"}
# the helpers are inlined into the kernels; without reassoc, so that _exp32's rounding trick survives
HELPER_OPTIONS = {"fastmath": {"contract"}, "error_model": "numpy"}

# float32 constants; numba types Python floats as float64, which would promote the float32 arithmetic
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # few mantissa bits: k * _LN2_HI is exact for the k that occur
_LN2_LO = np.float32(-2.12194440e-4)
_ROUNDING = np.float32(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds to the nearest integer
_EXP_MIN = np.float32(-87.0)  # exp's argument range: 2**k stays a normal float32
_EXP_MAX = np.float32(88.0)
_F32_ZERO = np.float32(0.0)
_TAYLOR = tuple(np.float32(1.0 / math.factorial(k)) for k in range(7))
_EXP2_TAYLOR = tuple(np.float32(math.log(2) ** k / math.factorial(k)) for k in range(7))
_EXP2_MIN = np.float32(-126.0)  # 2**k stays a normal float32
_EXP2_MAX = np.float32(127.0)
# the bits of _ROUNDING + k are those of _ROUNDING plus k; less the exponent bias 127, those of 2**k's exponent
_ROUNDING_BITS_LESS_BIAS = np.int32(_ROUNDING.view(np.int32) - 127)
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


@intrinsic
def _bits_of_float32(typingctx, value):
    """The bit pattern of a float32 as an int32 (LLVM bitcast; vectorises)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(value), codegen


# Capacities of the kernels' stack buffers (see _stack_buffer): a block's states, decay rates, adjoints
# (N x channels values each) and its per-position rows (one value per channel). Blocks are chosen so that
# they fit (``scan_numba.block_width_limit``).
STACK_CHANNELS = 64
STACK_STATE_VALUES = 64 * STACK_CHANNELS


@njit(**HELPER_OPTIONS)
def _check_block_fits_stack(width, d_state):
    """The kernels' stack buffers hold a block of at most STACK_CHANNELS channels and STACK_STATE_VALUES
    states: a wider block would write past them (``scan_numba.block_width_limit`` never makes one)."""
    if width > STACK_CHANNELS or width * d_state > STACK_STATE_VALUES:
        raise ValueError("numba scan: channel block too wide for the kernels' stack buffers")


@intrinsic
def _stack_buffer(typingctx, size, like):
    """A pointer to ``size`` (a literal) uninitialised values of ``like``'s type on the calling function's
    stack frame (an alloca in its entry block, so one per call however often this runs).

    Why not np.empty: LLVM cannot tell two heap arrays apart, so around every vectorised loop that writes
    one and reads others it emits runtime overlap checks, and in the scan's loop over a block's channels,
    run N / 4 times per position, those checks cost a quarter of the kernel. Distinct stack slots provably
    never overlap, and the checks go."""
    if not isinstance(size, types.IntegerLiteral) or not isinstance(like, types.Float):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        element = context.get_value_type(like)
        slot = cgutils.alloca_once(builder, ir.ArrayType(element, count))
        slot.align = 32  # whole AVX vectors
        return builder.bitcast(slot, element.as_pointer())

    return types.CPointer(like)(size, like), codegen


# shufflevector masks of an 8 x 8 transpose in AVX registers: unpack within 128-bit lanes, pair those
# up, then swap 128-bit halves
_UNPACK_MASKS = ((0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15))
_PAIR_MASKS = ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15))
_HALF_MASKS = ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15))


@intrinsic
def _transpose_tile8_float32(typingctx, src, src_row, src_col, dst, dst_row, dst_col):
    """dst[dst_row + c, dst_col + r] = src[src_row + r, src_col + c] for r, c < 8, float32 2-D arrays with
    contiguous rows: eight vector loads, 24 shuffles, eight vector stores. A loop doing the same moves one
    value per load and store (LLVM vectorises neither side of a transpose), and the kernels transpose every
    input and output between (channel, position) and (position, channel)."""
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float32 for a in (src, dst)):
        return None

    def codegen(context, builder, signature, args):
        src_value, first_row, first_col, dst_value, out_row, out_col = args
        vector = ir.VectorType(ir.FloatType(), 8)

        def row_pointer(array_type, array_value, row, col, k):
            array = context.make_array(array_type)(context, builder, array_value)
            index = builder.add(row, ir.Constant(row.type, k))
            element = cgutils.get_item_pointer(context, builder, array_type, array, [index, col])
            return builder.bitcast(element, vector.as_pointer())

        def shuffle(a, b, mask):
            lanes = ir.Constant(ir.VectorType(ir.IntType(32), 8), [ir.Constant(ir.IntType(32), m) for m in mask])
            return builder.shuffle_vector(a, b, lanes)

        rows = [builder.load(row_pointer(src, src_value, first_row, first_col, k), align=4) for k in range(8)]
        unpacked = []
        for k in range(0, 8, 2):
            unpacked += [shuffle(rows[k], rows[k + 1], mask) for mask in _UNPACK_MASKS]
        paired = []
        for first, second in ((0, 2), (1, 3), (4, 6), (5, 7)):
            paired += [shuffle(unpacked[first], unpacked[second], mask) for mask in _PAIR_MASKS]
        columns = [shuffle(paired[k], paired[k + 4], mask) for mask in _HALF_MASKS for k in range(4)]
        for k in range(8):
            builder.store(columns[k], row_pointer(dst, dst_value, out_row, out_col, k), align=4)
        return context.get_dummy_value()

    return types.void(src, src_row, src_col, dst, dst_row, dst_col), codegen


def transpose_tile8_(src, src_row, src_col, dst, dst_row, dst_col):
    """An 8 x 8 block of ``src`` transposed into ``dst`` (jitted code only)."""
    raise NotImplementedError("transpose_tile8_ is only callable from numba-compiled code")


@overload(transpose_tile8_, jit_options=HELPER_OPTIONS)
def _transpose_tile8_overload(src, src_row, src_col, dst, dst_row, dst_col):
    if src.dtype == types.float32 and dst.dtype == types.float32:
        return lambda src, src_row, src_col, dst, dst_row, dst_col: _transpose_tile8_float32(
            src, src_row, src_col, dst, dst_row, dst_col)

    def transpose_tile8(src, src_row, src_col, dst, dst_row, dst_col):  # float64: gradcheck only
        for r in range(8):
            for c in range(8):
                dst[dst_row + c, dst_col + r] = src[src_row + r, src_col + c]

    return transpose_tile8


@njit(**HELPER_OPTIONS)
def _transpose(src, rows, cols, dst):
    """dst[c, r] = src[r, c] for r < rows, c < cols (2-D arrays with contiguous rows)."""
    full_rows = rows - rows % 8
    full_cols = cols - cols % 8
    for r in range(0, full_rows, 8):
        for c in range(0, full_cols, 8):
            transpose_tile8_(src, r, c, dst, c, r)
    for r in range(rows):
        for c in range(full_cols if r < full_rows else 0, cols):
            dst[c, r] = src[r, c]


@njit(**HELPER_OPTIONS)
def _exp32(x):
    """exp of a float32 with a relative error of a few ulp, branch and select free so that loops over it
    vectorise into a dozen instructions per 8 values.

    Arguments are clamped to [-87, 88], so that 2**k stays a normal float: below -87 the result is
    e**-87 (1.6e-38) instead of a smaller number or 0, above 88 it is e**88 (1.7e38) instead of inf. The scan
    only ever feeds it delta * A <= 0 and multiplies by it, where 1.6e-38 and 0 make no difference. nan stays
    nan: the clamps are written so that a nan passes them (a comparison with nan is false).
    """
    clamped = _EXP_MIN if x < _EXP_MIN else x
    clamped = _EXP_MAX if clamped > _EXP_MAX else clamped
    k = (clamped * _LOG2E + _ROUNDING) - _ROUNDING  # no reassoc here: the rounding must not be folded away
    r = (clamped - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2
    p = _TAYLOR[6]  # Taylor to r**6: relative error <= 0.35**7 / 7! = 1.2e-7, far less near r = 0
    p = p * r + _TAYLOR[5]
    p = p * r + _TAYLOR[4]
    p = p * r + _TAYLOR[3]
    p = p * r + _TAYLOR[2]
    p = p * r + _TAYLOR[1]
    p = p * r + _TAYLOR[0]
    return p * _float32_from_bits((np.int32(k) + 127) << 23)  # p * 2**k


@njit(**HELPER_OPTIONS)
def _exp2_32(t):
    """2**t of a float32, for the scan's decays exp(delta A) = 2**(delta A log2(e)) with A log2(e) computed
    once per channel: two instructions fewer than :func:`_exp32` per value (no multiplication by log2(e) in
    the range reduction, and 2**k's bits come from the rounded sum, not from a conversion), the innermost
    cost of the scan. Same polynomial on the same reduced range (f ln 2 = r of ``_exp32``), so as exact near
    t = 0; the extra rounding of A log2(e) adds at most |delta A| 6e-8 to the relative error, as much as
    rounding the product delta A itself. Clamped to [-126, 127] (2**-126 = 1.2e-38 stands for anything
    smaller); nan stays nan."""
    clamped = _EXP2_MIN if t < _EXP2_MIN else t
    clamped = _EXP2_MAX if clamped > _EXP2_MAX else clamped
    shifted = clamped + _ROUNDING  # k = round(t) sits in the low mantissa bits of the sum
    k = shifted - _ROUNDING
    f = clamped - k  # exact, |f| <= 1/2
    p = _EXP2_TAYLOR[6]  # 2**f = exp(f ln 2), Taylor to (f ln 2)**6 as in _exp32
    p = p * f + _EXP2_TAYLOR[5]
    p = p * f + _EXP2_TAYLOR[4]
    p = p * f + _EXP2_TAYLOR[3]
    p = p * f + _EXP2_TAYLOR[2]
    p = p * f + _EXP2_TAYLOR[1]
    p = p * f + _EXP2_TAYLOR[0]
    return p * _float32_from_bits((_bits_of_float32(shifted) - _ROUNDING_BITS_LESS_BIAS) << 23)  # p * 2**k


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


def decay_(step, rate):
    """exp(step A), the scan's decay, given ``rate`` = A scaled by :func:`decay_scale_` (jitted code only)."""
    raise NotImplementedError("decay_ is only callable from numba-compiled code")


def decay_scale_(x):
    """What the kernels multiply A by for :func:`decay_`: log2(e) in float32 (2**(step rate) with
    :func:`_exp2_32`), 1 in float64 (libm's exp), in the precision of ``x`` (jitted code only)."""
    raise NotImplementedError("decay_scale_ is only callable from numba-compiled code")


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


@overload(decay_, jit_options=HELPER_OPTIONS)
def _decay_overload(step, rate):
    if step == types.float32:
        return lambda step, rate: _exp2_32(step * rate)
    if isinstance(step, types.Float):
        return lambda step, rate: math.exp(step * rate)
    return None


@overload(decay_scale_, jit_options=HELPER_OPTIONS)
def _decay_scale_overload(x):
    if x == types.float32:
        return lambda x: _LOG2E
    if isinstance(x, types.Float):
        one = as_dtype(x).type(1)
        return lambda x: one
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
def _load_steps(u, delta, delta_bias, has_bias, apply_softplus, b, first, width, begin, stop, dt, du, steps_by_channel,
                drives_by_channel):
    """dt[i, j] = softplus(delta + bias) (or delta + bias) and du = dt * u at position begin + i of channel
    first + j, into the (position, channel) layout.

    The arithmetic runs along each channel's positions into the (channel, position) scratch arrays, where
    it vectorises, and is then transposed in 8 x 8 blocks. Flags are tested outside the loops, here and in
    the kernels: every flag tested inside a vectorised loop doubles the code LLVM generates for it, and with
    it the compile time. Loops over positions index one-dimensional views from 0 (here and in the
    kernels): indexed as ``a[b, d, t]`` or ``a[j, t - begin]``, numba's negative-index wrap-around on an
    index LLVM cannot prove non-negative kept these loops scalar, three to four times slower."""
    positions = stop - begin
    for j in range(width):
        d = first + j
        bias = delta_bias[d] if has_bias else u.dtype.type(0)
        delta_row = delta[b, d, begin:stop]
        u_row = u[b, d, begin:stop]
        steps = steps_by_channel[j]
        drives = drives_by_channel[j]
        if apply_softplus:
            for i in range(positions):
                steps[i] = softplus_(delta_row[i] + bias)
        else:
            for i in range(positions):
                steps[i] = delta_row[i] + bias
        for i in range(positions):
            drives[i] = steps[i] * u_row[i]
    _transpose(steps_by_channel, width, stop - begin, dt)
    _transpose(drives_by_channel, width, stop - begin, du)


@njit(**HELPER_OPTIONS)
def _load_group_rows(B, b, g, begin, stop, rows):
    """rows[i, n] = B[b, g, n, begin + i]: a chunk of a group's B (or C), the N values of a position next
    to each other."""
    _transpose(B[b, g, :, begin:stop], B.shape[2], stop - begin, rows)


@njit(**HELPER_OPTIONS)
def _decay_rates(A, first, count, scale, a_t):
    """a_t = A[first:first + count] transposed to (N, count) and times ``scale``, so that the kernels' inner
    loops read it contiguously.

    (Here and below, copies are explicit loops: numba's slice assignment generates several times the code,
    and compile time grows with it.)"""
    for n in range(A.shape[1]):
        for j in range(count):
            a_t[n, j] = A[first + j, n] * scale


@njit(**HELPER_OPTIONS)
def _copy_state(source, target):
    """target[n, j] = source[n, j] for two (N, channels) views."""
    for n in range(source.shape[0]):
        for j in range(source.shape[1]):
            target[n, j] = source[n, j]


@njit(**UNIT_OPTIONS, inline="always")
def _advance_one_position(dt, du, B_rows, C_rows, i, rates, step_row, drive_row, x, y_row, y, keep, states):
    """One step of the recurrence for a block of channels at chunk position i: x = exp(dt A) x + du B, and
    y[i] = C . x; with ``keep``, also the new states, for the backward.

    Inlined into both kernels (numba's IR inlining, not left to LLVM): their stack buffers must stay
    visibly distinct allocas in the loop, or the runtime overlap checks come back (see _stack_buffer).
    ``keep`` is a constant at each call, so each kernel compiles only its own variant of the loop."""
    count = step_row.shape[0]
    d_state = x.shape[0]
    zero = x.dtype.type(0)
    steps = dt[i]
    drives = du[i]
    for j in range(count):
        step_row[j] = steps[j]
        drive_row[j] = drives[j]
        y_row[j] = zero
    # four states per pass over the channels: four independent exps in flight per iteration, and a quarter
    # of the loads and stores of the rows (measured 10-20 % faster than one at a time)
    n = 0
    while n + 3 < d_state:
        drive0, drive1, drive2, drive3 = B_rows[i, n], B_rows[i, n + 1], B_rows[i, n + 2], B_rows[i, n + 3]
        read0, read1, read2, read3 = C_rows[i, n], C_rows[i, n + 1], C_rows[i, n + 2], C_rows[i, n + 3]
        for j in range(count):
            step = step_row[j]
            drive = drive_row[j]
            decay0 = decay_(step, rates[n, j])
            decay1 = decay_(step, rates[n + 1, j])
            decay2 = decay_(step, rates[n + 2, j])
            decay3 = decay_(step, rates[n + 3, j])
            state0 = decay0 * x[n, j] + drive * drive0
            state1 = decay1 * x[n + 1, j] + drive * drive1
            state2 = decay2 * x[n + 2, j] + drive * drive2
            state3 = decay3 * x[n + 3, j] + drive * drive3
            x[n, j] = state0
            x[n + 1, j] = state1
            x[n + 2, j] = state2
            x[n + 3, j] = state3
            y_row[j] += (read0 * state0 + read1 * state1) + (read2 * state2 + read3 * state3)
            if keep:
                states[n, j] = state0
                states[n + 1, j] = state1
                states[n + 2, j] = state2
                states[n + 3, j] = state3
        n += 4
    while n < d_state:
        drive0 = B_rows[i, n]
        read0 = C_rows[i, n]
        for j in range(count):
            decay0 = decay_(step_row[j], rates[n, j])
            state0 = decay0 * x[n, j] + drive_row[j] * drive0
            x[n, j] = state0
            y_row[j] += read0 * state0
            if keep:
                states[n, j] = state0
        n += 1
    outputs = y[i]
    for j in range(count):
        outputs[j] = y_row[j]


@njit(**UNIT_OPTIONS)
def _forward_unit(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, apply_softplus, chunk,
                  save_every, b, g, first, count, out, starts):
    """:func:`scan_forward` for channels first..first+count-1 of batch element b (all in group g)."""
    seq_len = u.shape[2]
    d_state = A.shape[1]
    save = starts.shape[0] > 0
    zero = u.dtype.type(0)
    # what the loop over channels touches lives on the stack (see _stack_buffer); the chunk buffers below
    # are copied in and out a row per position
    rates = carray(_stack_buffer(STACK_STATE_VALUES, zero), (d_state, count))
    x = carray(_stack_buffer(STACK_STATE_VALUES, zero), (d_state, count))
    step_row = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    drive_row = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    y_row = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    _decay_rates(A, first, count, decay_scale_(zero), rates)
    for n in range(d_state):
        for j in range(count):
            x[n, j] = zero
    B_rows = np.empty((chunk, d_state), u.dtype)
    C_rows = np.empty((chunk, d_state), u.dtype)
    dt = np.empty((chunk, count), u.dtype)
    du = np.empty((chunk, count), u.dtype)
    y = np.empty((chunk, count), u.dtype)
    steps_by_channel = np.empty((count, chunk), u.dtype)
    drives_by_channel = np.empty((count, chunk), u.dtype)
    if save:
        _copy_state(x, starts[b, 0, :, first:first + count])
    for begin in range(0, seq_len, chunk):
        stop = min(begin + chunk, seq_len)
        _load_steps(u, delta, delta_bias, has_bias, apply_softplus, b, first, count, begin, stop, dt, du,
                    steps_by_channel, drives_by_channel)
        _load_group_rows(B, b, g, begin, stop, B_rows)
        _load_group_rows(C, b, g, begin, stop, C_rows)
        for t in range(begin, stop):
            i = t - begin
            # keep=False: nothing is kept, and the last argument (x in its place) is never written
            _advance_one_position(dt, du, B_rows, C_rows, i, rates, step_row, drive_row, x, y_row, y, False, x)
            if save and (t + 1) % save_every == 0 and t + 1 < seq_len:
                _copy_state(x, starts[b, (t + 1) // save_every, :, first:first + count])
        y_by_channel = steps_by_channel  # free again
        _transpose(y, stop - begin, count, y_by_channel)
        positions = stop - begin
        for j in range(count):
            d = first + j
            skip = D[d] if has_D else zero
            scanned = y_by_channel[j]
            u_row = u[b, d, begin:stop]
            out_row = out[b, d, begin:stop]
            if has_z:
                z_row = z[b, d, begin:stop]
                for i in range(positions):
                    gate = z_row[i]
                    out_row[i] = (scanned[i] + skip * u_row[i]) * (gate * sigmoid_(gate))
            else:
                for i in range(positions):
                    out_row[i] = scanned[i] + skip * u_row[i]


@njit(**JIT_OPTIONS, cache=CACHE)
def scan_forward(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, apply_softplus, width, blocks,
                 chunk, save_every, out, starts):
    """out = (y + D u) * silu(z), y_t = C_t . x_t, x_t = exp(dt_t A) x_{t-1} + dt_t B_t u_t.

    u, delta, z, out: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L);
    D, delta_bias: (dim,). Absent optional inputs are passed as empty arrays with their flag False.
    Work units: ``blocks`` blocks of ``width`` channels per (batch, group), ``chunk`` positions at a time.
    For a backward to come, ``starts`` (batch, ceil(L / save_every), N, dim) receives the state before
    every ``save_every``-th position (for inference it is an empty array, and nothing is stored).
    """
    _check_block_fits_stack(width, A.shape[1])
    batch, dim, _ = u.shape
    groups = B.shape[1]
    per_group = dim // groups
    for item in prange(batch * groups * blocks):
        b = item // (groups * blocks)
        g = (item // blocks) % groups
        first = g * per_group + (item % blocks) * width
        count = min(width, (g + 1) * per_group - first)
        if count > 0:
            _forward_unit(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, apply_softplus, chunk,
                          save_every, b, g, first, count, out, starts)


@njit(**UNIT_OPTIONS)
def _backward_unit(u, delta, A, B, C, D, z, delta_bias, grad_out, grad_channels_last, starts, has_D, has_z,
                   has_bias, apply_softplus, need_u, need_delta, need_A, need_B, need_C, need_D, need_z, chunk, b, g,
                   first, count, block, grad_u, grad_delta, grad_z, grad_A, grad_D_part, grad_bias_part, grad_B_acc,
                   grad_C_acc):
    """:func:`scan_backward` for channels first..first+count-1 of batch element b (all in group g)."""
    seq_len = u.shape[2]
    d_state = A.shape[1]
    n_chunks = (seq_len + chunk - 1) // chunk
    need_adjoint = need_u or need_delta or need_A or need_B
    need_states = need_adjoint or need_C or need_z  # D's gradient alone needs no re-scan
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    # as in the forward, what the loops over channels write lives on the stack (see _stack_buffer)
    a_t = carray(_stack_buffer(STACK_STATE_VALUES, zero), (d_state, count))
    rates = carray(_stack_buffer(STACK_STATE_VALUES, zero), (d_state, count))
    x = carray(_stack_buffer(STACK_STATE_VALUES, zero), (d_state, count))  # the re-scan's running state
    lam = carray(_stack_buffer(STACK_STATE_VALUES, zero), (d_state, count))  # adjoint of the state
    grad_A_t = carray(_stack_buffer(STACK_STATE_VALUES, zero), (d_state, count))
    step_row = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    drive_row = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    y_row = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    gy_row = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    lam_B = carray(_stack_buffer(STACK_CHANNELS, zero), count)  # sum_n lam_n B_n at one position
    grad_step = carray(_stack_buffer(STACK_CHANNELS, zero), count)
    _decay_rates(A, first, count, one, a_t)
    _decay_rates(A, first, count, decay_scale_(zero), rates)  # the forward's rates, for its decays
    for n in range(d_state):
        for j in range(count):
            lam[n, j] = zero
            grad_A_t[n, j] = zero
    B_rows = np.empty((chunk, d_state), u.dtype)
    C_rows = np.empty((chunk, d_state), u.dtype)
    dt = np.empty((chunk, count), u.dtype)
    du = np.empty((chunk, count), u.dtype)
    gy = np.empty((chunk, count), u.dtype)  # gradient w.r.t. y, the scan before the D skip and z gate
    y = np.empty((chunk, count), u.dtype)
    lam_B_t = np.empty((chunk, count), u.dtype)  # sum_n lam_n B_n: dy/d(dt u)
    grad_step_t = np.empty((chunk, count), u.dtype)  # dy/d(dt) through the decays
    # (channel, position) scratch: the per-channel arithmetic vectorises along positions there, and whole
    # chunks are transposed to and from the (position, channel) layout of the scan in 8 x 8 blocks
    steps_by_channel = np.empty((count, chunk), u.dtype)  # dt, kept from _load_steps to the end of a chunk
    drives_by_channel = np.empty((count, chunk), u.dtype)  # du, then lam_B
    gy_by_channel = np.empty((count, chunk), u.dtype)
    grad_step_by_channel = np.empty((count, chunk), u.dtype)
    y_by_channel = np.empty((count, chunk), u.dtype)
    gate_sigmoids = np.empty((count, chunk), u.dtype)  # sigmoid(z), for the gate and its gradient
    grad_by_channel = np.empty((count, chunk), u.dtype)  # the output's gradient, whichever its layout
    states = np.empty((chunk + 1, d_state, count), u.dtype)  # [0]: the state before the chunk
    grad_D_sum = np.zeros(count, u.dtype)
    grad_bias_sum = np.zeros(count, u.dtype)
    for c in range(n_chunks - 1, -1, -1):
        begin = c * chunk
        stop = min(begin + chunk, seq_len)
        positions = stop - begin
        if grad_channels_last:
            _transpose(grad_out[b, begin:stop, first:first + count], positions, count, grad_by_channel)
        else:
            for j in range(count):
                source = grad_out[b, first + j, begin:stop]
                target = grad_by_channel[j]
                for i in range(positions):
                    target[i] = source[i]
        for j in range(count):  # one-dimensional views, indexed from 0: see _load_steps
            d = first + j
            grad_out_row = grad_by_channel[j]
            gy_row_of_channel = gy_by_channel[j]
            if has_z:
                z_row = z[b, d, begin:stop]
                sigmoids = gate_sigmoids[j]
                for i in range(positions):
                    gate = z_row[i]
                    sig = sigmoid_(gate)
                    sigmoids[i] = sig
                    gy_row_of_channel[i] = grad_out_row[i] * (gate * sig)
            else:
                for i in range(positions):
                    gy_row_of_channel[i] = grad_out_row[i]
            if need_D:
                u_row = u[b, d, begin:stop]
                total = zero
                for i in range(positions):
                    total += gy_row_of_channel[i] * u_row[i]
                grad_D_sum[j] += total
        if not need_states:
            continue
        _transpose(gy_by_channel, count, stop - begin, gy)
        _load_steps(u, delta, delta_bias, has_bias, apply_softplus, b, first, count, begin, stop, dt, du,
                    steps_by_channel, drives_by_channel)
        _load_group_rows(B, b, g, begin, stop, B_rows)
        _load_group_rows(C, b, g, begin, stop, C_rows)
        # re-scan the chunk from the state the forward saved, keeping the states and y
        _copy_state(starts[b, c, :, first:first + count], x)
        _copy_state(x, states[0])
        for t in range(begin, stop):
            i = t - begin
            _advance_one_position(dt, du, B_rows, C_rows, i, rates, step_row, drive_row, x, y_row, y, True,
                                  states[i + 1])
        for t in range(stop - 1, begin - 1, -1):
            i = t - begin
            gy_i = gy[i]
            if need_C:  # its own loop, so that it gives the same bits whether or not the rest runs
                for n in range(d_state):
                    state_row = states[i + 1, n]
                    total = zero
                    for j in range(count):
                        total += gy_i[j] * state_row[j]
                    grad_C_acc[block, b, g, n, t] = total
            if not need_adjoint:
                continue
            steps = dt[i]
            drives = du[i]
            for j in range(count):
                gy_row[j] = gy_i[j]
                step_row[j] = steps[j]
                drive_row[j] = drives[j]
                lam_B[j] = zero
                grad_step[j] = zero
            # four states per pass over the channels, as in the forward: the per-channel rows (the output's
            # gradient, the step, the drive and the two sums over states) are loaded and stored once per four
            # states instead of once per state, which the pass is bound by
            n = 0
            while n + 3 < d_state:
                write0, write1, write2, write3 = B_rows[i, n], B_rows[i, n + 1], B_rows[i, n + 2], B_rows[i, n + 3]
                read0, read1, read2, read3 = C_rows[i, n], C_rows[i, n + 1], C_rows[i, n + 2], C_rows[i, n + 3]
                sum_B0 = zero
                sum_B1 = zero
                sum_B2 = zero
                sum_B3 = zero
                for j in range(count):
                    gradient = gy_row[j]
                    drive = drive_row[j]
                    step = step_row[j]
                    # on entry lam holds exp(dt_{t+1} A) lam_{t+1}; adding dy/dx_t makes it lam_t
                    adjoint0 = lam[n, j] + gradient * read0
                    adjoint1 = lam[n + 1, j] + gradient * read1
                    adjoint2 = lam[n + 2, j] + gradient * read2
                    adjoint3 = lam[n + 3, j] + gradient * read3
                    sum_B0 += adjoint0 * drive
                    sum_B1 += adjoint1 * drive
                    sum_B2 += adjoint2 * drive
                    sum_B3 += adjoint3 * drive
                    lam_B[j] += (adjoint0 * write0 + adjoint1 * write1) + (adjoint2 * write2 + adjoint3 * write3)
                    # gradient of the log-decay dt_t A_n: lam_n exp(dt_t A_n) x_{t-1,n}
                    decay0 = decay_(step, rates[n, j])
                    decay1 = decay_(step, rates[n + 1, j])
                    decay2 = decay_(step, rates[n + 2, j])
                    decay3 = decay_(step, rates[n + 3, j])
                    log_decay0 = adjoint0 * decay0 * states[i, n, j]
                    log_decay1 = adjoint1 * decay1 * states[i, n + 1, j]
                    log_decay2 = adjoint2 * decay2 * states[i, n + 2, j]
                    log_decay3 = adjoint3 * decay3 * states[i, n + 3, j]
                    grad_step[j] += ((a_t[n, j] * log_decay0 + a_t[n + 1, j] * log_decay1)
                                     + (a_t[n + 2, j] * log_decay2 + a_t[n + 3, j] * log_decay3))
                    grad_A_t[n, j] += step * log_decay0
                    grad_A_t[n + 1, j] += step * log_decay1
                    grad_A_t[n + 2, j] += step * log_decay2
                    grad_A_t[n + 3, j] += step * log_decay3
                    lam[n, j] = adjoint0 * decay0
                    lam[n + 1, j] = adjoint1 * decay1
                    lam[n + 2, j] = adjoint2 * decay2
                    lam[n + 3, j] = adjoint3 * decay3
                if need_B:
                    grad_B_acc[block, b, g, n, t] = sum_B0
                    grad_B_acc[block, b, g, n + 1, t] = sum_B1
                    grad_B_acc[block, b, g, n + 2, t] = sum_B2
                    grad_B_acc[block, b, g, n + 3, t] = sum_B3
                n += 4
            while n < d_state:
                write = B_rows[i, n]
                read = C_rows[i, n]
                sum_B = zero
                for j in range(count):
                    adjoint = lam[n, j] + gy_row[j] * read
                    sum_B += adjoint * drive_row[j]
                    lam_B[j] += adjoint * write
                    decay = decay_(step_row[j], rates[n, j])
                    grad_log_decay = adjoint * decay * states[i, n, j]
                    grad_step[j] += a_t[n, j] * grad_log_decay
                    grad_A_t[n, j] += step_row[j] * grad_log_decay
                    lam[n, j] = adjoint * decay
                if need_B:
                    grad_B_acc[block, b, g, n, t] = sum_B
                n += 1
            lam_B_i = lam_B_t[i]
            grad_step_i = grad_step_t[i]
            for j in range(count):
                lam_B_i[j] = lam_B[j]
                grad_step_i[j] = grad_step[j]
        # per channel: back to (batch, dim, L), through softplus, the bias, the D skip and the z gate
        lam_B_by_channel = drives_by_channel  # du is no longer needed
        if need_u or need_delta:
            _transpose(lam_B_t, stop - begin, count, lam_B_by_channel)
        if need_delta:
            _transpose(grad_step_t, stop - begin, count, grad_step_by_channel)
        if need_z:
            _transpose(y, stop - begin, count, y_by_channel)
        for j in range(count):
            d = first + j
            skip = D[d] if has_D else zero
            bias = delta_bias[d] if has_bias else zero
            u_row = u[b, d, begin:stop]
            steps = steps_by_channel[j]
            lam_B_row = lam_B_by_channel[j]
            if need_u:
                gy_row_of_channel = gy_by_channel[j]
                grad_u_row = grad_u[b, d, begin:stop]
                for i in range(positions):
                    grad_u_row[i] = steps[i] * lam_B_row[i] + gy_row_of_channel[i] * skip
            if need_delta:
                grad_step_row = grad_step_by_channel[j]
                grad_delta_row = grad_delta[b, d, begin:stop]
                for i in range(positions):
                    grad_delta_row[i] = grad_step_row[i] + u_row[i] * lam_B_row[i]
                if apply_softplus:
                    delta_row = delta[b, d, begin:stop]
                    for i in range(positions):
                        grad_delta_row[i] *= sigmoid_(delta_row[i] + bias)
                total = zero
                for i in range(positions):
                    total += grad_delta_row[i]
                grad_bias_sum[j] += total
            if need_z:
                grad_out_row = grad_by_channel[j]
                z_row = z[b, d, begin:stop]
                sigmoids = gate_sigmoids[j]
                scanned = y_by_channel[j]
                grad_z_row = grad_z[b, d, begin:stop]
                for i in range(positions):
                    gate = z_row[i]
                    sig = sigmoids[i]
                    # d silu / dz = sig (1 + z (1 - sig))
                    grad_z_row[i] = grad_out_row[i] * (scanned[i] + skip * u_row[i]) * sig * (
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


@njit(**JIT_OPTIONS, cache=CACHE)
def scan_backward(u, delta, A, B, C, D, z, delta_bias, grad_out, grad_channels_last, starts, has_D, has_z, has_bias,
                  apply_softplus, need_u, need_delta, need_A, need_B, need_C, need_D, need_z, width, blocks, chunk,
                  grad_u, grad_delta, grad_z, grad_A, grad_D_part, grad_bias_part, grad_B_acc, grad_C_acc):
    """Gradients of :func:`scan_forward`'s output w.r.t. every input asked for; ``starts`` are the states
    the forward saved every ``chunk`` positions.

    ``grad_out`` is (batch, dim, L), or with ``grad_channels_last`` (batch, L, dim): the gradient of a scan whose
    output was read transposed (the Mamba block's out_proj does) arrives so, and is transposed here a chunk at a
    time rather than copied whole beforehand (about 5 ns a value in PyTorch's copy).
    ``need_delta`` covers delta and delta_bias (the bias gradient is the sum of delta's). Outputs:
    grad_u, grad_delta (w.r.t. delta before bias and softplus), grad_z: (batch, dim, L);
    grad_A: (batch, dim, N), grad_D_part, grad_bias_part: (batch, dim), to be summed over batch;
    grad_B_acc, grad_C_acc: (blocks, batch, groups, N, L), to be summed over blocks. Every element of an
    output asked for is written (no zeroing needed); outputs not asked for may be empty arrays.
    """
    _check_block_fits_stack(width, A.shape[1])
    batch, dim, _ = u.shape
    groups = B.shape[1]
    per_group = dim // groups
    for item in prange(batch * groups * blocks):
        block = item % blocks
        b = item // (groups * blocks)
        g = (item // blocks) % groups
        first = g * per_group + block * width
        count = min(width, (g + 1) * per_group - first)
        if count > 0:
            _backward_unit(u, delta, A, B, C, D, z, delta_bias, grad_out, grad_channels_last, starts, has_D, has_z,
                           has_bias, apply_softplus, need_u, need_delta, need_A, need_B, need_C, need_D, need_z, chunk,
                           b, g, first, count, block, grad_u, grad_delta, grad_z, grad_A, grad_D_part,
                           grad_bias_part, grad_B_acc, grad_C_acc)
        else:  # an empty block (never made by channel_blocks) still owns its slices of the B/C gradients
            for n in range(B.shape[2]):
                for t in range(B.shape[3]):
                    if need_B:
                        grad_B_acc[block, b, g, n, t] = 0
                    if need_C:
                        grad_C_acc[block, b, g, n, t] = 0
