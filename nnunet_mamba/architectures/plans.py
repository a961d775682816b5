"""Reading network sizes out of an nnU-Net plan."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def strides_from_plan(
    plan_strides: Sequence[Sequence[int]], spatial_dims: int, pools_per_level: Sequence[int]
) -> list[tuple[int, ...]]:
    """Group the plan's per-stage pooling strides into the strides of a network with fixed levels.

    ``plan_strides`` is the plan's ``strides`` (``pool_op_kernel_sizes``), whose first entry is the
    all-ones stride of nnU-Net's full-resolution stage. Level ``i`` downsamples by the product of the
    next ``pools_per_level[i]`` plan strides. A plan with fewer poolings than the network needs
    (small patches) gets stride 1 on the missing ones, so the patch size, which the planner made
    divisible by its own strides, stays divisible by ours.
    """
    # a hand-written plan may give one int per stage for isotropic pooling
    stages = [(int(s),) * spatial_dims if isinstance(s, (int, np.integer)) else tuple(int(v) for v in s)
              for s in plan_strides]
    if any(v < 1 for stage in stages for v in stage):
        raise ValueError(f"plan strides {plan_strides} must all be >= 1")
    if stages and all(v == 1 for v in stages[0]):
        stages = stages[1:]
    if any(len(s) != spatial_dims for s in stages):
        raise ValueError(f"plan strides {plan_strides} do not all have {spatial_dims} axes")
    needed = int(sum(pools_per_level))
    stages = stages[:needed] + [(1,) * spatial_dims] * max(0, needed - len(stages))
    grouped, start = [], 0
    for count in pools_per_level:
        grouped.append(tuple(int(v) for v in np.prod(stages[start:start + count], axis=0)) if count else
                       (1,) * spatial_dims)
        start += count
    return grouped


def conv_kernel_sizes_from_plan(configuration_manager, spatial_dims: int) -> list[tuple[int, ...]] | None:
    """The plan's conv kernel per stage: nnU-Net's ConfigurationManager keeps them in the architecture's
    ``kernel_sizes``, :class:`~nnunet_mamba.architectures.registry.SyntheticConfiguration` as
    ``conv_kernel_sizes``; None for a configuration that has neither (3 everywhere then)."""
    kernels = getattr(configuration_manager, "conv_kernel_sizes", None)
    if kernels is None:
        kernels = (getattr(configuration_manager, "network_arch_init_kwargs", None) or {}).get("kernel_sizes")
    if not kernels:
        return None
    return [(int(k),) * spatial_dims if isinstance(k, (int, np.integer)) else tuple(int(v) for v in k)
            for k in kernels]
