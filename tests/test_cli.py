"""The nnunet-mamba command and trainer discovery through nnU-Net's own lookup."""
import os
import shlex
import subprocess
import sys

import pytest
import torch

from nnunet_mamba import discovery
from nnunet_mamba.cli import main

COMMAND = [sys.executable, "-m", "nnunet_mamba.cli"]


def _run(args, env_changes):
    env = {k: v for k, v in os.environ.items() if k != discovery.EXT_TRAINER_ENV_VAR}
    env.update(env_changes)
    return subprocess.run(COMMAND + args, env=env, capture_output=True, text=True, timeout=300)


def test_env_prints_an_export_line_that_keeps_other_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(discovery.EXT_TRAINER_ENV_VAR, str(tmp_path))
    assert main(["env"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"export {discovery.EXT_TRAINER_ENV_VAR}=")
    value = shlex.split(line.split("=", 1)[1])[0]
    assert value.split(os.pathsep) == [str(discovery.trainers_folder()), str(tmp_path)]


def test_require_configured_names_the_variable_and_the_fix(monkeypatch):
    monkeypatch.delenv(discovery.EXT_TRAINER_ENV_VAR, raising=False)
    with pytest.raises(RuntimeError, match=r"nnUNet_extTrainer is not set[\s\S]*eval \"\$\(nnunet-mamba env\)\""):
        discovery.require_configured("nnunet-mamba demo")
    monkeypatch.setenv(discovery.EXT_TRAINER_ENV_VAR, "/somewhere/else")
    with pytest.raises(RuntimeError, match="which does not list"):
        discovery.require_configured("nnunet-mamba demo")


def test_demo_refuses_to_start_without_the_trainer_path(tmp_path):
    result = _run(["demo", "--workdir", str(tmp_path / "demo")], {})
    assert result.returncode == 2
    assert "nnUNet_extTrainer is not set" in result.stderr and "nnunet-mamba env" in result.stderr
    assert not (tmp_path / "demo" / "nnUNet_raw").exists()


def test_doctor_reports_lookup_failure_and_success():
    unset = _run(["doctor"], {})
    assert unset.returncode == 1
    assert "does not list our trainers folder" in unset.stdout
    from nnunet_mamba.ops import resolve_backend

    assert f"tensors on cpu use the '{resolve_backend(torch.device('cpu'))}' backend" in unset.stdout

    configured = _run(["doctor"], {discovery.EXT_TRAINER_ENV_VAR: str(discovery.trainers_folder())})
    assert configured.returncode == 0, configured.stdout + configured.stderr
    for name in ("nnUNetTrainerVMUNet", "nnUNetTrainerVMUNetQuick"):
        assert f"{name}: found" in configured.stdout


def test_doctor_reports_a_bad_backend_choice():
    result = _run(["doctor"], {discovery.EXT_TRAINER_ENV_VAR: str(discovery.trainers_folder()),
                               "NNUNET_MAMBA_SCAN": "cuda"})
    assert result.returncode == 1
    assert "Selective-scan backend 'cuda' was forced" in result.stdout


def test_nnunet_lookup_finds_every_trainer_of_ours(monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv(discovery.EXT_TRAINER_ENV_VAR, str(discovery.trainers_folder()))
    names = discovery.trainer_names()
    assert {"nnUNetTrainerVMUNet", "nnUNetTrainerVMUNetQuick"} <= set(names)
    for name in names:
        found, error = discovery.find_with_nnunet(name)
        assert found is not None, error
        assert issubclass(found, nnUNetTrainer) and found.__name__ == name


def test_example_builds_the_canonical_network(repo_root):
    result = subprocess.run([sys.executable, str(repo_root / "examples" / "build_from_plans.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "VMUNet: 27.43 M parameters" in result.stdout
    assert "output (1, 1, 256, 256) at scale [1.0, 1.0]" in result.stdout


def test_doctor_flags_an_nnunet_raw_that_does_not_exist(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no_such_raw"
    monkeypatch.setenv("nnUNet_raw", str(missing))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "created_later"))  # nnU-Net creates this one
    monkeypatch.delenv("nnUNet_results", raising=False)
    monkeypatch.delenv("NNUNET_MAMBA_SCAN", raising=False)
    monkeypatch.setenv(discovery.EXT_TRAINER_ENV_VAR, str(discovery.trainers_folder()))
    monkeypatch.setattr(discovery, "find_with_nnunet", lambda name: (object, ""))  # the lookup is tested above
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"nnUNet_raw={missing} does not exist" in out and "all good" not in out
    assert "created_later does not exist" not in out
    missing.mkdir()
    assert main(["doctor"]) == 0
    assert "all good" in capsys.readouterr().out
