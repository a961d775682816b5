"""Planning for a GPU memory budget: the training-step memory model, nnU-Net's patch search around it, and the
planning API under ``nnunet-mamba plan`` (:mod:`nnunet_mamba.planning.api`).

The planner class itself is ``planners/`` (package ``nnunet_mamba_planners``), loaded by
:func:`nnunet_mamba.planning.api.planners_package`.
"""
from nnunet_mamba.planning.memory_model import GIB, MemoryEstimate, TrainingMemoryModel
from nnunet_mamba.planning.patch_search import BudgetTooSmallError, batch_size_for, fit_patch_to_budget

__all__ = ["GIB", "MemoryEstimate", "TrainingMemoryModel", "BudgetTooSmallError", "batch_size_for",
           "fit_patch_to_budget"]
