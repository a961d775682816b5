"""What a training forward pass keeps alive for backward: the measured side of every network's memory model.

``SegmentationNetwork.compute_conv_feature_map_size`` estimates, in elements, the activations a forward pass of
one sample saves for backward; planners turn it into bytes. :func:`saved_activation_elements` measures the same
quantity on a real forward pass through ``torch.autograd.graph.saved_tensors_hooks``, so tests can hold each
network's estimate to it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def saved_activation_elements(network: nn.Module, input_shape: Sequence[int], input_channels: int = 1,
                              batch_size: int = 1) -> int:
    """Elements of the distinct storages saved for backward by one forward of ``network``, parameters excluded.

    A tensor saved several times (or views of one storage) counts once, at its storage's size: that is what
    occupies memory. Parameters are excluded: planners count them separately, with the optimiser state.
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in network.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameter_storages and tensor.numel() > 0:
            storages[pointer] = max(storages.get(pointer, 0), storage.nbytes() // tensor.element_size())
        return tensor

    network.train()
    inputs = torch.randn(batch_size, input_channels, *[int(s) for s in input_shape], requires_grad=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = network(inputs)
    del outputs
    return sum(storages.values())
