"""Planning for a GPU memory budget: the training-step memory model and nnU-Net's patch search around it.

The planner class itself is ``planners/`` (package ``nnunet_mamba_planners``), run by ``nnunet-mamba plan``.
"""
from nnunet_mamba.planning.memory_model import GIB, MemoryEstimate, TrainingMemoryModel
from nnunet_mamba.planning.patch_search import BudgetTooSmallError, Topology, batch_size_for, fit_patch_to_budget

__all__ = ["GIB", "MemoryEstimate", "TrainingMemoryModel", "BudgetTooSmallError", "Topology", "batch_size_for",
           "fit_patch_to_budget"]
