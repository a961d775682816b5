"""Per-epoch values of a trainer's named auxiliary loss terms, kept apart from nnU-Net's own logger.

nnU-Net's logger accepts only the keys it knows; writing into its private structures would break with any
change of it. Our terms live here, travel in the checkpoint under their own key, and are drawn in their own
plot next to nnU-Net's segmentation losses.
"""
from __future__ import annotations

from typing import Mapping

PLOT_NAME = "progress_loss_terms.png"


class LossTermLog:
    """``values[name][epoch]``: the epoch's mean of one unweighted loss term."""

    def __init__(self):
        self.values: dict[str, list[float]] = {}

    def log(self, name: str, value: float, epoch: int) -> None:
        series = self.values.setdefault(name, [])
        # like nnU-Net's logger: an epoch logged again (after --c) replaces what followed it
        del series[epoch:]
        series.extend([float("nan")] * (epoch - len(series)))
        series.append(float(value))

    def latest(self, name: str) -> float:
        return self.values[name][-1]

    def state_dict(self) -> dict[str, list[float]]:
        return {name: list(series) for name, series in self.values.items()}

    def load_state_dict(self, state: Mapping[str, list[float]]) -> None:
        self.values = {name: [float(v) for v in series] for name, series in state.items()}

    def plot(self, path: str, title: str, segmentation_logging: Mapping[str, list], weights: Mapping[str, float]):
        """Training and validation segmentation loss and every weighted term, per epoch."""
        import matplotlib.pyplot as plt  # nnU-Net's logger has already selected the non-interactive backend

        train, val = segmentation_logging["train_losses"], segmentation_logging["val_losses"]
        epochs = min(len(train), len(val), *(len(self.values.get(name, [])) for name in weights))
        x = list(range(epochs))
        # nnU-Net's progress plot leaves seaborn's enlarged fonts in the global style
        with plt.style.context("default"):
            figure, axis = plt.subplots(figsize=(12, 6))
            axis.plot(x, train[:epochs], label="segmentation loss (train)", linewidth=2)
            axis.plot(x, val[:epochs], label="segmentation loss (val)", linewidth=2)
            for name, weight in weights.items():
                axis.plot(x, [weight * v for v in self.values[name][:epochs]], label=f"{weight} * {name}",
                          linewidth=2, ls="--")
            axis.set_xlabel("epoch")
            axis.set_ylabel("loss")
            axis.set_title(title)
            axis.legend()
            figure.tight_layout()
            figure.savefig(path)
        plt.close(figure)
