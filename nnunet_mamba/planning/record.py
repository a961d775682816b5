"""What our planner writes into each planned configuration, and the trainer's check against it.

``nnunet-mamba plan --network NAME`` sizes the patch and batch for one network; a configuration it planned holds
``{"nnunet_mamba": {"network": NAME, ...}}``. A trainer whose network is another one would train on a patch and
batch sized for the wrong memory model (an out-of-memory failure or an under-used card), so it stops at
``initialize``. Plans written by nnU-Net's own planners carry no record and suit every network.

Which plan fits which trainer: a configuration planned for NAME (a network or a variant, e.g. ``light_m_unet_v0``)
fits the trainers whose ``network_name`` is NAME. A quick trainer builds the small instance of its network
(``vm_unet_small`` for ``vm_unet``), which needs less memory than the network: it takes the network's plans and
plans made for the small instance itself. A variant is a network of its own here (``light_m_unet`` plans do not fit
a ``light_m_unet_v0`` trainer, nor the reverse): variants differ in memory. The exception is a No-Mamba ablation
(``vm_unet_no_mamba``): it also takes the plans of the network it ablates, since an ablation is trained on the same
patch and batch as its network (and needs less memory).
"""
from __future__ import annotations

import re

#: key of each planned configuration that records what it was planned for
PLANNING_KEY = "nnunet_mamba"


class PlanNetworkMismatch(RuntimeError):
    """A trainer was given plans that our planner sized for another network."""


def planned_network(configuration: dict) -> str | None:
    """The network our planner sized ``configuration`` (a plans file's configuration entry) for; None for
    configurations our planner did not write (nnU-Net's own plans)."""
    record = configuration.get(PLANNING_KEY)
    return record.get("network") if isinstance(record, dict) else None


def require_planned_for(network_name: str, configuration: dict, *, trainer_name: str, plans_name: str,
                        configuration_name: str, dataset_name: str, builds: str | None = None,
                        ablates: str | None = None, trainer_for_network=None) -> None:
    """Raise :class:`PlanNetworkMismatch` when ``configuration`` was planned for a network other than the trainer's
    ``network_name``, the one it ``builds`` (its small instance, for a quick trainer) and the one it ``ablates`` (a
    No-Mamba ablation's network; see the module docstring). ``trainer_for_network(name) -> trainer name or None``
    suggests a trainer for the planned one."""
    planned = planned_network(configuration)
    if planned is None or planned in (network_name, builds, ablates):
        return
    record = configuration[PLANNING_KEY]
    budget = f" --gpu-memory-gb {record['gpu_memory_gb']:g}" if isinstance(record.get("gpu_memory_gb"),
                                                                           (int, float)) else ""
    dataset_id = re.match(r"Dataset(\d+)_", dataset_name)
    dataset = str(int(dataset_id.group(1))) if dataset_id else dataset_name
    other_trainer = trainer_for_network(planned) if trainer_for_network is not None else None
    train_with = (f"train with {other_trainer} (or another trainer of {planned})" if other_trainer
                  else f"train with a trainer of {planned}")
    raise PlanNetworkMismatch(
        f"plans {plans_name} (configuration {configuration_name}) were sized for {planned}; {trainer_name} builds "
        f"{network_name}: plan for it with `nnunet-mamba plan -d {dataset} --network {network_name}{budget}` and "
        f"train with its plans (-p), or {train_with} on {plans_name}")
