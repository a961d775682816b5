"""``nnunet-mamba doctor``: what will run here, and whether nnU-Net finds our trainers."""
from __future__ import annotations

import os
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="report torch/CUDA, the selective-scan backend, mamba-ssm, nnU-Net paths and trainer lookup",
        description="Check the installation: torch and CUDA, which selective-scan backend runs on CPU and GPU "
                    "tensors, whether the compiled mamba-ssm kernel is present, the nnUNet_raw/_preprocessed/_results "
                    "folders, and whether nnU-Net's own trainer lookup finds every nnunet-mamba trainer. Exits 1 "
                    "when something needs fixing, with the fix.")
    parser.set_defaults(func=run)


def _section(title: str) -> None:
    print(f"\n{title}")


def _nnunet_folder_problem(name: str, value: str | None) -> str | None:
    """nnU-Net finds datasets only in an existing nnUNet_raw; the other two folders it creates when needed."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return f"{name}={value} is a file, not a folder; point {name} at a folder"
    if name == "nnUNet_raw" and not path.exists():
        return f"{name}={value} does not exist; create it (mkdir -p \"{value}\") or fix the variable"
    return None


def run(args) -> int:
    import torch

    from nnunet_mamba import __version__, cpu_allocator, discovery
    from nnunet_mamba.ops import BACKENDS, SCAN_ENV_VAR, available_backends, requested_backend, resolve_backend

    problems = []
    print(f"nnunet-mamba {__version__}")
    _section("torch")
    print(f"  torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"  CUDA available: {torch.cuda.device_count()} device(s): {names}")
    else:
        print("  CUDA available: no (training runs on CPU: nnUNetv2_train ... -device cpu)")
    print(f"  CPU memory: {cpu_allocator.describe()}")

    _section("selective scan (backends in the order 'auto' tries them; the table is nnunet_mamba.ops.BACKENDS)")
    unavailable = available_backends()
    for backend in BACKENDS:
        reason = unavailable[backend.name]
        details = f" ({backend.details()})" if backend.details and not reason else ""
        print(f"  {backend.name}: {'yes' + details if not reason else 'no - ' + reason}")
        epilogue = "fused" if backend.fuses_epilogue else "in autograd around the kernel"
        print(f"      {backend.kernel} on {backend.devices} tensors, {'/'.join(backend.dtypes)}; "
              f"bias/softplus/D/z {epilogue}")
    print(f"  {SCAN_ENV_VAR}={os.environ.get(SCAN_ENV_VAR, '(unset: auto)')}")
    chosen = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        try:
            chosen[device] = resolve_backend(torch.device(device))
            print(f"  tensors on {device} use the '{chosen[device]}' backend")
        except (RuntimeError, ValueError) as error:
            problems.append(str(error))
            print(f"  tensors on {device}: ERROR {error}")
    if requested_backend() == "auto":
        for device, name in chosen.items():
            # the backends 'auto' prefers on these tensors, and how to get them
            preferred = BACKENDS[:[backend.name for backend in BACKENDS].index(name)]
            missing = [backend for backend in preferred
                       if backend.auto_device_types and device in backend.auto_device_types and backend.install_hint]
            if missing:
                print(f"  note: on {device} tensors the '{name}' backend runs; 'auto' would prefer "
                      + "; ".join(f"'{backend.name}': {backend.install_hint}" for backend in missing))

    _section("nnU-Net environment")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(name)
        problem = _nnunet_folder_problem(name, value)
        if problem:
            problems.append(problem)
        print(f"  {name}={value if value else '(unset)'}{'  <- PROBLEM, see below' if problem else ''}")
    print(f"  {discovery.EXT_TRAINER_ENV_VAR}={os.environ.get(discovery.EXT_TRAINER_ENV_VAR, '(unset)')}")
    print(f"  our trainers folder: {discovery.trainers_folder()}")

    _section("trainer lookup (nnU-Net's own recursive_find_trainer_class_by_name)")
    if not discovery.is_configured():
        problem = f"{discovery.EXT_TRAINER_ENV_VAR} does not list our trainers folder"
        problems.append(problem)
        print(f"  {problem}; run:\n    eval \"$(nnunet-mamba env)\"")
    else:
        for name in discovery.trainer_names():
            found, error = discovery.find_with_nnunet(name)
            print(f"  {name}: {'found' if found is not None else 'NOT FOUND - ' + error}")
            if found is None:
                problems.append(f"nnU-Net cannot find {name}")

    print()
    if problems:
        print("problems:\n" + "\n".join(f"  - {p}" for p in problems))
        return 1
    print("all good")
    return 0
