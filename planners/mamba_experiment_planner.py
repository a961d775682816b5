"""nnU-Net's planner for one of our registered networks: patch and batch fitted to a GPU memory budget."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import List, Optional, Tuple, Union

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_mamba.architectures.plans import PlanTopology
from nnunet_mamba.architectures.registry import build_network, get_network, require_supported_dims
from nnunet_mamba.planning.memory_model import MemoryEstimate, TrainingMemoryModel
from nnunet_mamba.planning.patch_search import batch_size_for, fit_patch_to_budget
from nnunet_mamba.planning.record import PLANNING_KEY
#: networks kept built at once: full-size networks are large, and the search visits few topologies at a time
NETWORKS_KEPT = 3


def mamba_plans_name(network_name: str, gpu_memory_gb: float) -> str:
    """``nnUNetMambaPlans_vm_unet_24G``: one plans file per network and budget, next to nnU-Net's."""
    return f"nnUNetMambaPlans_{network_name}_{gpu_memory_gb:g}G"


class MambaExperimentPlanner(ExperimentPlanner):
    """nnU-Net's :class:`ExperimentPlanner` with the network's memory model in place of its UNet estimate.

    Spacing, transposition, normalisation, resampling, the 3d_lowres cascade and the initial patch shape are
    nnU-Net's (``super()``); only the patch size, the batch size and the poolings recorded in the plan differ:
    the patch is shrunk (or grown) until a training step of ``network_name`` with two samples fits the budget,
    and the batch takes what is left (see :mod:`nnunet_mamba.planning`). Plans are named by
    :func:`mamba_plans_name` and preprocessed into their own folders, so nnU-Net's plans stay untouched.
    """

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: Optional[str] = None,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False, network_name: str = "vm_unet",
                 memory_model: TrainingMemoryModel = TrainingMemoryModel()):
        self.network_entry = get_network(network_name)
        self.memory_model = memory_model
        self.usable_bytes = memory_model.usable_bytes(gpu_memory_target_in_gb)
        self._networks: OrderedDict = OrderedDict()
        self._estimates: dict[PlanTopology, MemoryEstimate] = {}
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or mamba_plans_name(network_name, gpu_memory_target_in_gb),
                         overwrite_target_spacing, suppress_transpose)

    def static_estimate_VRAM_usage(self, *args, **kwargs) -> int:
        # super().get_plans_for_configuration is asked for everything but patch and batch size: with a
        # trivially small estimate its UNet shrinking loop does not run and it keeps nnU-Net's initial patch
        return 1

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        require_supported_dims(self.network_entry.name, plan["patch_size"], data_identifier)
        topology, estimate = fit_patch_to_budget(spacing, median_shape, plan["patch_size"], self._estimate,
                                                 self.usable_bytes, self.UNet_min_batch_size)
        batch_size = batch_size_for(estimate, self.usable_bytes, topology.patch_size, approximate_n_voxels_dataset,
                                    self.UNet_min_batch_size, self.max_dataset_covered)
        plan["patch_size"] = topology.patch_size
        plan["batch_size"] = batch_size
        self._record_topology(plan["architecture"]["arch_kwargs"], topology, len(spacing))
        planned = dataclasses.replace(estimate, batch_size=batch_size)
        # "network" is what a trainer compares its own network_name with (nnunet_mamba.planning.record)
        plan[PLANNING_KEY] = {
            "network": self.network_entry.name,
            "gpu_memory_gb": self.UNet_vram_target_GB,
            "estimated_training_step_gib": round(planned.total_gib, 3),
            "saved_activation_elements_per_sample": planned.activation_elements_per_sample,
        }
        return plan

    def _record_topology(self, arch_kwargs: dict, topology: PlanTopology, spatial_dims: int) -> None:
        """The plan's poolings (what our networks read their strides from) for the fitted patch, in nnU-Net's
        UNet entry, which stays trainable by nnU-Net's own trainers."""
        stages = len(topology.pool_op_kernel_sizes)
        max_features = self.UNet_max_features_2d if spatial_dims == 2 else self.UNet_max_features_3d
        arch_kwargs.update({
            "n_stages": stages,
            "features_per_stage": tuple(min(max_features, self.UNet_base_num_features * 2**i) for i in range(stages)),
            "kernel_sizes": topology.conv_kernel_sizes,
            "strides": topology.pool_op_kernel_sizes,
            "n_conv_per_stage": self.UNet_blocks_per_stage_encoder[:stages],
            "n_conv_per_stage_decoder": self.UNet_blocks_per_stage_decoder[:stages - 1],
        })

    def _estimate(self, topology: PlanTopology) -> MemoryEstimate:
        """A training step of the network built for this topology, batch size 1 (cached: the 3d_lowres search
        plans many times over)."""
        if topology not in self._estimates:
            network_class = self.network_entry.network_class
            deep_supervision = network_class.supports_deep_supervision
            input_channels = len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))
            num_classes = len(self.dataset_json["labels"])
            self._estimates[topology] = self.memory_model.estimate(
                self._network_for(topology, input_channels, num_classes, deep_supervision), topology.patch_size, 1,
                input_channels, num_classes, deep_supervision)
        return self._estimates[topology]

    def _network_for(self, topology: PlanTopology, input_channels: int, num_classes: int, deep_supervision: bool):
        # the network depends on the poolings only (the patch is merely checked against them)
        key = topology.pool_op_kernel_sizes
        if key in self._networks:
            self._networks.move_to_end(key)
        else:
            self._networks[key] = build_network(self.network_entry.name, topology, input_channels, num_classes,
                                                deep_supervision)
            if len(self._networks) > NETWORKS_KEPT:
                self._networks.popitem(last=False)
        return self._networks[key]
