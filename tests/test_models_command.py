"""``nnunet-mamba models`` and ``--version``: what is installed, from the registry and the trainers folder."""
import math
import re

import pytest
import torch

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
    from nnunet_mamba.benchmarks.network import (
        NNUNET_UNET,
        format_network_table,
        nnunet_default_unet,
        run_network_benchmark,
    )

    configuration = synthetic_configuration((32, 32))
    unet = nnunet_default_unet(configuration, 1, 3)
    assert isinstance(unet, PlainConvUNet)
    assert [tuple(s) for s in unet.encoder.strides] == list(configuration.pool_op_kernel_sizes)
    rows = run_network_benchmark("vm_unet", (32, 32), batch=2, num_classes=3, device="cpu", amp=False,
                                 backends=["torch"], steps=1, warmup=2, compare_nnunet=True)
    assert math.isnan(run_network_benchmark("vm_unet", (32, 32), batch=1, num_classes=3, device="cpu", amp=False,
                                            backends=["torch"], steps=1, warmup=1)[0]["peak_mib"])  # a first step
    assert [r["network"] for r in rows] == [NNUNET_UNET, "vm_unet"]
    assert rows[1]["train_ratio"] == pytest.approx(rows[1]["step_ms"] / rows[0]["step_ms"])
    assert rows[1]["inference_ratio"] == pytest.approx(rows[1]["inference_ms"] / rows[0]["inference_ms"])
    # efficiency: the forward's MACs for the whole batch, and FLOP rates from them and the medians
    from nnunet_mamba.architectures import build_network
    from nnunet_mamba.benchmarks.flops import count_flops

    torch.manual_seed(0)
    vm_unet = build_network("vm_unet", configuration, 1, 3, deep_supervision=False).eval()
    macs = count_flops(vm_unet, torch.randn(1, 1, 32, 32)).total_macs
    assert rows[1]["gmacs"] == pytest.approx(2 * macs / 1e9)
    assert rows[0]["gmacs"] == pytest.approx(2 * count_flops(unet.eval(), torch.randn(1, 1, 32, 32)).total_macs / 1e9)
    for row in rows:
        assert row["train_gflop_per_s"] == pytest.approx(3 * 2 * row["gmacs"] / (row["step_ms"] / 1e3))
        assert row["inference_gflop_per_s"] == pytest.approx(2 * row["gmacs"] / (row["inference_ms"] / 1e3))
    assert rows[1]["train_efficiency"] == pytest.approx(rows[1]["train_gflop_per_s"] / rows[0]["train_gflop_per_s"])
    assert rows[1]["inference_efficiency"] == pytest.approx(
        rows[1]["inference_gflop_per_s"] / rows[0]["inference_gflop_per_s"])
    # CPU peak memory: what the step adds holds at least the larger of the activations saved for backward and the
    # gradients (both are allocated in the step, not necessarily both at once); the peak adds the parameters and
    # AdamW's two moments
    from nnunet_mamba.benchmarks.memory import saved_activation_elements

    if math.isnan(rows[0]["step_growth_mib"]):
        pytest.skip("no /proc/self/clear_refs on this platform")
    for row, model in zip(rows, (unet, vm_unet)):
        activations_mib = saved_activation_elements(model, (32, 32), 1, batch_size=2) * 4 / 2**20
        parameters_mib = sum(p.numel() * 4 for p in model.parameters()) / 2**20
        assert row["step_growth_mib"] >= max(activations_mib, parameters_mib), row["network"]
        resident_mib = row["peak_mib"] - row["step_growth_mib"]  # with the inputs and AdamW's step counters
        assert 2.9 * parameters_mib < resident_mib < 3 * parameters_mib + 0.1, row["network"]
    table = format_network_table(rows)
    row = rows[1]
    assert f"| {row['gmacs']:.2f} | {row['train_gflop_per_s']:.1f} | {row['train_efficiency']:.2f} |" in table


def test_resident_peak_counts_what_a_block_touches():
    from nnunet_mamba.resident_memory import ResidentPeak

    with ResidentPeak() as before_nothing:
        pass
    with ResidentPeak() as peak:
        block = torch.ones(64 * 2**18)  # 64 MiB, every page written
        del block
    if peak.growth_bytes is None:
        pytest.skip("no /proc/self/clear_refs on this platform")
    assert before_nothing.growth_bytes < 8 * 2**20
    assert 60 * 2**20 <= peak.growth_bytes < 80 * 2**20
