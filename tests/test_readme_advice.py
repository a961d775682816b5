"""The README's troubleshooting advice for small machines, run as written on the session's synthetic dataset.

Its first version (``nnUNet_n_proc_DA=0``) stopped nnUNetv2_plan_and_preprocess: nnU-Net's planner passes that
value to torch.set_num_threads, which refuses 0.
"""
import json
import re
import shutil
from pathlib import Path

from e2e_support import DATASET_ID

README = Path(__file__).resolve().parents[1] / "README.md"
ADVICE = "CPU training is slow or oversubscribed"


def small_machine_environment() -> dict:
    """The variables the README's troubleshooting item exports, as written there."""
    troubleshooting = README.read_text().split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    items = [item for item in troubleshooting.split("\n- ") if item.lstrip("- ").startswith(ADVICE)]
    assert len(items) == 1, f"README.md's troubleshooting has no single item starting {ADVICE!r}"
    exports = re.findall(r"`export ([^`]+)`", items[0])
    assert len(exports) == 1, items[0]
    return dict(assignment.split("=", 1) for assignment in exports[0].split())


def test_small_machine_advice_plans_and_preprocesses(nnunet_workspace):
    advice = small_machine_environment()
    assert set(advice) == {"nnUNet_n_proc_DA", "nnUNet_def_n_proc"}
    workspace = nnunet_workspace
    preprocessed = workspace.preprocessed / workspace.dataset_folder(DATASET_ID).name
    plans_name = "ReadmeAdvicePlans"  # beside the session's nnUNetPlans, removed again
    try:
        workspace.run("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1",
                      "-overwrite_plans_name", plans_name, env=workspace.env(**advice))
        plans = json.loads((preprocessed / f"{plans_name}.json").read_text())
        data_folder = preprocessed / plans["configurations"]["2d"]["data_identifier"]
        cases = json.loads((workspace.dataset_folder(DATASET_ID) / "dataset.json").read_text())["numTraining"]
        assert len(list(data_folder.glob("*.pkl"))) == cases
    finally:
        (preprocessed / f"{plans_name}.json").unlink(missing_ok=True)
        shutil.rmtree(preprocessed / f"{plans_name}_2d", ignore_errors=True)
