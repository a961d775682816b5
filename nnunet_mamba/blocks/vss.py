"""The visual-state-space (VSS) block: one implementation for 2D (SS2D) and 3D (SS3D).

:class:`CrossScanSSM` is VMamba's SS2D generalised to N spatial axes (:class:`SS2D` and :class:`SS3D`
fix N). The feature map is read as 1D sequences in ``2 * N`` directions, all sequences go through
*one* grouped selective-scan call (the directions are the groups of B/C), and the results are folded
back and summed in float32 even under AMP, as VMamba v0 does before its ``out_norm``.

Directions. For each spatial axis ``a`` there is one ordering in which ``a`` varies fastest and the
other axes keep their natural order; each ordering is scanned forward and reversed:

* 2D: (H, W) row-major, (W, H) column-major, then both reversed: VMamba's four directions, in
  VMamba's order, so 2D checkpoints map one to one.
* 3D (SS3D, our design; we know of no public VMamba-v0-style 3D SS block, while SegMamba, nnMamba
  and EM-Net are 3D Mamba segmenters built differently): (D, H, W), (D, W, H), (H, W, D) and their
  reverses: six directions, so every voxel sees every other voxel along every axis both ways.

Cost of SS3D. Per block, with C channels, E = 2C inner channels, N = 16 states and L voxels: the
projections cost the same as in 2D per token (in_proj 4C^2, out_proj 2C^2, depthwise 3x3x3 conv
27E); the scan work and the per-direction x_proj/dt_proj grow with the number of directions,
6 instead of 4, i.e. 1.5x the scan FLOPs of a 2D block at the same L, linear in L. Parameters per
direction: x_proj E*(R + 2N), dt_proj R*E + E, A_log E*N, D E (R = ceil(C/16)).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import nn

from nnunet_mamba.blocks.channels_first import grouped_linear_channels_first
from nnunet_mamba.blocks.layer_norm import layer_norm_saved_elements
from nnunet_mamba.blocks.token_mixer import ablation_mixer, check_token_mixer
from nnunet_mamba.ops import saved_state_positions, selective_scan


def scan_orderings(spatial_dims: int) -> list[tuple[int, ...]]:
    """Axis orders of the forward scan directions: one per spatial axis, with that axis innermost."""
    orderings = []
    for innermost in reversed(range(spatial_dims)):
        others = [axis for axis in range(spatial_dims) if axis != innermost]
        orderings.append(tuple(others + [innermost]))
    return orderings


def _write_cross_scan(x: torch.Tensor, orderings: list[tuple[int, ...]]) -> torch.Tensor:
    """The sequences of every direction, written into one (B, K, E, L) tensor.

    The map is read once in its own layout (often channels-last after the depthwise conv, where every read
    is a slow strided gather) into the first direction (row-major for :func:`scan_orderings`); the other
    orderings are permuted from that copy, and the reversed ones are flipped from the forward ones at once."""
    batch, channels, *spatial = x.shape
    n = len(orderings)
    sequences = x.new_empty((batch, 2 * n, channels, math.prod(spatial)))

    def direction(i: int, order: tuple[int, ...]) -> torch.Tensor:
        return sequences[:, i].view(batch, channels, *(spatial[a] for a in order))

    def spatial_axes(order: tuple[int, ...]) -> tuple[int, ...]:
        return (0, 1, *(2 + a for a in order))

    first = direction(0, orderings[0])
    first.copy_(x.permute(spatial_axes(orderings[0])))
    inverse = tuple(orderings[0].index(a) for a in range(len(spatial)))
    as_x = first.permute(spatial_axes(inverse))  # x's values, in x's axis order
    for i, order in enumerate(orderings[1:], start=1):
        direction(i, order).copy_(as_x.permute(spatial_axes(order)))
    sequences[:, n:] = sequences[:, :n].flip(-1)
    return sequences


def _sum_cross_merge(y: torch.Tensor, orderings: list[tuple[int, ...]], spatial: tuple[int, ...]) -> torch.Tensor:
    """The adjoint of :func:`_write_cross_scan`: every direction back to the spatial layout, summed.

    The reversed directions are summed in their flipped frame first and flipped once."""
    batch, _, channels, _ = y.shape
    n = len(orderings)

    def unpermuted(direction: int, order: tuple[int, ...]) -> torch.Tensor:
        part = y[:, direction].reshape(batch, channels, *(spatial[a] for a in order))
        return part.permute(0, 1, *(2 + order.index(a) for a in range(len(order))))

    totals = []
    for offset in (0, n):
        total = unpermuted(offset, orderings[0]).clone(memory_format=torch.contiguous_format)
        for i, order in enumerate(orderings[1:], start=1):
            total += unpermuted(offset + i, order)
        totals.append(total)
    forward, reversed_ = totals
    return forward.add_(reversed_.flip(tuple(range(2, forward.dim()))))


class _CrossScan(torch.autograd.Function):
    """:func:`cross_scan` with the merge as its backward (the cross scan is linear; the merge its adjoint)."""

    @staticmethod
    def forward(ctx, x, orderings):
        ctx.orderings, ctx.spatial = orderings, tuple(x.shape[2:])
        return _write_cross_scan(x, orderings)

    @staticmethod
    def backward(ctx, grad):
        return _sum_cross_merge(grad, ctx.orderings, ctx.spatial), None


class _CrossMerge(torch.autograd.Function):
    """:func:`cross_merge` with the cross scan as its backward."""

    @staticmethod
    def forward(ctx, y, orderings, spatial):
        ctx.orderings = orderings
        return _sum_cross_merge(y, orderings, spatial)

    @staticmethod
    def backward(ctx, grad):
        return _write_cross_scan(grad, ctx.orderings), None, None


def cross_scan(x: torch.Tensor, orderings: list[tuple[int, ...]]) -> torch.Tensor:
    """(B, E, *spatial) -> (B, K, E, L), K = 2 len(orderings): the sequences of ``orderings`` (see
    :func:`scan_orderings`), then the same sequences reversed."""
    if torch.jit.is_tracing():  # the JIT cannot record a Python autograd.Function (fvcore counts FLOPs by tracing)
        return _write_cross_scan(x, orderings)
    return _CrossScan.apply(x, orderings)


def cross_merge(y: torch.Tensor, orderings: list[tuple[int, ...]], spatial: tuple[int, ...]) -> torch.Tensor:
    """(B, K, E, L) -> (B, E, *spatial): every direction of :func:`cross_scan` put back in place, summed."""
    if torch.jit.is_tracing():
        return _sum_cross_merge(y, orderings, tuple(spatial))
    return _CrossMerge.apply(y, orderings, tuple(spatial))


class CrossScanSSM(nn.Module):
    """SS2D / SS3D: input projection, depthwise conv, multi-direction selective scan, gated output.

    ``token_mixer`` other than ``"scan"`` builds a No-Mamba ablation (see :mod:`nnunet_mamba.blocks.token_mixer`):
    no scan and none of its parameters (``x_proj_weight``, ``dt_projs_*``, ``A_logs``, ``Ds``).
    """

    def __init__(
        self,
        dim: int,
        spatial_dims: int,
        d_state: int = 16,
        expand: int = 2,
        dt_rank: int | None = None,
        conv_kernel: int = 3,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        token_mixer: str = "scan",
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"CrossScanSSM supports 2 or 3 spatial dimensions, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.orderings = scan_orderings(spatial_dims)
        self.num_directions = 2 * spatial_dims
        self.d_state = d_state
        self.d_inner = expand * dim
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(dim / 16)
        k, e, r, n = self.num_directions, self.d_inner, self.dt_rank, d_state

        conv_op = convert_dim_to_conv_op(spatial_dims)
        self.in_proj = nn.Linear(dim, 2 * e, bias=False)
        self.depthwise_conv = conv_op(e, e, conv_kernel, padding=conv_kernel // 2, groups=e, bias=True)
        self.token_mixer = check_token_mixer(token_mixer)
        if token_mixer == "scan":
            self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, e))
            self.dt_projs_weight = nn.Parameter(torch.empty(k, e, r))
            self.dt_projs_bias = nn.Parameter(torch.empty(k, e))
            self.A_logs = nn.Parameter(torch.empty(k * e, n))
            self.Ds = nn.Parameter(torch.empty(k * e))
        else:
            self.mixer = ablation_mixer(token_mixer, e, spatial_dims)
        self.out_norm = nn.LayerNorm(e)
        self.out_proj = nn.Linear(e, dim, bias=False)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation: dt log-uniform in [dt_min, dt_max] through the softplus bias, A = -[1..N]."""
        if self.token_mixer != "scan":
            return
        dt_min, dt_max, floor = self._dt_range
        k, e, r, n = self.num_directions, self.d_inner, self.dt_rank, self.d_state
        bound = 1.0 / math.sqrt(e)  # nn.Linear's default for x_proj
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-r**-0.5, r**-0.5)
        dt = torch.exp(torch.rand(k, e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * e, 1))
        self.Ds.fill_(1.0)

    def _cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E, *spatial) -> (B, K, E, L): the forward orderings, then the same sequences reversed."""
        return cross_scan(x, self.orderings)

    def _cross_merge(self, y: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        """(B, K, E, L) -> (B, E, *spatial): undo every direction and sum them."""
        return cross_merge(y, self.orderings, spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last in and out: ``(B, *spatial, dim)``."""
        # in_proj through its module (hooks, thop's count); the depthwise convolution takes its channels-last output
        # as it is, which oneDNN runs faster than a channels-first map
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.depthwise_conv(torch.movedim(x, -1, 1)))
        y = self._scan(x) if self.token_mixer == "scan" else self.mixer(x)
        # no-op under autocast (float32 weights; layer_norm runs in float32); needed for a model cast to bf16
        y = y.to(self.out_norm.weight.dtype)
        y = self.out_norm(torch.movedim(y, 1, -1)) * F.silu(z)
        return self.out_proj(y)

    def _scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E, *spatial) -> (B, E, *spatial): the selective scan in every direction, merged."""
        batch, _, *spatial = x.shape
        length = math.prod(spatial)
        k, e, r, n = self.num_directions, self.d_inner, self.dt_rank, self.d_state
        xs = self._cross_scan(x)  # (B, K, E, L)
        projected = grouped_linear_channels_first(xs, self.x_proj_weight.to(xs.dtype))
        dts, Bs, Cs = torch.split(projected, [r, n, n], dim=2)
        dts = grouped_linear_channels_first(dts, self.dt_projs_weight.to(dts.dtype))
        ys = selective_scan(
            xs.reshape(batch, k * e, length),
            dts.reshape(batch, k * e, length),
            -torch.exp(self.A_logs.float()),
            Bs,
            Cs,
            D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1),
            delta_softplus=True,
            # summing 2N directions in bf16/fp16 would round every partial sum: merge in float32 (or float64)
            out_dtype=torch.promote_types(xs.dtype, torch.float32),
        )
        return self._cross_merge(ys.reshape(batch, k, e, length), tuple(spatial))


class SS2D(CrossScanSSM):
    """VMamba's SS2D: :class:`CrossScanSSM` over two spatial axes, four scan directions."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(dim, spatial_dims=2, **kwargs)


class SS3D(CrossScanSSM):
    """:class:`CrossScanSSM` over three spatial axes, six scan directions."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(dim, spatial_dims=3, **kwargs)


class VSSBlock(nn.Module):
    """Pre-norm residual block around :class:`CrossScanSSM` (VMamba's VSS block)."""

    def __init__(self, dim: int, spatial_dims: int, drop_path: float = 0.0, d_state: int = 16,
                 token_mixer: str = "scan"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ssm = CrossScanSSM(dim, spatial_dims, d_state=d_state, token_mixer=token_mixer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ssm(self.norm(x)))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward on a grid of ``input_size`` (one sample).

        With C channels, E inner channels, K scan directions, rank R and N states, per token: the block input and
        the normalised input (C each, the input through its norm), the input projection (2E: x and the gate z), the
        depthwise convolution's output (E, for its SiLU), the K direction sequences and their deltas (K E each),
        the x projection (K (R + 2N), which B and C are views of), and on the way out the merged directions, their
        norm, the gate's SiLU and their product (E each). Besides: A = -exp(A_log) on its way into the scan (twice
        K E N) and the scan's saved states (K E N at every backward-chunk start of the numba kernel, the CPU
        default; mamba-ssm's CUDA kernel keeps fewer), which dominate at the deepest levels of small patches.
        The pure-PyTorch scan keeps more: a block with it saves about 1.3x this count.

        The No-Mamba ablations keep none of the scan's maps; the "dwconv" one keeps its convolution's input (E).
        """
        ssm = self.ssm
        tokens = math.prod(input_size)
        channels = self.norm.normalized_shape[0]
        k, e, r, n = ssm.num_directions, ssm.d_inner, ssm.dt_rank, ssm.d_state
        per_token = (layer_norm_saved_elements(channels, 1) + channels  # block input + stats, in_proj input
                     + 2 * e + e                                       # in_proj output, conv output
                     + layer_norm_saved_elements(e, 1) + 3 * e)        # out_norm input, its output, SiLU(z), product
        if ssm.token_mixer == "dwconv":
            return tokens * (per_token + e)
        if ssm.token_mixer == "identity":
            return tokens * per_token
        per_token += 2 * k * e + k * (r + 2 * n)                       # sequences, deltas, x projection
        return tokens * per_token + 2 * k * e * n + saved_state_positions(tokens, n) * n * k * e


def stage_drop_paths(depths: Sequence[int], drop_path_rate: float, decreasing: bool = False) -> list[list[float]]:
    """VMamba's stochastic depth: rates rising linearly from 0 to ``drop_path_rate`` over all blocks of all stages
    (falling instead for a decoder that starts at the bottleneck), split into one list per stage."""
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    if decreasing:
        rates = rates[::-1]
    bounds = [0, *itertools.accumulate(depths)]
    return [rates[bounds[i]:bounds[i + 1]] for i in range(len(depths))]


def init_vmamba_weights(module: nn.Module) -> None:
    """VMamba's initialisation of every layer under ``module``: truncated normal (std 0.02) linear weights, zero
    biases, unit norms. Convolutions and the scan's parameters (A_log, D, dt_proj) keep their own."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VSSStage(nn.Sequential):
    """``depth`` VSS blocks at one resolution, with per-block drop-path rates."""

    def __init__(self, dim: int, depth: int, spatial_dims: int, drop_path: list[float] | float = 0.0, d_state: int = 16,
                 token_mixer: str = "scan"):
        rates = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        if len(rates) != depth:
            raise ValueError(f"need {depth} drop-path rates, got {len(rates)}")
        super().__init__(*(VSSBlock(dim, spatial_dims, rate, d_state, token_mixer) for rate in rates))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return sum(block.compute_conv_feature_map_size(input_size) for block in self)
