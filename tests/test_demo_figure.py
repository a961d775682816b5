"""The demo's picture of a test case: image, reference and prediction side by side, labels in their colours."""
import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from nnunet_mamba.pipeline import LABEL_COLOURS, figure_slice, write_prediction_figure

LABELS = {"background": 0, "sphere": 1, "cube": 2}


def _write(array, path):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _has_colour(pixels, colour, alpha=0.65):
    # an overlay of alpha over a grey pixel g gives alpha * colour + (1 - alpha) * g: same in every channel but the
    # colour's own mix, so look for pixels whose differences between channels match the colour's
    colour = np.asarray(to_rgb(colour))
    target = alpha * (colour - colour.mean())
    return bool((np.abs((pixels - pixels.mean(axis=2, keepdims=True)) - target).max(axis=2) < 0.03).any())


def test_figure_slice_is_the_middle_of_those_showing_most_labels():
    reference = np.zeros((9, 4, 4), dtype=np.uint8)
    reference[1:8, 0, 0] = 1  # label 1 on slices 1-7, label 2 on 4-6 only
    reference[4:7, 3, 3] = 2
    assert figure_slice(reference) == 5
    assert figure_slice(np.zeros((6, 4, 4), dtype=np.uint8)) == 3  # nothing labelled: the middle slice


@pytest.mark.parametrize("dims", [2, 3])
def test_prediction_figure_shows_reference_and_prediction_in_label_colours(tmp_path, dims):
    shape = (5, 32, 32)[-dims:]
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    reference = np.zeros(shape, dtype=np.uint8)
    reference[..., 4:12, 4:12] = 1
    reference[..., 18:28, 18:28] = 2
    prediction = np.where(reference == 1, 1, 0).astype(np.uint8)  # the cube missed
    files = [_write(a, tmp_path / f"{n}.nii.gz") for a, n in
             [(image, "image"), (reference, "reference"), (prediction, "prediction")]]
    png = write_prediction_figure(*files, LABELS, tmp_path / "case.png", "a title")

    pixels = imread(png)[..., :3]
    assert png.stat().st_size < 200_000
    height, width = pixels.shape[:2]
    body = pixels[int(0.12 * height):int(0.85 * height)]  # below the titles, above the legend
    image_panel, reference_panel, prediction_panel = (body[:, i * width // 3:(i + 1) * width // 3] for i in range(3))
    sphere, cube = LABEL_COLOURS[0], LABEL_COLOURS[1]
    assert not _has_colour(image_panel, sphere) and not _has_colour(image_panel, cube)
    assert _has_colour(reference_panel, sphere) and _has_colour(reference_panel, cube)
    assert _has_colour(prediction_panel, sphere) and not _has_colour(prediction_panel, cube)
    legend = pixels[int(0.85 * height):]
    assert _has_colour(legend, sphere, alpha=1.0) and _has_colour(legend, cube, alpha=1.0)
