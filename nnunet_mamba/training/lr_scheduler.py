"""Learning-rate schedules stepped once per nnU-Net epoch (``scheduler.step(epoch)``)."""
from __future__ import annotations

import math

from torch.optim.lr_scheduler import _LRScheduler


class CosineAnnealingLRScheduler(_LRScheduler):
    """Cosine from ``initial_lr`` at step 0 down to ``min_lr`` at ``max_steps``.

    ``periodic=False``: one half cosine, held at ``min_lr`` after ``max_steps`` (our default over the run).
    ``periodic=True``: PyTorch's ``CosineAnnealingLR(T_max=max_steps, eta_min=min_lr)``, which goes back up
    after ``max_steps`` (a period of 2 * max_steps): what VM-UNet and DSVM-UNet step once per epoch with
    T_max 50. Stateless in the step: the lr depends only on the epoch passed to :meth:`step`, so resuming a
    run (``--c``) continues exactly where it stopped, as with nnU-Net's PolyLRScheduler.
    """

    def __init__(self, optimizer, initial_lr: float, min_lr: float, max_steps: int, current_step: int | None = None,
                 periodic: bool = False):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.initial_lr = initial_lr
        self.min_lr = min_lr
        self.max_steps = max_steps
        self.periodic = periodic
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def lr_at(self, step: int) -> float:
        step = max(step, 0) if self.periodic else min(max(step, 0), self.max_steps)
        return self.min_lr + 0.5 * (self.initial_lr - self.min_lr) * (1 + math.cos(math.pi * step / self.max_steps))

    def step(self, current_step: int | None = None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr
