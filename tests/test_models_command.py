"""``nnunet-mamba models`` and ``--version``: what is installed, from the registry and the trainers folder."""
import re

import pytest

from nnunet_mamba import __version__, discovery
from nnunet_mamba.architectures import registered_networks
from nnunet_mamba.cli import main
from nnunet_mamba.commands.models import PLANS_NETWORK


def test_models_lists_every_network_with_counts_and_every_trainer(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, entry in registered_networks().items():
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert entry.description in line
    assert re.search(r"vm_unet\s+2D/3D\s+2D 27\.43 M, 3D 33\.54 M", out), out
    for trainer, trainer_class in discovery.our_trainers().items():
        network = trainer_class.network_name or re.escape(PLANS_NETWORK)
        assert re.search(rf"^  {trainer}\s+{network}\s+\S", out, flags=re.M), trainer


def test_every_trainer_says_whose_protocol_it_follows():
    # the README's legend: official (the authors' code), the paper (its text), nnU-Net's, or ours
    for trainer, trainer_class in discovery.our_trainers().items():
        summary = (trainer_class.__doc__ or "").strip().split("\n")[0]
        assert re.match(r"(Official|Ours|nnU-Net protocol|The paper's|VM-UNet's official)", summary), (trainer,
                                                                                                         summary)


def test_version_names_ours_and_the_stack(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0
    assert re.fullmatch(rf"nnunet-mamba {re.escape(__version__)} \(nnunetv2 \S+, torch \S+\)\n", capsys.readouterr().out)


@pytest.mark.parametrize("what", ["scan", "network", "flops"])
def test_benchmark_on_cuda_without_a_gpu_says_so(what, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["benchmark", what, "--device", "cuda"]) == 2
    assert "--device cuda needs a CUDA GPU, and torch sees none" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["env", "doctor", "models"])
def test_every_command_describes_itself(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    assert len(help_text.split("\n\n")[1].split()) > 15, help_text  # a description paragraph, not just usage


def test_network_benchmark_compares_with_nnunets_unet_from_the_same_plan():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_mamba.architectures import synthetic_configuration
    from nnunet_mamba.benchmarks.network import NNUNET_UNET, nnunet_default_unet, run_network_benchmark

    configuration = synthetic_configuration((32, 32))
    unet = nnunet_default_unet(configuration, 1, 3)
    assert isinstance(unet, PlainConvUNet)
    assert [tuple(s) for s in unet.encoder.strides] == list(configuration.pool_op_kernel_sizes)
    rows = run_network_benchmark("vm_unet", (32, 32), batch=1, num_classes=3, device="cpu", amp=False,
                                 backends=["torch"], steps=1, warmup=0, compare_nnunet=True)
    assert [r["network"] for r in rows] == [NNUNET_UNET, "vm_unet"]
    assert rows[1]["train_ratio"] == pytest.approx(rows[1]["step_ms"] / rows[0]["step_ms"])
    assert rows[1]["inference_ratio"] == pytest.approx(rows[1]["inference_ms"] / rows[0]["inference_ms"])
