"""Reading intermediate level features out of a network's ordinary forward pass.

Forward hooks instead of a second forward signature: the network keeps one forward (the one nnU-Net's
predictor, DDP and the checkpoints know), and the same call that produces the segmentation also yields
the features the auxiliary losses need, with their autograd history.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class LevelFeatureTap:
    """Within ``with``, records the outputs of the given encoder and decoder modules.

    ``tap.encoder[l]`` / ``tap.decoder[l]`` is the output of the l-th module of each list from the last
    forward pass inside the block. Hooks are removed on exit, so nothing is kept alive between steps.
    """

    def __init__(self, encoder_modules: Sequence[nn.Module], decoder_modules: Sequence[nn.Module]):
        self._modules = {"encoder": list(encoder_modules), "decoder": list(decoder_modules)}
        self._outputs: dict[str, dict[int, torch.Tensor]] = {"encoder": {}, "decoder": {}}
        self._handles = []

    def _record(self, side: str, index: int):
        def hook(_module, _inputs, output):
            self._outputs[side][index] = output
        return hook

    def __enter__(self) -> "LevelFeatureTap":
        self._outputs = {"encoder": {}, "decoder": {}}
        for side, modules in self._modules.items():
            for index, module in enumerate(modules):
                self._handles.append(module.register_forward_hook(self._record(side, index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _levels(self, side: str) -> list[torch.Tensor]:
        recorded, expected = self._outputs[side], len(self._modules[side])
        if len(recorded) != expected:
            missing = sorted(set(range(expected)) - set(recorded))
            raise RuntimeError(f"the {side} level modules {missing} did not run in the forward pass inside the tap")
        return [recorded[i] for i in range(expected)]

    @property
    def encoder(self) -> list[torch.Tensor]:
        return self._levels("encoder")

    @property
    def decoder(self) -> list[torch.Tensor]:
        return self._levels("decoder")
