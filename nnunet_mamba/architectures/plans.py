"""Reading network sizes out of an nnU-Net plan, and the plan entries of a patch (:class:`PlanTopology`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

#: nnU-Net's UNet_featuremap_min_edge_length: no pooling below 4 voxels per axis
FEATUREMAP_MIN_EDGE_LENGTH = 4


@dataclass(frozen=True)
class PlanTopology:
    """A patch and nnU-Net's poolings and convolution kernels for it: the plan entries networks are built from.

    The planner searches over these, and benchmarks and tests build networks from them outside a planned
    dataset (:func:`synthetic_configuration`); anything with these attributes, nnU-Net's ``ConfigurationManager``
    included, builds a network.
    """

    patch_size: tuple[int, ...]
    pool_op_kernel_sizes: tuple[tuple[int, ...], ...]
    conv_kernel_sizes: tuple[tuple[int, ...], ...]
    #: what the poolings were derived for; not compared, since networks read the patch, poolings and kernels only
    #: (so the planner's caches serve every spacing with the same poolings)
    spacing: tuple[float, ...] = field(compare=False)

    @classmethod
    def for_patch(cls, spacing: Sequence[float], patch_size: Sequence[int]) -> "PlanTopology":
        """nnU-Net's default planner's topology for ``patch_size``, which it may enlarge to a multiple of the
        total pooling."""
        from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

        spacing = tuple(float(v) for v in spacing)
        _, pools, kernels, patch, _ = get_pool_and_conv_props(list(spacing), [int(p) for p in patch_size],
                                                              FEATUREMAP_MIN_EDGE_LENGTH, 999999)
        as_tuples = lambda rows: tuple(tuple(int(v) for v in row) for row in rows)  # noqa: E731
        return cls(tuple(int(p) for p in patch), as_tuples(pools), as_tuples(kernels), spacing)

    @property
    def divisible_by(self) -> tuple[int, ...]:
        """What each axis of the patch must be a multiple of: the product of its poolings."""
        return tuple(int(v) for v in np.prod(self.pool_op_kernel_sizes, axis=0))


def synthetic_configuration(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> PlanTopology:
    """The topology nnU-Net's default planner gives ``patch_size`` (isotropic spacing unless given).

    Uses the planner's own topology function, so a network built from it and nnU-Net's default UNet built from it
    share one plan (benchmarks compare them so). Like the planner, it may enlarge the patch to a multiple of the
    total pooling.
    """
    patch = [int(p) for p in patch_size]
    if len(patch) not in (2, 3) or any(p < 1 for p in patch):
        raise ValueError(f"patch size must be 2 or 3 positive numbers, got {list(patch_size)}")
    return PlanTopology.for_patch([1.0] * len(patch) if spacing is None else spacing, patch)


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
    ``kernel_sizes``, :class:`PlanTopology` as ``conv_kernel_sizes``; None for a configuration that has neither
    (3 everywhere then)."""
    kernels = getattr(configuration_manager, "conv_kernel_sizes", None)
    if kernels is None:
        kernels = (getattr(configuration_manager, "network_arch_init_kwargs", None) or {}).get("kernel_sizes")
    if not kernels:
        return None
    return [(int(k),) * spatial_dims if isinstance(k, (int, np.integer)) else tuple(int(v) for v in k)
            for k in kernels]
