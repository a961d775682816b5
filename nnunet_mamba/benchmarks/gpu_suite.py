"""The prepared GPU check: every GPU question of the project in one run of at most seven minutes.

    bash scripts/gpu_check.sh [--out DIR] [--networks ...] [--budget STEP=SECONDS ...]   # on a GPU machine
    bash scripts/gpu_check.sh --dry-run --out DIR                                      # CPU, tiny shapes

Each step runs in a subprocess of its own with a time budget in seconds (:data:`STEP_BUDGETS_S`); a step that
overruns is killed and reported as ``cut``, with what it had saved so far, and the run goes on. The whole run
also stops starting steps past :data:`TOTAL_BUDGET_S` (a step then gets what is left). mamba-ssm's selective-scan
extension is built from its source release in the background while the steps that do not need it run.
Results: ``gpu_check.json`` and ``gpu_check.md`` (with the issue's targets, met or missed) and the steps'
output in ``gpu_check.log``, under ``--out`` (default ``$OUT``).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]

#: seconds per step on an H100 from a bare start; the build overlaps the first four steps (measured times of a
#: first run replace these estimates in docs/benchmarks.md). The sum of the sequential steps stays under
#: TOTAL_BUDGET_S, which leaves the machine's start and the wheel install inside seven minutes.
STEP_BUDGETS_S = {
    "environment": 20,
    "build_mamba_ssm": 210,  # in the background, from the start
    "plan": 75,
    "test_scan_triton": 45,
    "planning_gpu_check": 60,
    "amp_stability": 50,
    "test_cuda": 40,
    "scan_timing": 60,
    "network_2d": 45,
    "network_3d": 50,
}
STEPS = tuple(STEP_BUDGETS_S)
#: steps that use the mamba-ssm kernel, so wait for its build
NEEDS_BUILD = ("test_cuda", "scan_timing", "network_2d", "network_3d")
TOTAL_BUDGET_S = 370
#: a dry run's budget per step and in all: the GPU's budgets do not fit a busy CPU machine's times, and a dry
#: run checks that every step works, not its speed (the cut itself is tested with a budget given on purpose)
DRY_RUN_BUDGET_S, DRY_RUN_TOTAL_BUDGET_S = 300, 1500

SCAN_TARGET_RATIO = 1.5  # Triton forward+backward time at most this times mamba-ssm's, at every L
NETWORK_TARGET_RATIO = 1.25  # VM-UNet 2D train step with Triton at most this times with mamba-ssm
PLANNER_LOW_FRACTION = 0.8  # the planned peak is within 20% below the budget, never above


def settings_for(dry_run: bool, networks: Optional[List[str]] = None) -> Dict:
    """What each step runs: the issue's shapes on a GPU; tiny ones on CPU for ``dry_run``."""
    if dry_run:
        return {
            # the registry's small instances ("small"): published widths take seconds a step on a shared CPU
            "dry_run": True, "device": "cpu", "networks": networks or ["vm_unet"], "budgets_gb": [8], "small": True,
            "scan_backends": ["torch"], "scan": {"lengths": [64], "dim": 8, "groups": 4, "repeats": 2},
            "network_2d": {"patch": [32, 32], "batch": 1, "warmup": 1, "steps": 1},
            "network_3d": {"patch": [16, 16, 16], "batch": 1, "warmup": 1, "steps": 1},
            "amp": {"patch": [32, 32], "batch": 1, "steps": 2, "backend": "torch"},
            "pytest": {"test_scan_triton": ["-k", "status_by_device or launch_config"], "test_cuda": []},
        }
    from nnunet_mamba.architectures import registered_networks

    return {
        "dry_run": False, "device": "cuda", "networks": networks or list(registered_networks()), "small": False,
        "budgets_gb": [8, 24], "scan_backends": ["triton", "cuda", "torch"],
        "scan": {"lengths": [1024, 4096, 16384], "dim": 192, "groups": 4, "repeats": 5},
        "network_2d": {"patch": [256, 256], "batch": 16, "warmup": 2, "steps": 5},
        "network_3d": {"budget_gb": 24, "warmup": 1, "steps": 2},
        "amp": {"patch": [128, 128], "batch": 4, "steps": 100, "backend": "triton"},
        "pytest": {"test_scan_triton": [], "test_cuda": []},
    }


# ---------------------------------------------------------------------------------------------- the steps
# Each runs in its own process (``--run-step NAME``), writes its result to a JSON file as it goes (so a step
# that is cut keeps what it had) and returns normally; an exception fails the step.

def _save(path: Path, result: Dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1, default=str))
    partial.replace(path)


def step_environment(settings: Dict, result_path: Path) -> None:
    import importlib.metadata as metadata

    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torch_cuda": torch.version.cuda or "none"}
    for package in ("triton", "numpy", "nnunetv2", "dynamic_network_architectures", "mambapy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    sdists = _mamba_ssm_sdists()
    versions["mamba_ssm_source"] = Path(sdists[0]).name if sdists else "none in .whl/"
    device = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        device.update(name=properties.name, capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                      memory_gib=round(properties.total_memory / 2**30, 1),
                      multiprocessors=properties.multi_processor_count)
        try:
            device["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                text=True, timeout=10).stdout.strip() or "unknown"
        except (OSError, subprocess.TimeoutExpired) as error:
            device["driver"] = f"unknown ({error})"
    else:
        device.update(name="cpu (no CUDA device)", driver="none")
    _save(result_path, {"versions": versions, "device": device})


def _mamba_ssm_sdists() -> List[str]:
    return sorted(glob.glob(str(ROOT / ".whl" / "mamba_ssm-*.tar.gz")))


def _mamba_ssm_sources(source_dir: Path) -> List[Path]:
    """selective_scan_cuda's sources, as mamba-ssm's setup.py lists them (its .cpp binding and every .cu)."""
    folder = source_dir / "csrc" / "selective_scan"
    return [folder / "selective_scan.cpp"] + sorted(folder.glob("selective_scan_*.cu"))


def _cuda_home() -> str:
    """The CUDA toolkit folder holding nvcc and cuda_runtime.h. torch guesses it from ``which nvcc``, which can
    be a wrapper script in /usr/local/bin whose parent has no CUDA headers."""
    import shutil

    nvcc = shutil.which("nvcc")
    candidates = ([str(Path(os.path.realpath(nvcc)).parent.parent)] if nvcc else []) + ["/usr/local/cuda"]
    for folder in candidates:
        if (Path(folder) / "include" / "cuda_runtime.h").is_file():
            return folder
    raise RuntimeError(f"no CUDA toolkit with include/cuda_runtime.h in {candidates}: set CUDA_HOME")


def step_build_mamba_ssm(settings: Dict, result_path: Path) -> None:
    """Builds only the selective_scan_cuda extension of mamba-ssm's sdist, for this GPU's architecture alone.

    Its setup.py compiles for six or more architectures (and first tries to download a wheel), minutes too many;
    torch's JIT builder with TORCH_CUDA_ARCH_LIST compiles the same sources for one. The Python package is
    used from the unpacked sdist: the steps after this one get both folders on their PYTHONPATH."""
    import tarfile

    import torch

    sdists = _mamba_ssm_sdists()
    if not sdists:
        raise RuntimeError("no mamba_ssm-*.tar.gz in .whl/: run scripts/fetch_gpu_wheels.sh where pip works")
    if not torch.cuda.is_available():
        raise RuntimeError("building mamba-ssm's kernel needs a CUDA device (its architecture picks the target)")
    work = Path(settings["work_dir"])
    with tarfile.open(sdists[0]) as archive:
        archive.extractall(work / "mamba_ssm_src", filter="data")
    source_dir = next((work / "mamba_ssm_src").iterdir())
    capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
    result = {"sdist": Path(sdists[0]).name, "arch": capability, "pythonpath": []}
    _save(result_path, result)
    os.environ["TORCH_CUDA_ARCH_LIST"] = capability
    os.environ.setdefault("CUDA_HOME", _cuda_home())
    result["cuda_home"] = os.environ["CUDA_HOME"]
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    build_dir = work / "mamba_ssm_build"
    build_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils.cpp_extension import load

    started = time.perf_counter()
    # mamba-ssm's own nvcc flags (setup.py), less its list of architectures
    load(name="selective_scan_cuda", sources=[str(s) for s in _mamba_ssm_sources(source_dir)],
         extra_include_paths=[str(source_dir / "csrc" / "selective_scan")], extra_cflags=["-O3"],
         extra_cuda_cflags=["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                            "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                            "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"],
         build_directory=str(build_dir), verbose=True)
    result["build_s"] = round(time.perf_counter() - started, 1)
    result["pythonpath"] = [str(build_dir), str(source_dir)]
    sys.path[:0] = result["pythonpath"]
    from nnunet_mamba.ops import cuda_kernel_status

    ok, reason = cuda_kernel_status()
    result["kernel"] = "imports" if ok else reason
    import mamba_ssm

    result["mamba_ssm_version"] = mamba_ssm.__version__
    _save(result_path, result)
    if not ok:
        raise RuntimeError(f"built, but {reason}")


def step_plan(settings: Dict, result_path: Path) -> None:
    """Plans the typical CT dataset for every network and budget, one process per network side by side."""
    processes = {name: subprocess.Popen(
        [sys.executable, "-m", "nnunet_mamba.benchmarks.gpu_suite", "--plan-network", name, "--plan-budgets",
         *map(str, settings["budgets_gb"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_child_env([], settings["dry_run"])) for name in settings["networks"]}
    plans, errors = {}, {}
    for name, process in processes.items():
        stdout, stderr = process.communicate()
        if process.returncode:
            errors[name] = (stderr.strip().splitlines() or ["failed"])[-1]
        else:
            plans.update(json.loads(stdout.strip().splitlines()[-1]))
        _save(result_path, {"plans": plans, "errors": errors})
    if errors:
        raise RuntimeError(f"planning failed for {', '.join(errors)}: {errors}")


def _plan_network(name: str, budgets: List[float]) -> None:
    from nnunet_mamba.benchmarks.planner import typical_ct_workspace

    with typical_ct_workspace():
        from nnunet_mamba.benchmarks.planner_gpu import plan_all

        print(json.dumps(plan_all([name], budgets)))


def _load_plans(settings: Dict) -> Dict:
    path = Path(settings["steps_dir"]) / "plan.json"
    if not path.is_file():
        raise RuntimeError("no plans: the step 'plan' did not run or saved nothing")
    return json.loads(path.read_text())["plans"]


def step_planning_gpu_check(settings: Dict, result_path: Path) -> None:
    """``benchmark planner-gpu`` for every network and budget, 2d and 3d_fullres; without CUDA the plans alone."""
    import torch

    from nnunet_mamba.benchmarks.planner_gpu import measure, plan_key

    plans, rows = _load_plans(settings), []
    for name in settings["networks"]:
        for budget in settings["budgets_gb"]:
            if plan_key(name, budget) not in plans:
                continue
            if torch.cuda.is_available():
                rows += measure([name], [budget], ["2d", "3d_fullres"], plans)
            else:
                for configuration in ("2d", "3d_fullres"):
                    plan = plans[plan_key(name, budget)]["configurations"].get(configuration)
                    if plan is not None:
                        rows.append({"network": name, "budget_gb": budget, "configuration": configuration,
                                     "patch_size": plan["patch_size"], "batch_size": plan["batch_size"],
                                     "estimate_gib": plan["nnunet_mamba"]["estimated_training_step_gib"],
                                     "not_measured": "no CUDA device"})
            _save(result_path, {"rows": rows})


def step_amp_stability(settings: Dict, result_path: Path) -> None:
    """Each network trains ``steps`` steps on random data with nnU-Net's loss under float16 autocast with a
    GradScaler and under bfloat16; the first step whose loss is not finite, if any."""
    import torch

    from nnunet_mamba.architectures import build_network, get_network, synthetic_configuration
    from nnunet_mamba.benchmarks.network import error_summary
    from nnunet_mamba.benchmarks.planner_gpu import train_steps
    from nnunet_mamba.ops import scan_backend_override

    amp = settings["amp"]
    device = torch.device(settings["device"])
    configuration = synthetic_configuration(amp["patch"])
    plan = {"patch_size": list(configuration.patch_size), "batch_size": amp["batch"]}
    rows = []
    for name in settings["networks"]:
        deep_supervision = get_network(name).network_class.supports_deep_supervision
        for dtype in ("float16", "bfloat16"):
            torch.manual_seed(0)
            started = time.perf_counter()
            row = {"network": name, "dtype": dtype, "backend": amp["backend"]}
            try:
                with scan_backend_override(amp["backend"]):
                    built = get_network(name).small_instance if settings["small"] else name
                    network = build_network(built, configuration, 1, 3, deep_supervision).to(device)
                    losses = train_steps(network, plan, 1, 3, deep_supervision, device, steps=amp["steps"],
                                          amp_dtype=getattr(torch, dtype))
                del network
            except Exception as error:  # the next network still runs; the row says what failed
                row["error"] = error_summary(error)
            else:
                row.update(steps=len(losses), first_loss=losses[0], last_loss=losses[-1],
                           first_non_finite_step=next((i for i, v in enumerate(losses) if not math.isfinite(v)), None))
            row["seconds"] = round(time.perf_counter() - started, 2)
            rows.append(row)
            _save(result_path, {"patch": plan["patch_size"], "batch": amp["batch"], "rows": rows})


def _scan_backends(settings: Dict) -> tuple:
    """The scan backends this machine can run, and why each other one is left out."""
    from nnunet_mamba.benchmarks.scan import _available

    usable, left_out = [], {}
    for backend in settings["scan_backends"]:
        reason = _available(backend, settings["device"])
        if reason is None:
            usable.append(backend)
        else:
            left_out[backend] = reason
    for backend in ("triton", "cuda"):
        if backend not in settings["scan_backends"]:
            left_out.setdefault(backend, "not run in a dry run (CPU)" if settings["dry_run"] else "not asked for")
    return usable, left_out


def step_scan_timing(settings: Dict, result_path: Path) -> None:
    from nnunet_mamba.benchmarks.scan import run_scan_benchmark

    usable, left_out = _scan_backends(settings)
    scan = settings["scan"]
    rows = []
    for length in scan["lengths"]:  # one length at a time, so that a cut step keeps the lengths done
        rows += run_scan_benchmark(
            lengths=(length,), dim=scan["dim"], groups=scan["groups"], repeats=scan["repeats"],
            device=settings["device"], include_mambapy=False, include_numba=False,
            include_triton="triton" in usable, include_cuda="cuda" in usable, check_agreement=False)
        _save(result_path, {"rows": rows, "left_out": left_out})


def _network_backends(settings: Dict) -> tuple:
    usable, left_out = _scan_backends(settings)
    return [b for b in usable if b != "torch"] or ["torch"], left_out


def step_network_2d(settings: Dict, result_path: Path) -> None:
    from nnunet_mamba.benchmarks.network import run_network_benchmark

    backends, left_out = _network_backends(settings)
    shape = settings["network_2d"]
    rows = run_network_benchmark(settings["networks"], tuple(shape["patch"]), batch=shape["batch"],
                                 device=settings["device"], backends=backends, steps=shape["steps"],
                                 warmup=shape["warmup"], compare_nnunet=True, compare_resenc=True,
                                 small=settings["small"])
    _save(result_path, {"rows": rows, "left_out": left_out})


def step_network_3d(settings: Dict, result_path: Path) -> None:
    """Per network, at its own planned 3d_fullres patch and batch for the 24 GB budget, next to nnU-Net's UNet
    and ResEnc-M from the same plan (in a dry run a tiny 3D patch instead)."""
    import torch

    from nnunet_mamba.architectures import synthetic_configuration
    from nnunet_mamba.benchmarks.network import error_summary, run_network_benchmark
    from nnunet_mamba.benchmarks.planner_gpu import configuration_from_plan, plan_key

    backends, left_out = _network_backends(settings)
    shape = settings["network_3d"]
    plans = None if settings["dry_run"] else _load_plans(settings)
    rows = []
    for name in settings["networks"]:
        try:
            if plans is None:
                configuration, batch = synthetic_configuration(shape["patch"]), shape["batch"]
            else:
                plan = plans[plan_key(name, shape["budget_gb"])]["configurations"]["3d_fullres"]
                configuration, batch = configuration_from_plan(plan), plan["batch_size"]
            rows += run_network_benchmark(name, batch=batch, device=settings["device"], backends=backends,
                                          steps=shape["steps"], warmup=shape["warmup"], compare_nnunet=True,
                                          compare_resenc=True, configuration=configuration,
                                          small=settings["small"])
        except Exception as error:  # the next network still runs; the row says what failed
            rows.append({"network": name, "backend": ",".join(backends), "patch": [], "batch": 0,
                         "error": error_summary(error)})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _save(result_path, {"rows": rows, "left_out": left_out})


STEP_FUNCTIONS = {name[len("step_"):]: function for name, function in globals().items() if name.startswith("step_")}
PYTEST_STEPS = {"test_scan_triton": "tests/test_scan_triton.py", "test_cuda": "tests/test_cuda.py"}


# ---------------------------------------------------------------------------------------------- the run

def _child_env(extra_paths: List[str], dry_run: bool = False) -> Dict[str, str]:
    env = dict(os.environ)
    if dry_run:
        # on a small, shared CPU machine OpenMP's spinning threads make torch ten times slower
        env.setdefault("OMP_NUM_THREADS", "1")
    paths = [str(ROOT)] + list(extra_paths) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _step_command(name: str, settings: Dict, result_path: Path) -> List[str]:
    if name in PYTEST_STEPS:
        return [sys.executable, "-m", "pytest", PYTEST_STEPS[name], "-q", "-rfEs", "-p", "no:cacheprovider",
                *settings["pytest"][name]]
    return [sys.executable, "-m", "nnunet_mamba.benchmarks.gpu_suite", "--run-step", name, "--settings",
            json.dumps(settings), "--result", str(result_path)]


class _Step:
    """One step's subprocess, its own process group (so a cut ends its children too) and its output file."""

    def __init__(self, name: str, settings: Dict, out: Path, extra_paths: List[str], timeout: float):
        self.name, self.timeout = name, timeout
        self.result_path = Path(settings["steps_dir"]) / f"{name}.json"
        self.output_path = Path(settings["steps_dir"]) / f"{name}.log"
        self.started = time.monotonic()
        with open(self.output_path, "w") as output:
            self.process = subprocess.Popen(_step_command(name, settings, self.result_path), cwd=ROOT,
                                            stdout=output, stderr=subprocess.STDOUT,
                                            env=_child_env(extra_paths, settings["dry_run"]),
                                            start_new_session=True)

    def wait(self, until: Optional[float] = None) -> Dict:
        """Waits until the step ends or its budget (or ``until``, a time.monotonic) is spent, then cuts it."""
        deadline = self.started + self.timeout
        if until is not None:
            deadline = min(deadline, until)
        cut = False
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            cut = True
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        seconds = time.monotonic() - self.started
        output = self.output_path.read_text(errors="replace")
        record = {"status": "cut" if cut else ("ok" if self.process.returncode == 0 else "failed"),
                  "seconds": round(seconds, 1), "budget_s": round(self.timeout, 1)}
        if cut:
            record["note"] = f"cut after {seconds:.0f} s (budget {self.timeout:.0f} s)"
        elif self.process.returncode:
            lines = [line for line in output.strip().splitlines() if line.strip()]
            record["note"] = lines[-1] if lines else f"exit status {self.process.returncode}"
        if self.name in PYTEST_STEPS:
            record["result"] = _pytest_summary(output)
            if record["status"] == "failed" and record["result"].get("failed") and not record["result"].get("errors"):
                record["note"] = f"{record['result']['failed']} test(s) failed"
        elif self.result_path.is_file():
            record["result"] = json.loads(self.result_path.read_text())
        return record


def _pytest_summary(output: str) -> Dict:
    """Counts of pytest's last summary line ("3 passed, 1 skipped in 2.0s") and its FAILED/ERROR lines."""
    import re

    summary: Dict = {}
    lines = output.strip().splitlines()
    for line in reversed(lines):
        counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line)
        if counts and " in " in line:
            summary = {("errors" if word.startswith("error") else word): int(n) for n, word in counts}
            break
    summary["failures"] = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary["skips"] = [line for line in lines if line.startswith("SKIPPED")][:20]
    return summary


def run(settings: Dict, out: Path, budgets: Dict[str, float], steps: List[str], install: str,
        total_budget: float) -> Dict:
    started = time.monotonic()
    deadline = started + total_budget
    steps_dir = Path(settings["steps_dir"])
    if steps_dir.exists():
        shutil.rmtree(steps_dir)  # a result left by an earlier run must not pass for this one's
    steps_dir.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    records: Dict[str, Dict] = {}
    extra_paths: List[str] = []

    build = None
    if "build_mamba_ssm" in steps:
        if settings["dry_run"]:
            records["build_mamba_ssm"] = {"status": "skipped", "note": "dry run: nothing is built",
                                          "budget_s": budgets["build_mamba_ssm"]}
        else:
            build = _Step("build_mamba_ssm", settings, out, [], budgets["build_mamba_ssm"])

    def finish_build() -> None:
        nonlocal build
        if build is None:
            return
        record = build.wait()
        records["build_mamba_ssm"] = record
        if record["status"] == "ok":
            extra_paths.extend(record["result"]["pythonpath"])
        build = None
        print(f"[gpu_check] build_mamba_ssm: {record['status']} in {record['seconds']} s {record.get('note', '')}",
              flush=True)

    for name in steps:
        if name == "build_mamba_ssm":
            continue
        if name in NEEDS_BUILD:
            finish_build()
        left = deadline - time.monotonic()
        if left < 1:
            records[name] = {"status": "cut", "seconds": 0, "budget_s": budgets[name],
                             "note": f"not started: the run's total budget ({total_budget:.0f} s) was spent"}
            continue
        step = _Step(name, settings, out, extra_paths, min(budgets[name], left))
        records[name] = step.wait()
        records[name]["budget_s"] = budgets[name]
        print(f"[gpu_check] {name}: {records[name]['status']} in {records[name]['seconds']} s "
              f"{records[name].get('note', '')}", flush=True)
    finish_build()

    report = {"dry_run": settings["dry_run"], "install": install, "settings": settings,
              "total_budget_s": total_budget, "steps": {name: records.get(name, {"status": "not asked for"})
                                                        for name in STEPS}}
    environment = records.get("environment", {}).get("result", {})
    report["versions"] = dict(environment.get("versions", {}))
    built = records.get("build_mamba_ssm", {})
    report["versions"]["mamba_ssm"] = (built.get("result", {}).get("mamba_ssm_version") if built.get("status") == "ok"
                                       else f"not built ({built.get('note', built.get('status'))})")
    report["device"] = environment.get("device", {})
    report["targets"] = targets(report["steps"])
    report["wall_s"] = round(time.monotonic() - started, 1)
    _write_log(out, steps_dir, steps)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    return report


def _write_log(out: Path, steps_dir: Path, steps: List[str]) -> None:
    """The steps' output in one file: what comes back from a device machine is a few files (the steps' own
    files stay in the work folder)."""
    with open(out / "gpu_check.log", "w") as log:
        for name in STEPS:
            path = steps_dir / f"{name}.log"
            if name in steps and path.is_file():
                log.write(f"\n===== {name} =====\n{path.read_text(errors='replace')}")


# ---------------------------------------------------------------------------------------------- targets

def _rows(steps: Dict, name: str) -> List[Dict]:
    return steps.get(name, {}).get("result", {}).get("rows", [])


def targets(steps: Dict) -> List[Dict]:
    """The issue's targets, each met, missed or not measured (with what was measured)."""
    found = []

    scan_rows = _rows(steps, "scan_timing")
    for length in sorted({row["L"] for row in scan_rows}):
        at = {row["backend"]: row for row in scan_rows if row["L"] == length and "error" not in row}
        name = f"scan L={length}: Triton fwd+bwd <= {SCAN_TARGET_RATIO}x mamba-ssm, peak memory <= mamba-ssm's"
        if "triton" in at and "cuda" in at:
            ratio = at["triton"]["ms_min"] / at["cuda"]["ms_min"]
            memory = at["triton"]["peak_mib"] <= at["cuda"]["peak_mib"]
            found.append({"target": name, "status": "met" if ratio <= SCAN_TARGET_RATIO and memory else "missed",
                          "measured": f"{ratio:.2f}x time, {at['triton']['peak_mib']:.0f} vs "
                                      f"{at['cuda']['peak_mib']:.0f} MiB"})
        else:
            found.append({"target": name, "status": "not measured", "measured": f"backends timed: {sorted(at)}"})
    if not scan_rows:
        found.append({"target": f"scan: Triton fwd+bwd <= {SCAN_TARGET_RATIO}x mamba-ssm at every L",
                      "status": "not measured", "measured": steps.get("scan_timing", {}).get("status", "not run")})

    net = {row["backend"]: row for row in _rows(steps, "network_2d")
           if row["network"] == "vm_unet" and "error" not in row}
    name = f"VM-UNet 2D train step: Triton <= {NETWORK_TARGET_RATIO}x mamba-ssm"
    if "triton" in net and "cuda" in net:
        ratio = net["triton"]["step_ms"] / net["cuda"]["step_ms"]
        found.append({"target": name, "status": "met" if ratio <= NETWORK_TARGET_RATIO else "missed",
                      "measured": f"{ratio:.2f}x ({net['triton']['step_ms']:.1f} vs {net['cuda']['step_ms']:.1f} ms, "
                                  f"{'x'.join(map(str, net['triton']['patch']))} batch {net['triton']['batch']})"})
    else:
        found.append({"target": name, "status": "not measured", "measured": f"backends timed: {sorted(net)}"})

    for step in ("network_2d", "network_3d"):
        for row in _rows(steps, step):
            if row["backend"] == "-" or "train_ratio" not in row:
                continue
            found.append({"target": f"{step}: {row['network']} ({row['backend']}) train step and memory vs nnU-Net",
                          "status": "shown",
                          "measured": f"time {row['train_ratio']:.2f}x UNet, "
                                      f"{row.get('train_ratio_resenc', float('nan')):.2f}x ResEnc-M; memory "
                                      f"{row['memory_ratio']:.2f}x UNet, "
                                      f"{row.get('memory_ratio_resenc', float('nan')):.2f}x ResEnc-M"})

    planned = _rows(steps, "planning_gpu_check")
    measured = [row for row in planned if "not_measured" not in row]
    name = "no planned configuration above its budget (out of memory or peak + context > budget)"
    if measured:
        above = [row for row in measured if row.get("out_of_memory") or row["fraction_of_budget"] > 1.0]
        found.append({"target": name, "status": "missed" if above else "met",
                      "measured": "; ".join(f"{r['network']} {r['budget_gb']:g} GB {r['configuration']}" for r in above)
                      or f"{len(measured)} configurations within"})
        low = [row for row in measured
               if not row.get("out_of_memory") and row["fraction_of_budget"] < PLANNER_LOW_FRACTION]
        found.append({"target": f"planned peak within {1 - PLANNER_LOW_FRACTION:.0%} below the budget",
                      "status": "missed" if low else "met",
                      "measured": "; ".join(f"{r['network']} {r['budget_gb']:g} GB {r['configuration']} "
                                            f"{r['fraction_of_budget']:.0%}" for r in low)
                      or f"{len(measured)} configurations at 80-100%"})
    else:
        found.append({"target": name, "status": "not measured", "measured": "no CUDA device" if planned else
                      steps.get("planning_gpu_check", {}).get("status", "not run")})

    amp = _rows(steps, "amp_stability")
    name = "no NaN: every network trains under fp16 + GradScaler and bf16"
    if amp:
        bad = [row for row in amp if "error" in row or row["first_non_finite_step"] is not None]
        found.append({"target": name, "status": "missed" if bad else "met",
                      "measured": "; ".join(f"{r['network']} {r['dtype']}: " + (r["error"] if "error" in r else
                                                                               f"step {r['first_non_finite_step']}")
                                            for r in bad) or f"{len(amp)} runs of {amp[0]['steps']} steps finite"})
    else:
        found.append({"target": name, "status": "not measured",
                      "measured": steps.get("amp_stability", {}).get("status", "not run")})
    return found


# ---------------------------------------------------------------------------------------------- markdown

def markdown(report: Dict) -> str:
    from nnunet_mamba.benchmarks.network import format_network_table
    from nnunet_mamba.benchmarks.planner_gpu import format_rows
    from nnunet_mamba.benchmarks.scan import format_table

    steps = report["steps"]
    device = report["device"]
    versions = report["versions"]
    lines = [f"# GPU check{' (dry run, CPU)' if report['dry_run'] else ''}", "",
             f"Device: {device.get('name', 'unknown')} (capability {device.get('capability', '-')}, "
             f"{device.get('memory_gib', '-')} GiB), driver {device.get('driver', 'unknown')}; "
             f"{device.get('cpu_count', '?')} CPUs.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
             f"Wheels: {report['install']}. Total wall time: {report['wall_s']:.0f} s "
             f"(steps stop starting after {report['total_budget_s']:.0f} s).", "",
             "| step | status | seconds | budget s | note |", "|---|---|---:|---:|---|"]
    for name, record in steps.items():
        lines.append(f"| {name} | {record.get('status')} | {record.get('seconds', '')} | {record.get('budget_s', '')} "
                     f"| {str(record.get('note', '')).replace('|', '/')[:300]} |")
    lines += ["", "## Targets", "", "| target | status | measured |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['status']} | {t['measured']} |" for t in report["targets"]]
    for name in ("test_scan_triton", "test_cuda"):
        result = steps[name].get("result")
        if result:
            counts = ", ".join(f"{v} {k}" for k, v in result.items() if isinstance(v, int))
            lines += ["", f"## {name}", "", counts or "no summary line"] + [f"- {f}" for f in result["failures"]]
    if _rows(steps, "scan_timing"):
        left_out = steps["scan_timing"]["result"].get("left_out", {})
        lines += ["", "## Scan timing", "", format_table(_rows(steps, "scan_timing"))]
        lines += [f"- {backend} left out: {reason}" for backend, reason in left_out.items()]
    for name, title in (("network_2d", "Networks, 2D"), ("network_3d", "Networks, 3D (24 GB plans)")):
        if _rows(steps, name):
            lines += ["", f"## {title}", "", format_network_table(_rows(steps, name))]
            lines += [f"- {b} left out: {r}" for b, r in steps[name]["result"].get("left_out", {}).items()]
    planned = _rows(steps, "planning_gpu_check")
    if planned:
        lines += ["", "## benchmark planner-gpu", ""]
        measured = [row for row in planned if "not_measured" not in row]
        lines.append(format_rows(measured) if measured else
                     "Plans only (no CUDA device): " + "; ".join(
                         f"{r['network']} {r['budget_gb']:g} GB {r['configuration']} {r['patch_size']} b "
                         f"{r['batch_size']} ({r['estimate_gib']:.2f} GiB)" for r in planned))
    amp = _rows(steps, "amp_stability")
    if amp:
        lines += ["", "## AMP stability", "", "| network | dtype | backend | steps | first non-finite step | "
                  "first loss | last loss |", "|---|---|---|---:|---|---:|---:|"]
        lines += [f"| {r['network']} | {r['dtype']} | {r['backend']} | | failed: {r['error']} | | |" if "error" in r
                  else f"| {r['network']} | {r['dtype']} | {r['backend']} | {r['steps']} | "
                       f"{'none' if r['first_non_finite_step'] is None else r['first_non_finite_step']} | "
                       f"{r['first_loss']:.4f} | {r['last_loss']:.4f} |" for r in amp]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- command line

def _parse_budgets(pairs: List[str], dry_run: bool) -> Dict[str, float]:
    budgets = {name: DRY_RUN_BUDGET_S if dry_run else seconds for name, seconds in STEP_BUDGETS_S.items()}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in budgets:
            raise SystemExit(f"--budget {pair!r}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise SystemExit(f"--budget {pair!r}: SECONDS must be a number") from None
    return budgets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"),
                        help="folder for gpu_check.json, gpu_check.md and gpu_check.log (default: $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, every step; nothing is built")
    parser.add_argument("--networks", nargs="+", default=None,
                        help="registry names (default: every registered network; vm_unet in a dry run)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS, help="run only these steps")
    parser.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                        help=f"a step's time budget (repeatable); defaults: {STEP_BUDGETS_S}, in a dry run "
                             f"{DRY_RUN_BUDGET_S} each")
    parser.add_argument("--total-budget", type=float, default=None,
                        help=f"no step starts, and a running one is cut, past this many seconds (default "
                             f"{TOTAL_BUDGET_S}, in a dry run {DRY_RUN_TOTAL_BUDGET_S})")
    parser.add_argument("--work-dir", default=None,
                        help="build folder and the steps' own files (default: /tmp/nnunet_mamba_gpu_check)")
    parser.add_argument("--install-status", default="not installed by scripts/gpu_check.sh",
                        help="what scripts/gpu_check.sh did with the wheels (for the report)")
    # internal: one step in its own process, or the plans of one network
    parser.add_argument("--run-step", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--plan-network", help=argparse.SUPPRESS)
    parser.add_argument("--plan-budgets", type=float, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_step:
        STEP_FUNCTIONS[args.run_step](json.loads(args.settings), Path(args.result))
        return 0
    if args.plan_network:
        _plan_network(args.plan_network, args.plan_budgets)
        return 0
    if not args.out:
        parser.error("no output folder: pass --out DIR (or set OUT)")
    budgets = _parse_budgets(args.budget, args.dry_run)
    total_budget = args.total_budget or (DRY_RUN_TOTAL_BUDGET_S if args.dry_run else TOTAL_BUDGET_S)
    out = Path(args.out).resolve()
    settings = settings_for(args.dry_run, args.networks)
    settings["out"] = str(out)
    work = Path(args.work_dir).resolve() if args.work_dir else Path("/tmp/nnunet_mamba_gpu_check")
    settings["work_dir"], settings["steps_dir"] = str(work), str(work / "steps")
    work.mkdir(parents=True, exist_ok=True)
    needs_plans = ("planning_gpu_check",) + (() if args.dry_run else ("network_3d",))
    steps = [name for name in STEPS if name in args.steps or (name == "plan" and set(needs_plans) & set(args.steps))]
    report = run(settings, out, budgets, steps, args.install_status, total_budget)
    print((out / "gpu_check.md").read_text())
    print(f"[gpu_check] total wall time {report['wall_s']:.0f} s; report: {out / 'gpu_check.json'}, "
          f"{out / 'gpu_check.md'}")
    return 0 if all(r.get("status") in ("ok", "skipped", "not asked for") for r in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
