"""nnU-Net experiment planners of nnunet-mamba (installed as the ``nnunet_mamba_planners`` package).

nnU-Net's ``-pl`` looks for planners only inside nnunetv2, so these are run by ``nnunet-mamba plan``, which
imports them directly. The memory model and the patch search they use live in :mod:`nnunet_mamba.planning`.
"""
from .mamba_experiment_planner import MambaExperimentPlanner, mamba_plans_name

__all__ = ["MambaExperimentPlanner", "mamba_plans_name"]
