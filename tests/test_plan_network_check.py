"""The plan names the network our planner sized it for, and a trainer of another network refuses it (issue 24)."""
import pytest

from nnunet_mamba.planning.record import PLANNING_KEY, PlanNetworkMismatch

VM_UNET_PLANS = "nnUNetMambaPlans_vm_unet_24G"


def _on_plans(trainer, network: str | None, plans_name: str = VM_UNET_PLANS):
    """``trainer`` given a configuration as our planner writes it for ``network`` (None: nnU-Net's own plans)."""
    if network is not None:
        trainer.plans_manager.plans["plans_name"] = plans_name
        trainer.configuration_manager.configuration[PLANNING_KEY] = {
            "network": network, "gpu_memory_gb": 24.0, "estimated_training_step_gib": 20.5,
            "saved_activation_elements_per_sample": 1}
    return trainer


def test_a_plan_for_another_network_is_refused_with_the_plan_that_fits(make_trainer):
    trainer = _on_plans(make_trainer("nnUNetTrainerLightMUNetQuick"), "vm_unet")
    with pytest.raises(PlanNetworkMismatch) as refused:
        trainer.initialize()
    assert str(refused.value) == (
        "plans nnUNetMambaPlans_vm_unet_24G (configuration 2d) were sized for vm_unet; nnUNetTrainerLightMUNetQuick "
        "builds light_m_unet: plan for it with `nnunet-mamba plan -d 991 --network light_m_unet --gpu-memory-gb 24` "
        "and train with its plans (-p), or train with nnUNetTrainerVMUNet (or another trainer of vm_unet) on "
        "nnUNetMambaPlans_vm_unet_24G")
    assert trainer.network is None and not trainer.was_initialized  # stopped before anything was built


def test_nnunet_plans_suit_every_network(make_trainer):
    trainer = _on_plans(make_trainer("nnUNetTrainerLightMUNetQuick"), None)
    assert PLANNING_KEY not in trainer.configuration_manager.configuration
    trainer.initialize()
    assert trainer.was_initialized and type(trainer.network).__name__ == "LightMUNet"


def test_a_plan_for_the_trainers_own_network_is_accepted(make_trainer):
    # DSVM-UNet trains VM-UNet: a vm_unet plan is its plan
    trainer = _on_plans(make_trainer("nnUNetTrainerDSVMUNetQuick"), "vm_unet")
    trainer.initialize()
    assert trainer.was_initialized and type(trainer.network).__name__ == "VMUNet"
