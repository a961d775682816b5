"""What a training forward pass keeps alive for backward: the measured side of every network's memory model.

``SegmentationNetwork.compute_conv_feature_map_size`` estimates, in elements, the activations a forward pass of
one sample saves for backward; planners turn it into bytes. :func:`saved_activation_elements` measures the same
quantity on a real forward pass through ``torch.autograd.graph.saved_tensors_hooks``, so tests can hold each
network's estimate to it.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from nnunet_mamba.cpu_allocator import release_freed_memory


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


def current_rss_bytes() -> int | None:
    """The process's resident memory now (Linux ``/proc``); None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of the process's resident memory (``VmHWM``); None where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ResidentPeak:
    """The growth of the process's peak resident set size over a block, in bytes (CPU memory of a train step).

    On entry, memory freed earlier is handed back to the system (glibc's ``malloc_trim``) and the kernel's peak
    (``VmHWM``) is reset to the current resident size (``/proc/self/clear_refs``, Linux >= 4.0); on exit the
    growth is the peak less that size. Exact, not sampled: every page touched inside counts. ``growth_bytes``
    stays None where the platform offers neither (then a benchmark reports nan).
    """

    def __init__(self):
        self.growth_bytes: int | None = None
        self._start: int | None = None

    def __enter__(self) -> "ResidentPeak":
        release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
        except OSError:
            return self
        self._start = current_rss_bytes()
        return self

    def __exit__(self, *exc_info) -> None:
        peak = _peak_rss_bytes()
        if self._start is not None and peak is not None:
            self.growth_bytes = max(0, peak - self._start)
