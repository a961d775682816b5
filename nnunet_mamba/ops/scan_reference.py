"""The selective scan's definition, one position at a time: what every backend is checked against.

As mamba-ssm keeps ``selective_scan_ref`` beside its kernel, this is the reference beside ours. It is slow
(a Python loop over L) and keeps every state for autograd, so it is for tests and for checking benchmarks'
agreement at small sizes; call it with float64 tensors for a reference that rounding does not blur.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba-ssm ``selective_scan_fn`` semantics, computed in the dtype it is given (no casts).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, groups, N, L); D, delta_bias:
    (dim,). Inputs are not validated: give it what :func:`~nnunet_mamba.ops.selective_scan` accepts.
    """
    batch, dim, seq_len = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    per_group = dim // B.shape[1]
    B, C = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(seq_len):
        step = delta[:, :, t, None]
        state = torch.exp(step * A) * state + step * B[:, :, :, t] * u[:, :, t, None]
        ys.append((state * C[:, :, :, t]).sum(-1))
    out = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        out = out + D[:, None] * u
    if z is not None:
        out = out * F.silu(z)
    return out
