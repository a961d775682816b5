"""How each network starts on the synthetic 3D data (issue 23, item 7): how much of the image its logits see at
initialisation, and test Dice per label after a short run from several seeds.

    python scripts/learning_start_3d.py --networks vm_unet nnunet --seeds 0 1 2 --iterations 100
    python scripts/learning_start_3d.py --networks vm_unet --official-final-expand ...   # VMamba's per-sub-position draw

``nnunet`` is nnU-Net's PlainConvUNet from the same topology (He init, as nnU-Net's trainer). Contrast: for each
output channel, the mean logit inside the sphere (cube) minus the mean over background, at initialisation. Short
run: :func:`nnunet_mamba.benchmarks.learning.short_run` without deep supervision (batch 2 of 8 training volumes;
Dice on 2 held-out volumes). One thread: the figures are for comparing networks and
starts with each other, not timings.
"""
from __future__ import annotations

import argparse

import torch

from nnunet_mamba.architectures import build_network, get_network, synthetic_configuration
from nnunet_mamba.benchmarks.learning import short_run, synthetic_volumes
from nnunet_mamba.blocks import PatchExpanding
from nnunet_mamba.synthetic import LABELS


def nnunet_unet(topology):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    levels = len(topology.conv_kernel_sizes)
    network = PlainConvUNet(1, levels, [min(32 * 2**i, 320) for i in range(levels)], torch.nn.Conv3d,
                            topology.conv_kernel_sizes, topology.pool_op_kernel_sizes, [2] * levels, len(LABELS),
                            [2] * (levels - 1), True, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
                            None, None, torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=False)
    network.apply(InitWeights_He(1e-2))
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=["vm_unet", "nnunet"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=100, help="0: the contrast at initialisation only")
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 32, 32])
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0],
                        help="the plan's spacing (decides the poolings); the demo's is 2 1 1")
    parser.add_argument("--official-final-expand", action="store_true",
                        help="keep VMamba's independent draw of every sub-position of the final expanding")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.official_final_expand:
        PatchExpanding.init_sub_positions_alike = lambda self: None
    images, labels = synthetic_volumes(args.shape)
    topology = synthetic_configuration(tuple(args.shape), tuple(args.spacing))
    for name in args.networks:
        for seed in args.seeds:
            torch.manual_seed(seed)
            network = (nnunet_unet(topology) if name == "nnunet"
                       else build_network(get_network(name).small_instance, topology, 1, len(LABELS), False))
            with torch.no_grad():
                logits = network(images[:2])
            seg = labels[:2, 0]
            contrast = {label: [round(float(logits[:, c][seg == value].mean() - logits[:, c][seg == 0].mean()), 3)
                                for c in range(len(LABELS))] for label, value in LABELS.items() if value}
            line = f"{name} seed {seed}: init contrast per channel {contrast}"
            if args.iterations:
                line += f"; test Dice after {args.iterations} iterations {short_run(network, seed, args.iterations, images, labels)}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
