"""Compiled CPU kernels (numba) of the blocks' ops other than the scan: the Mamba block's causal depthwise
convolution with its SiLU, a LayerNorm over the channels of a channels-first map, and a size-keeping depthwise
2D/3D convolution.

Importing this module imports numba; :mod:`nnunet_mamba.ops.block_ops` imports it lazily, as the scan's kernels
are.

Causal convolution. A work unit is one (batch, channel) row; the row's K taps are K passes over it, each a
vectorised multiply-add of the input shifted by one more position into the output (the first ``shift``
outputs of a pass read positions before the sequence, which are zeros, and are skipped); Mamba's four taps
are one pass. oneDNN's depthwise convolution, which PyTorch calls for the same thing, took three to six times
as long on LightM-UNet's first-level shape (2 x 128 channels x 16384 positions: 8.5 to 18 ms against 2.6 ms
forward, 29 to 35 ms against 8 ms forward and backward, 2 threads), and needs the input padded and the
pre-activation saved besides. The backward recomputes the pre-activation from the saved input rather than
keeping it: four multiply-adds per value against a map of the block's width kept per position.

Channels-first LayerNorm. A work unit is a run of positions of one batch element; the statistics of its
positions are accumulated over the channels one row at a time, so every loop runs along contiguous positions
and vectorises (PyTorch's LayerNorm normalises the last axis, and a channels-first map must first be transposed
into a copy, about 5 ns a value). Mean, then variance about it, in two passes. Weight and bias gradients are
summed per unit and then over units by the caller.

Depthwise convolution ('same' zero padding, stride 1, odd kernels; a 2D map is a 3D one of depth 1). A work unit
is a run of rows (z, y) of one (batch, channel) map: whole maps where there are enough of them for the threads,
else each map split. An output row is the sum, over the kernel's (depth, height) taps whose source row lies in the
map, of that source row's taps along the row: passes that run along contiguous positions and vectorise, the
decoder's three taps in one pass. The input gradient is the same convolution of the output gradient with the kernel
mirrored; the weight gradient one dot product per tap and row pair, summed per unit (then over units by the caller).
Against oneDNN: ``docs/benchmarks.md``, "CPU efficiency, third part".
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from nnunet_mamba.ops.numba_kernels import CACHE, HELPER_OPTIONS, JIT_OPTIONS, UNIT_OPTIONS, sigmoid_


@njit(**UNIT_OPTIONS)
def _pre_activation(x_row, taps, bias, pre):
    """pre[t] = bias + sum_k taps[k] x[t - K + 1 + k] (x zero before the sequence)."""
    length = x_row.shape[0]
    kernel = taps.shape[0]
    if kernel == 4 and length >= 4:  # Mamba's d_conv: the four taps in one pass
        w0, w1, w2, w3 = taps[0], taps[1], taps[2], taps[3]
        pre[0] = bias + w3 * x_row[0]
        pre[1] = bias + w2 * x_row[0] + w3 * x_row[1]
        pre[2] = bias + w1 * x_row[0] + w2 * x_row[1] + w3 * x_row[2]
        x0 = x_row[:length - 3]
        x1 = x_row[1:length - 2]
        x2 = x_row[2:length - 1]
        x3 = x_row[3:]
        target = pre[3:]
        for i in range(length - 3):
            target[i] = ((bias + w0 * x0[i]) + w1 * x1[i]) + (w2 * x2[i] + w3 * x3[i])
        return
    for t in range(length):
        pre[t] = bias
    for k in range(kernel):
        shift = kernel - 1 - k  # output t reads x[t - shift]
        if shift >= length:
            continue
        weight = taps[k]
        source = x_row[:length - shift]
        target = pre[shift:]
        for i in range(length - shift):
            target[i] += weight * source[i]


@njit(**JIT_OPTIONS, cache=CACHE)
def causal_conv_silu_forward(x, weight, bias, has_bias, out):
    """out = silu(causal depthwise conv(x)); x, out: (rows, L) with row r of channel r % channels;
    weight: (channels, K); bias: (channels,), or empty with ``has_bias`` False."""
    rows = x.shape[0]
    channels = weight.shape[0]
    for row in prange(rows):
        channel = row % channels
        offset = bias[channel] if has_bias else x.dtype.type(0)
        target = out[row]
        _pre_activation(x[row], weight[channel], offset, target)
        for i in range(target.shape[0]):
            value = target[i]
            target[i] = value * sigmoid_(value)


@njit(**JIT_OPTIONS, cache=CACHE)
def causal_conv_silu_backward(x, weight, bias, has_bias, grad_out, grad_x, grad_weight_rows, grad_bias_rows):
    """Gradients of :func:`causal_conv_silu_forward`: grad_x (rows, L); per row, to be summed over the rows
    of a channel by the caller, grad_weight_rows (rows, K) and grad_bias_rows (rows,)."""
    rows, length = x.shape
    channels, kernel = weight.shape
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    for row in prange(rows):
        channel = row % channels
        offset = bias[channel] if has_bias else zero
        x_row = x[row]
        grad_row = grad_out[row]
        grad_x_row = grad_x[row]
        taps = weight[channel]
        gradient = np.empty(length, x.dtype)  # of the pre-activation
        _pre_activation(x_row, taps, offset, gradient)
        total = zero
        for i in range(length):
            pre = gradient[i]
            sig = sigmoid_(pre)
            value = grad_row[i] * sig * (one + pre * (one - sig))  # d silu / d pre
            gradient[i] = value
            total += value
        grad_bias_rows[row] = total
        for i in range(length):
            grad_x_row[i] = zero
        for k in range(kernel):
            shift = kernel - 1 - k
            if shift >= length:
                grad_weight_rows[row, k] = zero
                continue
            later = gradient[shift:]  # the outputs that read x[i] through tap k
            weight_total = zero
            for i in range(length - shift):
                weight_total += later[i] * x_row[i]
            grad_weight_rows[row, k] = weight_total
            tap = taps[k]
            for i in range(length - shift):
                grad_x_row[i] += tap * later[i]


@njit(**HELPER_OPTIONS)
def _unit_run(unit, units_per_item, per_unit, length):
    """(item, first, stop) of work unit ``unit`` when every item (a LayerNorm's batch element, a depthwise
    convolution's map) of ``length`` positions (rows) is ``units_per_item`` units of ``per_unit`` each, the last one
    shorter."""
    begin = (unit % units_per_item) * per_unit
    return unit // units_per_item, begin, min(begin + per_unit, length)


@njit(**JIT_OPTIONS, cache=CACHE)
def layer_norm_channels_first_forward(x, weight, bias, eps, chunk, out, mean, rstd):
    """out = (x - mean) rstd weight + bias over the channels of x, out: (batch, C, L); mean, rstd: (batch, L)."""
    batch, channels, length = x.shape
    chunks = (length + chunk - 1) // chunk
    inverse = x.dtype.type(1) / x.dtype.type(channels)
    zero = x.dtype.type(0)
    for item in prange(batch * chunks):
        b, begin, stop = _unit_run(item, chunks, chunk, length)
        positions = stop - begin
        means = mean[b, begin:stop]
        scales = rstd[b, begin:stop]
        for i in range(positions):
            means[i] = zero
            scales[i] = zero
        for c in range(channels):
            row = x[b, c, begin:stop]
            for i in range(positions):
                means[i] += row[i]
        for i in range(positions):
            means[i] *= inverse
        for c in range(channels):
            row = x[b, c, begin:stop]
            for i in range(positions):
                centred = row[i] - means[i]
                scales[i] += centred * centred
        for i in range(positions):
            scales[i] = x.dtype.type(1) / np.sqrt(scales[i] * inverse + eps)
        for c in range(channels):
            row = x[b, c, begin:stop]
            target = out[b, c, begin:stop]
            gain = weight[c]
            offset = bias[c]
            for i in range(positions):
                target[i] = (row[i] - means[i]) * scales[i] * gain + offset


@njit(**JIT_OPTIONS, cache=CACHE)
def layer_norm_channels_first_backward(x, weight, mean, rstd, grad_out, chunk, grad_x, grad_weight_units,
                                       grad_bias_units):
    """Gradients of :func:`layer_norm_channels_first_forward`: grad_x (batch, C, L); per work unit (batch element
    and run of ``chunk`` positions), to be summed over units, grad_weight_units and grad_bias_units (units, C)."""
    batch, channels, length = x.shape
    chunks = (length + chunk - 1) // chunk
    inverse = x.dtype.type(1) / x.dtype.type(channels)
    zero = x.dtype.type(0)
    for item in prange(batch * chunks):
        b, begin, stop = _unit_run(item, chunks, chunk, length)
        positions = stop - begin
        means = mean[b, begin:stop]
        scales = rstd[b, begin:stop]
        # per position: the mean over channels of g = grad_out weight, and of g xhat
        mean_g = np.zeros(positions, x.dtype)
        mean_g_xhat = np.zeros(positions, x.dtype)
        for c in range(channels):
            row = x[b, c, begin:stop]
            grad_row = grad_out[b, c, begin:stop]
            gain = weight[c]
            weight_total = zero
            bias_total = zero
            for i in range(positions):
                normalised = (row[i] - means[i]) * scales[i]
                g = grad_row[i] * gain
                mean_g[i] += g
                mean_g_xhat[i] += g * normalised
                weight_total += grad_row[i] * normalised
                bias_total += grad_row[i]
            grad_weight_units[item, c] = weight_total
            grad_bias_units[item, c] = bias_total
        for i in range(positions):
            mean_g[i] *= inverse
            mean_g_xhat[i] *= inverse
        for c in range(channels):
            row = x[b, c, begin:stop]
            grad_row = grad_out[b, c, begin:stop]
            target = grad_x[b, c, begin:stop]
            gain = weight[c]
            for i in range(positions):
                normalised = (row[i] - means[i]) * scales[i]
                target[i] = scales[i] * (grad_row[i] * gain - mean_g[i] - normalised * mean_g_xhat[i])


@njit(**UNIT_OPTIONS)
def _shifted_rows(source, target, shift):
    """The parts of ``source`` and ``target`` (rows of one width) paired by target[i] <-> source[i + shift],
    both indexed from 0 (so that the loops over them vectorise)."""
    width = target.shape[0]
    if shift >= 0:
        return source[shift:], target[:max(0, width - shift)]
    return source[:max(0, width + shift)], target[-shift:]


@njit(**UNIT_OPTIONS)
def _taps_inside(position, kernel, size):
    """(first, stop): the taps t of a centred kernel whose source, position + t - kernel // 2, lies in [0, size)."""
    half = kernel // 2
    return max(0, half - position), min(kernel, size - position + half)


@njit(**UNIT_OPTIONS)
def _add_row_taps(source, taps, target):
    """target[i] += sum_e taps[e] source[i + e - K // 2] (source zero outside the row): one row of taps of a
    'same' convolution. Three taps, the decoder's, are one pass over the interior."""
    width = target.shape[0]
    kernel = taps.shape[0]
    if kernel == 3 and width >= 3:
        w0, w1, w2 = taps[0], taps[1], taps[2]
        target[0] += w1 * source[0] + w2 * source[1]
        target[width - 1] += w0 * source[width - 2] + w1 * source[width - 1]
        left = source[:width - 2]
        centre = source[1:width - 1]
        right = source[2:]
        inner = target[1:width - 1]
        for i in range(width - 2):
            inner[i] += (w0 * left[i] + w1 * centre[i]) + w2 * right[i]
        return
    for tap_x in range(kernel):
        read, written = _shifted_rows(source, target, tap_x - kernel // 2)
        tap = taps[tap_x]
        for i in range(written.shape[0]):
            written[i] += tap * read[i]


@njit(**JIT_OPTIONS, cache=CACHE)
def depthwise_conv_forward(x, weight, bias, has_bias, rows_per_unit, out):
    """out = 'same' depthwise convolution of x (zero padding, stride 1): x, out (maps, D, H, W) with map m of
    channel m % channels; weight (channels, kD, kH, kW), odd sizes; bias (channels,), or empty with ``has_bias``
    False. A work unit is ``rows_per_unit`` of a map's D x H rows."""
    maps, depth, height, width = x.shape
    channels, kernel_depth, kernel_height, _ = weight.shape
    rows = depth * height
    units_per_map = (rows + rows_per_unit - 1) // rows_per_unit
    zero = x.dtype.type(0)
    for unit in prange(maps * units_per_map):
        m, first, stop = _unit_run(unit, units_per_map, rows_per_unit, rows)
        channel = m % channels
        offset = bias[channel] if has_bias else zero
        for row in range(first, stop):
            z = row // height
            y = row % height
            target = out[m, z, y]
            for i in range(width):
                target[i] = offset
            first_z, stop_z = _taps_inside(z, kernel_depth, depth)
            first_y, stop_y = _taps_inside(y, kernel_height, height)
            for tap_z in range(first_z, stop_z):
                for tap_y in range(first_y, stop_y):
                    source = x[m, z + tap_z - kernel_depth // 2, y + tap_y - kernel_height // 2]
                    _add_row_taps(source, weight[channel, tap_z, tap_y], target)


@njit(**JIT_OPTIONS, cache=CACHE)
def depthwise_conv_parameter_grads(x, grad_out, kernel_shape, rows_per_unit, grad_weight_units, grad_bias_units):
    """The weight and bias gradients of :func:`depthwise_conv_forward` per work unit, to be summed over a
    channel's units by the caller: grad_weight_units (units, kD, kH, kW), grad_bias_units (units,)."""
    maps, depth, height, width = x.shape
    kernel_depth, kernel_height, kernel_width = kernel_shape
    rows = depth * height
    units_per_map = (rows + rows_per_unit - 1) // rows_per_unit
    zero = x.dtype.type(0)
    for unit in prange(maps * units_per_map):
        m, first, stop = _unit_run(unit, units_per_map, rows_per_unit, rows)
        partial = grad_weight_units[unit]
        for tap_z in range(kernel_depth):
            for tap_y in range(kernel_height):
                for tap_x in range(kernel_width):
                    partial[tap_z, tap_y, tap_x] = zero
        bias_total = zero
        for row in range(first, stop):
            z = row // height
            y = row % height
            grad_row = grad_out[m, z, y]
            row_total = zero  # a row's sum first: fewer roundings into the unit's total
            for i in range(width):
                row_total += grad_row[i]
            bias_total += row_total
            first_z, stop_z = _taps_inside(z, kernel_depth, depth)
            first_y, stop_y = _taps_inside(y, kernel_height, height)
            for tap_z in range(first_z, stop_z):
                for tap_y in range(first_y, stop_y):
                    source = x[m, z + tap_z - kernel_depth // 2, y + tap_y - kernel_height // 2]
                    for tap_x in range(kernel_width):
                        read, grads = _shifted_rows(source, grad_row, tap_x - kernel_width // 2)
                        total = zero
                        for i in range(grads.shape[0]):
                            total += grads[i] * read[i]
                        partial[tap_z, tap_y, tap_x] += total
        grad_bias_units[unit] = bias_total


@njit(**JIT_OPTIONS, cache=CACHE)
def linear_upsample_add(x, skip, depth_from, depth_weight, height_from, height_weight, width_from, width_weight, out):
    """out = skip + x interpolated linearly along each axis; x (maps, D, H, W), skip and out (maps, D', H', W').
    Per output index along an axis, ``*_from`` (2, size) holds the two source indices and ``*_weight`` (size,) the
    second one's weight (the first's is 1 minus it). A unit is one output plane (map, depth): its two source planes
    are blended row by row, each blended row of W values is then spread over W' outputs, and the skip added."""
    maps = x.shape[0]
    width = x.shape[3]
    out_depth, out_height, out_width = out.shape[1], out.shape[2], out.shape[3]
    one = x.dtype.type(1)
    for unit in prange(maps * out_depth):
        m = unit // out_depth
        i = unit - m * out_depth
        d0, d1 = depth_from[0, i], depth_from[1, i]
        a1 = depth_weight[i]
        a0 = one - a1
        row = np.empty(width, x.dtype)
        for j in range(out_height):
            h0, h1 = height_from[0, j], height_from[1, j]
            b1 = height_weight[j]
            b0 = one - b1
            r00, r01, r10, r11 = x[m, d0, h0], x[m, d0, h1], x[m, d1, h0], x[m, d1, h1]
            for k in range(width):
                row[k] = a0 * (b0 * r00[k] + b1 * r01[k]) + a1 * (b0 * r10[k] + b1 * r11[k])
            source = skip[m, i, j]
            target = out[m, i, j]
            for k in range(out_width):
                c1 = width_weight[k]
                target[k] = source[k] + ((one - c1) * row[width_from[0, k]] + c1 * row[width_from[1, k]])


@njit(**UNIT_OPTIONS)
def _four_output_rows(x, weight, bias, has_bias, b, first_row, begin, stop, out):
    """out[b, first_row + r, begin:stop] for r < 4: four output rows, in passes over four input rows each, so that
    every value read feeds four multiply-adds and every output value written takes sixteen. The first pass writes
    without reading: four inputs where their number is a multiple of four, else one, then one pass for each of the
    other ``inputs % 4`` (a fill at weight 0 would turn an input's inf into nan)."""
    inputs = x.shape[1]
    positions = stop - begin
    zero = x.dtype.type(0)
    t0, t1 = out[b, first_row, begin:stop], out[b, first_row + 1, begin:stop]
    t2, t3 = out[b, first_row + 2, begin:stop], out[b, first_row + 3, begin:stop]
    s0 = bias[first_row] if has_bias else zero
    s1 = bias[first_row + 1] if has_bias else zero
    s2 = bias[first_row + 2] if has_bias else zero
    s3 = bias[first_row + 3] if has_bias else zero
    w = weight[first_row:first_row + 4]
    lead = inputs % 4 if inputs % 4 else 4
    if lead == 4:
        x0, x1, x2, x3 = x[b, 0, begin:stop], x[b, 1, begin:stop], x[b, 2, begin:stop], x[b, 3, begin:stop]
        w00, w01, w02, w03 = w[0, 0], w[0, 1], w[0, 2], w[0, 3]
        w10, w11, w12, w13 = w[1, 0], w[1, 1], w[1, 2], w[1, 3]
        w20, w21, w22, w23 = w[2, 0], w[2, 1], w[2, 2], w[2, 3]
        w30, w31, w32, w33 = w[3, 0], w[3, 1], w[3, 2], w[3, 3]
        for i in range(positions):
            a, e, f, g = x0[i], x1[i], x2[i], x3[i]
            t0[i] = s0 + ((w00 * a + w01 * e) + (w02 * f + w03 * g))
            t1[i] = s1 + ((w10 * a + w11 * e) + (w12 * f + w13 * g))
            t2[i] = s2 + ((w20 * a + w21 * e) + (w22 * f + w23 * g))
            t3[i] = s3 + ((w30 * a + w31 * e) + (w32 * f + w33 * g))
    else:
        x0 = x[b, 0, begin:stop]
        w00, w10, w20, w30 = w[0, 0], w[1, 0], w[2, 0], w[3, 0]
        for i in range(positions):
            a = x0[i]
            t0[i] = s0 + w00 * a
            t1[i] = s1 + w10 * a
            t2[i] = s2 + w20 * a
            t3[i] = s3 + w30 * a
        for c in range(1, lead):
            x0 = x[b, c, begin:stop]
            w00, w10, w20, w30 = w[0, c], w[1, c], w[2, c], w[3, c]
            for i in range(positions):
                a = x0[i]
                t0[i] += w00 * a
                t1[i] += w10 * a
                t2[i] += w20 * a
                t3[i] += w30 * a
    for c in range(lead, inputs, 4):
        x0, x1, x2, x3 = x[b, c, begin:stop], x[b, c + 1, begin:stop], x[b, c + 2, begin:stop], x[b, c + 3, begin:stop]
        w00, w01, w02, w03 = w[0, c], w[0, c + 1], w[0, c + 2], w[0, c + 3]
        w10, w11, w12, w13 = w[1, c], w[1, c + 1], w[1, c + 2], w[1, c + 3]
        w20, w21, w22, w23 = w[2, c], w[2, c + 1], w[2, c + 2], w[2, c + 3]
        w30, w31, w32, w33 = w[3, c], w[3, c + 1], w[3, c + 2], w[3, c + 3]
        for i in range(positions):
            a, e, f, g = x0[i], x1[i], x2[i], x3[i]
            t0[i] += (w00 * a + w01 * e) + (w02 * f + w03 * g)
            t1[i] += (w10 * a + w11 * e) + (w12 * f + w13 * g)
            t2[i] += (w20 * a + w21 * e) + (w22 * f + w23 * g)
            t3[i] += (w30 * a + w31 * e) + (w32 * f + w33 * g)


@njit(**JIT_OPTIONS, cache=CACHE)
def channels_linear(x, weight, bias, has_bias, chunk, out):
    """out[b, m, t] = bias[m] + sum_k weight[m, k] x[b, k, t]; x (batch, inputs, L), weight (rows, inputs) with at
    least 4 rows, out (batch, rows, L). A unit is a chunk of positions of one batch element, whose rows stay in the
    L1/L2 caches while it writes every output row, four at a time; where the rows are not a multiple of four, the
    last four rows overlap the block before and are written twice, with the same values."""
    batch, inputs, length = x.shape
    rows = weight.shape[0]
    chunks = (length + chunk - 1) // chunk
    for unit in prange(batch * chunks):
        b, begin, stop = _unit_run(unit, chunks, chunk, length)
        for block in range(0, rows, 4):
            _four_output_rows(x, weight, bias, has_bias, b, min(block, rows - 4), begin, stop, out)
