"""Short learning runs on the synthetic volumes: how soon a network learns every label from its start (issue 23).

The quick trainers' optimisation (AdamW 2e-3, weight decay 1e-2, gradient norm clipped at 12) and nnU-Net's
Dice + CE, with nnU-Net's deep-supervision weights where the network returns several outputs; batches of 2 of the
training volumes, Dice on the held-out ones. No data loading or augmentation: it measures the network and its
start, not the pipeline. Used by tests/test_learning_3d.py and scripts/learning_start_3d.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.synthetic import LABELS, _case

#: volumes trained on; the rest of :func:`synthetic_volumes` are held out
TRAINING_CASES = 8


def synthetic_volumes(shape: Sequence[int], cases: int = 10, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """``cases`` synthetic cases of the demo's kind: images z-scored per case (B, 1, *shape), labels (B, 1, *shape)."""
    rng = np.random.default_rng(seed)
    drawn = [_case(rng, tuple(shape)) for _ in range(cases)]
    images = torch.stack([torch.from_numpy((image - image.mean()) / image.std())[None] for image, _ in drawn])
    labels = torch.stack([torch.from_numpy(seg.astype(np.int64))[None] for _, seg in drawn])
    return images, labels


def deep_supervision_loss(loss, outputs, target: torch.Tensor) -> torch.Tensor:
    """nnU-Net's weighting of several outputs: halved per level, the lowest resolution left out, summing to 1."""
    if not isinstance(outputs, (list, tuple)):
        return loss(outputs, target)
    weights = [0.5**level for level in range(len(outputs) - 1)] + [0.0]
    return sum(weight / sum(weights) * loss(output, F.interpolate(target, size=output.shape[2:], mode="nearest"))
               for weight, output in zip(weights, outputs) if weight)


def short_run(network: nn.Module, seed: int, iterations: int, images: torch.Tensor,
              labels: torch.Tensor) -> dict[str, float]:
    """Train ``network`` for ``iterations`` steps (batches drawn with ``seed``); its Dice per label on the held-out
    volumes."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    sampler = torch.Generator().manual_seed(seed)
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-2)
    network.train()
    for _ in range(iterations):
        batch = torch.randint(0, TRAINING_CASES, (2,), generator=sampler)
        value = deep_supervision_loss(loss, network(images[batch]), labels[batch].float())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
    network.eval()
    with torch.no_grad():
        outputs = network(images[TRAINING_CASES:])
    predicted = (outputs[0] if isinstance(outputs, (list, tuple)) else outputs).argmax(1)
    reference = labels[TRAINING_CASES:, 0]
    return {label: round(float(2 * ((predicted == value) & (reference == value)).sum()
                               / ((predicted == value).sum() + (reference == value).sum())), 3)
            for label, value in LABELS.items() if value}
