"""The prepared GPU check (scripts/gpu_check.sh, nnunet_mamba.benchmarks.gpu_suite): its CPU dry run, the cut of
a step over its budget, and the targets it computes from measured rows."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_mamba.benchmarks import gpu_suite

ROOT = Path(__file__).resolve().parents[1]


def _suite(out, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nnunet_mamba.benchmarks.gpu_suite", "--dry-run", "--out",
                           str(out / "out"), "--work-dir", str(out / "work"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable)
    completed = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out), "--work-dir",
                                str(out / "work")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return completed, out


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_both_reports(dry_run):
    completed, out = dry_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    # what comes back from a device machine is at most 8 files
    assert sorted(p.name for p in out.iterdir() if p.name != "work") == ["gpu_check.json", "gpu_check.log",
                                                                        "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["steps"]) == list(gpu_suite.STEPS)
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    assert statuses == {name: "skipped" if name == "build_mamba_ssm" else "ok" for name in gpu_suite.STEPS}
    assert report["steps"]["build_mamba_ssm"]["note"] == "dry run: nothing is built"
    for name, step in report["steps"].items():
        assert step["budget_s"] == gpu_suite.DRY_RUN_BUDGET_S
    for package in ("python", "torch", "triton", "mamba_ssm", "nnunetv2"):
        assert report["versions"][package], package
    assert report["versions"]["mamba_ssm"].startswith("not built")
    assert report["device"]["driver"] == "none" and report["wall_s"] > 0

    steps = report["steps"]
    assert steps["test_cuda"]["result"]["failures"] == [] and steps["test_cuda"]["result"]["skipped"] > 0
    assert steps["test_scan_triton"]["result"]["passed"] == 2
    assert [(r["backend"], r["L"]) for r in steps["scan_timing"]["result"]["rows"]] == [("torch", 64)]
    assert set(steps["scan_timing"]["result"]["left_out"]) == {"triton", "cuda"}
    for name in ("network_2d", "network_3d"):
        rows = steps[name]["result"]["rows"]
        assert [r["network"] for r in rows] == ["nnU-Net UNet", "nnU-Net ResEnc-M", "vm_unet"]
        assert rows[2]["train_ratio"] == pytest.approx(rows[2]["step_ms"] / rows[0]["step_ms"])
        assert rows[2]["train_ratio_resenc"] == pytest.approx(rows[2]["step_ms"] / rows[1]["step_ms"])
    assert len(steps["network_3d"]["result"]["rows"][0]["patch"]) == 3
    planned = steps["planning_gpu_check"]["result"]["rows"]
    assert [(r["configuration"], r["not_measured"]) for r in planned] == [("2d", "no CUDA device"),
                                                                         ("3d_fullres", "no CUDA device")]
    amp = steps["amp_stability"]["result"]["rows"]
    assert [(r["dtype"], r["steps"], r["first_non_finite_step"]) for r in amp] == [("float16", 2, None),
                                                                                  ("bfloat16", 2, None)]
    by_target = {t["target"]: t for t in report["targets"]}
    assert by_target["no NaN: every network trains under fp16 + GradScaler and bf16"]["status"] == "met"
    assert by_target["VM-UNet 2D train step: Triton <= 1.25x mamba-ssm"]["status"] == "not measured"

    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check (dry run, CPU)")
    for name in gpu_suite.STEPS:
        assert f"| {name} | {statuses[name]} |" in markdown
    for section in ("## Targets", "## Scan timing", "## Networks, 2D", "## Networks, 3D", "## AMP stability",
                    "## benchmark planner-gpu", "## test_cuda"):
        assert section in markdown, section
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name} =====" in log for name in gpu_suite.STEPS if name != "build_mamba_ssm")
    assert "total wall time" in completed.stdout


def test_a_step_over_its_budget_is_cut_and_the_next_steps_still_run(tmp_path):
    completed = _suite(tmp_path, "--steps", "amp_stability", "environment",
                       "--budget", "amp_stability=1")
    assert completed.returncode == 1  # a cut step fails the run, after the others
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    amp = report["steps"]["amp_stability"]
    assert amp["status"] == "cut" and amp["note"].startswith("cut after 1 s (budget 1 s)")
    assert 1 <= amp["seconds"] < 5 and amp["budget_s"] == 1
    assert report["steps"]["environment"]["status"] == "ok"
    assert report["versions"]["torch"]
    assert report["steps"]["scan_timing"] == {"status": "not asked for"}
    assert "| amp_stability | cut |" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_steps_past_the_total_budget_are_not_started(tmp_path):
    completed = _suite(tmp_path, "--steps", "environment", "test_cuda",
                       "--total-budget", "0.5")
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert completed.returncode == 1
    assert report["steps"]["environment"]["status"] == "cut"
    assert report["steps"]["test_cuda"]["note"] == "not started: the run's total budget (0 s) was spent"


def test_a_budget_flag_naming_no_step_is_a_one_line_error(tmp_path):
    completed = _suite(tmp_path, "--budget", "scan=10")
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines()[-1].startswith(
        "--budget 'scan=10': expected STEP=SECONDS with STEP one of environment, build_mamba_ssm")


def _scan_row(backend, length, ms, peak):
    return {"backend": backend, "L": length, "ms_min": ms, "peak_mib": peak}


def test_targets_are_met_or_missed_by_the_issues_thresholds():
    steps = {
        "scan_timing": {"result": {"rows": [_scan_row("triton", 1024, 1.4, 10), _scan_row("cuda", 1024, 1.0, 10),
                                            _scan_row("triton", 4096, 1.6, 10), _scan_row("cuda", 4096, 1.0, 20),
                                            _scan_row("triton", 16384, 1.0, 30), _scan_row("cuda", 16384, 1.0, 20)]}},
        "network_2d": {"result": {"rows": [
            {"network": "vm_unet", "backend": "triton", "step_ms": 130.0, "patch": [256, 256], "batch": 16},
            {"network": "vm_unet", "backend": "cuda", "step_ms": 100.0, "patch": [256, 256], "batch": 16}]}},
        "planning_gpu_check": {"result": {"rows": [
            {"network": "vm_unet", "budget_gb": 8, "configuration": "2d", "fraction_of_budget": 0.9},
            {"network": "vm_unet", "budget_gb": 24, "configuration": "3d_fullres", "fraction_of_budget": 0.7},
            {"network": "swin_umamba", "budget_gb": 8, "configuration": "3d_fullres", "out_of_memory": True}]}},
        "amp_stability": {"result": {"rows": [
            {"network": "vm_unet", "dtype": "float16", "steps": 100, "first_non_finite_step": None},
            {"network": "light_m_unet", "dtype": "bfloat16", "steps": 100, "first_non_finite_step": 37}]}},
    }
    found = [(t["status"], t["measured"]) for t in gpu_suite.targets(steps)]
    assert found == [
        ("met", "1.40x time, 10 vs 10 MiB"),
        ("missed", "1.60x time, 10 vs 20 MiB"),
        ("missed", "1.00x time, 30 vs 20 MiB"),  # fast enough, but more memory
        ("missed", "1.30x (130.0 vs 100.0 ms, 256x256 batch 16)"),
        ("missed", "swin_umamba 8 GB 3d_fullres"),
        ("missed", "vm_unet 24 GB 3d_fullres 70%"),
        ("missed", "light_m_unet bfloat16: step 37"),
    ]


def test_targets_without_measurements_say_not_measured():
    found = gpu_suite.targets({"scan_timing": {"status": "cut"}, "amp_stability": {"status": "failed"}})
    assert [(t["status"], t["measured"]) for t in found] == [
        ("not measured", "cut"), ("not measured", "backends timed: []"), ("not measured", "not run"),
        ("not measured", "failed")]


def test_pytest_summary_reads_counts_and_failures():
    output = ("..F.s\nFAILED tests/test_cuda.py::test_x - AssertionError: 1 != 2\n"
              "SKIPPED [2] tests/test_cuda.py:12: needs a CUDA device\n"
              "1 failed, 3 passed, 2 skipped in 4.20s\n")
    summary = gpu_suite._pytest_summary(output)
    assert summary == {"failed": 1, "passed": 3, "skipped": 2,
                       "failures": ["FAILED tests/test_cuda.py::test_x - AssertionError: 1 != 2"],
                       "skips": ["SKIPPED [2] tests/test_cuda.py:12: needs a CUDA device"]}


def test_gpu_check_rows_format_out_of_memory_and_fractions():
    from nnunet_mamba.benchmarks.planner_gpu import format_rows

    rows = [{"network": "vm_unet", "budget_gb": 8, "configuration": "2d", "patch_size": [512, 512],
             "batch_size": 4, "estimate_gib": 6.04, "allocated_gib": 5.5, "reserved_gib": 6.0,
             "fraction_of_budget": 0.81},
            {"network": "vm_unet", "budget_gb": 24, "configuration": "3d_fullres", "patch_size": [128, 256, 224],
             "batch_size": 2, "estimate_gib": 20.0, "out_of_memory": True}]
    lines = format_rows(rows).splitlines()
    assert lines[2] == "| vm_unet | 8 GB | 2d | [512, 512], b 4 | 6.04 GiB | 5.50 GiB | 6.00 GiB | 81% |"
    assert lines[3] == ("| vm_unet | 24 GB | 3d_fullres | [128, 256, 224], b 2 | 20.00 GiB | out of memory | | "
                        "above 100% |")


@pytest.fixture
def one_thread():
    """torch on one thread: OpenMP's spinning threads make small models ten times slower on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_network_benchmark_keeps_a_failed_model_as_an_error_row_and_times_the_rest(monkeypatch, one_thread):
    import torch

    from nnunet_mamba.benchmarks import network

    class OutOfMemory(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(network, "nnunet_resenc_m", lambda *args: OutOfMemory())
    rows = network.run_network_benchmark(["vm_unet"], (32, 32), batch=1, num_classes=3, device="cpu", amp=False,
                                         backends=["torch"], steps=1, warmup=1, compare_nnunet=True,
                                         compare_resenc=True,
                                         small=True)
    assert [r["network"] for r in rows] == [network.NNUNET_UNET, network.NNUNET_RESENC_M, "vm_unet"]
    assert rows[1]["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert rows[2]["train_ratio"] == pytest.approx(rows[2]["step_ms"] / rows[0]["step_ms"])
    assert "train_ratio_resenc" not in rows[2]
    assert "| nnU-Net ResEnc-M | - | 32x32 | 1 | | failed: OutOfMemoryError" in network.format_network_table(rows)


def test_resenc_m_has_the_residual_encoder_planners_stage_depths():
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from nnunet_mamba.architectures import synthetic_configuration
    from nnunet_mamba.benchmarks.network import nnunet_resenc_m

    configuration = synthetic_configuration((64, 64))
    model = nnunet_resenc_m(configuration, 1, 3)
    assert isinstance(model, ResidualEncoderUNet)
    stages = len(configuration.pool_op_kernel_sizes)
    assert [len(stage.blocks) for stage in model.encoder.stages] == [1, 3, 4, 6, 6, 6, 6][:stages]
    assert [tuple(s) for s in model.encoder.strides] == list(configuration.pool_op_kernel_sizes)


def test_scan_memory_of_every_backend_in_one_worker(capsys):
    from nnunet_mamba.benchmarks import scan

    scan._worker_main(json.dumps({"task": "memory_all", "backends": ["torch"], "inference": True, "L": 16,
                                  "dim": 8, "d_state": 4, "groups": 2, "batch": 1, "device": "cpu",
                                  "threads": 1}))
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result) == ["torch"] and sorted(result["torch"]) == ["fwd_bwd", "no_grad"]
    assert all(value >= 0 for value in result["torch"].values())
