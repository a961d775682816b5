"""Build our networks outside nnU-Net's trainers: from an nnU-Net plans file, or the canonical VM-UNet.

    python examples/build_from_plans.py                                   # canonical 2D VM-UNet
    python examples/build_from_plans.py --plans nnUNetPlans.json -c 3d_fullres
"""
import argparse
import json

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mamba.architectures import VMUNet, build_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", help="an nnU-Net plans file (nnUNetPlans.json)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--network", default="vm_unet")
    args = parser.parse_args()

    if args.plans:
        plans = PlansManager(json.load(open(args.plans)))
        configuration = plans.get_configuration(args.configuration)
        network = build_network(args.network, configuration, num_input_channels=1, num_output_channels=2,
                                deep_supervision=True, configuration_name=args.configuration)
        patch = list(configuration.patch_size)
    else:
        network = VMUNet(input_channels=3, num_classes=1, deep_supervision=True)
        patch = [256, 256]
    print(f"{type(network).__name__}: {sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters")
    print(f"strides per level: {network.strides}, total {network.total_stride}")
    with torch.no_grad():
        outputs = network(torch.zeros(1, network.stem.proj.in_channels, *patch))
    for out, scale in zip(outputs, network.deep_supervision_scales()):
        print(f"  output {tuple(out.shape)} at scale {scale}")


if __name__ == "__main__":
    main()
