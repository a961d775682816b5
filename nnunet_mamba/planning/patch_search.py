"""Patch and batch size for a memory budget, by nnU-Net's rules with a network's own memory estimate.

nnU-Net's planner starts from a patch with the aspect ratio of the spacing, clipped to the median image shape,
then takes one pooling step off the axis that is largest relative to the median shape until its UNet estimate
fits two samples, and spends what is left on the batch. :func:`fit_patch_to_budget` does the same with any
estimate, and also grows the patch (the axis that is smallest relative to the median shape first, one pooling
step at a time, never past the median shape) when the starting patch leaves room for more than the minimum
batch: nnU-Net's start (256^3 voxels in 3D) is sized for its UNet on 8 GB, not for an 80 GB card.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nnunet_mamba.architectures.plans import FEATUREMAP_MIN_EDGE_LENGTH, PlanTopology
from nnunet_mamba.planning.memory_model import GIB, MemoryEstimate


class BudgetTooSmallError(ValueError):
    """Not even the smallest patch fits the minimum batch into the memory budget."""


@dataclass(frozen=True)
class PatchPlan:
    topology: PlanTopology
    batch_size: int
    estimate: MemoryEstimate


#: bytes of one training step for a topology at batch size 1 (the fixed part plus one sample)
Estimator = Callable[[PlanTopology], MemoryEstimate]


def _fits(estimate: MemoryEstimate, usable_bytes: int, batch_size: int) -> bool:
    return estimate.fixed_bytes + batch_size * estimate.per_sample_bytes <= usable_bytes


def _shrunk(spacing, topology: PlanTopology, axis: int) -> PlanTopology:
    # nnU-Net's step: subtracting the current divisor could skip valid sizes (256 - 64 = 192 misses 224), so
    # the divisor is recomputed for the smaller patch before it is subtracted
    smaller = list(topology.patch_size)
    smaller[axis] -= topology.divisible_by[axis]
    step = PlanTopology.for_patch(spacing, smaller).divisible_by[axis]
    patch = list(topology.patch_size)
    patch[axis] -= step
    return PlanTopology.for_patch(spacing, patch)


def fit_patch_to_budget(spacing: Sequence[float], median_shape: Sequence[float], initial_patch: Sequence[int],
                        estimator: Estimator, usable_bytes: int,
                        min_batch_size: int = 2) -> tuple[PlanTopology, MemoryEstimate]:
    """The largest patch, by nnU-Net's shrinking rule (and growing, see the module docstring), whose estimate
    fits ``min_batch_size`` samples into ``usable_bytes``. Raises :class:`BudgetTooSmallError` if none does."""
    median = [float(m) for m in median_shape[:len(spacing)]]
    cache: dict[PlanTopology, MemoryEstimate] = {}

    def estimate(topology: PlanTopology) -> MemoryEstimate:
        if topology not in cache:
            cache[topology] = estimator(topology)
        return cache[topology]

    topology = PlanTopology.for_patch(spacing, initial_patch)
    fixed = estimate(topology).fixed_bytes
    if fixed >= usable_bytes:  # no patch can help: fail before shrinking through every topology
        raise BudgetTooSmallError(
            f"the GPU memory budget is too small for any patch: the parameters, their gradients and the optimiser "
            f"state alone are estimated at {fixed / GIB:.2f} GiB, but only {usable_bytes / GIB:.2f} GiB of the "
            f"budget is usable. Give a larger --gpu-memory-gb.")
    shrunk = False
    while not _fits(estimate(topology), usable_bytes, min_batch_size):
        # the axis largest relative to the median shape first; an axis below two poolings' worth stays
        ratios = [p / m for p, m in zip(topology.patch_size, median)]
        for axis in np.argsort(ratios)[::-1]:
            candidate = _shrunk(spacing, topology, int(axis))
            if candidate.patch_size[axis] >= 2 * FEATUREMAP_MIN_EDGE_LENGTH:
                topology, shrunk = candidate, True
                break
        else:
            smallest = estimate(topology)
            needed = smallest.fixed_bytes + min_batch_size * smallest.per_sample_bytes
            raise BudgetTooSmallError(
                f"the GPU memory budget is too small for the smallest patch {list(topology.patch_size)}: a training "
                f"step with batch size {min_batch_size} is estimated at {needed / GIB:.2f} GiB, but only "
                f"{usable_bytes / GIB:.2f} GiB of the budget is usable. Give a larger --gpu-memory-gb.")
    if not shrunk:
        topology = _grow(spacing, median, topology, estimate, usable_bytes, min_batch_size)
    return topology, estimate(topology)


def _grow(spacing, median, topology: PlanTopology, estimate: Estimator, usable_bytes: int,
          min_batch_size: int) -> PlanTopology:
    """One pooling step at a time on the axis smallest relative to the median shape that can still take one
    within the budget and the median shape, until none can."""
    while True:
        for axis in sorted(range(len(median)), key=lambda a: topology.patch_size[a] / median[a]):
            patch = list(topology.patch_size)
            patch[axis] += topology.divisible_by[axis]
            candidate = PlanTopology.for_patch(spacing, patch)
            if (candidate.patch_size[axis] <= median[axis]
                    and _fits(estimate(candidate), usable_bytes, min_batch_size)):
                topology = candidate
                break
        else:
            return topology


def batch_size_for(estimate: MemoryEstimate, usable_bytes: int, patch_size: Sequence[int],
                   approximate_n_voxels_dataset: float, min_batch_size: int = 2,
                   max_dataset_covered: float = 0.05) -> int:
    """As many samples as fit, at most ``max_dataset_covered`` of the dataset per step, at least the minimum."""
    fitting = (usable_bytes - estimate.fixed_bytes) // estimate.per_sample_bytes
    five_percent = round(approximate_n_voxels_dataset * max_dataset_covered / np.prod(patch_size, dtype=np.float64))
    return int(max(min(fitting, five_percent), min_batch_size))
