"""Per-structure metrics of one case: Dice, IoU, HD95 and NSD, with explicit empty-mask rules.

Surface distances come from MONAI (``compute_hausdorff_distance``, ``compute_surface_dice`` and, for
the TransUNet-compatible HD95, ``get_edge_surface_distance``). MONAI returns NaN (or inf) as soon as
one mask is empty, so those cases never reach it; the rules below decide them instead.

Default rules (physical units, the image spacing):

=========================  =====  =====  =====  ==============================
case                       Dice   IoU    NSD    HD95
=========================  =====  =====  =====  ==============================
both masks non-empty       computed                HD95 (MONAI, see below)
both empty                 1      1      1      0
only the prediction empty  0      0      0      image diagonal (mm)
only the reference empty   0      0      0      image diagonal (mm)
=========================  =====  =====  =====  ==============================

"Both empty" counts as a correct answer, as in the FLARE / U-Mamba abdomen evaluation, and a miss
or a false alarm gets the worst distance the image allows, so that every mean is finite and no case
silently drops out of it. HD95 is MONAI's symmetric form: the larger of the two directed 95th
percentiles of the surface distances. NSD (normalised surface Dice) is the fraction of both surfaces
lying within the tolerance of the other surface.

``transunet_compat=True`` reproduces the code behind the published Synapse tables (TransUNet and its
successors, medpy ``dc``/``hd95`` per case and class): voxel units (no spacing), HD95 is the 95th
percentile of the *pooled* distances of both directions, and

* both non-empty: (Dice, HD95) computed;
* prediction non-empty, reference empty: Dice 1, HD95 0;
* otherwise (prediction empty, whatever the reference): Dice 0, HD95 0.

IoU follows the same rules as Dice there; NSD is not defined in that mode and is reported as NaN.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

BOTH_NON_EMPTY = "both_non_empty"
BOTH_EMPTY = "both_empty"
PRED_EMPTY = "prediction_empty"
REF_EMPTY = "reference_empty"


@dataclass
class RegionScores:
    dice: float
    iou: float
    hd95: float
    nsd: float
    tp: int
    fp: int
    fn: int
    tn: int
    mask_state: str  # one of the four constants above

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    return tp, fp, fn, int(pred.size) - tp - fp - fn


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus one voxel: distances do not change, the work shrinks."""
    coordinates = np.nonzero(pred | ref)
    window = tuple(
        slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, size)) for c, size in zip(coordinates, pred.shape)
    )
    return pred[window], ref[window]


def _as_batch(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def monai_hd95_and_nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance: float) -> tuple[float, float]:
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred, ref = _crop_to_union(pred, ref)
    y_pred, y = _as_batch(pred), _as_batch(ref)
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's internal deprecations, not ours to fix
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(y_pred, y, [float(tolerance)], include_background=True, spacing=spacing)
    return float(hd95.item()), float(nsd.item())


def pooled_voxel_hd95(pred: np.ndarray, ref: np.ndarray) -> float:
    """medpy's ``hd95``: 95th percentile of both directed surface distances together, in voxels."""
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    pred, ref = _crop_to_union(pred, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        _, (pred_to_ref, ref_to_pred), _ = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(ref), spacing=None, symmetric=True
        )
    pooled = torch.cat([pred_to_ref.flatten(), ref_to_pred.flatten()]).double().numpy()
    return float(np.percentile(pooled, 95))


def score_region(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    nsd_tolerance: float,
    transunet_compat: bool = False,
) -> RegionScores:
    """Scores of one binary structure; ``pred`` and ``ref`` are boolean arrays of equal shape."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    pred = pred.astype(bool, copy=False)
    ref = ref.astype(bool, copy=False)
    tp, fp, fn, tn = _confusion(pred, ref)
    pred_empty, ref_empty = tp + fp == 0, tp + fn == 0
    if pred_empty and ref_empty:
        mask_state = BOTH_EMPTY
    elif pred_empty:
        mask_state = PRED_EMPTY
    elif ref_empty:
        mask_state = REF_EMPTY
    else:
        mask_state = BOTH_NON_EMPTY
    counts = dict(tp=tp, fp=fp, fn=fn, tn=tn, mask_state=mask_state)

    if mask_state == BOTH_NON_EMPTY:
        dice = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
        if transunet_compat:
            return RegionScores(dice, iou, pooled_voxel_hd95(pred, ref), math.nan, **counts)
        hd95, nsd = monai_hd95_and_nsd(pred, ref, spacing, nsd_tolerance)
        return RegionScores(dice, iou, hd95, nsd, **counts)

    if transunet_compat:
        overlap = 1.0 if mask_state == REF_EMPTY else 0.0
        return RegionScores(overlap, overlap, 0.0, math.nan, **counts)
    if mask_state == BOTH_EMPTY:
        return RegionScores(1.0, 1.0, 0.0, 1.0, **counts)
    return RegionScores(0.0, 0.0, image_diagonal(pred.shape, spacing), 0.0, **counts)
