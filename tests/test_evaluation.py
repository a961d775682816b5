"""Metrics against hand-computed truths, empty-mask rules, protocols and the evaluate command."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_mamba.evaluation.metrics import (
    BOTH_EMPTY,
    BOTH_NON_EMPTY,
    PRED_EMPTY,
    REF_EMPTY,
    score_region,
)
from nnunet_mamba.evaluation.protocols import EvalClass, ProtocolError, resolve_classes, summarize
from support import run_evaluate


def box(shape, start, stop):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    return mask


# --- surface metrics on anisotropic grids -------------------------------------------------------

PLATE_SPACING = (2.5, 1.0, 0.7)  # (z, y, x), numpy axis order


def parallel_plates():
    """Two one-voxel-thick 6x6 plates two slices apart: every surface distance is 2 * 2.5 mm."""
    shape = (8, 10, 10)
    return box(shape, (4, 2, 2), (5, 8, 8)), box(shape, (2, 2, 2), (3, 8, 8))


def test_plates_hd95_is_the_physical_gap():
    pred, ref = parallel_plates()
    scores = score_region(pred, ref, PLATE_SPACING, nsd_tolerance=1.0)
    assert scores.mask_state == BOTH_NON_EMPTY
    assert scores.dice == 0.0 and scores.iou == 0.0
    # A spacing applied in the wrong axis order would give 2 * 0.7 mm.
    assert scores.hd95 == pytest.approx(5.0, abs=1e-5)


@pytest.mark.parametrize("tolerance, expected", [(4.9, 0.0), (5.1, 1.0)])
def test_plates_nsd_below_and_above_the_gap(tolerance, expected):
    pred, ref = parallel_plates()
    assert score_region(pred, ref, PLATE_SPACING, tolerance).nsd == pytest.approx(expected)


CUBE_SPACING = (2.0, 1.0, 0.5)
GAP_MM = 2.0  # the outer box grows by (1, 2, 4) voxels per side = 2 mm in every direction


def concentric_boxes():
    shape = (10, 16, 24)
    ref = box(shape, (3, 4, 6), (7, 12, 18))  # 4 x 8 x 12 voxels
    pred = box(shape, (2, 2, 2), (8, 14, 22))  # 6 x 12 x 20 voxels
    return pred, ref


def test_concentric_boxes_nsd_counts_surface_voxels():
    pred, ref = concentric_boxes()
    ref_surface = 4 * 8 * 12 - 2 * 6 * 10  # 264, all exactly 2 mm from the outer surface
    pred_surface = 6 * 12 * 20 - 4 * 10 * 18  # 720
    pred_at_gap = 2 * (8 * 12 + 4 * 12 + 4 * 8)  # outer face voxels straight over an inner face: 352
    # The next outer voxels are at sqrt(2^2 + 0.5^2) = 2.06 mm, the farthest (corners) at 2 * sqrt(3).
    assert score_region(pred, ref, CUBE_SPACING, GAP_MM - 0.1).nsd == 0.0
    assert score_region(pred, ref, CUBE_SPACING, GAP_MM + 1e-4).nsd == pytest.approx(
        (ref_surface + pred_at_gap) / (ref_surface + pred_surface), rel=1e-6
    )
    assert score_region(pred, ref, CUBE_SPACING, 2 * math.sqrt(3) + 1e-3).nsd == pytest.approx(1.0)


def test_concentric_boxes_hd95_between_face_and_corner_distance():
    pred, ref = concentric_boxes()
    scores = score_region(pred, ref, CUBE_SPACING, 1.0)
    assert GAP_MM - 1e-6 <= scores.hd95 <= 2 * math.sqrt(3) + 1e-6
    assert scores.dice == pytest.approx(2 * 384 / (384 + 1440))
    assert scores.iou == pytest.approx(384 / 1440)


def test_identical_masks_are_perfect():
    _, ref = concentric_boxes()
    scores = score_region(ref, ref, CUBE_SPACING, 1.0)
    assert (scores.dice, scores.iou, scores.hd95, scores.nsd) == (1.0, 1.0, 0.0, 1.0)


# --- empty masks ---------------------------------------------------------------------------------

EMPTY_SHAPE, EMPTY_SPACING = (4, 5, 6), (2.0, 1.0, 0.5)
DIAGONAL = math.sqrt(8**2 + 5**2 + 3**2)


@pytest.mark.parametrize(
    "pred_full, ref_full, state, default, compat",
    [
        # (dice, iou, hd95, nsd) default ; (dice, hd95) TransUNet
        (False, False, BOTH_EMPTY, (1.0, 1.0, 0.0, 1.0), (0.0, 0.0)),
        (False, True, PRED_EMPTY, (0.0, 0.0, DIAGONAL, 0.0), (0.0, 0.0)),
        (True, False, REF_EMPTY, (0.0, 0.0, DIAGONAL, 0.0), (1.0, 0.0)),
    ],
)
def test_empty_mask_rules(pred_full, ref_full, state, default, compat):
    some = box(EMPTY_SHAPE, (1, 1, 1), (3, 3, 3))
    none = np.zeros(EMPTY_SHAPE, dtype=bool)
    pred, ref = (some if pred_full else none), (some if ref_full else none)
    scores = score_region(pred, ref, EMPTY_SPACING, 2.0)
    assert scores.mask_state == state
    assert (scores.dice, scores.iou, scores.hd95, scores.nsd) == pytest.approx(default)
    compat_scores = score_region(pred, ref, EMPTY_SPACING, 2.0, transunet_compat=True)
    assert (compat_scores.dice, compat_scores.hd95) == pytest.approx(compat)
    assert math.isnan(compat_scores.nsd)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_monai_alone_gives_nan_for_empty_masks():
    """Why the rules above exist: MONAI has no answer when a mask is empty."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    empty = torch.zeros(1, 1, 4, 4, 4)
    full = torch.zeros(1, 1, 4, 4, 4)
    full[..., 1:3, 1:3, 1:3] = 1
    with pytest.warns(UserWarning):
        value = compute_hausdorff_distance(empty, full, include_background=True, percentile=95)
    assert not math.isfinite(value.item())


# --- TransUNet-compatible mode where it differs ---------------------------------------------------


def plate_with_outlier():
    """Identical 4x4 plates plus one predicted voxel 6 voxels away from the reference."""
    shape = (9, 6, 6)
    ref = box(shape, (1, 0, 0), (2, 4, 4))
    pred = ref.copy()
    pred[7, 0, 0] = True
    return pred, ref


def test_transunet_compat_pools_both_directions_and_ignores_spacing():
    pred, ref = plate_with_outlier()
    # Default: max of directed 95th percentiles; pred->ref has 16 zeros and one 6 -> 0.2 * 6.
    assert score_region(pred, ref, (1.0, 1.0, 1.0), 1.0).hd95 == pytest.approx(1.2, abs=1e-5)
    # medpy pools the 33 distances (32 zeros): the 95th percentile is 0.
    assert score_region(pred, ref, (1.0, 1.0, 1.0), 1.0, transunet_compat=True).hd95 == 0.0
    plates_pred, plates_ref = parallel_plates()
    assert score_region(plates_pred, plates_ref, PLATE_SPACING, 1.0, transunet_compat=True).hd95 == pytest.approx(2.0)


# --- protocols -------------------------------------------------------------------------------------


def test_synapse_protocol_picks_the_eight_organs_by_name_in_the_13_label_dataset():
    from nnunet_mamba.datasets.synapse import SYNAPSE13_LABELS

    labels = {"background": 0, **{name: i for i, name in enumerate(SYNAPSE13_LABELS, start=1)}}
    classes = {c.name: c.labels for c in resolve_classes("synapse", labels)}
    assert classes == {
        "aorta": (8,), "gallbladder": (4,), "kidney_left": (3,), "kidney_right": (2,),
        "liver": (6,), "pancreas": (11,), "spleen": (1,), "stomach": (7,),
    }
    with pytest.raises(ProtocolError, match="aorta"):
        resolve_classes("synapse", {"background": 0, "liver": 1})


def test_nsd_tolerances_default_and_override():
    classes = {c.name: c.nsd_tolerance for c in resolve_classes("amos", None, nsd_tolerances={"liver": 1.5})}
    assert classes["liver"] == 1.5 and classes["duodenum"] == 7.0 and classes["bladder"] == 2.0
    everything = resolve_classes("lits", None, nsd_tolerances={"default": 4.0})
    assert {c.nsd_tolerance for c in everything} == {4.0}


def _row(case, name, **counts):
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    dice = 2 * tp / (2 * tp + fp + fn)
    return dict(case=case, **{"class": name}, dice=dice, iou=tp / (tp + fp + fn), hd95=1.0, nsd=1.0, **counts)


def test_isic_summary_uses_one_pooled_confusion_matrix():
    lesion = [EvalClass("lesion", (1,), 2.0)]
    rows = [_row("a", "lesion", tp=8, fp=2, fn=0, tn=90), _row("b", "lesion", tp=2, fp=0, fn=8, tn=90)]
    paper = summarize("isic", lesion, rows)["paper"]
    # Pooled: TP 10, FP 2, FN 8, TN 180.
    assert paper["mIoU"] == pytest.approx(10 / 20)
    assert paper["DSC"] == pytest.approx(20 / 30)
    assert paper["accuracy"] == pytest.approx(190 / 200)
    assert paper["specificity"] == pytest.approx(180 / 182)
    assert paper["sensitivity"] == pytest.approx(10 / 18)
    # ... which is not the mean of per-case Dice (0.889 and 0.333).
    assert summarize("isic", lesion, rows)["per_class"]["lesion"]["dice"]["mean"] == pytest.approx((16 / 18 + 4 / 12) / 2)


def test_lits_liver_includes_tumour_and_reports_global_dice():
    classes = resolve_classes("lits", None)
    assert [(c.name, c.labels) for c in classes] == [("liver", (1, 2)), ("tumor", (2,))]
    rows = [_row("a", "tumor", tp=1, fp=1, fn=0, tn=10), _row("b", "tumor", tp=9, fp=0, fn=1, tn=10)]
    rows += [_row(c, "liver", tp=5, fp=0, fn=0, tn=5) for c in ("a", "b")]
    paper = summarize("lits", classes, rows)["paper"]
    assert paper["tumor"]["dice_global"] == pytest.approx(20 / 22)
    assert paper["tumor"]["dice_per_case"] == pytest.approx((2 / 3 + 18 / 19) / 2)


# --- the command ---------------------------------------------------------------------------------


def write_volume(path, array, spacing_zyx):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path))


@pytest.fixture
def synapse8_folders(tmp_path):
    from nnunet_mamba.datasets.synapse import SYNAPSE8_ORGANS

    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    shape = (6, 16, 16)
    for case in range(3):
        ref = np.zeros(shape, np.uint8)
        for organ in range(1, 9):
            ref[1:5, 2 * organ - 2 : 2 * organ, 2:14] = organ
        pred = ref.copy()
        if case == 1:
            pred[pred == 2] = 0  # gallbladder missed entirely
        write_volume(ref_dir / f"synapse_{case:04d}.nii.gz", ref, (3.0, 0.8, 0.8))
        write_volume(pred_dir / f"synapse_{case:04d}.nii.gz", pred, (3.0, 0.8, 0.8))
    labels = {"background": 0, **{name: i for i, name in enumerate(SYNAPSE8_ORGANS, start=1)}}
    (pred_dir / "dataset.json").write_text(json.dumps({"labels": labels}))
    return pred_dir, ref_dir


def test_evaluate_command_writes_json_csv_png_and_table(synapse8_folders, tmp_path, capsys):
    pred_dir, ref_dir = synapse8_folders
    out = tmp_path / "out"
    assert run_evaluate(["--pred", str(pred_dir), "--ref", str(ref_dir), "--protocol", "synapse", "--out", str(out), "-np", "2"]) == 0
    printed = capsys.readouterr().out
    assert "gallbladder" in printed and "mean_dsc" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert report["summary"]["per_class"]["gallbladder"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert report["summary"]["paper"]["mean_dsc"] == pytest.approx((7 + 2 / 3) / 8)
    assert len(report["per_case"]) == 3 * 8
    csv_lines = (out / "metrics_per_case.csv").read_text().splitlines()
    assert csv_lines[0].startswith("case,class,dice,iou,hd95,nsd") and len(csv_lines) == 1 + 24
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_command_transunet_compat_differs_from_default(synapse8_folders, tmp_path):
    pred_dir, ref_dir = synapse8_folders
    common = ["--pred", str(pred_dir), "--ref", str(ref_dir), "--protocol", "synapse", "-np", "1", "--no-plot"]
    assert run_evaluate([*common, "--out", str(tmp_path / "default")]) == 0
    assert run_evaluate([*common, "--out", str(tmp_path / "compat"), "--transunet-compat"]) == 0
    default = json.loads((tmp_path / "default" / "metrics.json").read_text())["summary"]["per_class"]["gallbladder"]
    compat = json.loads((tmp_path / "compat" / "metrics.json").read_text())["summary"]["per_class"]["gallbladder"]
    assert default["dice"]["mean"] == compat["dice"]["mean"]
    diagonal = math.sqrt((6 * 3.0) ** 2 + 2 * (16 * 0.8) ** 2)
    assert default["hd95"]["mean"] == pytest.approx(diagonal / 3)  # the missed case counts as the diagonal
    assert compat["hd95"]["mean"] == 0.0  # TransUNet scores a missed organ as HD95 0


def test_evaluate_command_isic_on_png(tmp_path, capsys):
    from PIL import Image

    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    ref = np.zeros((10, 10), np.uint8)
    ref[2:6, 2:6] = 1
    pred = np.zeros((10, 10), np.uint8)
    pred[2:6, 2:4] = 1
    Image.fromarray(ref).save(ref_dir / "ISIC_0000001.png")
    Image.fromarray(pred).save(pred_dir / "ISIC_0000001.png")
    assert run_evaluate(["--pred", str(pred_dir), "--ref", str(ref_dir), "--protocol", "isic", "-np", "1"]) == 0
    report = json.loads((pred_dir / "evaluation_isic" / "metrics.json").read_text())
    assert report["summary"]["paper"]["mIoU"] == pytest.approx(0.5)
    assert report["summary"]["paper"]["sensitivity"] == pytest.approx(0.5)
    assert report["summary"]["paper"]["specificity"] == pytest.approx(1.0)


def test_evaluate_command_names_a_prediction_without_reference(synapse8_folders, capsys):
    pred_dir, ref_dir = synapse8_folders
    (ref_dir / "synapse_0002.nii.gz").unlink()
    assert run_evaluate(["--pred", str(pred_dir), "--ref", str(ref_dir), "-np", "1", "--no-plot"]) == 1
    assert "synapse_0002" in capsys.readouterr().err


def test_nsd_tolerance_option_rejects_malformed_values(capsys):
    with pytest.raises(SystemExit):
        run_evaluate(["--pred", "p", "--ref", "r", "--nsd-tolerance", "liver"])
