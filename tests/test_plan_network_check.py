"""The plan names the network our planner sized it for, and a trainer of another network refuses it (issue 24)."""
import pytest

from nnunet_mamba.discovery import load_trainer
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


def test_a_variant_is_planned_for_by_its_registered_name(make_trainer):
    # the LightM-UNet v0 trainer builds the registered variant light_m_unet_v0: the full network's plan is another's
    refused = _on_plans(make_trainer("nnUNetTrainerLightMUNetV0"), "light_m_unet", "nnUNetMambaPlans_light_m_unet_24G")
    with pytest.raises(PlanNetworkMismatch, match=r"were sized for light_m_unet; nnUNetTrainerLightMUNetV0 builds "
                                                  r"light_m_unet_v0: plan for it with `nnunet-mamba plan -d 991 "
                                                  r"--network light_m_unet_v0 --gpu-memory-gb 24`.* train with "
                                                  r"nnUNetTrainerLightMUNet \(or another trainer of light_m_unet\)"):
        refused.initialize()
    trainer = _on_plans(make_trainer("nnUNetTrainerLightMUNetV0"), "light_m_unet_v0",
                        "nnUNetMambaPlans_light_m_unet_v0_24G")
    trainer.initialize()
    assert trainer.was_initialized and trainer.network.variant == "v0"


def test_a_quick_trainer_takes_its_networks_plans_and_its_small_instances(make_trainer):
    # the quick run builds vm_unet_small, which needs less memory than vm_unet: both plans fit it
    assert load_trainer("nnUNetTrainerVMUNetQuick").network_to_build() == "vm_unet_small"
    for planned in ("vm_unet", "vm_unet_small"):
        trainer = _on_plans(make_trainer("nnUNetTrainerVMUNetQuick"), planned)
        trainer.initialize()
        assert trainer.was_initialized
    # and a plan made for the small instance does not fit the full network's trainer
    with pytest.raises(PlanNetworkMismatch, match=r"sized for vm_unet_small; nnUNetTrainerVMUNet builds vm_unet: .* "
                                                  r"train with nnUNetTrainerVMUNetQuick"):
        _on_plans(make_trainer("nnUNetTrainerVMUNet"), "vm_unet_small").initialize()


def test_a_no_mamba_ablation_takes_the_plans_of_the_network_it_ablates(make_trainer):
    # an ablation trains on its network's patch and batch (and needs less memory): vm_unet plans fit it
    trainer = _on_plans(make_trainer("nnUNetTrainerVMUNetNoMambaQuick"), "vm_unet")
    trainer.initialize()
    assert trainer.was_initialized and trainer.network.encoder.stages[0][0].ssm.token_mixer == "identity"
    with pytest.raises(PlanNetworkMismatch, match=r"sized for light_m_unet; nnUNetTrainerVMUNetNoMambaQuick builds "
                                                  r"vm_unet_no_mamba"):
        _on_plans(make_trainer("nnUNetTrainerVMUNetNoMambaQuick"), "light_m_unet",
                  "nnUNetMambaPlans_light_m_unet_24G").initialize()
