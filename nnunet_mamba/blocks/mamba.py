"""The Mamba block (v1, "simple"): one implementation for every network that uses plain 1-D Mamba.

Parameter names, shapes and initialisation are those of ``mamba_ssm.Mamba`` (``mamba_ssm/modules/mamba_simple.py``),
so a state dict saved from it loads unchanged:

* ``in_proj``: Linear d_model -> 2 * d_inner (x and the gate z), no bias by default;
* ``conv1d``: causal depthwise Conv1d over the sequence, kernel ``d_conv`` (4), with bias;
* ``x_proj``: Linear d_inner -> dt_rank + 2 * d_state (delta, B, C), no bias;
* ``dt_proj``: Linear dt_rank -> d_inner; its bias is the scan's ``delta_bias`` (softplus^-1 of a dt drawn
  log-uniformly in [dt_min, dt_max]), its weight uniform in +-dt_rank^-0.5 * dt_scale;
* ``A_log`` (d_inner, d_state) = log(1..d_state) per channel; ``D`` (d_inner) = 1;
* ``out_proj``: Linear d_inner -> d_model.

d_inner = expand * d_model (expand 2), dt_rank = ceil(d_model / 16), d_state 16. Parameters:
6 D^2 + 4 r D + 110 D for d_model D (9,920 for D = 32).

The projections are applied with their raw weights, as mamba-ssm's fused fast path does, rather than by calling
the submodules. Two consequences: the block costs the same as the fused path, and profilers that count through
module hooks (``thop``) see exactly what they saw on the published networks, i.e. nothing inside the block (see
:mod:`nnunet_mamba.benchmarks.flops`, protocol ``thop``).

Layout. Tokens come in and go out channels-last, (batch, L, d_model), but the convolution and the scan take
(batch, channels, L). The projections are therefore computed as ``W @ tokens^T``, which gives x, z, delta, B and C
in that layout directly, and out_proj reads the scan's output transposed (:mod:`nnunet_mamba.blocks.channels_first`).
Computing them channels-last and transposing after cost a transposing copy of each map per call and per backward:
on CPU about half of LightM-UNet's inference time (``docs/benchmarks.md``).

The scan goes through :func:`nnunet_mamba.ops.selective_scan` (CPU backends, the mamba-ssm kernel, fp32 under
autocast); the causal convolution and its SiLU through :func:`nnunet_mamba.ops.causal_conv1d_silu` (``causal_conv1d``'s
kernel for CUDA tensors, numba's for CPU tensors).

Sequences are read in the order given. Networks that scan a sequence both ways with shared weights call the block
on the sequence and on its flip (or on both stacked along the batch, one scan call) and flip the second result back.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.blocks.channels_first import linear_channels_first, linear_to_channels_last
from nnunet_mamba.blocks.token_mixer import ablation_mixer, check_token_mixer
from nnunet_mamba.ops import causal_conv1d_silu, saved_state_positions, selective_scan


class Mamba(nn.Module):
    """``mamba_ssm.Mamba``'s block on channels-last sequences: ``(batch, L, d_model) -> (batch, L, d_model)``.

    ``token_mixer`` other than ``"scan"`` builds a No-Mamba ablation (see :mod:`nnunet_mamba.blocks.token_mixer`):
    no scan and none of its parameters (``x_proj``, ``dt_proj``, ``A_log``, ``D``); the gate stays.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        token_mixer: str = "scan",
    ):
        super().__init__()
        if d_model < 1 or d_state < 1 or d_conv < 1 or expand < 1:
            raise ValueError(f"Mamba needs positive d_model, d_state, d_conv and expand, got {d_model}, {d_state}, "
                             f"{d_conv}, {expand}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba's dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias)
        self.token_mixer = check_token_mixer(token_mixer)
        if token_mixer == "scan":
            self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
            self.D = nn.Parameter(torch.empty(self.d_inner))
        else:
            self.mixer = ablation_mixer(token_mixer, self.d_inner, 1)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._dt_init = (dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba-ssm's initialisation of dt_proj, A_log and D (the other layers keep PyTorch's defaults)."""
        if self.token_mixer != "scan":
            return
        dt_min, dt_max, dt_init, dt_scale, floor = self._dt_init
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            self.dt_proj.weight.fill_(std)
        else:
            self.dt_proj.weight.uniform_(-std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        # mamba-ssm marks these so that its model-level init leaves them alone and weight decay skips them
        self.dt_proj.bias._no_reinit = True
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.A_log._no_weight_decay = True
        self.D.fill_(1.0)
        self.D._no_weight_decay = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model)."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba(d_model={self.d_model}) takes (batch, L, {self.d_model}) sequences, got shape "
                             f"{tuple(hidden_states.shape)}")
        return self._mix(hidden_states.transpose(1, 2), channels_last_output=True)

    def forward_channels_first(self, tokens: torch.Tensor) -> torch.Tensor:
        """The same block on channels-first sequences, (batch, d_model, L) -> (batch, d_model, L) contiguous, for
        callers whose maps are channels-first on both sides: no transposed view in, no transposed copy out."""
        if tokens.dim() != 3 or tokens.shape[1] != self.d_model:
            raise ValueError(f"Mamba(d_model={self.d_model}).forward_channels_first takes (batch, {self.d_model}, L) "
                             f"sequences, got shape {tuple(tokens.shape)}")
        return self._mix(tokens, channels_last_output=False)

    def _mix(self, tokens: torch.Tensor, channels_last_output: bool) -> torch.Tensor:
        # x and the gate z by two products: each is then contiguous, as the scan's kernels take them
        x_weight, z_weight = self.in_proj.weight.chunk(2)
        x_bias, z_bias = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
        x = linear_channels_first(tokens, x_weight, x_bias)  # (B, E, L)
        z = linear_channels_first(tokens, z_weight, z_bias)
        x = causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)
        if self.token_mixer != "scan":
            y = self.mixer(x) * F.silu(z)
        else:
            x_dbl = linear_channels_first(x, self.x_proj.weight)  # (B, R + 2N, L)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
            dt = linear_channels_first(dt, self.dt_proj.weight)  # the bias enters the scan as delta_bias
            # the SSM parameters in at least float32, as mamba-ssm (a model cast to half keeps its decay exact)
            ssm_dtype = torch.promote_types(self.A_log.dtype, torch.float32)
            y = selective_scan(
                x, dt, -torch.exp(self.A_log.to(ssm_dtype)), B, C,
                D=self.D.to(ssm_dtype), z=z, delta_bias=self.dt_proj.bias.to(ssm_dtype), delta_softplus=True,
            )
        if channels_last_output:
            return linear_to_channels_last(y, self.out_proj.weight, self.out_proj.bias)
        return linear_channels_first(y, self.out_proj.weight, self.out_proj.bias)

    def compute_conv_feature_map_size(self, input_size: int | Sequence[int], sequences: int = 1) -> int:
        """Elements saved for backward by one call on ``sequences`` sequences (a batch) of length ``input_size``.

        With d_model D, E inner channels, rank R and N states, per sequence position: the input (D, kept by the
        products giving x and z), x (E, kept by the fused causal convolution, which recomputes its pre-activation),
        the gate z (E, kept by the scan), x_proj's output (R + 2N: delta's input, B and C), and three E-wide maps
        (the convolution's SiLU, delta, and the scan's output, which out_proj reads transposed). Once per call:
        A = -exp(A_log) (twice E N); per sequence, the numba scan's state (E N) at every backward-chunk start (see
        :func:`nnunet_mamba.ops.saved_state_positions`). PyTorch's convolution, used where neither fused kernel
        runs, keeps x padded (d_conv - 1 positions longer) and its pre-activation besides: E L + E (d_conv - 1)
        more per sequence than counted here.

        The No-Mamba ablations keep, besides the input, x and z and three E-wide maps (the convolution's SiLU, the
        gate's SiLU, out_proj's input); the "dwconv" one a fourth, its convolution's output.
        """
        length = input_size if isinstance(input_size, int) else math.prod(input_size)
        e, r, n = self.d_inner, self.dt_rank, self.d_state
        if self.token_mixer != "scan":
            maps = 4 if self.token_mixer == "dwconv" else 3
            return sequences * length * (self.d_model + 2 * e + maps * e)
        per_position = self.d_model + 2 * e + r + 2 * n + 3 * e
        return sequences * (length * per_position + saved_state_positions(length, n) * n * e) + 2 * e * n

    @staticmethod
    def parameter_count(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> int:
        """Parameters of the default block (no in/out bias), computed from the shapes above."""
        e, r = expand * d_model, math.ceil(d_model / 16)
        return (d_model * 2 * e + e * d_conv + e + e * (r + 2 * d_state) + r * e + e + e * d_state + e
                + e * d_model)
